"""A folder lock: one writer (trainer, extraction) per folder, a lock file naming its pid, host and token.

`<folder>/<file_name>` holds {"pid", "host", "token", "since"}. A second writer refuses with `locked_error`
naming the holder. A lock left by a dead process on the same host is taken over (with a logged notice); a
lock held from another host cannot be checked and is never taken over (delete the file if that writer is
gone). Checking and taking over run under `fcntl.flock` on the folder itself (no guard file is left behind),
so two writers racing for a free or stale lock cannot both win; the lock file is created with O_EXCL under
that flock, and removed on release only by the holder whose token it carries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
import uuid

from jaxsae.errors import FolderLockedError, JaxsaeError

log = logging.getLogger("jaxsae.lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            holder = json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return {}  # half-written or garbled: its writer died between create and write
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def folder_flock(folder: str):
    """Hold an exclusive flock on the folder itself (a directory fd) for the duration."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last fd releases the flock


class FolderLock:
    """`with FolderLock(folder, "x.lock", "extraction"): ...` holds `<folder>/x.lock` for the duration.

    folder: the folder to guard (created if missing). file_name: the lock file inside it. what: the kind of
    writer, for messages ("trainer", "extraction"). field: the setting that names the folder in messages
    ("run_dir", "out_dir"). Subclasses set `locked_error` to raise their own error family.
    """

    locked_error: type[JaxsaeError] = FolderLockedError

    def __init__(self, folder: str | os.PathLike, file_name: str, what: str, field: str = "folder"):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, file_name)
        self.what = what
        self.field = field
        self.token = uuid.uuid4().hex
        self.held = False

    def acquire(self):
        os.makedirs(self.folder, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with folder_flock(self.folder):
            holder = _read(self.path)
            if holder is not None:
                self._check_stale(holder)
                os.unlink(self.path)
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
        self.held = True
        return self

    def _check_stale(self, holder: dict) -> None:
        """Return if `holder`'s lock may be taken over, else raise `locked_error` naming the holder."""
        if not holder:
            log.warning(f"lock {self.path} is unreadable (its {self.what} died while creating it); taking it over")
            return
        pid, host = holder.get("pid"), holder.get("host")
        if host != socket.gethostname():
            raise self.locked_error(
                f"{self.field}: {self.folder} is in use by a {self.what} on host {host} (pid {pid}, since "
                f"{holder.get('since')}); wait for it, or if that {self.what} is gone delete {self.path}"
            )
        if isinstance(pid, int) and _pid_alive(pid):
            raise self.locked_error(
                f"{self.field}: {self.folder} is in use by another {self.what} (pid {pid} on this host, since "
                f"{holder.get('since')}); wait for it to finish or stop it, or choose another {self.field}"
            )
        log.warning(f"lock {self.path}: its {self.what} (pid {pid}) is gone; taking the folder over")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with folder_flock(self.folder):
            holder = _read(self.path)
            if holder and holder.get("token") == self.token:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
