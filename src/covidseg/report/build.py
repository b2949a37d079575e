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

from covidseg.config import Config
from covidseg.data.discovery import GROUPS
from covidseg.document import Document, slug
from covidseg.errors import CovidsegError
from covidseg.metrics import lookup

log = logging.getLogger(__name__)

# Published numbers, each with its definition as far as the source states it.
PAPER = "COVID-QU-Ex paper (Tahir et al., Computers in Biology and Medicine 139, 2021)"
LABWORK = "reference labwork (small U-Net, 256x256, 30 epochs)"
QATA = "QaTa-COV19 results (another data set)"
PUBLISHED_NOTES = [
    f"**{PAPER}**: infection IoU 83.05%, Dice 88.21%; lung IoU 96.11%, Dice 97.99%; COVID-19 detection "
    "sensitivity and specificity above 99%. The abstract does not define the metrics; that IoU and Dice are far "
    "apart (a pooled pair would satisfy Dice = 2 IoU / (1 + IoU), 90.7% for IoU 83.05%) implies per-image means. "
    "The images averaged over (COVID-19 only, or all) are not stated.",
    f"**{LABWORK}**: Val pixel accuracy 0.95-0.97, IoU 0.60-0.75, Dice 0.70-0.85; definitions not stated.",
    f"**{QATA}**: on QaTa-COV19 the per-image and pooled Dice of the same predictions differ by about 7 points; "
    "shown only as a reminder that the definition moves the number, not for comparison.",
]

# Column -> (summary.json path): each column holds one definition.
INFECTION_COLUMNS = [
    ("Dice, per image, COVID-19 images", ("per_image_covid", "dice")),
    ("IoU, per image, COVID-19 images", ("per_image_covid", "iou")),
    ("Dice, per image, all images (empty/empty = 1)", ("per_image", "dice")),
    ("IoU, per image, all images (empty/empty = 1)", ("per_image", "iou")),
    ("Dice, pooled pixels", ("pooled", "dice")),
    ("IoU, pooled pixels", ("pooled", "iou")),
    ("pixel accuracy, pooled", ("pooled", "pixel_accuracy")),
]
NOT_STATED = ["Dice, definition not stated", "IoU, definition not stated", "pixel accuracy, definition not stated"]


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def data_label(s: dict[str, Any], split: str) -> str:
    """What a summary was measured on, naming synthetic data as such."""
    kind = "SYNTHETIC (covidseg synth, not X-rays)" if s.get("synthetic") else "COVID-QU-Ex"
    return f"{kind} {split} ({s['images']} images)"


def describe_scoring(s: dict[str, Any]) -> str:
    """Where a summary was scored, in words."""
    if s.get("scored_at") == "native":
        sizes = ", ".join(f"{k}: {v}" for k, v in (s.get("sizes") or {}).items())
        return f"masks as `predict` writes them, at each X-ray's own size ({sizes}), against the original mask files"
    if s.get("scored_at") == "input":
        return f"at the network's input size ({s.get('image_size')}x{s.get('image_size')}), against shrunk masks"
    return "at the network's input size (an older summary; evaluate again to score at native size)"


def trained_precision(run: Path, cfg: Config) -> str:
    """The precision the run trained in (``env.json``; for runs before it was recorded, derived
    from the CPU flags it recorded), not the one its config asked for."""
    try:
        env = json.loads((run / "env.json").read_text())
    except (OSError, ValueError):
        return f"{cfg.train.amp} (asked; env.json unreadable)"
    if env.get("precision"):
        return env["precision"]
    amp, device = cfg.train.amp, env.get("device", "cpu")
    if amp == "off" or (device == "cpu" and (amp == "auto" or not (env.get("cpu") or {}).get("native_bf16"))):
        return "fp32"
    return amp


