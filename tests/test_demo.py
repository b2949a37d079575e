from __future__ import annotations

import json
from pathlib import Path

from covidseg.data.synthetic import SynthSpec
from covidseg.demo import run_demo


def test_demo_runs_end_to_end_and_draws_every_figure(tmp_path: Path, capsys) -> None:
    small = {"train.epochs": 1, "data.image_size": 64, "model.base_channels": 8, "train.device": "cpu"}
    r = run_demo(tmp_path, small, SynthSpec(train=16, val=8, test=8, min_side=96, max_side=160))
    run = tmp_path / "run"
    assert r.run.run_dir == run and r.summary["split"] == "Val" and r.summary["images"] == 8
    for name in ("samples.png", "curves.png", "predictions_Val.png"):
        assert (run / "plots" / name).stat().st_size > 1000, name
    assert (run / "eval" / "Val" / "summary.json").is_file()
    # Two outputs, as the cpu preset: lung masks and severity grades on the demo's model too.
    assert "lung" in r.summary and r.summary["severity"]["agreement"]["images"] > 0
    assert (run / "budget.json").is_file()  # the demo trains under its time budget
    # It says so when the budget bought under half its steps (here: as a busy CPU would leave it).
    from covidseg.cli.study import _warn_if_short

    _warn_if_short(run)
    assert capsys.readouterr().out == ""
    budget = json.loads((run / "budget.json").read_text())
    (run / "budget.json").write_text(json.dumps({**budget, "planned": budget["max_steps"] // 3}))
    _warn_if_short(run)
    assert f"bought only {budget['max_steps'] // 3} of the demo's {budget['max_steps']}" in capsys.readouterr().out
    (run / "budget.json").write_text(json.dumps(budget))
    assert "epoch 1/1" in (run / "train.log").read_text()  # the run folder keeps its log, whoever trained it
    # A second demo into the same folder keeps the finished run instead of failing.
    again = run_demo(tmp_path, small, SynthSpec(train=16, val=8, test=8, min_side=96, max_side=160))
    assert again.run.epochs_run == 1
