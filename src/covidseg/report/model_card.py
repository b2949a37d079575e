"""A bundle's model card (``MODEL_CARD.md``) from the run folder it was exported from.

``python -m covidseg.report.model_card RUN BUNDLE --name NAME [--speed FILE] [--ood FILE]`` writes
``BUNDLE/MODEL_CARD.md``: data and split, the training command, seed, CPU and time, the file
hashes, every Val figure the run's evaluations hold (native resolution; untuned, tuned in-sample,
tuned cross-fitted; the bundle's stored precision against fp32), lung, detection and severity
figures, the input check and calibration (``BUNDLE/calibration.json``), speed, intended use and
known failure modes. The figures are read, never typed: the
evaluations it reads are ``RUN/eval/Val-untuned/summary.json`` (``evaluate --no-postprocess``;
``RUN/eval/Val/summary_untuned.json`` in runs scored before that folder existed),
``RUN/eval/Val/summary.json`` (tuned), ``RUN/postprocess.json`` (cross-fitting) and
``RUN/eval/Val-<bundle>/summary.json`` (``evaluate --bundle``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from covidseg.atomic import write_atomic
from covidseg.errors import CovidsegError
from covidseg.evaluation import eval_name
from covidseg.inference.builtin import sha256
from covidseg.inference.postprocess import Postprocess
from covidseg.report.describe import agreement_text

TITLE = "COVID-19 infection and lung segmentation on frontal chest X-rays"


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CovidsegError(f"{path} is missing; scripts/build_builtin_model.sh makes every file a card reads")
    return json.loads(path.read_text())


def _row(label: str, s: dict[str, Any]) -> str:
    fp = s.get("negatives_with_false_positives")
    fp_text = f"{100 * fp:.1f}%" if fp is not None else "n/a"
    return (
        f"| {label} | {s['per_image_covid']['dice']:.3f} | {s['per_image']['dice']:.3f} | "
        f"{s['pooled']['dice']:.3f} | {s['per_image_covid']['iou']:.3f} | {fp_text} |"
    )


def _cf_row(label: str, c: dict[str, Any]) -> str:
    fp = c["negatives_with_false_positives"]
    return f"| {label} | {c['per_image_covid']:.3f} | {c['per_image']:.3f} | {c['pooled']:.3f} | - | {100 * fp:.1f}% |"


def figures(run: Path, bundle: Path) -> str:
    """The Val tables of the card."""
    untuned_path = run / "eval" / eval_name("Val", postprocess=False) / "summary.json"
    if not untuned_path.is_file() and (run / "eval" / "Val" / "summary_untuned.json").is_file():
        untuned_path = run / "eval" / "Val" / "summary_untuned.json"  # a run scored before Val-untuned/
    untuned = _load(untuned_path)
    tuned = _load(run / "eval" / eval_name("Val") / "summary.json")
    shipped = _load(run / "eval" / eval_name("Val", bundle) / "summary.json")
    if any(s.get("synthetic") for s in (untuned, tuned, shipped)):
        raise CovidsegError(
            f"{run} was scored on covidseg's synthetic set (a test fixture, not X-rays): "
            "a model card describes a model of COVID-QU-Ex X-rays"
        )
    cf = _load(run / "postprocess.json")["cross_fit"]
    config = json.loads((bundle / "config.json").read_text())
    precision = config.get("weights_precision", "fp32")
    for s in (untuned, tuned, shipped):
        if s.get("scored_at") != "native":
            raise CovidsegError("the card reports figures at native resolution; evaluate without --scored-at input")
    lines = [
        f"COVID-QU-Ex Val, {tuned['images']} X-rays ({tuned['per_image_covid']['images']} COVID-19), scored at each "
        "X-ray's own size against the original mask files, after the post-processing `predict` applies. "
        "Definitions: **COVID-19 Dice** = mean per-image Dice over COVID-19 X-rays; **all-image Dice** = mean "
        "per-image Dice over all X-rays, an X-ray with empty truth and empty prediction scoring 1; **pooled** = "
        "one Dice over all pixels of the split; **FP on negatives** = share of Normal and Non-COVID X-rays with "
        "any infection pixel.",
        "",
        "| model and settings | COVID-19 Dice | all-image Dice | pooled Dice | COVID-19 IoU | FP on negatives |",
        "|---|---:|---:|---:|---:|---:|",
        _row("fp32, threshold 0.5, no post-processing", untuned),
        _row("fp32, tuned on Val (in-sample)", tuned),
        _cf_row("fp32, tuned, **cross-fitted** (two halves of Val)", cf["cross_fitted"]),
        _row(f"**shipped bundle ({precision} weights, onnxruntime), tuned in-sample**", shipped),
        "",
        f"The shipped weights move per-image Dice by {shipped['per_image']['dice'] - tuned['per_image']['dice']:+.4f} "
        f"(all images) and {shipped['per_image_covid']['dice'] - tuned['per_image_covid']['dice']:+.4f} (COVID-19) "
        "against fp32.",
    ]
    lung, det, sev = shipped.get("lung"), shipped.get("detection"), shipped.get("severity", {}).get("agreement")
    if lung:
        lines += [
            "",
            f"**Lungs** (shipped): Dice {lung['per_image']['dice']:.3f} per image, "
            f"{lung['pooled']['dice']:.3f} pooled.",
        ]
    if det:
        cfd = cf["cross_fitted"]["detection"]
        lines += [
            "",
            f"**COVID-19 call** ({shipped_rule(config)}; shipped, in-sample): "
            f"sensitivity {det['sensitivity']:.3f}, specificity {det['specificity']:.3f} "
            f"(Normal {det['groups']['Normal']['specificity']:.3f}, "
            f"Non-COVID {det['groups']['Non-COVID']['specificity']:.3f}), "
            f"ROC AUC {det['roc_auc']:.3f}; cross-fitted: sensitivity {cfd['sensitivity']:.3f}, "
            f"specificity {cfd['specificity']:.3f}.",
        ]
    if sev:
        covid = shipped["severity"].get("agreement_covid")
        lines += ["", f"**Severity grade** (shipped): {agreement_text(covid, sev)}."]
    return "\n".join(lines)


def _training(run: Path) -> str:
    env = _load(run / "env.json")
    cfg = re.sub(r"(?m)^(  root: ).*$", r"\1DATA", (run / "config.yaml").read_text())
    hist = (run / "history.csv").read_text().strip().splitlines()
    budget = _load(run / "budget.json") if (run / "budget.json").is_file() else {}
    cmd = " ".join(["covidseg", *_placeholders(env["command"][1:])])
    cpu = env.get("cpu", {})
    lines = [
        f"- Command: `{cmd}` (seed {env['seed']}); then `covidseg tune RUN --metric balanced`, "
        "`covidseg export RUN --out BUNDLE --precision fp16 --onnx-only`; the whole recipe is "
        "`scripts/build_builtin_model.sh`.",
        f"- Trained on {cpu.get('model', 'a CPU')} ({cpu.get('summary', '')}), "
        f"{len(hist) - 1} epochs, {budget.get('steps', '?')} steps in {budget.get('elapsed', 0) / 60:.0f} minutes "
        + (
            f"(time budget {budget['seconds'] / 60:.0f} minutes)."
            if budget.get("seconds")
            else "(a fixed number of steps: on the same CPU the same weights, bit for bit, whatever the load)."
        ),
        f"- Software: {', '.join(f'{k} {v}' for k, v in env['packages'].items())}.",
        "",
        "<details><summary>Full training configuration (config.yaml)</summary>",
        "",
        "```yaml",
        cfg.strip(),
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines)


def _placeholders(argv: list[str]) -> list[str]:
    """The recorded command with this machine's paths as DATA and RUN."""
    out, names = [], {"--data": "DATA", "--out": "RUN", "-o": "RUN"}
    for prev, arg in zip([""] + argv, argv):
        out.append(names.get(prev, arg))
    return out


