"""The output folder of ``covidseg predict``: its ``predictions.jsonl`` and the files it names.

Nothing in the folder is lost. Each record names its X-ray by absolute path (``image_path``) and
its files (``mask``, ``lung``, ``overlay``); a later run replaces the files and record of an
X-ray it predicts again and of no other: an X-ray of the same name from elsewhere, or a file of
the user's with an output's name, gets a counter (:func:`free_stems`). Records reach the file
through a rename, at the end of a run or when it is interrupted; the lines a killed run
(SIGKILL) had already flushed are taken over by the next run (:func:`recover`). Lines that are
not records (a note of the user's) are kept, line by line, whatever their encoding.
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
KINDS = ("mask", "lung", "overlay")  # an X-ray's files, ``<stem>_<kind>.png``, named in its record
OUTPUTS = tuple(f"_{kind}.png" for kind in KINDS)


def is_output_folder(folder: Path) -> bool:
    """Whether ``folder`` holds covidseg's own outputs (predict's or evaluate's: a lock or records)."""
    return (folder / LOCK_NAME).is_file() or (folder / RECORDS).is_file()


def _lines(path: Path) -> list[bytes]:
    """The lines of a file (split at newline bytes only; a link is not followed)."""
    if path.is_symlink() or not path.is_file():
        return []
    data = path.read_bytes()
    return data.removesuffix(b"\n").split(b"\n") if data else []


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _mask(line: bytes) -> str | None:
    mask = (_record(line) or {}).get("mask")
    return mask if isinstance(mask, str) else None


def earlier_records(out: Path) -> list[dict[str, Any]]:
    """The records of ``out/predictions.jsonl`` (other lines skipped)."""
    return [r for r in map(_record, _lines(out / RECORDS)) if r is not None]


def merge(out: Path, new: list[bytes], replaced: set[str]) -> None:
    """Rewrite ``out/predictions.jsonl`` (through a rename) as its lines but the records of masks in
    ``replaced``, then the ``new`` lines."""
    kept = [line for line in _lines(out / RECORDS) if (mask := _mask(line)) is None or mask not in replaced]
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


def refuse_other_model(out: Path, records: list[dict[str, Any]], model: str, sha: str | None = None) -> None:
    """One folder, one model: refuse to add the predictions of ``model`` (weights ``sha``) to
    another model's, or to those of other weights under the same name (records that do not say
    which model, or which weights, are taken as this model's)."""
    named = [r for r in records if isinstance(r.get("model"), str)]
    others = sorted({r["model"] for r in named if r["model"] != model})
    if others:
        raise CovidsegError(
            f"--out {out} holds predictions of another model ({', '.join(others)}); choose another folder"
        )
    shas = {r["model_sha256"] for r in named if isinstance(r.get("model_sha256"), str)} - {sha}
    if sha is not None and shas:
        raise CovidsegError(
            f"--out {out} holds predictions of another model named {model} (weights {min(shas)[:12]}, "
            f"these are {sha[:12]}); choose another folder"
        )


def _owner(record: dict[str, Any]) -> str | None:
    """The absolute path of a record's X-ray (an older record's ``image`` when it is absolute)."""
    for key in ("image_path", "image"):
        value = record.get(key)
        if isinstance(value, str) and Path(value).is_absolute():
            return value
    return None


def free_stems(stems: dict[Path, str], out: Path, records: list[dict[str, Any]]) -> dict[Path, str]:
    """The output name of each X-ray: the name of its earlier prediction in ``out`` when there is
    one (the same file, however it was reached), else its own, with a counter added (``name-2``...)
    while a file of that name is in ``out`` or an earlier record claims it for another X-ray (or
    does not say which): nothing is overwritten but an X-ray's own earlier outputs."""
    owner = {r[k]: _owner(r) for r in records for k in KINDS if isinstance(r.get(k), str)}
    earlier = {image: mask.removesuffix("_mask.png") for mask, image in owner.items() if mask.endswith("_mask.png")}
    taken = set(owner) | ({p.name for p in out.iterdir()} if out.is_dir() else set())
    used: set[str] = set()
    result = {}

    def free(name: str, image: str) -> bool:
        mine = all(f"{name}{end}" not in taken or owner.get(f"{name}{end}") == image for end in OUTPUTS)
        return mine and name not in used

    for f, stem in stems.items():
        image = str(f.resolve())
        candidate = earlier.get(image, stem)
        k = 2
        while not free(candidate, image):
            candidate, k = f"{stem}-{k}", k + 1
        if candidate != stem:
            log.info("%s: written as %s_*", f, candidate)
        used.add(candidate)
        result[f] = candidate
    return result
