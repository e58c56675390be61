"""The one exception type for every activation-store failure."""

from __future__ import annotations


class StoreError(ValueError):
    """A store that cannot be used as asked.

    The message says what was found, what was expected and what to do, and names the store path when one
    is involved.
    """
