"""The one exception type for every activation-store failure."""

from __future__ import annotations


class StoreError(ValueError):
    """A store that cannot be used as asked.

    The message says what was found, what was expected and what to do, and names the store path when one
    is involved.
    """


class StoreWriteError(StoreError):
    """A write that did not land (disk full, permissions, I/O error); the store keeps its last commit.

    reason: the underlying failure in a few words, for callers that phrase their own advice.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason
