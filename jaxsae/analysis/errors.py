"""The analysis side's user error: one message naming the problem and the fix."""

from __future__ import annotations


class AnalysisError(ValueError):
    """Bad analysis input (cells that do not match the store, a non-categorical column, a malformed GMT, ...)."""
