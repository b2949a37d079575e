"""A sweep's leaderboard: one row per trial (settings, what ran, Val metrics), sorted, written as
CSV and Markdown. ``covidseg sweep`` writes it; the report reads it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from covidseg.atomic import write_atomic
from covidseg.document import Document
from covidseg.engine.run_folder import read_history
from covidseg.evaluation import write_rows
from covidseg.metrics import lookup

# Leaderboard metric columns: (column, summary.json path).
METRICS: dict[str, tuple[str, ...]] = {
    "pooled_dice": ("pooled", "dice"),
    "pooled_iou": ("pooled", "iou"),
    "pixel_accuracy": ("pooled", "pixel_accuracy"),
    "per_image_dice": ("per_image", "dice"),
    "per_image_iou": ("per_image", "iou"),
    "covid_dice": ("per_image_covid", "dice"),
    "covid_iou": ("per_image_covid", "iou"),
    "negatives_fp_share": ("negatives_with_false_positives",),
    "lung_dice": ("lung", "per_image", "dice"),
}
LOWER_IS_BETTER = {"negatives_fp_share"}


def leaderboard_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per trial folder: settings, scale, actual settings, best epoch, wall time, Val metrics."""
    rows = []
    for run_dir in sorted((Path(sweep_dir) / "trials").iterdir()):
        info_path = run_dir / "trial.json"
        if not info_path.is_file():
            continue
        info = json.loads(info_path.read_text())
        row: dict[str, Any] = {"trial": info["trial"], "status": info.get("status", "incomplete")}
        row.update(info["settings"])
        row["scale"] = info.get("scale") or "none (full)"
        row["actual_epochs"] = info["actual"]["train.epochs"]
        row["actual_image_size"] = info["actual"]["data.image_size"]
        row["train_images"] = info["actual"]["data.train_limit"] or "all"
        hist_path = run_dir / "history.csv"
        hist = read_history(hist_path) if hist_path.is_file() else []
        row["epochs_run"] = len(hist)
        row["wall_time_s"] = round(sum(h["seconds"] for h in hist), 1) if hist else None
        summary_path = run_dir / "eval" / "Val" / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        row["best_epoch"] = summary.get("epoch")
        for col, path in METRICS.items():
            row[col] = lookup(summary, path)
        rows.append(row)
    return rows


def sort_rows(rows: list[dict[str, Any]], sort_by: str) -> list[dict[str, Any]]:
    sign = 1 if sort_by in LOWER_IS_BETTER else -1

    def key(r: dict[str, Any]) -> tuple[int, float]:
        v = r.get(sort_by)
        return (1, 0.0) if v is None or (isinstance(v, float) and math.isnan(v)) else (0, sign * float(v))

    return sorted(rows, key=key)


def write_leaderboard(
    rows: list[dict[str, Any]], out: Path, sort_by: str, spec: Any, scale: Any | None
) -> tuple[Path, Path]:
    """``leaderboard.csv`` and ``leaderboard.md`` of a sweep (``spec``: its SweepSpec; ``scale``:
    its Scale, when the trials were scaled down)."""
    rows = sort_rows(rows, sort_by)
    write_rows(rows, out / "leaderboard.csv")
    doc = Document(f"Leaderboard: {spec.name}")
    doc.para(
        f"Preset `{spec.preset}`; varied: {', '.join(f'`{k}`' for k in spec.varied)}; sorted by `{sort_by}` "
        f"({'lower' if sort_by in LOWER_IS_BETTER else 'higher'} is better). Val metrics: pooled = one confusion "
        "matrix over all pixels; per_image = mean over all images with empty truth and empty prediction = 1; "
        "covid = per-image mean over COVID-19 images; negatives_fp_share = Normal and Non-COVID images with any "
        "predicted pixel. The metrics are on the whole Val split; a Val limit only shortens the per-epoch "
        "validation that picks the best epoch."
    )
    if scale is not None:
        doc.para(
            f"**Scaled down** ({scale.describe()}): the settings columns are the nominal ones; "
            "`actual_epochs`, `actual_image_size` and `train_images` are what each trial ran. "
            "These numbers are not those of the full settings."
        )
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields and k != "scale"]
    doc.table(fields, [[r.get(k) for k in fields] for r in rows])
    write_atomic(out / "leaderboard.md", doc.to_markdown())
    return out / "leaderboard.csv", out / "leaderboard.md"