def describe_method(cfg: Config, precision: str | None = None) -> str:
    """The resolved config in words."""
    d, m, lo, a, o, t = cfg.data, cfg.model, cfg.loss, cfg.augment, cfg.optim, cfg.train
    if m.name == "unet":
        c = m.base_channels
        net = f"the reference U-Net (encoder {c}/{2 * c}/{4 * c} filters, bottleneck {8 * c}, skip concatenation)"
    else:
        weights = "ImageNet-pretrained" if m.encoder_weights else "randomly initialised"
        net = f"segmentation-models-pytorch {m.name.removeprefix('smp-')} with a {weights} {m.encoder_name} encoder"
    outputs = " and ".join(m.target_list)
    loss = {
        "bce": "binary cross-entropy",
        "dice": "soft Dice" + (" per image" if lo.dice_per_image else " over the batch"),
        "bce_dice": f"{lo.bce_weight:g} x BCE + {1 - lo.bce_weight:g} x soft Dice"
        + (" per image" if lo.dice_per_image else ""),
        "focal": f"focal loss (gamma {lo.focal_gamma:g})",
        "tversky": f"Tversky loss (alpha {lo.tversky_alpha:g}, beta {lo.tversky_beta:g})",
    }[lo.name]
    aug = "no augmentation" if a.name == "none" else f"'{a.name}' augmentation (strength {a.strength:g})"
    sched = {"constant": "a constant learning rate", "cosine": "cosine decay with warm-up", "onecycle": "one-cycle"}
    limits = ""
    if d.train_limit or d.val_limit:
        limits = f" Subsets: at most {d.train_limit or 'all'} Train and {d.val_limit or 'all'} Val images."
    return (
        f"Images are converted to gray, resized to {d.image_size}x{d.image_size} (bilinear) and scaled to [0, 1]; "
        f"masks are resized with nearest neighbour and binarised at > 127. The network is {net}, with one output "
        f"channel per target ({outputs}). Loss: {loss}. Optimiser: {o.name} with learning rate {o.lr:g} and "
        f"{sched[o.schedule]}, weight decay {o.weight_decay:g}; batch {t.batch_size}, {t.epochs} epochs, {aug}; "
        f"precision {precision or t.amp}. The best epoch is chosen by {t.select_metric}"
        + (f" smoothed by an EMA of {t.select_smoothing:g}" if t.select_smoothing else "")
        + f"; a pixel is infection when its probability exceeds {cfg.eval.threshold:g} unless tuned."
        + limits
    )


def _run_name(run: Path) -> str:
    """The run folder's name, with its parent's where the folder is just called ``run``."""
    return f"{run.resolve().parent.name}/{run.name}" if run.name == "run" else run.name


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
            splits = _load_json(run / "splits.json") or {}
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
        from covidseg.engine.fit import load_run_config
        from covidseg.engine.history import read_history

        cfg = load_run_config(run)
        d = self.doc
        d.heading(title or f"Run {_run_name(run)}", level)
        sub = level + 1
        d.heading(f"{run.name}: data set", sub)
        self._data_section(run, cfg)
        d.heading(f"{run.name}: method", sub)
        d.para(describe_method(cfg, trained_precision(run, cfg)) + f" Preset: `{cfg.preset}`.")
        d.code(yaml.safe_dump(cfg.to_dict(), sort_keys=False), "yaml")
        d.heading(f"{run.name}: training", sub)
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
        summaries = {s: _load_json(run / "eval" / s / "summary.json") for s in ("Val", "Test")}
        summaries = {k: v for k, v in summaries.items() if v}
        if not summaries:
            d.para(f"Not evaluated yet: run `covidseg evaluate {run}` for the metrics.")
            return
        d.heading(f"{run.name}: metrics", sub)
        d.para(
            "Each column is one definition (see the README): per image = mean of each image's score; an image "
            "whose truth and prediction are both empty scores 1 under 'all images'; pooled = one confusion "
            "matrix over every pixel of the split."
        )
        header = ["data", "threshold"] + [c for c, _ in INFECTION_COLUMNS] + ["negatives with FP"]
        rows = []
        for split, s in summaries.items():
            d.para(f"{data_label(s, split)}: scored {describe_scoring(s)}.")
            rows.append(
                [data_label(s, split), s["threshold"]]
                + [lookup(s, p) for _, p in INFECTION_COLUMNS]
                + [_pct(s.get("negatives_with_false_positives"))]
            )
            cf = lookup(s, ("tuning", "cross_fit", "cross_fitted"))
            if cf and lookup(s, ("tuning", "same_split")):
                rows.append(_cross_fitted_row(s, split, cf))
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
        val = summaries.get("Val") or next(iter(summaries.values()))
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
                    _pct(v.get("negatives_with_false_positives")),
                ]
                for g, v in groups.items()
            ],
        )
        fp = {g: groups[g].get("negatives_with_false_positives") for g in ("Normal", "Non-COVID") if g in groups}
        if fp:
            d.para(
                "False positives on images without infection: "
                + "; ".join(
                    f"{_pct(v)} of {g} images have at least one predicted infection pixel" for g, v in fp.items()
                )
                + "."
            )
        d.para(describe_postprocess(val))
        self._run_extras(run, val)

    def _run_extras(self, run: Path, s: dict[str, Any]) -> None:
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
        det = s.get("detection")
        if det:
            d.para(
                f"COVID-19 detection on {split} (an image is called COVID-19 when its infection mask covers more "
                f"than {100 * det['cutoff']:.3f}% of it): sensitivity {_pct(det['sensitivity'])}, specificity "
                f"{_pct(det['specificity'])}, ROC AUC {_num(det['roc_auc'])}."
            )
            d.table(
                ["group", "images", "sensitivity", "specificity", "ROC AUC vs COVID-19"],
                [
                    [g, v["images"], _pct(v.get("sensitivity")), _pct(v.get("specificity")), v.get("roc_auc_vs_covid")]
                    for g, v in det["groups"].items()
                ],
            )
            if not s.get("synthetic"):
                self.detection_rows.append(
                    [f"covidseg `{run.name}`", data_label(s, split), _pct(det["sensitivity"]),
                     _pct(det["specificity"]), det["roc_auc"], "", ""]
                )  # fmt: skip
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
                d.para(
                    f"Predicted vs true grade: {_pct(agree['grade_accuracy'])} equal, "
                    f"{_pct(agree['grade_within_one'])} within one grade; infected share of the lung off by "
                    f"{agree['infected_share_mae_points']:.2f} percentage points on average."
                )
        self._figure(
            run / "plots" / f"predictions_{split}.png",
            f"{run.name}-predictions-{split}",
            f"{split} predictions: X-ray, true mask, predicted overlay (truth outline in green)",
        )

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
        for png in sorted((sweep / "plots").glob("*.png")):
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
            s = _load_json(trial / "eval" / "Val" / "summary.json")
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
        d = self.doc
        d.heading("Comparison with published results", 2)
        if self.synthetic:
            d.para(
                "Left out of this comparison, because they were measured on SYNTHETIC data (a test fixture, not "
                "X-rays): " + ", ".join(f"`{x}`" for x in self.synthetic) + "."
            )
        if not (self.infection_rows or self.lung_rows or self.detection_rows):
            d.para("No result in this report was measured on real X-rays, so there is nothing to compare.")
            return
        d.para(
            "Each column holds one metric definition; a source appears only under the definitions it states. "
            "Published numbers come from other splits (the paper reports its Test split), so they place covidseg, "
            "they do not rank it."
        )
        d.items(PUBLISHED_NOTES)
        inf = self.infection_rows + [
            [PAPER, "COVID-QU-Ex Test (infection)"] + [""] * len(INFECTION_COLUMNS) + ["88.21%", "83.05%", ""],
            [LABWORK, "COVID-QU-Ex Val"] + [""] * len(INFECTION_COLUMNS) + ["0.70-0.85", "0.60-0.75", "0.95-0.97"],
            [QATA, "QaTa-COV19 (not comparable)"]
            + [""] * len(INFECTION_COLUMNS)
            + ["per image vs pooled: ~7 points apart", "", ""],
        ]
        d.table(["source", "data"] + [c for c, _ in INFECTION_COLUMNS] + NOT_STATED, inf, caption="Infection")
        lung = self.lung_rows + [[PAPER, "COVID-QU-Ex Test (lung)", "", "", "", "", "97.99%", "96.11%"]]
        d.table(
            ["source", "data", "Dice, per image", "IoU, per image", "Dice, pooled", "IoU, pooled"] + NOT_STATED[:2],
            lung,
            caption="Lungs",
        )
        det = self.detection_rows + [[PAPER, "COVID-QU-Ex Test", "", "", "", "> 99%", "> 99%"]]
        d.table(
            ["source", "data", "sensitivity (image-level call)", "specificity (image-level call)", "ROC AUC",
             "sensitivity, definition not stated", "specificity, definition not stated"],
            det,
            caption="COVID-19 detection",
        )  # fmt: skip


