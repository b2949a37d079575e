"""Feeds a few hundred generated bad inputs and faults through the ``covidseg`` command line.

Every case runs ``covidseg.cli.main(argv)`` (what the ``covidseg`` command runs) in this process
and is judged by what a user sees:

- **traceback**: an exception escaped the command (a user would see a traceback), or the exit
  code is neither 0 nor 2; target 0;
- **silent acceptance**: an invalid value or file was accepted (exit 0); target 0;
- **lost file**: a file that existed before the command is changed or gone; target 0;
- otherwise the case ended as it should: a result, or one line ``covidseg: error: ...`` and exit 2.

Families: broken and odd images and DICOMs (``predict``), invalid ``--set`` values (``train``),
invalid flags (every command), tampered bundles, tampered run folders, malformed sweep specs,
and commands that could destroy data. It needs only this checkout: the model is the built-in
one and the data covidseg's synthetic set (SYNTHETIC, a test fixture).

    python benchmarks/fuzz.py             # all families, a summary table
    python benchmarks/fuzz.py --verbose   # and every case that did not end as it should
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from covidseg.cli import main as cli
from covidseg.config import Config, valid_keys
from covidseg.data.synthetic import write_dicom
from covidseg.inference.builtin import builtin_path

EXAMPLE = Path(__file__).parents[1] / "src" / "covidseg" / "examples" / "covid-19.png"


@dataclass
class Case:
    family: str
    name: str
    argv: list[str]
    expect: str = "error"  # "error": must be refused; "either": a result or a clear error
    keep: list[Path] = field(default_factory=list)  # files that must survive unchanged


@dataclass
class Outcome:
    case: Case
    code: int | None
    message: str
    verdict: str


def _digest(paths: list[Path]) -> dict[Path, str | None]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in paths}


def run_case(case: Case) -> Outcome:
    before = _digest(case.keep)
    err = io.StringIO()
    code: int | None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli(case.argv)
    except SystemExit as exc:  # argparse: exit 2 with a usage line
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - what a user would see as a traceback
        return Outcome(case, None, f"{type(exc).__name__}: {str(exc)[:200]}", "traceback")
    message = err.getvalue().strip().splitlines()[-1:] or [""]
    if code not in (0, 2):
        return Outcome(case, code, message[0], "traceback")
    if any(_digest(case.keep)[p] != h for p, h in before.items()):
        return Outcome(case, code, message[0], "lost file")
    if code == 0 and case.expect == "error":
        return Outcome(case, code, message[0], "silent acceptance")
    return Outcome(case, code, message[0], "ok")


# ---------------------------------------------------------------------------------------------
# Generators: each returns cases for one family, writing its files under ``tmp``.


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    chunks = [(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks
    )


def image_cases(tmp: Path) -> list[Case]:
    d = tmp / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    png = EXAMPLE.read_bytes()
    buf = io.BytesIO()
    Image.open(EXAMPLE).convert("L").save(buf, format="JPEG")
    jpeg = buf.getvalue()
    files: dict[str, tuple[bytes | None, str]] = {}
    for n in (0, 1, 7, 100, 5000):
        files[f"random-{n}.png"] = (rng.integers(0, 256, n, dtype=np.uint8).tobytes(), "error")
    for cut in (8, 20, 33, 100, 1000, len(png) // 2, len(png) - 20):
        files[f"png-cut-{cut}.png"] = (png[:cut], "either")
    for cut in (2, 50, 500, len(jpeg) // 2):
        files[f"jpeg-cut-{cut}.jpg"] = (jpeg[:cut], "either")
    for w, h in ((40000, 40000), (100000, 1), (2**31 - 1, 2**31 - 1), (0, 0), (1, 0)):
        files[f"claims-{w}x{h}.png"] = (_png_claiming(w, h), "error")
    files["text.png"] = (b"hello, not an image\n", "error")
    files["html.jpg"] = (b"<html><script>alert(1)</script></html>", "error")
    files["zip.tiff"] = (b"PK\x03\x04" + bytes(100), "error")
    gray = np.asarray(Image.open(EXAMPLE).convert("L"))
    for mode in ("1", "L", "P", "RGB", "RGBA", "LA", "I", "F", "I;16"):
        out = io.BytesIO()
        img = Image.fromarray(gray).convert(mode) if mode != "I;16" else Image.fromarray(gray.astype(np.uint16) * 200)
        tiff = mode in ("F", "I")
        img.save(out, format="TIFF" if tiff else "PNG")
        files[f"mode-{mode.replace(';', '')}.{'tif' if tiff else 'png'}"] = (out.getvalue(), "either")
    for shape in ((1, 1), (1, 3000), (3000, 1), (2, 2)):
        out = io.BytesIO()
        Image.fromarray(np.full(shape, 128, np.uint8)).save(out, format="PNG")
        files[f"tiny-{shape[0]}x{shape[1]}.png"] = (out.getvalue(), "either")
    for name, (data, _) in files.items():
        (d / name).write_bytes(data or b"")
    stored = np.tile(np.linspace(0, 4000, 64).astype(np.uint16), (64, 1))
    dicoms = {
        "ok.dcm": ({}, "either"),
        "ww0.dcm": ({"WindowCenter": 1000, "WindowWidth": 0}, "either"),
        "ww-neg.dcm": ({"WindowCenter": 1000, "WindowWidth": -5}, "either"),
        "slope0.dcm": ({"RescaleSlope": 0, "RescaleIntercept": 0}, "either"),
        "mono1.dcm": ({"PhotometricInterpretation": "MONOCHROME1"}, "either"),
        "rows-lie.dcm": ({"Rows": 6000}, "error"),
        "bits-lie.dcm": ({"BitsAllocated": 32}, "error"),
        "frames-lie.dcm": ({"NumberOfFrames": 1000}, "error"),
    }
    for name, (tags, _) in dicoms.items():
        write_dicom(d / name, stored, **tags)
    (d / "truncated.dcm").write_bytes((d / "ok.dcm").read_bytes()[:300])
    (d / "marker-only.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (d / "dir.png").mkdir()
    cases = []
    for name, (_, expect) in {**files, **dicoms, "truncated.dcm": (b"", "error")}.items():
        out = tmp / "out" / name
        cases.append(Case("images (predict)", name, ["predict", str(d / name), "--out", str(out)], expect))
    cases.append(
        Case("images (predict)", "marker-only.dcm", ["predict", str(d / "marker-only.dcm"), "--out", str(tmp / "o1")])
    )
    cases.append(
        Case("images (predict)", "a folder named .png", ["predict", str(d / "dir.png"), "--out", str(tmp / "o2")])
    )
    odd = tmp / "odd-names"
    odd.mkdir()
    shutil.copy(EXAMPLE, os.path.join(os.fsencode(odd), b"caf\xe9-\xff.png"))
    cases.append(
        Case("images (predict)", "non-UTF-8 file name", ["predict", str(odd), "--out", str(tmp / "o3")], "either")
    )
    cases.append(
        Case(
            "images (predict)",
            "whole folder, good and bad mixed",
            ["predict", str(d), "--out", str(tmp / "o4")],
            "either",
        )
    )
    return cases


def _numeric_keys() -> list[tuple[str, type]]:
    import dataclasses
    import typing

    out = []
    for section in ("data", "model", "loss", "augment", "optim", "train", "eval"):
        cls = typing.get_type_hints(Config)[section]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            args = set(typing.get_args(hints[f.name])) or {hints[f.name]}
            if (int in args or float in args) and bool not in args:
                out.append((f"{section}.{f.name}", float if float in args else int))
    return out


def set_cases(tmp: Path, data: Path) -> list[Case]:
    cases = []
    assert set(k for k, _ in _numeric_keys()) <= set(valid_keys())
    for key, kind in _numeric_keys():
        values = ["nan", "inf", "-inf", "abc", "[1]"] + (["2.5", str(2**40)] if kind is int else [])
        if key == "eval.empty_empty":
            values = ["inf", "-inf", "abc", "[1]"]  # nan is meaningful there
        for v in values:
            out = tmp / "runs" / f"{key}={v}"
            argv = ["train", "--data", str(data), "--out", str(out), "--set", f"{key}={v}", "--epochs", "1"]
            cases.append(Case("--set values (train)", f"{key}={v}", argv + ["--time-budget", "2s"]))
    for key in ("nonsense", "train.nonsense", "model", "data.image_size.x"):
        cases.append(
            Case(
                "--set values (train)",
                f"unknown {key}",
                ["train", "--data", str(data), "--out", str(tmp / "u"), "--set", f"{key}=1"],
            )
        )
    return cases


def flag_cases(tmp: Path, data: Path, run: Path) -> list[Case]:
    x = str(EXAMPLE)
    o = str(tmp / "flags-out")
    cmds = {
        "predict --threshold 1.5": ["predict", x, "--out", o, "--threshold", "1.5"],
        "predict --threshold 0": ["predict", x, "--out", o, "--threshold", "0"],
        "predict --threshold -1": ["predict", x, "--out", o, "--threshold", "-1"],
        "predict --threshold nan": ["predict", x, "--out", o, "--threshold", "nan"],
        "predict --threshold inf": ["predict", x, "--out", o, "--threshold", "inf"],
        "predict --threshold abc": ["predict", x, "--out", o, "--threshold", "abc"],
        "predict --max-pixels 0": ["predict", x, "--out", o, "--max-pixels", "0"],
        "predict --max-pixels -5": ["predict", x, "--out", o, "--max-pixels", "-5"],
        "predict --max-pixels 100": ["predict", x, "--out", o, "--max-pixels", "100"],
        "predict --device bogus": ["predict", str(run), x, "--out", o, "--device", "bogus"],
        "predict --model nowhere": ["predict", x, "--out", o, "--model", str(tmp / "nowhere")],
        "predict three paths": ["predict", x, x, x, "--out", o],
        "predict model twice": ["predict", str(run), x, "--out", o, "--model", str(run)],
        "predict --engine onnx on a run": ["predict", str(run), x, "--out", o, "--engine", "onnx"],
        "predict missing input": ["predict", str(tmp / "missing.png"), "--out", o],
        "predict --out /proc": ["predict", x, "--out", "/proc/covidseg-out"],
        "evaluate --batch-size 0": ["evaluate", str(run), "--batch-size", "0"],
        "evaluate --batch-size -1": ["evaluate", str(run), "--batch-size", "-1"],
        "evaluate --split Nope": ["evaluate", str(run), "--split", "Nope"],
        "evaluate --limit -3": ["evaluate", str(run), "--limit", "-3"],
        "evaluate --device bogus": ["evaluate", str(run), "--device", "bogus"],
        "evaluate --bundle nowhere": ["evaluate", str(run), "--bundle", str(tmp / "nowhere")],
        "synth --train -5": ["synth", str(tmp / "s1"), "--train", "-5"],
        "synth --train abc": ["synth", str(tmp / "s2"), "--train", "abc"],
        "train --seed huge": ["train", "--data", str(data), "--out", str(tmp / "t1"), "--seed", "99999999999999"],
        "train --seed -1": ["train", "--data", str(data), "--out", str(tmp / "t2"), "--seed", "-1"],
        "train --lr inf": ["train", "--data", str(data), "--out", str(tmp / "t3"), "--lr", "inf"],
        "train --lr -1": ["train", "--data", str(data), "--out", str(tmp / "t4"), "--lr", "-1"],
        "train --epochs 0": ["train", "--data", str(data), "--out", str(tmp / "t5"), "--epochs", "0"],
        "train --time-budget 0s": ["train", "--data", str(data), "--out", str(tmp / "t6"), "--time-budget", "0s"],
        "train --time-budget abc": ["train", "--data", str(data), "--out", str(tmp / "t7"), "--time-budget", "abc"],
        "train --preset nope": ["train", "--data", str(data), "--out", str(tmp / "t8"), "--preset", "nope"],
        "train --device bogus": ["train", "--data", str(data), "--out", str(tmp / "t9"), "--device", "bogus"],
        "train --data missing": ["train", "--data", str(tmp / "nodata"), "--out", str(tmp / "t10")],
        "train --resume nothing": ["train", "--out", str(tmp / "t11"), "--resume"],
        "export --precision fp8": ["export", str(run), "--out", str(tmp / "e1"), "--precision", "fp8"],
        "tune --metric nope": ["tune", str(run), "--metric", "nope"],
        "serve --port 0": ["serve", "--port", "0"],
        "serve --port 70000": ["serve", "--port", "70000"],
        "serve --max-upload-mb -1": ["serve", "--max-upload-mb", "-1"],
        "serve --queue 0": ["serve", "--queue", "0"],
        "serve unknown model": ["serve", str(tmp / "nowhere")],
        "report of nothing": ["report", str(tmp / "nowhere"), "--out", str(tmp / "r1")],
        "data of nothing": ["data", str(tmp / "nowhere")],
        "unknown command": ["frobnicate"],
    }
    return [Case("flags", name, argv) for name, argv in cmds.items()]


def bundle_cases(tmp: Path) -> list[Case]:
    src = builtin_path()
    cfg = json.loads((src / "config.json").read_text())
    variants: dict[str, Callable[[Path], None]] = {}

    def set_cfg(**changes) -> Callable[[Path], None]:
        def apply(d: Path) -> None:
            c = json.loads((d / "config.json").read_text())
            for key, value in changes.items():
                target, _, leaf = key.rpartition(".")
                node = c
                for part in filter(None, target.split(".")):
                    node = node[part]
                if value is KeyError:
                    node.pop(leaf, None)
                else:
                    node[leaf] = value
            (d / "config.json").write_text(json.dumps(c))

        return apply

    def set_json(name: str, path: tuple[str, ...], value: object) -> Callable[[Path], None]:
        def apply(d: Path) -> None:
            c = json.loads((d / name).read_text())
            node = c
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
            (d / name).write_text(json.dumps(c))  # NaN written as NaN, as json.dumps does

        return apply

    for key in ("outputs", "preprocessing", "postprocess", "severity", "model_spec", "format_version"):
        variants[f"no {key}"] = set_cfg(**{key: KeyError})
    for v in ("abc", -1, 7, 1e308, True, None, 0):
        variants[f"image_size {v!r}"] = set_cfg(**{"preprocessing.image_size": v})
    for v in (["kidney"], "infection", [], ["lung", "infection"], None):
        variants[f"outputs {v!r}"] = set_cfg(outputs=v)
    for key, v in (("threshold", 5), ("threshold", -1), ("threshold", "nan"), ("min_component_share", 1e18),
                   ("image_gate", 2), ("detect_fraction", -0.5), ("tta_hflip", "yes"), ("bogus", 1)):  # fmt: skip
        variants[f"postprocess.{key} {v!r}"] = set_cfg(**{f"postprocess.{key}": v})
    variants["severity grades 'x'"] = set_cfg(**{"severity.grades": "x"})
    variants["format_version 99"] = set_cfg(format_version=99)
    variants["weights_precision fp8"] = set_cfg(weights_precision="fp8")
    variants["config not JSON"] = lambda d: (d / "config.json").write_text("{not json")
    variants["config a list"] = lambda d: (d / "config.json").write_text("[]")
    variants["model.onnx garbage"] = lambda d: (d / "model.onnx").write_bytes(b"garbage" * 100)
    variants["model.onnx empty"] = lambda d: (d / "model.onnx").write_bytes(b"")
    variants["model.onnx truncated"] = lambda d: (d / "model.onnx").write_bytes(
        (src / "model.onnx").read_bytes()[:5000]
    )
    variants["model.onnx missing"] = lambda d: (d / "model.onnx").unlink()
    variants["calibration.json not JSON"] = lambda d: (d / "calibration.json").write_text("{not json")
    variants["calibration a NaN"] = set_json("calibration.json", ("calibration", "a"), float("nan"))
    variants["input_check.npz garbage"] = lambda d: (d / "input_check.npz").write_bytes(b"garbage" * 100)
    variants["input_check settings gone"] = lambda d: (d / "calibration.json").write_text(
        json.dumps({k: v for k, v in json.loads((d / "calibration.json").read_text()).items() if k != "input_check"})
    )
    cases = []
    for name, tamper in variants.items():
        d = tmp / "bundles" / name.replace(" ", "_").replace("/", "_")
        shutil.copytree(src, d)
        tamper(d)
        argv = ["predict", str(d), str(EXAMPLE), "--out", str(tmp / "bo" / d.name)]
        # onnxruntime needs no model_spec (only the PyTorch engine builds the network from it)
        cases.append(Case("tampered bundles", name, argv, "either" if name == "no model_spec" else "error"))
        if name == "no model_spec":
            cases.append(Case("tampered bundles", f"{name}, engine torch", argv + ["--engine", "torch"]))
    assert cfg  # the shipped config parsed
    return cases


def run_folder_cases(tmp: Path, run: Path) -> list[Case]:
    import pickle

    marker = tmp / "pickle-ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    variants: dict[str, Callable[[Path], None]] = {
        "config.yaml garbage": lambda d: (d / "config.yaml").write_text(": : :\n\t- ["),
        "config.yaml python tag": lambda d: (d / "config.yaml").write_text("!!python/object/apply:os.system ['true']"),
        "config.yaml a list": lambda d: (d / "config.yaml").write_text("- 1\n- 2\n"),
        "config.yaml lr nan": lambda d: (d / "config.yaml").write_text(
            (d / "config.yaml").read_text().replace("lr: 0.001", "lr: .nan")
        ),
        "config.yaml missing": lambda d: (d / "config.yaml").unlink(),
        "best.pt garbage": lambda d: (d / "checkpoints" / "best.pt").write_bytes(b"garbage"),
        "best.pt evil pickle": lambda d: (d / "checkpoints" / "best.pt").write_bytes(pickle.dumps(Evil())),
        "best.pt empty": lambda d: (d / "checkpoints" / "best.pt").write_bytes(b""),
        "best.pt missing": lambda d: (d / "checkpoints" / "best.pt").unlink(),
        "postprocess.json threshold 7": lambda d: (d / "postprocess.json").write_text(
            json.dumps({"settings": {"threshold": 7}})
        ),
        "postprocess.json garbage": lambda d: (d / "postprocess.json").write_text("{{"),
    }
    cases = []
    for name, tamper in variants.items():
        d = tmp / "runs-tampered" / name.replace(" ", "_")
        shutil.copytree(run, d)
        tamper(d)
        if name.startswith("config.yaml"):
            # evaluate, predict and export read the settings stored in the checkpoint, so a damaged
            # config.yaml may go unnoticed there; a resume reads it and must refuse or apply it.
            for cmd in (["evaluate", str(d)], ["predict", str(d), str(EXAMPLE), "--out", str(tmp / "ro" / d.name)]):
                cases.append(Case("tampered run folders", f"{cmd[0]}: {name}", cmd, "either"))
            resume = ["train", "--out", str(d), "--resume", "--epochs", "2", "--time-budget", "3s"]
            cases.append(Case("tampered run folders", f"resume: {name}", resume, "either"))
            continue
        for cmd in (["evaluate", str(d)], ["predict", str(d), str(EXAMPLE), "--out", str(tmp / "ro" / d.name)],
                    ["export", str(d), "--out", str(tmp / "re" / d.name)]):  # fmt: skip
            cases.append(Case("tampered run folders", f"{cmd[0]}: {name}", cmd))
    for garble in ("epoch,lr\n1,abc\n", "\0\0\0", "", "epoch\n" + "x" * 5000):
        d = tmp / "runs-history" / str(len(cases))
        shutil.copytree(run, d)
        (d / "history.csv").write_text(garble)
        cases.append(
            Case(
                "tampered run folders",
                f"report: history.csv {garble[:12]!r}",
                ["report", str(d), "--out", str(tmp / "rr" / d.name)],
                "either",
            )
        )
    return cases


def sweep_cases(tmp: Path, data: Path) -> list[Case]:
    specs = {
        "not YAML": ": : [",
        "a list": "- 1\n",
        "a number": "3\n",
        "no grid or trials": "name: x\npreset: demo\n",
        "grid not a mapping": "preset: demo\ngrid: [1, 2]\n",
        "grid value not a list": "preset: demo\ngrid: {optim.lr: 0.1}\n",
        "grid empty list": "preset: demo\ngrid: {optim.lr: []}\n",
        "unknown key in grid": "preset: demo\ngrid: {optim.nope: [1]}\n",
        "unknown field": "preset: demo\ntrials: [{optim.lr: 0.1}]\nbogus: 1\n",
        "trials not a list": "preset: demo\ntrials: {optim.lr: 0.1}\n",
        "trial not a mapping": "preset: demo\ntrials: [1, 2]\n",
        "bad value in trial": "preset: demo\ntrials: [{optim.lr: abc}]\n",
        "nan in trial": "preset: demo\ntrials: [{optim.lr: .nan}]\n",
        "unknown preset": "preset: nope\ntrials: [{optim.lr: 0.1}]\n",
        "bad sort_by": "preset: demo\ntrials: [{optim.lr: 0.1}]\nsort_by: nope\n",
        "scale unknown field": "preset: demo\ntrials: [{optim.lr: 0.1}]\nscales: {s: {nope: 1}}\n",
        "scale factor a string": "preset: demo\ntrials: [{optim.lr: 0.1}]\nscales: {s: {epochs_factor: abc}}\n",
        "scale factor negative": "preset: demo\ntrials: [{optim.lr: 0.1}]\nscales: {s: {epochs_factor: -1}}\n",
        "scale not a mapping": "preset: demo\ntrials: [{optim.lr: 0.1}]\nscales: {s: 3}\n",
        "python tag": "!!python/object/apply:os.system ['true']\n",
        "javascript link value": "preset: demo\ntrials: [{model.name: 'javascript:alert(1)'}]\n",
    }
    cases = []
    for name, text in specs.items():
        path = tmp / "specs" / f"{len(cases)}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        argv = ["sweep", str(path), "--data", str(data), "--out", str(tmp / "sw" / str(len(cases)))]
        cases.append(Case("sweep specs", name, argv + (["--scale", "s"] if "scale" in name else [])))
    return cases


def data_loss_cases(tmp: Path, data: Path, run: Path) -> list[Case]:
    cases = []
    full = tmp / "keep" / "synth-target"
    full.mkdir(parents=True)
    (full / "covid_1.png").write_bytes(EXAMPLE.read_bytes())
    cases.append(
        Case("data safety", "synth into a non-empty folder", ["synth", str(full)], keep=[full / "covid_1.png"])
    )
    bundle_dir = tmp / "keep" / "export-target"
    bundle_dir.mkdir()
    (bundle_dir / "notes.txt").write_text("mine")
    cases.append(
        Case(
            "data safety",
            "export into a non-empty folder",
            ["export", str(run), "--out", str(bundle_dir)],
            keep=[bundle_dir / "notes.txt"],
        )
    )
    other = tmp / "keep" / "other-run"
    shutil.copytree(run, other)
    cfg = other / "config.yaml"
    cases.append(
        Case(
            "data safety",
            "train into another run's folder",
            ["train", "--data", str(data), "--out", str(other), "--time-budget", "2s"],
            keep=[cfg, other / "checkpoints" / "best.pt"],
        )
    )
    cases.append(
        Case(
            "data safety",
            "resume with a changed image size",
            ["train", "--out", str(other), "--resume", "--image-size", "48"],
            keep=[cfg],
        )
    )
    cases.append(
        Case(
            "data safety",
            "resume with a changed lr",
            ["train", "--out", str(other), "--resume", "--lr", "0.5"],
            keep=[cfg],
        )
    )
    pred = tmp / "keep" / "predict-target"
    pred.mkdir()
    (pred / "mine.png").write_bytes(EXAMPLE.read_bytes())
    cases.append(
        Case(
            "data safety",
            "predict into a folder with other files",
            ["predict", str(EXAMPLE), "--out", str(pred)],
            "either",
            keep=[pred / "mine.png"],
        )
    )
    return cases


def tiny_run(tmp: Path) -> tuple[Path, Path]:
    data, run = tmp / "synthetic-data", tmp / "run"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert cli(["synth", str(data), "--train", "16", "--val", "8", "--test", "8", "--no-progress"]) == 0
        argv = ["train", "--data", str(data), "--out", str(run), "--preset", "demo", "--epochs", "1"]
        assert cli(argv + ["--image-size", "32", "--no-progress"]) == 0
    return data, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--verbose", action="store_true", help="print every case that did not end as it should")
    p.add_argument("--list", action="store_true", help="print every case and its outcome")
    a = p.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="covidseg-fuzz-") as t:
        tmp = Path(t)
        os.environ["COVIDSEG_CACHE_DIR"] = str(tmp / "cache")
        data, run = tiny_run(tmp)
        cases = (
            image_cases(tmp) + set_cases(tmp, data) + flag_cases(tmp, data, run) + bundle_cases(tmp)
            + run_folder_cases(tmp, run) + sweep_cases(tmp, data) + data_loss_cases(tmp, data, run)
        )  # fmt: skip
        outcomes = [run_case(c) for c in cases]
        pickle_ran = (tmp / "pickle-ran").exists()
    families: dict[str, list[Outcome]] = {}
    for o in outcomes:
        families.setdefault(o.case.family, []).append(o)
    verdicts = ("ok", "traceback", "silent acceptance", "lost file")
    print(f"{'family':<24}{'cases':>7}" + "".join(f"{v:>19}" for v in verdicts))
    for fam, items in families.items():
        print(f"{fam:<24}{len(items):>7}" + "".join(f"{sum(o.verdict == v for o in items):>19}" for v in verdicts))
    print(f"{'all':<24}{len(outcomes):>7}" + "".join(f"{sum(o.verdict == v for o in outcomes):>19}" for v in verdicts))
    print(f"untrusted pickle executed: {pickle_ran}; {time.perf_counter() - t0:.0f} s")
    for o in outcomes:
        if a.list or (a.verbose and o.verdict != "ok"):
            print(f"  [{o.verdict}] {o.case.family} / {o.case.name}: exit {o.code}: {o.message[:160]}")
    bad = sum(o.verdict != "ok" for o in outcomes) + pickle_ran
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
