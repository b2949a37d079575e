"""The output folder of ``covidseg predict``: its ``predictions.jsonl`` and the files it names.

Nothing in the folder is lost. Each record names its X-ray by absolute path (``image_path``) and
its files (``mask``, ``lung``, ``overlay``); a later run replaces the files and record of an
X-ray it predicts again and of no other: an X-ray of the same name from elsewhere, or a file of
the user's with an output's name, gets a counter (:func:`free_stems`). Records reach the file
through a rename, at the end of a run or when it is interrupted; the lines a killed run (SIGKILL,
power loss) had already flushed are taken over by the next run (:func:`recover`). Lines that are
not records (a note of the user's) are kept as they are, bytes and all.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from covidseg.atomic import TMP_PREFIX, write_atomic
from covidseg.errors import CovidsegError
from covidseg.locking import LOCK_NAME

log = logging.getLogger(__name__)

RECORDS = "predictions.jsonl"
RUNNING = f"{TMP_PREFIX}running-{RECORDS}"  # this run's records, one flushed line per X-ray
OUTPUTS = ("_mask.png", "_lung.png", "_overlay.png")


def is_output_folder(folder: Path) -> bool:
    """Whether ``folder`` holds covidseg's own outputs (predict's or evaluate's: a lock or records)."""
    return (folder / LOCK_NAME).is_file() or (folder / RECORDS).is_file()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.is_file() else []


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def earlier_records(out: Path) -> list[dict[str, Any]]:
    """The records of ``out/predictions.jsonl`` (other lines skipped)."""
    return [r for r in map(_record, _lines(out / RECORDS)) if r is not None]


def merge(out: Path, new: list[bytes], replaced: set[str]) -> None:
    """Rewrite ``out/predictions.jsonl`` (through a rename) as its lines but the records of masks in
    ``replaced``, then the ``new`` lines."""
    kept = [line for line in _lines(out / RECORDS) if (_record(line) or {}).get("mask") not in replaced]
    write_atomic(out / RECORDS, b"".join(line + b"\n" for line in kept + new))


def recover(out: Path) -> int:
    """Take over the complete records a killed run left in its temporary files (those whose mask is
    there), so that the files they describe keep their records. Returns how many."""
    found: dict[str, bytes] = {}
    for name in (RUNNING, f"{TMP_PREFIX}{RECORDS}"):
        for line in _lines(out / name):
            r = _record(line)
            if r is not None and isinstance(r.get("mask"), str) and (out / Path(r["mask"]).name).is_file():
                found[r["mask"]] = line
    if found:
        merge(out, list(found.values()), set(found))
        log.info("took over %d record(s) an interrupted run left in %s", len(found), out)
    return len(found)


def refuse_other_model(out: Path, records: list[dict[str, Any]], model: str) -> None:
    """One folder, one model: refuse to add ``model``'s predictions to another model's."""
    others = sorted({r["model"] for r in records if isinstance(r.get("model"), str) and r["model"] != model})
    if others:
        raise CovidsegError(
            f"--out {out} holds predictions of another model ({', '.join(others)}); choose another folder"
        )


def _owner(record: dict[str, Any]) -> str | None:
    """The absolute path of a record's X-ray (an older record's ``image`` when it is absolute)."""
    for key in ("image_path", "image"):
        value = record.get(key)
        if isinstance(value, str) and Path(value).is_absolute():
            return value
    return None


def free_stems(stems: dict[Path, str], out: Path, records: list[dict[str, Any]]) -> dict[Path, str]:
    """``stems`` with a counter added (``name-2``...) wherever an output file of that name is in
    ``out`` and is not an earlier prediction of the same X-ray file: another X-ray's, a file of the
    user's, or one whose record does not say which X-ray it came from."""
    owner = {r[k]: _owner(r) for r in records for k in ("mask", "lung", "overlay") if isinstance(r.get(k), str)}
    taken = {p.name for p in out.iterdir()} if out.is_dir() else set()
    used = set(stems.values())
    result = {}
    for f, stem in stems.items():
        image = str(f.resolve())
        candidate, k = stem, 2
        while any(f"{candidate}{end}" in taken and owner.get(f"{candidate}{end}") != image for end in OUTPUTS) or (
            candidate != stem and candidate in used
        ):
            candidate, k = f"{stem}-{k}", k + 1
        if candidate != stem:
            log.info("%s: written as %s_* (%s_* in %s are another image's or yours)", f, candidate, stem, out)
            used.add(candidate)
        result[f] = candidate
    return result
