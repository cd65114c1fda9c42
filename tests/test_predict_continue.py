import os
import signal
import subprocess
import sys
import time

import numpy as np

from smitunet.imageio import Geometry, read_image, write_image
from support.prediction import save_tiny_model, tiny_plans

GEO = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (40, 40, 32))


def _inputs(folder, n):
    rng = np.random.default_rng(0)
    for i in range(n):
        write_image(rng.normal(size=GEO.shape_zyx).astype(np.float32), GEO, folder / f"case{i:02d}_0000.nii.gz")


def _outputs(folder):
    """Finished predictions only: a killed run may leave its hidden temporary ``.<case>...part.nii.gz`` behind,
    which pathlib's glob would also match."""
    return [p for p in folder.glob("*.nii.gz") if not p.name.startswith(".")]


def _predict_cmd(inp, out, *extra):
    code = "from smitunet.inference.cli import main; main()"
    return [sys.executable, "-c", code, "-i", str(inp), "-o", str(out), "-npp", "0", "--disable_tta", *extra]


def test_killed_run_continues_with_only_missing_cases(smitunet_dirs, tmp_path):
    save_tiny_model(smitunet_dirs["results"], tiny_plans())
    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp, 6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_predict_cmd(inp, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(_outputs(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in _outputs(out)}
    assert 2 <= len(finished) < 6, "the run should have been killed part-way"
    for name in finished:  # every visible output is complete and readable
        assert read_image(out / name)[0].shape == GEO.shape_zyx
    result = subprocess.run(_predict_cmd(inp, out, "--continue_prediction"), env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"continuing: {len(finished)} case(s) already predicted, {6 - len(finished)} to go" in result.stderr
    assert f"predicted {6 - len(finished)} case(s)" in result.stdout
    now = {p.name: p.stat().st_mtime_ns for p in _outputs(out)}
    assert len(now) == 6
    assert all(now[name] == mtime for name, mtime in finished.items())  # finished cases were not redone
    assert not [p for p in out.iterdir() if ".part" in p.name]