def _cross_fitted_row(s: dict[str, Any], split: str, cf: dict[str, Any]) -> list[Any]:
    """The tuned settings' cross-fitted estimate, in the columns it has (per-image and pooled Dice)."""
    have = {
        ("per_image_covid", "dice"): "per_image_covid",
        ("per_image", "dice"): "per_image",
        ("pooled", "dice"): "pooled",
    }
    cells = [cf.get(have[p]) if p in have else "" for _, p in INFECTION_COLUMNS]
    label = f"{data_label(s, split)}, tuned settings cross-fitted (chosen on one half, scored on the other)"
    return [label, ""] + cells + [_pct(cf.get("negatives_with_false_positives"))]


def describe_postprocess(s: dict[str, Any]) -> str:
    """The post-processing a summary applied, in words."""
    post = s.get("postprocess") or {}
    share = post.get("min_component_share") or 0.0
    tuning = s.get("tuning") or {}
    where = (tuning.get("tuned_on") or {}).get("split")
    return (
        f"Post-processing applied: threshold {post.get('threshold')}, "
        f"flip TTA {'on' if post.get('tta_hflip') else 'off'}, lung gate {'on' if post.get('lung_gate') else 'off'}, "
        f"image gate {post.get('image_gate') or 'off'}, "
        f"components under {100 * share:.3g}% of the image removed ({round(share * 65536)} px of 256x256), "
        f"holes {'filled' if post.get('fill_holes') else 'kept'}"
        + (f" (tuned on {where} for {tuning.get('tuned_for')} Dice)." if where else " (not tuned).")
    )


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
    md.write_text(b.doc.to_markdown())
    page.write_text(b.doc.to_html(out))
    log.debug("wrote %s and %s", md, page)
    return md, page