TASK = (
    "infection mask, lung mask, infected share of each lung, severity grade, image-level COVID-19 call and its "
    "calibrated probability, an input check (is this a frontal chest X-ray?)"
)


def trust(bundle: Path, ood: str = "") -> str:
    """The input check and calibration section, from the bundle's calibration.json (and the
    out-of-distribution table of ``benchmarks/ood.py``)."""
    path = bundle / "calibration.json"
    if not path.is_file():
        return "Not calibrated: no input check, no calibrated probabilities (`covidseg calibrate`)."
    r = json.loads(path.read_text())
    fit, cf = r["fit"], r["cross_fit"]
    n = r["fitted_on"]["images"]
    lines = [
        f"Fitted by `covidseg calibrate` (input check on Train, calibrations on {r['fitted_on']['split']}, "
        f"{n} images); cross-fitted: fit on one half of Val, measured on the other, both ways.",
        "",
        "| | in-sample | cross-fitted |",
        "|---|---:|---:|",
        f"| infection pixels in the predicted lungs, ECE before | {fit['pixel_ece_before']:.4f} | |",
        f"| infection pixels in the predicted lungs, ECE after Platt scaling | {fit['pixel_ece_after']:.4f} | "
        f"{cf['pixel_ece_after']:.4f} |",
        f"| COVID-19 probability, ECE (10 bins) | {fit['image']['ece']:.4f} | {cf['image']['ece']:.4f} |",
        f"| COVID-19 probability, Brier score | {fit['image']['brier']:.4f} | {cf['image']['brier']:.4f} |",
    ]
    if fit.get("input_check_flagged_share") is not None:
        lines.append(
            f"| Val X-rays the input check flags | {100 * fit['input_check_flagged_share']:.1f}% | "
            f"{100 * cf['input_check_flagged_share']:.1f}% |"
        )
    lines += ["", f"The tuned threshold {r['threshold']:.4g} is {r['threshold_calibrated']:.4g} in calibrated units;"
              " the masks are the same with and without calibration."]  # fmt: skip
    if ood:
        lines += ["", ood.strip()]
    return "\n".join(lines)


