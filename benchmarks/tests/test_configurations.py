"""The configurations benchmark's arguments and report (the runs themselves are the benchmark)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configurations as cfg  # noqa: E402


def _run(patch, batch, dice, epochs=10, s_per_iter=1.5):
    return {"patch_size": patch, "batch_size": batch, "epochs": epochs, "train_s_per_iter": s_per_iter,
            "dice": {"mean": dice, "1": dice + 0.01, "2": dice - 0.01}}


def test_report_ratios_are_against_the_baseline(tmp_path):
    args = cfg.parse_args(["--work", str(tmp_path)])
    runs = {"2d": _run([56, 40], 48, 0.80, epochs=30), "3d_fullres": _run([40, 56, 40], 5, 0.85)}
    text = cfg.report(args, "Dataset004_Hippocampus", runs)
    assert "| 2d | 56x40 | 48 | 30 x 25 | 1.50 | 0.8100 | 0.7900 | 0.8000 | 0.941 |" in text
    assert "| 3d_fullres | 40x56x40 | 5 | 10 x 25 | 1.50 | 0.8600 | 0.8400 | 0.8500 | 1.000 |" in text


def test_quick_shrinks_the_budget_and_the_baseline_must_be_run(tmp_path):
    args = cfg.parse_args(["--quick", "--work", str(tmp_path)])
    assert (args.budget_minutes, args.iters_per_epoch) == (1.0, 5)
    with pytest.raises(SystemExit):
        cfg.parse_args(["-c", "2d", "--work", str(tmp_path)])
