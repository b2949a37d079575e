"""One writer per folder: an advisory lock that a second covidseg process finds and reports.

The lock is ``fcntl.flock`` on ``FOLDER/.covidseg.lock``: the operating system releases it when
the process ends, however it ends (a kill included), so a stale lock never blocks the next run.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from covidseg.errors import CovidsegError

LOCK_NAME = ".covidseg.lock"


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold the folder's lock while ``what`` writes into it; refuse when another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise CovidsegError(
                f"{folder} is in use by another covidseg process ({holder}); wait for it to finish, or choose "
                "another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}".encode(), 0)
        yield
    finally:
        os.close(fd)


def new_folders(out: Path) -> list[Path]:
    """The folders a command writing into ``out`` creates: ``out`` and its parents not there yet."""
    return [d for d in (out, *out.parents) if not d.exists()]


def remove_if_only_lock(created: list[Path], what: str) -> None:
    """Remove the folders a failed command created (``out`` first, then its new parents, as
    :func:`new_folders` lists them), as long as they hold nothing but its lock file."""
    if not created or not created[0].is_dir() or [x.name for x in created[0].iterdir()] != [LOCK_NAME]:
        return
    try:
        with folder_lock(created[0], f"{what} cleanup"):  # not while another process holds it
            (created[0] / LOCK_NAME).unlink()
    except CovidsegError:
        return
    for folder in created:
        if any(folder.iterdir()):
            return
        folder.rmdir()
