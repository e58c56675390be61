"""Every error jaxsae raises on purpose: one base, one class per failure family, a few specific subclasses.

A leaf module (it imports nothing of jaxsae), so every room, the extractor included, can raise these and the
CLI can catch `JaxsaeError` without importing the rooms. Each message names the field or path, what was found,
what was expected and the fix; every CLI verb prints it as one `error: ...` line and exits with status 2.

    JaxsaeError
    ├── ConfigError          a configuration that cannot work (training config, mesh, SAE settings)
    ├── StoreError           an activation store that cannot be used as asked
    │   └── StoreWriteError  a store write that did not land (disk full, permissions, I/O)
    ├── CheckpointError      checkpoints exist but none can be restored (or one cannot be written)
    ├── LockError            another process holds a folder
    │   ├── FolderLockedError  ... a store or extraction folder (jaxsae.store.FolderLock)
    │   └── RunLockedError     ... a run folder (another trainer)
    ├── TrainingError        training stopped on its own data
    │   └── NonFiniteError   a non-finite loss or gradient
    ├── DictionaryError      a dictionary folder that cannot be loaded, or input of the wrong shape
    ├── AnalysisError        bad analysis input (cells that do not match the store, a malformed GMT, ...)
    ├── ExtractError         bad extraction input (AnnData, model folder, option)
    └── SchedulerError       a job scheduler that is missing or refused a submission (sbatch)

Every family is also a `ValueError`, as each of them was before this module existed (`except ValueError`
in user code keeps catching them).
"""

from __future__ import annotations


class JaxsaeError(Exception):
    """Base of every error jaxsae raises on purpose; the message says what was found and the fix."""


class ConfigError(JaxsaeError, ValueError):
    """A configuration that cannot work; the message names the field and the fix."""


class StoreError(JaxsaeError, ValueError):
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


class CheckpointError(JaxsaeError, ValueError):
    """Checkpoints exist but none can be restored (or one cannot be written)."""


class LockError(JaxsaeError, ValueError):
    """Another process holds the folder; the message names the holder (host, pid, since when)."""


class FolderLockedError(LockError):
    """Another writer holds a store or extraction folder."""


class RunLockedError(LockError):
    """Another trainer holds the run folder."""


class TrainingError(JaxsaeError, ValueError):
    """Training could not go on with the data it was given; the run's last good checkpoint is kept."""


class NonFiniteError(TrainingError):
    """Training met a non-finite loss or gradient; the run stopped with its last good checkpoint kept."""


class DictionaryError(JaxsaeError, ValueError):
    """A dictionary folder that cannot be loaded, or input it cannot encode; the message says what to do."""


class AnalysisError(JaxsaeError, ValueError):
    """Bad analysis input (cells that do not match the store, a non-categorical column, a malformed GMT, ...)."""


class ExtractError(JaxsaeError, ValueError):
    """Input to extraction that cannot work: bad AnnData, model folder, dictionary or option.

    Raised before any work starts; the message names what was found, what was expected and the fix.
    """


class SchedulerError(JaxsaeError, ValueError):
    """A job scheduler that cannot take the work: its command is missing, or it refused the submission."""
