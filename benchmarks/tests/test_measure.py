"""The measuring helper of the benchmarks: tree memory, timeout, early stop.

Runs in CI with the project's tests.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _measure import run_measured  # noqa: E402

ALLOCATE = "import numpy as np, time; a = np.ones({mb} * 2**20, dtype=np.uint8); time.sleep({sleep})"


def test_peak_memory_counts_a_worker_process(tmp_path):
    # The parent holds ~20 MB; a child it starts holds 300 MB: the tree peak must include the child.
    child = ALLOCATE.format(mb=300, sleep=1.0)
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    m = run_measured([sys.executable, "-c", parent], log_path=tmp_path / "log.txt")
    assert m.returncode == 0 and not m.timed_out
    assert m.peak_rss_mb > 300
    assert m.peak_pss_mb > 250
    assert m.wall_s >= 1.0


def test_timeout_stops_the_whole_group():
    m = run_measured([sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=1.0)
    assert m.timed_out and m.wall_s < 20
    assert m.returncode != 0


def test_stop_when_predicate(tmp_path):
    flag = tmp_path / "done"
    script = f"import pathlib, time; time.sleep(0.5); pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"
    m = run_measured([sys.executable, "-c", script], stop_when=lambda elapsed: flag.exists())
    assert m.stopped_early and not m.timed_out
    assert m.wall_s < 20


def test_budget_epochs_counts_the_per_epoch_overhead_once_per_epoch():
    from _train_side import budget_epochs

    # 4-iteration calibration epochs: 2 s per iteration plus 6 s of pseudo-validation and loader start-up.
    calibration = {"train_s_per_iter": 2.0, "epoch_overhead_s": 6.0, "startup_s": 20.0}
    # 25-iteration epochs run 5 validation batches instead of 1: 50 s + 30 s per epoch.
    assert budget_epochs(calibration, 4, 25, 20.0 + 10 * 80.0) == 10
    assert budget_epochs(calibration, 4, 25, 30.0) == 1   # never fewer than one epoch
