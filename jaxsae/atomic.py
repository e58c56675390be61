"""Atomic writes: a file or folder appears whole under its name, or not at all (the old one stays).

A leaf module (it imports nothing of jaxsae), used by every writer of jaxsae and the extractor.

Protocol: build the new content under a hidden temporary name in the SAME folder (`.tmp-<random>-<name>`, so
the rename cannot cross file systems and the real suffix stays last for writers that look at it), fsync it,
`os.replace` it onto the target, then fsync the folder so the rename itself survives a power cut. Any failure
before the rename deletes the temporary and leaves the target as it was. A process killed mid-write can leave
a `.tmp-*` entry behind; it never has the target's name (`leftovers` lists them for cleanup).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file or folder (a folder: its entries, i.e. renames and creations inside it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_path(target) as tmp: write(tmp)`: whatever is written to `tmp` becomes `target` on success.

    The folder of `target` is created if missing. The file gets the permissions a plain `open` would give.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=f"-{target.name}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from colleagues
        fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)


def write_atomic(target: str | os.PathLike, content: str | bytes) -> Path:
    """Atomically write `content` (text as UTF-8, or bytes) to `target`; returns the target path."""
    with atomic_path(target) as tmp:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            tmp.write_bytes(content)
    return Path(target)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_folder(target) as tmp: fill(tmp)`: the filled folder replaces `target` as a whole on success.

    Every file inside is fsynced before the rename. An existing `target` is first renamed aside (then deleted),
    so a crash between the two renames leaves the old folder under a `.tmp-*` name, never a half-built one
    under `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=f"-{target.name}", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the folder from colleagues
        for root, _, files in os.walk(tmp):
            for name in files:
                fsync_path(os.path.join(root, name))
            fsync_path(root)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=f"-{target.name}.old", dir=target.parent))
            os.replace(target, old)  # onto the empty folder mkdtemp made: a unique name nobody else takes
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def leftovers(folder: str | os.PathLike) -> list[str]:
    """The temporaries a killed writer left in `folder` (files and folders named `.tmp-*`)."""
    return sorted(glob.glob(os.path.join(glob.escape(os.fspath(folder)), TMP_PREFIX + "*")))
