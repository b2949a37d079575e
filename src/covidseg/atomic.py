"""Whole files or none: write beside the target under a temporary name, then rename into place.

A failed or interrupted write leaves the old file intact; the data reaches the disk before the
rename and the rename before the call returns (``fsync`` of the file, then of its folder), so a
power cut leaves the old file or the new one, never an empty one. A killed write may leave a
``.covidseg-tmp-*`` file too (hidden), which the next ``predict`` or ``evaluate --model`` into that
folder removes (:func:`remove_leftovers`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".covidseg-tmp-"


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = write_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:  # an error or Ctrl-C: no half-written file left behind (a kill still can)
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def write_temporary(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to the temporary name of ``path`` (a new file: whatever had that name, a link
    included, is removed first and never followed), sync it to the disk and return that name, for
    the caller to rename (and then :func:`sync_folder`)."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    tmp.unlink(missing_ok=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def sync_file(path: str | Path) -> None:
    """Make a file that a library wrote (``torch.save``, ONNX, safetensors) reach the disk."""
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows syncs only what it may write
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: str | Path) -> None:
    """Make the renames and new names in ``folder`` reach the disk (a no-op where folders cannot
    be opened, as on Windows, whose renames are durable by themselves)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process's file-creation mask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def folder_in_place(out: str | Path) -> Iterator[Path]:
    """Yield a new hidden folder beside ``out`` to fill; when the block ends, rename it to ``out``
    (which must be missing or empty), so that ``out`` appears whole or not at all. An error or
    Ctrl-C in the block removes the folder. The caller syncs what it wrote before the block ends."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700; as readable as any folder the user makes
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        sync_folder(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_leftovers(folder: str | Path) -> int:
    """Remove the temporary files (and links) killed writes left in ``folder``; call it holding the
    folder's lock, when no write can be in progress. Returns how many."""
    leftovers = [f for f in Path(folder).glob(f"{TMP_PREFIX}*") if f.is_symlink() or f.is_file()]
    for f in leftovers:
        f.unlink(missing_ok=True)
    return len(leftovers)
