"""Sweeps (grid, scale, resume, leaderboard, plots) and the report, checked in headless Chromium."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import interrupt_training
from covidseg.cli import main
from covidseg.sweep import expand, load_spec

SPEC = """
name: tiny
preset: reference
base: {model.base_channels: 8, train.batch_size: 4, train.device: cpu}
grid:
  optim.lr: [1.0e-3, 1.0e-4]
  train.epochs: [2, 4]
sort_by: pooled_dice
scales:
  small: {epochs_factor: 0.5, image_factor: 0.25, train_limit: 12, val_limit: 8}
"""


@pytest.fixture(scope="module")
def sweep_dir(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "spec.yaml").write_text(SPEC)
    out = tmp / "sweep"
    args = ["sweep", str(tmp / "spec.yaml"), "--data", str(synth_root), "--out", str(out), "--scale", "small"]
    assert main([*args, "--cache-dir", str(tmp / "cache"), "--no-progress"]) == 0
    return out


def test_spec_expansion_and_shipped_reference_study() -> None:
    spec = load_spec("reference-study")
    trials = expand(spec)
    assert len(trials) == 36 and trials[0]["name"].startswith("01-")
    assert {t["settings"]["data.image_size"] for t in trials} == {192, 256}
    assert {t["settings"]["optim.lr"] for t in trials} == {1e-3, 1e-4}
    assert "cpu" in spec.scales and spec.scales["cpu"].epochs_factor < 1


def test_sweep_leaderboard_records_scale_and_is_sorted(sweep_dir: Path) -> None:
    rows = list(csv.DictReader((sweep_dir / "leaderboard.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    values = [float(r["pooled_dice"]) for r in rows]
    assert values == sorted(values, reverse=True)
    for r in rows:
        assert r["scale"].startswith("small:") and r["actual_image_size"] == "64" and r["train_images"] == "12"
        assert int(r["actual_epochs"]) == int(r["train.epochs"]) // 2 == int(r["epochs_run"])
        assert {"per_image_dice", "covid_dice", "pooled_iou", "pixel_accuracy", "best_epoch", "wall_time_s"} <= set(r)
    md = (sweep_dir / "leaderboard.md").read_text()
    assert "Scaled down" in md and md.count("| done |") == 4
    trial = sweep_dir / "trials" / rows[0]["trial"]
    info = json.loads((trial / "trial.json").read_text())
    assert info["scale"].startswith("small") and info["actual"]["data.val_limit"] == 8
    assert (trial / "config.yaml").is_file() and (trial / "eval" / "Val" / "summary.json").is_file()
    names = {p.name for p in (sweep_dir / "plots").iterdir()}
    assert names == {"curves_all_trials.png", "pooled_dice_vs_optim_lr.png", "pooled_dice_vs_train_epochs.png"}


def test_sweep_skips_finished_resumes_interrupted_and_refuses_another_plan(
    sweep_dir: Path, synth_root: Path, tmp_path: Path, monkeypatch
) -> None:
    from covidseg.engine.fit import fit
    from covidseg.sweep import trial_config

    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC)
    spec = load_spec(spec_path)
    # Interrupt the longest trial after its first epoch of two.
    t = next(t for t in expand(spec) if t["name"].endswith("epochs4"))
    trial = copy / "trials" / t["name"]
    shutil.rmtree(trial)
    cfg = trial_config(spec, t["settings"], str(synth_root), spec.scales["small"])
    assert cfg.train.epochs == 2
    interrupt_training(monkeypatch, in_epoch=2)  # Ctrl-C in the second epoch
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, trial)
    log_before = (copy / "sweep.log").read_text()
    args = ["sweep", str(spec_path), "--data", str(synth_root), "--out", str(copy), "--scale", "small", "--no-progress"]
    assert main(args) == 0
    new_log = (copy / "sweep.log").read_text()[len(log_before) :]
    assert new_log.count("finished, skipped") == 3
    assert "resuming" in new_log and (trial / "env-resume-2.json").is_file()
    assert len((trial / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    assert (trial / "eval" / "Val" / "summary.json").is_file()
    assert main(args[:-3] + ["--no-progress"]) == 2  # the same folder without the scale is another sweep


@pytest.fixture(scope="module")
def report_dir(sweep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    best = sorted((sweep_dir / "trials").iterdir())[0]
    assert main(["report", str(best), str(sweep_dir), "--out", str(out), "--no-progress"]) == 0
    return out


def test_report_sections_and_definitions(report_dir: Path) -> None:
    md = (report_dir / "report.md").read_text()
    for text in (
        "data set",
        "method",
        "```yaml",
        "Dice, per image, COVID-19 images",
        "Dice, pooled pixels",
        "Per group",
        "False positives on images without infection",
        "Sweep",
        "Scaled down",
        "Comparison with published results",
        "SYNTHETIC (covidseg synth, not X-rays) Val",
        "at each X-ray's own size",
    ):
        assert text in md, text
    # Synthetic figures are never set beside published ones, and "COVID-QU-Ex" names no synthetic data.
    for text in ("83.05%", "88.21%", "97.99%", "0.60-0.75", "COVID-QU-Ex Val"):
        assert text not in md, text
    assert "measured on SYNTHETIC data" in md
    # Every figure the Markdown links exists beside it.
    for line in md.splitlines():
        if line.startswith("!["):
            assert (report_dir / line.split("](")[1].rstrip(")")).is_file()
    assert main(["report", str(report_dir), "--out", str(report_dir / "again")]) == 2  # not a run or sweep


def test_report_compares_real_data_results_with_published_ones(sweep_dir: Path, tmp_path: Path) -> None:
    """The same run, as if its summary had been measured on real X-rays: now it is compared."""
    run = tmp_path / "run"
    shutil.copytree(sorted((sweep_dir / "trials").iterdir())[0], run)
    summary = run / "eval" / "Val" / "summary.json"
    s = json.loads(summary.read_text())
    summary.write_text(json.dumps({**s, "synthetic": False}))
    assert main(["report", str(run), "--out", str(tmp_path / "report"), "--no-progress"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    for text in ("COVID-QU-Ex Val", "83.05%", "88.21%", "97.99%", "0.60-0.75", "QaTa-COV19"):
        assert text in md, text
    assert "SYNTHETIC" not in md


def test_report_names_the_other_evaluations_of_a_run_without_its_own(sweep_dir: Path, tmp_path: Path) -> None:
    """A run scored only untuned shows no metrics table, and says which evaluation it does have."""
    run = tmp_path / "run"
    shutil.copytree(sorted((sweep_dir / "trials").iterdir())[0], run)
    (run / "eval" / "Val").rename(run / "eval" / "Val-untuned")
    assert main(["report", str(run), "--out", str(tmp_path / "report"), "--no-progress"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Not evaluated with its own settings yet. It has only evaluations of another kind (`eval/Val-untuned`" in md
    assert "Dice, per image, COVID-19 images" not in md


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def test_html_report_in_headless_chromium(report_dir: Path) -> None:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("browser test: Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser test: selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        page = report_dir / "report.html"
        driver.get(page.as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        assert driver.title == "covidseg report"
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
        assert len(images) >= 5
        assert all(done and w > 0 and h > 0 for done, w, h in images), images
        ids = set(driver.execute_script("return Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
        links = driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        assert links
        for href in links:
            url = urlparse(href)
            assert url.scheme == "file", href  # nothing on the page needs a network
            if url.fragment and unquote(url.path) == str(page):
                assert url.fragment in ids, href
            else:
                assert Path(unquote(url.path)).is_file(), href
        heading = driver.execute_script("return document.querySelector('h2').textContent")
        assert heading.startswith("Run ")
    finally:
        driver.quit()


def test_bad_specs_fail_with_clear_messages(tmp_path: Path, synth_root: Path, capsys) -> None:
    cases = {
        "unknown key": ("preset: reference\ngrid: {optim.lrate: [1.0e-3]}\n", "unknown config key"),
        "empty": ("preset: reference\n", "needs a grid or a list of trials"),
        "bad metric": ("preset: reference\ntrials: [{optim.lr: 1.0e-3}]\nsort_by: accuracy\n", "sort_by"),
        "not a list": ("preset: reference\ngrid: {optim.lr: 1.0e-3}\n", "non-empty lists"),
    }
    for name, (text, message) in cases.items():
        spec = tmp_path / f"{name.replace(' ', '_')}.yaml"
        spec.write_text(text)
        assert main(["sweep", str(spec), "--data", str(synth_root), "--out", str(tmp_path / "s")]) == 2, name
        assert message in capsys.readouterr().err, name
    spec = tmp_path / "ok.yaml"
    spec.write_text(SPEC)
    assert main(["sweep", str(spec), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")]) == 2
    assert main(["sweep", str(spec), "--data", str(synth_root), "--out", str(tmp_path / "s"), "--scale", "x"]) == 2
    assert "scale 'x' is not in the spec" in capsys.readouterr().err
    assert main(["sweep", "no-such-spec", "--out", str(tmp_path / "s")]) == 2
