"""The demo end to end: a shortened run checks every stage; the full default run (marked slow) checks Dice > 0.8."""

import pytest

from smitunet.demo import main as demo_main, run_demo
from smitunet.imageio import read_image


def test_short_demo_runs_every_stage(tmp_path, monkeypatch):
    monkeypatch.delenv("smitunet_raw", raising=False)
    summary = run_demo(tmp_path / "work", epochs=1, iters_per_epoch=3, num_training=6, num_test=2, num_workers=0,
                       tta=False)
    work = tmp_path / "work"
    dataset = work / "raw" / "Dataset999_Synthetic"
    assert summary["num_cases"] == 2 and set(summary["labels"]) <= {"1", "2"}
    assert 0.0 <= summary["foreground_mean"]["dice"] <= 1.0
    assert set(summary["timings"]) >= {"generate the synthetic dataset", "predict the unseen imagesTs", "total"}
    assert list((work / "results" / "Dataset999_Synthetic").glob("SMITDemoTrainer__*/fold_0/checkpoint_final.pt"))
    for ref in (dataset / "labelsTs").iterdir():
        _, ref_geo = read_image(ref)
        _, pred_geo = read_image(work / "predictions" / ref.name)
        assert pred_geo.matches(ref_geo, tol=1e-6) is None
    assert (work / "predictions" / "summary.json").is_file()
    import os
    assert "smitunet_raw" not in os.environ  # the demo's folder variables do not leak


@pytest.mark.slow
def test_full_demo_reaches_the_dice_target(tmp_path, capsys):
    demo_main(["--work_dir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("mean Dice on"))
    dice = float(line.split(":")[1].split()[0])
    assert dice > 0.8, line
