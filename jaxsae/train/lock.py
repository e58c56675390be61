"""The run-folder lock: one trainer per run folder (`<run_dir>/train.lock`), a `FolderLock` of jaxsae.store."""

from __future__ import annotations

from jaxsae.errors import RunLockedError
from jaxsae.store.lock import FolderLock

LOCK_FILE = "train.lock"


class RunLock(FolderLock):
    """`with RunLock(run_dir): ...` holds `<run_dir>/train.lock` for the duration."""

    locked_error = RunLockedError

    def __init__(self, run_dir: str):
        super().__init__(run_dir, LOCK_FILE, "trainer", field="run_dir")
        self.run_dir = run_dir
