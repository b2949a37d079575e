"""``covidseg report RUN_OR_SWEEP_DIR... --out REPORT_DIR``: a Markdown report and an HTML page.

For each run folder: the data set (counts per split and group, sample figure), the method (the
resolved config in words and as YAML), training curves, Val (and Test, when evaluated) metrics
under every definition of ``summary.json``, per-group numbers, the false-positive share on
Normal and Non-COVID images, lung, detection and severity results when the run has them, and
prediction panels. For each sweep folder: the leaderboard, the comparison plots and the overlaid
curves. Last, covidseg beside published results, one column per metric definition, so that no
column mixes definitions.

``REPORT_DIR/report.md`` links its figures in ``REPORT_DIR/figures/``; ``report.html`` embeds
them and opens from disk without a server.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from covidseg.atomic import write_atomic
from covidseg.config import Config
from covidseg.data.discovery import GROUPS
from covidseg.document import Document, slug
from covidseg.errors import CovidsegError
from covidseg.inference.postprocess import call_rule
from covidseg.metrics import lookup
from covidseg.report.describe import (
    INFECTION_COLUMNS,
    agreement_text,
    cross_fitted_row,
    data_label,
    describe_method,
    describe_postprocess,
    describe_scoring,
    load_json,
    num,
    pct,
    run_name,
    trained_precision,
)
from covidseg.report.published import add_published

log = logging.getLogger(__name__)


class ReportBuilder:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.figures = out / "figures"
        self.doc = Document("covidseg report")
        self.infection_rows: list[list[Any]] = []
        self.lung_rows: list[list[Any]] = []
        self.detection_rows: list[list[Any]] = []
        self.synthetic: list[str] = []

    def _figure(self, src: Path, name: str, caption: str) -> None:
        if not src.is_file():
            return
        self.figures.mkdir(parents=True, exist_ok=True)
        dst = self.figures / f"{slug(name)}.png"
        shutil.copyfile(src, dst)
        self.doc.figure(f"figures/{dst.name}", caption)

    def _data_section(self, run: Path, cfg: Config) -> None:
        from covidseg.data.discovery import discover

        counts: dict[str, dict[str, int]] = {}
        source = ""
        root = cfg.data.root
        if root and Path(root).is_dir():
            try:
                disc = discover(root)
                for split in disc.splits:
                    counts[split] = {g: sum(s.group == g for s in disc.split(split)) for g in GROUPS}
                source = f"discovered under `{disc.root}`"
            except CovidsegError:
                counts = {}
        if not counts:
            splits = load_json(run / "splits.json") or {}
            for split, ids in splits.items():
                counts[split] = {g: sum(f"/{g}/" in f"/{i}/" for i in ids) for g in GROUPS}
            source = "from the run's splits.json (the images it trained and validated on)"
        self.doc.para(f"Images per split and group, {source}:")
        rows = [[split, *(c[g] for g in GROUPS), sum(c.values())] for split, c in counts.items()]
        self.doc.table(["split", *GROUPS, "total"], rows)
        if cfg.data.train_limit or cfg.data.val_limit:
            self.doc.para(
                f"This run used group-stratified subsets: at most {cfg.data.train_limit or 'all'} Train and "
                f"{cfg.data.val_limit or 'all'} Val images."
            )
        self._figure(run / "plots" / "samples.png", f"{run.name}-samples", "Sample X-rays with infection masks")

    def add_run(self, run: Path, title: str | None = None, level: int = 2) -> None:
        from covidseg.engine.run_folder import load_run_config

        cfg = load_run_config(run)
        d = self.doc
        d.heading(title or f"Run {run_name(run)}", level)
        sub = level + 1
        d.heading(f"{run.name}: data set", sub)
        self._data_section(run, cfg)
        d.heading(f"{run.name}: method", sub)
        d.para(describe_method(cfg, trained_precision(run, cfg)) + f" Preset: `{cfg.preset}`.")
        d.code(yaml.safe_dump(cfg.to_dict(), sort_keys=False), "yaml")
        d.heading(f"{run.name}: training", sub)
        self._training_section(run)
        summaries = {s: load_json(run / "eval" / s / "summary.json") for s in ("Val", "Test")}
        summaries = {k: v for k, v in summaries.items() if v}
        if not summaries:
            d.para(self._not_evaluated(run))
            self._trust_section(run)
            return
        d.heading(f"{run.name}: metrics", sub)
        d.para(
            "Each column is one definition (see the README): per image = mean of each image's score; an image "
            "whose truth and prediction are both empty scores 1 under 'all images'; pooled = one confusion "
            "matrix over every pixel of the split."
        )
        self._metrics_table(run, summaries)
        val = summaries.get("Val") or next(iter(summaries.values()))
        self._group_tables(val)
        d.para(describe_postprocess(val))
        self._lung_section(run, val)
        self._detection_section(run, val)
        self._severity_section(val)
        self._trust_section(run)
        self._figure(
            run / "plots" / f"predictions_{val['split']}.png",
            f"{run.name}-predictions-{val['split']}",
            f"{val['split']} predictions: X-ray, true mask, predicted overlay (truth outline in green)",
        )

    @staticmethod
    def _not_evaluated(run: Path) -> str:
        """What to say of a run without its own Val or Test evaluation, naming the other kinds it has
        (untuned, limited, another checkpoint or data folder), which a report does not show as its
        figures."""
        others = sorted(p.parent.name for p in (run / "eval").glob("*/summary.json"))
        has = ""
        if others:
            names = ", ".join(f"`eval/{o}`" for o in others)
            has = f" It has only evaluations of another kind ({names}: untuned, limited or other data)."
        return f"Not evaluated with its own settings yet.{has} Run `covidseg evaluate {run}` for its metrics."

    def _training_section(self, run: Path) -> None:
        from covidseg.engine.run_folder import read_history

        d = self.doc
        hist_path = run / "history.csv"
        if hist_path.is_file():
            hist = read_history(hist_path)
            total = sum(h["seconds"] for h in hist)
            best = max(hist, key=lambda h: h.get("val_dice_per_image", float("nan")))
            d.para(
                f"{len(hist)} epochs in {total / 60:.1f} minutes of training. Highest Val per-image Dice "
                f"{best['val_dice_per_image']:.4f} at epoch {int(best['epoch'])}; Val pooled Dice then "
                f"{best['val_dice']:.4f}."
            )
        caption = "Loss and Val Dice per epoch (dashed: what predicting nothing scores per image)"
        self._figure(run / "plots" / "curves.png", f"{run.name}-curves", caption)

    def _metrics_table(self, run: Path, summaries: dict[str, dict[str, Any]]) -> None:
        d = self.doc
        header = ["data", "threshold"] + [c for c, _ in INFECTION_COLUMNS] + ["negatives with FP"]
        rows = []
        for split, s in summaries.items():
            d.para(f"{data_label(s, split)}: scored {describe_scoring(s)}.")
            rows.append(
                [data_label(s, split), s["threshold"]]
                + [lookup(s, p) for _, p in INFECTION_COLUMNS]
                + [pct(s.get("negatives_with_false_positives"))]
            )
            cf = lookup(s, ("tuning", "cross_fit", "cross_fitted"))
            if cf and lookup(s, ("tuning", "same_split")):
                rows.append(cross_fitted_row(s, split, cf))
        d.table(header, rows)
        for split, s in summaries.items():
            if s.get("synthetic"):
                self.synthetic.append(f"{run.name} ({split})")
                continue
            self.infection_rows.append(
                [f"covidseg `{run.name}`", data_label(s, split)]
                + [lookup(s, p) for _, p in INFECTION_COLUMNS]
                + [""] * 3
            )

    def _group_tables(self, val: dict[str, Any]) -> None:
        d = self.doc
        split = val["split"]
        groups = val.get("groups", {})
        d.para(f"Per group on {split} (per-image means; pooled Dice over the group's pixels):")
        d.table(
            ["group", "images", "Dice, per image", "IoU, per image", "Dice, pooled", "images with FP pixels"],
            [
                [
                    g,
                    v["images"],
                    v["dice"],
                    v["iou"],
                    lookup(v, ("pooled", "dice")),
                    pct(v.get("negatives_with_false_positives")),
                ]
                for g, v in groups.items()
            ],
        )
        fp = {g: groups[g].get("negatives_with_false_positives") for g in ("Normal", "Non-COVID") if g in groups}
        if fp:
            d.para(
                "False positives on images without infection: "
                + "; ".join(
                    f"{pct(v)} of {g} images have at least one predicted infection pixel" for g, v in fp.items()
                )
                + "."
            )

    def _lung_section(self, run: Path, s: dict[str, Any]) -> None:
        d = self.doc
        split = s["split"]
        if "lung" in s:
            lung = s["lung"]
            d.para(f"Lung segmentation on {split}:")
            d.table(
                ["Dice, per image", "IoU, per image", "Dice, pooled", "IoU, pooled"],
                [
                    [
                        lookup(lung, ("per_image", "dice")),
                        lookup(lung, ("per_image", "iou")),
                        lung["pooled"]["dice"],
                        lung["pooled"]["iou"],
                    ]
                ],
            )
            if not s.get("synthetic"):
                self.lung_rows.append(
                    [f"covidseg `{run.name}`", data_label(s, split), lookup(lung, ("per_image", "dice")),
                     lookup(lung, ("per_image", "iou")), lung["pooled"]["dice"], lung["pooled"]["iou"], "", ""]
                )  # fmt: skip

    def _detection_section(self, run: Path, s: dict[str, Any]) -> None:
        d, split = self.doc, s["split"]
        det = s.get("detection")
        if det:
            d.para(
                f"COVID-19 detection on {split} (the call: {det.get('rule') or call_rule(det['cutoff'])}): "
                f"sensitivity {pct(det['sensitivity'])}, specificity "
                f"{pct(det['specificity'])}, ROC AUC {num(det['roc_auc'])}."
            )
            d.table(
                ["group", "images", "sensitivity", "specificity", "ROC AUC vs COVID-19"],
                [
                    [g, v["images"], pct(v.get("sensitivity")), pct(v.get("specificity")), v.get("roc_auc_vs_covid")]
                    for g, v in det["groups"].items()
                ],
            )
            if not s.get("synthetic"):
                self.detection_rows.append(
                    [f"covidseg `{run.name}`", data_label(s, split), pct(det["sensitivity"]),
                     pct(det["specificity"]), det["roc_auc"], "", ""]
                )  # fmt: skip

    def _severity_section(self, s: dict[str, Any]) -> None:
        d = self.doc
        sev = s.get("severity")
        if sev:
            rule = sev["rule"]
            d.para(
                "Severity: each lung scores 0-4 from its infected share (thresholds "
                f"{', '.join(f'{x:g}%' for x in rule['extent_percent'])}), the total 0-8 gives the grade "
                f"(from {', '.join(f'{x:g}' for x in rule['grade_totals'])}: mild, moderate, severe). "
                "'true' grades the true masks; 'predicted' the model's masks."
            )
            names = rule.get("grade_names", ["none", "mild", "moderate", "severe"])
            rows = []
            for g, v in sev["groups"].items():
                for which in ("true", "predicted"):
                    if which in v:
                        rows.append([g, which, *(v[which][n] for n in names)])
            d.table(["group", "masks", *names], rows)
            agree = sev.get("agreement")
            if agree:
                d.para(f"Predicted vs true grade: {agreement_text(sev.get('agreement_covid'), agree)}.")

    def _trust_section(self, run: Path) -> None:
        """The input check and calibration (``covidseg calibrate``), with the reliability diagrams."""
        r = load_json(run / "calibration.json")
        if r is None:
            return
        d, fit, cf = self.doc, r["fit"], r["cross_fit"]
        kind = "SYNTHETIC " if "synthetic" in r["fitted_on"]["data"] else ""
        d.para(
            f"Calibration, fitted on {kind}{r['fitted_on']['split']} ({r['fitted_on']['images']} images; cross-fitted: "
            "fit on one half, measured on the other, both ways). Expected calibration error (ECE) of the infection "
            "probabilities inside the predicted lungs, and of the COVID-19 probability:"
        )
        check = fit.get("input_check_flagged_share")
        d.table(
            ["", "in-sample", "cross-fitted"],
            [
                ["pixels in the lungs, ECE before", fit["pixel_ece_before"], ""],
                ["pixels in the lungs, ECE after Platt scaling", fit["pixel_ece_after"], cf["pixel_ece_after"]],
                ["COVID-19 probability, ECE", fit["image"]["ece"], cf["image"]["ece"]],
                ["COVID-19 probability, Brier score", fit["image"]["brier"], cf["image"]["brier"]],
            ]
            + (
                [["images the input check flags", pct(check), pct(cf.get("input_check_flagged_share"))]]
                if check is not None
                else []
            ),
        )
        self._figure(run / "plots" / "reliability.png", f"{run.name}-reliability", "Reliability diagrams")

    def add_sweep(self, sweep: Path) -> None:
        from covidseg.leaderboard import leaderboard_rows, sort_rows

        plan = json.loads((sweep / "sweep.json").read_text())
        d = self.doc
        d.heading(f"Sweep {sweep.name}: {plan['spec']}", 2)
        d.para(
            f"Preset `{plan['preset']}`, {len(plan['trials'])} trials varying "
            + ", ".join(f"`{k}`" for k in plan["varied"])
            + ". Metrics are on the whole Val split (a Val limit only shortens the per-epoch validation)."
        )
        if plan.get("scale"):
            d.para(
                f"**Scaled down** ({plan['scale']['rule']}): the settings columns are nominal; the actual epochs, "
                "image size and number of training images are in their own columns. These are not the numbers of "
                "the full settings."
            )
        rows = leaderboard_rows(sweep)
        if not rows:
            d.para("No trial has finished yet.")
            return
        lb = sweep / "leaderboard.csv"
        if lb.is_file():
            name = f"leaderboard-{slug(sweep.name)}.csv"
            shutil.copyfile(lb, self.out / name)
            d.para(f"Full leaderboard: [{name}]({name}).")
        sort_by = plan.get("sort_by", "per_image_dice")
        rows = sort_rows(rows, sort_by)
        cols = (
            ["trial"]
            + plan["varied"]
            + ["actual_epochs", "actual_image_size", "train_images", "best_epoch", "wall_time_s"]
            + ["per_image_dice", "covid_dice", "pooled_dice", "pooled_iou", "pixel_accuracy", "negatives_fp_share"]
        )
        d.table(cols, [[r.get(c) for c in cols] for r in rows], caption=f"Val metrics, sorted by {sort_by}")
        for png in sorted(p for p in (sweep / "plots").glob("*.png") if not p.name.startswith(".")):
            caption = (
                "Val per-image Dice and loss per epoch, all trials overlaid"
                if png.name.startswith("curves")
                else f"{png.stem.replace('_vs_', ' against ')}: mean over the other settings, bars min-max"
            )
            self._figure(png, f"{sweep.name}-{png.stem}", caption)
        best = rows[0]
        if best.get("per_image_dice") is not None:
            d.para(f"Best trial by {sort_by}: `{best['trial']}`.")
            trial = sweep / "trials" / best["trial"]
            self._figure(
                trial / "plots" / "predictions_Val.png", f"{sweep.name}-best-predictions", "Best trial: Val predictions"
            )
            s = load_json(trial / "eval" / "Val" / "summary.json")
            if s and s.get("synthetic"):
                self.synthetic.append(f"sweep {sweep.name}")
            elif s:
                self.infection_rows.append(
                    [
                        f"covidseg sweep `{sweep.name}`, best trial `{best['trial']}`",
                        data_label(s, "Val") + ("; scaled down" if plan.get("scale") else ""),
                    ]
                    + [lookup(s, p) for _, p in INFECTION_COLUMNS]
                    + [""] * 3
                )

    def add_published(self) -> None:
        add_published(self.doc, self.infection_rows, self.lung_rows, self.detection_rows, self.synthetic)


def build_report(inputs: list[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for the given run and sweep folders."""
    out = Path(out_dir)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise CovidsegError("give at least one run or sweep folder")
    for p in paths:
        if not ((p / "sweep.json").is_file() or (p / "config.yaml").is_file()):
            raise CovidsegError(f"{p} is neither a run folder (config.yaml) nor a sweep folder (sweep.json)")
    out.mkdir(parents=True, exist_ok=True)
    b = ReportBuilder(out)
    b.doc.para(
        "Generated by covidseg from: " + ", ".join(f"`{p}`" for p in paths) + ". Metric definitions: README, "
        "section 'Metric definitions'. Numbers on Val were also used to choose epochs and post-processing; the "
        "cross-fitted rows estimate what the tuned settings score on images they were not chosen on, and Test "
        "is the unbiased figure where present."
    )
    for p in paths:
        if (p / "sweep.json").is_file():
            b.add_sweep(p)
        else:
            b.add_run(p)
    b.add_published()
    md, page = out / "report.md", out / "report.html"
    write_atomic(md, b.doc.to_markdown())
    write_atomic(page, b.doc.to_html(out))
    log.debug("wrote %s and %s", md, page)
    return md, page
