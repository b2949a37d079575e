"""End to end through ``main(argv)``: train, evaluate, predict, and every bad input's message."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from covidseg.cli import main
from covidseg.data.discovery import discover
from covidseg.engine.checkpoint import load_checkpoint, save_checkpoint

TINY_ARGS = [
    "--image-size",
    "64",
    "--epochs",
    "2",
    "--batch-size",
    "4",
    "--lr",
    "1e-3",
    "--device",
    "cpu",
    "--set",
    "model.base_channels=8",
    "--no-progress",
]


@pytest.fixture(scope="module")
def trained_run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    run = tmp / "run"
    rc = main(
        [
            "train",
            "--data",
            str(synth_root),
            "--out",
            str(run),
            "--preset",
            "reference",
            "--cache-dir",
            str(tmp / "cache"),
            *TINY_ARGS,
        ]
    )
    assert rc == 0
    return run


def test_train_writes_log_and_prints_summary(trained_run: Path) -> None:
    assert "epoch 2/2" in (trained_run / "train.log").read_text()
    assert (trained_run / "checkpoints" / "best.pt").is_file()


def test_evaluate_writes_summary_and_per_image(trained_run: Path, capsys) -> None:
    assert main(["evaluate", str(trained_run), "--split", "Test", "--panel", "3", "--no-progress"]) == 0
    out = trained_run / "eval" / "Test"
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "pooled",
        "per_image",
        "per_image_covid",
        "groups",
        "negatives_with_false_positives",
        "images",
        "split",
        "threshold",
    ):
        assert key in s
    assert s["images"] == 8 and s["split"] == "Test" and set(s["groups"]) == {"COVID-19", "Non-COVID", "Normal"}
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 8 and list(rows[0])[:8] == ["id", "group", "tp", "fp", "fn", "tn", "dice", "iou"]
    # An infection-only model: the call and the true infected share of the lung, no predicted lung.
    assert {"image_infected_share_pct", "covid_call", "true_infected_share_pct", "true_severity"} <= set(rows[0])
    assert "lung_dice" not in rows[0] and "severity" not in rows[0]
    # Scored at each X-ray's own size (the synthetic X-rays are 96-160 pixels a side, the input 64).
    assert s["scored_at"] == "native" and s["synthetic"] is True
    sizes = {x.id: Image.open(x.image).size for x in discover(s["data_root"]).split("Test")}
    assert all(int(r["tp"]) + int(r["fp"]) + int(r["fn"]) + int(r["tn"]) == np.prod(sizes[r["id"]]) for r in rows)
    assert (trained_run / "plots" / "predictions_Test.png").is_file()
    assert "pooled      dice" in capsys.readouterr().out


def test_predict_original_size_and_skips_bad_files(trained_run: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 130), dtype=np.uint8)).save(inputs / "a.png")
    Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(inputs / "b.jpg")
    (inputs / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    assert main(["predict", str(trained_run), str(inputs), "--out", str(out), "--no-progress"]) == 0
    mask = np.asarray(Image.open(out / "a_mask.png"))
    assert mask.shape == (90, 130) and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(out / "b_overlay.png")).shape == (50, 70, 3)
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(x["image"]).name for x in lines] == ["a.png", "b.jpg"]
    assert all(0.0 <= x["image_infected_share_pct"] <= 100.0 for x in lines)
    assert lines[0]["image_infected_share_pct"] == pytest.approx(100 * (mask > 0).mean(), abs=1e-4)
    # A second run into the same folder keeps the earlier records, replacing those of the images
    # it writes again; a line that is not a record stays too.
    with (out / "predictions.jsonl").open("a") as f:
        f.write("a note of the user's\n")
    Image.fromarray(np.full((40, 60), 90, np.uint8)).save(inputs / "c.png")
    (inputs / "a.png").unlink()
    assert main(["predict", str(trained_run), str(inputs), "--out", str(out), "--no-progress"]) == 0
    text = (out / "predictions.jsonl").read_text().splitlines()
    assert text[1] == "a note of the user's"  # after a.png's record; b.jpg's old one is gone
    names = [Path(json.loads(x)["image"]).name for x in text if x.startswith("{")]
    assert names == ["a.png", "b.jpg", "c.png"] and (out / "a_mask.png").is_file()


def test_predict_never_overwrites_what_is_not_its_own_nor_reads_its_own_outputs(
    trained_run: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    rng = np.random.default_rng(1)
    for folder in ("ward-a", "ward-b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(rng.integers(0, 255, (60, 80), dtype=np.uint8)).save(tmp_path / folder / "patient.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "patient_overlay.png").write_bytes(b"the user's own file")
    predict = ["predict", str(trained_run)]
    assert main([*predict, str(tmp_path / "ward-a"), "--out", str(out), "--no-progress"]) == 0
    assert main([*predict, str(tmp_path / "ward-b"), "--out", str(out), "--no-progress"]) == 0
    assert main([*predict, str(tmp_path / "ward-a"), "--out", str(out), "--no-progress"]) == 0  # again: replaced
    # The same file name given relative to another working folder is another X-ray.
    for ward in ("ward-a", "ward-b"):
        monkeypatch.chdir(tmp_path / ward)
        assert main([*predict, "patient.png", "--out", "../out", "--no-progress"]) == 0
    assert (out / "patient_overlay.png").read_bytes() == b"the user's own file"
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted((Path(r["image_path"]).parent.name, r["mask"]) for r in records) == [
        ("ward-a", "patient-2_mask.png"), ("ward-b", "patient-3_mask.png")
    ]  # fmt: skip
    assert all((out / r[k]).is_file() for r in records for k in ("mask", "overlay"))
    # A note of the user's, even one not in UTF-8, is kept as it is and does not stop the next run.
    with (out / "predictions.jsonl").open("ab") as f:
        f.write(b'{"note": "checked by Dr X"}\n# r\xe9sultats\n')
    assert main([*predict, str(tmp_path / "ward-b"), "--out", str(out), "--no-progress"]) == 0
    assert (out / "predictions.jsonl").read_bytes().count(b"# r\xe9sultats\n") == 1
    # Another model's predictions are not mixed in.
    msg = _error(capsys, ["predict", str(tmp_path / "ward-a"), "--out", str(out)])
    assert "holds predictions of another model" in msg and f"({trained_run.name})" in msg
    # So are those of other weights in a folder of the same name (a retrained run, another copy).
    twin = tmp_path / "elsewhere" / trained_run.name
    shutil.copytree(trained_run, twin)
    state = load_checkpoint(twin / "checkpoints" / "best.pt")
    next(t for t in state["model"].values() if t.is_floating_point()).add_(0.01)
    save_checkpoint(twin / "checkpoints" / "best.pt", state)
    msg = _error(capsys, ["predict", str(twin), str(tmp_path / "ward-a"), "--out", str(out)])
    assert f"another model named {trained_run.name} (weights" in msg
    # The input folder itself is refused as --out, and so is a single X-ray's own folder.
    ward = str(tmp_path / "ward-a")
    assert "is the input folder" in _error(capsys, [*predict, ward, "--out", ward])
    assert "own folder" in _error(capsys, [*predict, f"{ward}/patient.png", "--out", ward])
    # Output folders inside the input folder, this run's and earlier ones, are left out of the inputs.
    for name in ("preds", "preds-2", "preds"):
        assert main([*predict, ward, "--out", f"{ward}/{name}", "--no-progress"]) == 0
        assert "predicted 1 image(s)" in capsys.readouterr().out
    assert len((tmp_path / "ward-a" / "preds" / "predictions.jsonl").read_text().splitlines()) == 1
    assert "covidseg's own outputs" in _error(capsys, [*predict, f"{ward}/preds", "--out", str(tmp_path / "x")])
    # Two files are no model and an input: one clear line.
    two = [*predict[:1], str(tmp_path / "ward-a" / "patient.png"), str(tmp_path / "ward-b" / "patient.png")]
    assert "is no model" in _error(capsys, [*two, "--out", str(tmp_path / "two")])


def test_an_interrupted_or_killed_predict_keeps_the_records_of_the_x_rays_done(
    trained_run: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import covidseg.predict
    from covidseg.prediction_folder import RUNNING

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((40, 50), 100, np.uint8)).save(inputs / f"{name}.png")
    real, calls = covidseg.predict.write_temporary, []

    def stopped_in_the_second_image(path, data):  # a SIGTERM between b's mask and its overlay
        calls.append(path.name)
        if path.name == "b_overlay.png":
            os.kill(os.getpid(), signal.SIGTERM)
        return real(path, data)

    monkeypatch.setattr(covidseg.predict, "write_temporary", stopped_in_the_second_image)
    out = tmp_path / "out"
    argv = ["predict", str(trained_run), str(inputs), "--out", str(out), "--no-progress"]
    assert main(argv) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert "b_mask.png" in calls  # b's mask was drawn, never renamed into place: b whole or not at all
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == ["a.png"]
    assert sorted(p.name for p in out.iterdir() if p.name != ".covidseg.lock") == [
        "a_mask.png", "a_overlay.png", "predictions.jsonl"
    ]  # fmt: skip
    monkeypatch.setattr(covidseg.predict, "write_temporary", real)
    # A SIGKILL leaves the flushed records of its run in a temporary file: the next run takes them over.
    (out / RUNNING).write_bytes((out / "predictions.jsonl").read_bytes())
    (out / "predictions.jsonl").unlink()
    assert main(argv) == 0
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["mask"] for r in records) == ["a_mask.png", "b_mask.png", "c_mask.png"]  # no a-2
    assert not (out / RUNNING).exists()


def test_predict_keeps_each_x_ray_one_name_and_survives_odd_folders(trained_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ward = tmp_path / "ward" / "sub"
    ward.mkdir(parents=True)
    for name in ("a", "x" * 240):
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(ward / f"{name}.png")
    out = tmp_path / "out"
    predict = ["predict", str(trained_run)]
    # The same X-ray reached from another base folder keeps its one name and record.
    assert main([*predict, str(ward / "a.png"), "--out", str(out), "--no-progress"]) == 0
    assert main([*predict, str(tmp_path / "ward"), "--out", str(out), "--no-progress"]) == 0  # long name cut
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["mask"] for r in records)[0] == "a_mask.png" and len(records) == 2
    assert all(len(r["overlay"].encode()) < 200 for r in records)
    # A name an earlier record gives another X-ray stays its own, even with that X-ray's files gone.
    for f in out.glob("a_*.png"):
        f.unlink()
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(other / "a.png")
    assert main([*predict, str(other), "--out", str(out), "--no-progress"]) == 0
    masks = {r["image_path"]: r["mask"] for r in map(json.loads, (out / "predictions.jsonl").open())}
    assert masks[str((ward / "a.png").resolve())] == "a_mask.png"
    assert masks[str((other / "a.png").resolve())] == "a-2_mask.png"
    # Records of odd shapes do not break the folder; a leftover link is removed, never written through.
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"mask": ["a"]}\n' + "[" * 100_000 + "\n")
    outside = tmp_path / "outside.txt"
    (out / ".covidseg-tmp-a-2_mask.png").symlink_to(outside)
    assert main([*predict, str(other), "--out", str(out), "--no-progress"]) == 0
    assert not outside.exists() and not (out / "a-2_mask.png").is_symlink()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 5


def test_predict_that_reads_nothing_leaves_no_folder(trained_run: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "new" / "out"
    assert main(["predict", str(trained_run), str(tmp_path / "broken.png"), "--out", str(out), "--no-progress"]) == 2
    assert "could be read" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # nor the parent it created
    out.mkdir(parents=True)  # a folder that was there stays, empty or not
    assert main(["predict", str(trained_run), str(tmp_path / "broken.png"), "--out", str(out), "--no-progress"]) == 2
    assert out.is_dir()


def _error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("covidseg: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_inputs_give_one_line_errors(tmp_path: Path, synth_root: Path, trained_run: Path, capsys) -> None:
    assert "does not exist" in _error(capsys, ["data", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert "is empty" in _error(capsys, ["data", str(tmp_path / "empty")])
    assert "not a COVID-QU-Ex folder" in _error(capsys, ["data", str(Path(__file__).parent)])
    out = str(tmp_path / "r")
    assert "unknown preset" in _error(capsys, ["train", "--data", str(synth_root), "--out", out, "--preset", "x"])
    assert "unknown config key" in _error(
        capsys, ["train", "--data", str(synth_root), "--out", out, "--set", "train.epoch=3"]
    )
    assert "KEY=VALUE" in _error(capsys, ["train", "--data", str(synth_root), "--out", out, "--set", "oops"])
    assert "no data folder" in _error(capsys, ["train", "--out", out])
    (tmp_path / "norun").mkdir()
    assert "holds no checkpoint" in _error(capsys, ["evaluate", str(tmp_path / "norun")])
    foreign = tmp_path / "foreign" / "checkpoints"
    foreign.mkdir(parents=True)
    torch.save({"state_dict": {}}, foreign / "best.pt")
    assert "another program" in _error(capsys, ["predict", str(tmp_path / "foreign"), str(tmp_path), "--out", out])
    assert "already holds a run" in _error(capsys, ["train", "--data", str(synth_root), "--out", str(trained_run)])
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in _error(capsys, ["train", "--data", str(synth_root), "--out", out, "--device", "cuda"])


def test_encoder_flags_reach_the_model(synth_root: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    base = ["train", "--data", str(synth_root), "--out", str(tmp_path / "r"), "--model", "smp-unet"]
    assert "unknown encoder 'resnet9000'" in _error(capsys, [*base, "--encoder", "resnet9000"])

    # Pre-trained weights come from a hub; without network access the error says what to do.
    import segmentation_models_pytorch.encoders as encoders

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(encoders, "hf_hub_download", offline)
    msg = _error(capsys, [*base, "--encoder", "resnet18", "--encoder-weights", "imagenet", *TINY_ARGS])
    assert "could not load the 'imagenet' weights of encoder 'resnet18'" in msg
    assert "model.encoder_weights=None" in msg


def test_output_names_never_collide_and_have_no_spaces(tmp_path: Path) -> None:
    from covidseg.predict import output_stems

    base = tmp_path
    files = [base / n for n in ("a.jpg", "a.png", "sub/a.png", "sub__a.png", "non COVID (1).png")]
    stems = output_stems(sorted(files), base)
    assert len(set(stems.values())) == len(files)
    assert stems[base / "a.png"] == "a_png" and stems[base / "a.jpg"] == "a_jpg"
    assert stems[base / "non COVID (1).png"] == "non_COVID_(1)"
    assert not any(" " in s for s in stems.values())


def test_out_that_is_a_file_is_refused_for_every_writing_command(tmp_path: Path, capsys, trained_run: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for argv in (
        ["train", "--data", str(tmp_path), "--out", str(afile)],
        ["predict", str(trained_run), str(tmp_path), "--out", str(afile)],
        ["export", str(trained_run), "--out", str(afile)],
        ["report", str(trained_run), "--out", str(afile)],
        ["synth", str(afile)],
    ):
        assert "is a file" in _error(capsys, argv), argv
        assert afile.read_text() == "keep me"


def test_checkpoints_and_bundles_are_as_readable_as_other_files(trained_run: Path, tmp_path: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    expected = 0o666 & ~mask
    for name in ("best.pt", "last.pt"):
        assert (trained_run / "checkpoints" / name).stat().st_mode & 0o777 == expected, name
    assert (trained_run / "config.yaml").stat().st_mode & 0o777 == expected
    assert main(["export", str(trained_run), "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "b" / "model.safetensors").stat().st_mode & 0o777 == expected


def test_predict_with_only_a_model_and_no_input_is_refused(trained_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(trained_run), "--out", str(tmp_path / "p")]) == 2
    assert "give the X-ray file or folder after it" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
