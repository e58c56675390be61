"""The run-folder lock: one trainer per run folder, a lock file naming its pid and host.

`<run_dir>/train.lock` holds {"pid", "host", "token", "since"}. A second trainer refuses with `RunLockedError`
naming the holder. A lock left by a dead process on the same host is taken over (with a warning); a lock held
from another host cannot be checked and is never taken over (delete the file if that trainer is gone).
Taking over is serialised by `fcntl.flock` on a guard file, so two trainers racing for a stale lock cannot
both win.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
import warnings

from jaxsae.sae.base import ConfigError

LOCK_FILE = "train.lock"


class RunLockedError(ConfigError):
    """Another trainer holds the run folder."""


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
            return json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError):
        return {}  # half-written or garbled: its writer died between create and write


class RunLock:
    """`with RunLock(run_dir): ...` holds `<run_dir>/train.lock` for the duration (re-entrant per instance)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.token = uuid.uuid4().hex
        self.held = False

    def acquire(self) -> RunLock:
        os.makedirs(self.run_dir, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(self.path + ".guard", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                holder = _read(self.path)
                if holder is not None:
                    self._check_stale(holder)
                    os.unlink(self.path)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)
        self.held = True
        return self

    def _check_stale(self, holder: dict) -> None:
        """Return if `holder`'s lock may be taken over, else raise RunLockedError."""
        pid, host = holder.get("pid"), holder.get("host")
        if not holder:
            warnings.warn(f"run lock {self.path} is unreadable (its writer died while creating it); taking it over",
                          stacklevel=3)
            return
        if host != socket.gethostname():
            raise RunLockedError(
                f"run_dir: {self.run_dir} is in use by a trainer on host {host} (pid {pid}, since "
                f"{holder.get('since')}); wait for it, or if that trainer is gone delete {self.path}"
            )
        if _pid_alive(int(pid)):
            raise RunLockedError(
                f"run_dir: {self.run_dir} is in use by another trainer (pid {pid} on this host, since "
                f"{holder.get('since')}); wait for it to finish or stop it, or choose another run_dir"
            )
        warnings.warn(f"run lock {self.path}: its trainer (pid {pid}) is gone; taking the run folder over",
                      stacklevel=3)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = _read(self.path)
        if holder and holder.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
