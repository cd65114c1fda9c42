"""The job runner and report of ``label_efficiency.py``: order, concurrency, failure, the table.

Run with ``python -m pytest -q benchmarks/tests`` (not part of the project's suite: benchmarks only).
"""
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from label_efficiency import Job, report, run_jobs  # noqa: E402


def _job(name, tmp_path, code, after=()):
    return Job(name, [sys.executable, "-c", code], {}, tmp_path / "logs" / f"{name}.log", after=list(after))


def test_dependent_jobs_wait_and_independent_ones_overlap(tmp_path):
    stamp = "import time; open({path!r}, 'a').write('{name} %f\\n' % time.time()); time.sleep(0.6)"
    order = tmp_path / "order.txt"
    jobs = [_job(n, tmp_path, stamp.format(path=str(order), name=n), after) for n, after in
            (("pretrain", ()), ("scratch", ()), ("pretrained", ("pretrain",)))]
    times = run_jobs(jobs, max_running=3)
    assert set(times) == {"pretrain", "scratch", "pretrained"}
    starts = {line.split()[0]: float(line.split()[1]) for line in order.read_text().splitlines()}
    assert abs(starts["scratch"] - starts["pretrain"]) < 0.5           # ran side by side
    assert starts["pretrained"] >= starts["pretrain"] + 0.6              # only after its dependency finished


def test_a_failed_job_stops_the_run_with_its_log_tail(tmp_path):
    jobs = [_job("broken", tmp_path, "import sys; print('bad plans'); sys.exit(3)"),
            _job("slow", tmp_path, "import time; time.sleep(30)")]
    with pytest.raises(SystemExit) as exc:
        run_jobs(jobs, max_running=2)
    assert "broken failed (exit 3)" in str(exc.value) and "bad plans" in str(exc.value)
    assert jobs[1].process.wait(timeout=5) != 0                          # the other job was killed


def test_report_means_over_seeds_and_differences(tmp_path, capsys):
    def dice(v):
        return {"mean": v, "per_label": {"1": v, "2": v}, "cases": 40}

    results = {"scratch": {0: dice(0.70), 1: dice(0.80)}, "pretrained_SMITTrainer": {0: dice(0.76), 1: dice(0.80)}}
    args = Namespace(finetune_seeds=[0, 1], preset="smit_small", device="cpu", method="smit", pretrain_batch=4,
                     finetune_epochs=2, finetune_iters=3, pretrain_epochs=1, pretrain_minutes=None,
                     msd=Path("msd"), work=tmp_path)
    report(args, {"train": ["a"] * 10, "val": ["b"] * 40}, results, {"pretrain": 12.0}, tmp_path, None)
    table = (tmp_path / "label_efficiency_smit.md").read_text()
    assert "fine-tune on 10 labelled cases, evaluate on 40 others" in table
    assert "| scratch | 0.7000 | 0.8000 | 0.7500 |  |" in table
    assert "| pretrained_SMITTrainer | 0.7600 | 0.8000 | 0.7800 | +3.00 points |" in table
