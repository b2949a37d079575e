"""Reading and writing a run folder's own records: ``config.yaml`` (:func:`load_run_config`) and the
per-epoch ``history.csv`` (one row per epoch, rewritten atomically each epoch)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from covidseg.atomic import write_atomic
from covidseg.config import Config, from_dict, load_yaml
from covidseg.errors import CovidsegError, DataError

COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_pixel_accuracy",
    "val_loss",
    "val_pixel_accuracy",
    "val_dice",
    "val_iou",
    "val_dice_per_image",
    "val_iou_per_image",
    "val_dice_per_image_covid",
    "val_lung_dice",
    "val_lung_dice_per_image",
    "seconds",
    "steps",
    "planned_steps",
)


def write_history(rows: list[dict[str, Any]], path: str | Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    write_atomic(path, text.getvalue())


def read_history(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``history.csv`` as numbers (empty cells: nan).

    Raises:
        DataError: the file is not a history covidseg wrote (no ``epoch`` column, no rows, a cell
            that is not a number), so that a damaged file gives one clear line, not a traceback.
    """
    try:
        with Path(path).open(newline="", errors="replace") as f:
            reader = csv.DictReader(f)
            rows = [
                {k: float(v) if v not in ("", None) else float("nan") for k, v in row.items() if k is not None}
                for row in reader
            ]
    except (ValueError, TypeError, csv.Error) as exc:
        raise DataError(f"{path} is damaged: {str(exc)[:120]}") from None
    if not rows or "epoch" not in rows[0]:
        raise DataError(f"{path} is damaged: no epoch rows")
    return rows


def load_run_config(run_dir: str | Path) -> Config:
    """The config saved in a run folder."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CovidsegError(f"{run_dir} has no config.yaml; it is not a covidseg run folder")
    return from_dict(load_yaml(path))