def _outputs(outputs: list[str]) -> str:
    maps = [o for o in outputs if o != "covid"]
    text = f"{len(maps)} output{'s' if len(maps) > 1 else ''} ({' + '.join(maps)})"
    head = " and an image-level COVID-19 head on the encoder (it decides the image gate)"
    return text + (head if "covid" in outputs else "")


def shipped_rule(config: dict[str, Any]) -> str:
    """The COVID-19 call a bundle's settings make, in words (its ``config.json``)."""
    return Postprocess.from_dict(config["postprocess"], "the bundle's config.json").call_rule(config["outputs"])


def _call_rule(config: dict[str, Any]) -> str:
    if config["postprocess"]["image_gate"] <= 0:
        return "The COVID-19 call is a cutoff on the infected share"
    score = "the image head's probability" if "covid" in config["outputs"] else "the highest infection probability"
    return (
        f"The COVID-19 call needs both {score} above its gate (else the mask is emptied) and the infected "
        "share above its cutoff"
    )


def write_card(run: Path, bundle: Path, name: str, speed: str = "", ood: str = "") -> Path:
    cfg = json.loads((bundle / "config.json").read_text())
    meta = json.loads((bundle / "metadata.json").read_text())
    files = sorted(f for f in bundle.iterdir() if f.is_file() and f.name != "MODEL_CARD.md")
    spec = cfg["model_spec"]
    encoder = spec.get("encoder_name", "reference encoder")
    arch = f"{spec.get('name')} ({encoder}), {meta['parameters'] / 1e6:.1f} M parameters"
    size = cfg["preprocessing"]["image_size"]
    text = (
        f"""# {name}: {TITLE}

covidseg's built-in model: `covidseg predict XRAY --out DIR`, `covidseg serve`, or in Python
`covidseg.load_model().predict("xray.png")`. **For research and teaching, not for diagnosis.**

| | |
|---|---|
| task | {TASK} |
| network | {arch}, {_outputs(cfg["outputs"])}, trained from scratch |
| input | gray, {size}x{size}, bilinear, scaled to [0, 1]; masks come back at the X-ray's own size |
| weights | {cfg.get("weights_precision", "fp32")} in `model.onnx` (onnxruntime runs float32) |
| post-processing | {json.dumps(cfg["postprocess"])} (tuned on Val for the balanced Dice) |

## Data

COVID-QU-Ex "Infection Segmentation Data" (Qatar University; A. M. Tahir et al., Computers in
Biology and Medicine 139, 2021; CC BY-SA 4.0, DOI 10.34740/kaggle/dsv/3122958): trained on its
Train split (3,728 X-rays: 1,864 COVID-19, 932 Non-COVID, 932 Normal), the epoch chosen and the
post-processing tuned on its Val split (932 X-rays). Its Test split was not used.

## Training

{_training(run)}

## Val figures

{figures(run, bundle)}

Published reference (Tahir et al. 2021, Test split, their own networks at 256x256): infection
IoU 83.05% / Dice 88.21%, lung IoU 96.11% / Dice 97.99%, under their own definition; not directly
comparable with the figures above.

## Input check and calibration

{trust(bundle, ood)}

## Speed

{speed or "Not measured."}

## Intended use and known failure modes

- Intended: research and teaching on frontal (PA/AP) adult chest X-rays; trying covidseg before
  training your own model. Not a medical device; not for diagnosis or triage.
- Trained on one public dataset of 256x256 PNGs from a few sources; X-rays from other hospitals,
  devices or processing will score lower, by an unknown amount.
- The input check (above) flags inputs unlike the training X-rays, but it was measured only on
  the families listed; a lateral view, a child's X-ray or an X-ray from another hospital may pass
  it, and a flagged image still gets masks (marked). Masks of a flagged image mean little.
- Other lung diseases (Non-COVID in the data: pneumonia and others) are often marked as
  infection: see the specificity on Non-COVID above.
- Small or faint infections are missed more often than large ones; the infected share and the
  severity grade inherit the mask's errors.
- {_call_rule(cfg)}; the COVID-19 probability beside it is calibrated on Val X-rays
  of this dataset and means less on others.

## Files

| file | bytes | SHA-256 |
|---|---:|---|
"""
        + "\n".join(f"| `{f.name}` | {f.stat().st_size:,} | `{sha256(f)}` |" for f in files)
        + "\n"
    )
    out = bundle / "MODEL_CARD.md"
    write_atomic(out, text)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="write BUNDLE/MODEL_CARD.md from the run it was exported from")
    p.add_argument("run")
    p.add_argument("bundle")
    p.add_argument("--name", required=True)
    p.add_argument("--speed", help="a text file with the speed section (Markdown)")
    p.add_argument("--ood", help="a text file with the input check's table (benchmarks/ood.py --markdown)")
    a = p.parse_args(argv)
    try:
        speed = Path(a.speed).read_text() if a.speed else ""
        ood = Path(a.ood).read_text() if a.ood else ""
        print(write_card(Path(a.run), Path(a.bundle), a.name, speed, ood))
    except (CovidsegError, OSError, ValueError) as e:
        raise SystemExit(f"model_card: {e}") from None


if __name__ == "__main__":
    main()
