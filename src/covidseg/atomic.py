"""Whole files or none: write beside the target under a temporary name, then rename into place.

A failed or interrupted write leaves the old file intact; a killed one may leave a
``.covidseg-tmp-*`` file too (hidden), which the next ``predict`` or ``evaluate --model`` into that
folder removes (:func:`remove_leftovers`).
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_PREFIX = ".covidseg-tmp-"


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:  # an error or Ctrl-C: no half-written file left behind (a kill still can)
        tmp.unlink(missing_ok=True)
        raise


def remove_leftovers(folder: str | Path) -> int:
    """Remove the temporary files killed writes left in ``folder``; call it holding the folder's
    lock, when no write can be in progress. Returns how many."""
    leftovers = [f for f in Path(folder).glob(f"{TMP_PREFIX}*") if f.is_file()]
    for f in leftovers:
        f.unlink(missing_ok=True)
    return len(leftovers)
