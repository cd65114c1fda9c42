"""smitunet_train through its CLI: SIGKILL mid-epoch and exact resume, extension, outputs, plug-in trainers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from smitunet.checkpoint_io import load_checkpoint
from smitunet.imageio import read_image
from smitunet.training.cli import main as train_main
from smitunet.training.schedule import WarmupDecaySchedule
from smitunet.training.trainer import SMITTrainer
from smitunet.utils.files import load_json
from support.plugins import install_example_plugin
from support.training import REPO_ROOT, cli_env, fold_dir, make_preprocessed_dataset

PLUGIN_DIR = Path(__file__).parent / "plugin_trainer_example"
HANGING = "smitunet_example_trainers.trainers:HangingTrainer"


class PolyScheduleTrainer(SMITTrainer):
    """Defined in this test module, trained through the CLI as ``test_train_cli:PolyScheduleTrainer``."""

    validation_mirror_axes = None
    oversample_foreground = 1.0

    def build_lr_schedule(self, optimizer, total_steps):
        return WarmupDecaySchedule(optimizer, total_steps, warmup_steps=0, decay="poly")


def train(args: list[str], capsys) -> str:
    """Run smitunet_train's main in this process (no second torch import on 2 busy cores); return stdout."""
    capsys.readouterr()
    train_main(args)
    return capsys.readouterr().out


def train_fails(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def dataset(smitunet_dirs):
    make_preprocessed_dataset(smitunet_dirs["preprocessed"])
    return smitunet_dirs


def _args(trainer: str, epochs: int, iters: int = 3, workers: int = 0, *extra: str) -> list[str]:
    return ["901", "3d_fullres", "0", "-tr", trainer, "--epochs", str(epochs), "--iters_per_epoch", str(iters),
            "--num_workers", str(workers), *extra]


def _kill_mid_epoch(args: list[str], env: dict, marker: Path) -> None:
    env = dict(env, SMITUNET_TEST_HANG_AT="1:1", SMITUNET_TEST_HANG_MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "smitunet.training.cli", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended before the kill point: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("training did not reach the kill point in time")
        time.sleep(0.1)
    workers = _children(proc.pid)
    assert workers, "expected a background augmentation worker"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.time() + 20
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "background workers outlived the killed training run"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_mid_epoch_resume_is_exact_and_extends(dataset, tmp_path, capsys, monkeypatch, plugin_path):
    fold = fold_dir(dataset["results"], "HangingTrainer")
    # The killed run is a real process (SIGKILL), with one background augmentation worker.
    _kill_mid_epoch(_args(HANGING, 3, 3, 1), cli_env([PLUGIN_DIR]), tmp_path / "hanging")

    # Killed inside epoch 1: the latest checkpoint holds exactly the one completed epoch and loads safely.
    latest = load_checkpoint(fold / "checkpoint_latest.pt")
    assert latest["epoch"] == 1 and latest["scheduler"]["step_count"] == 3
    assert not (fold / "checkpoint_final.pt").exists()
    assert not list(fold.glob(".*.part*"))  # no half-written file left behind

    out = train(_args(HANGING, 3, 3, 0, "--c"), capsys)
    assert "resumed from checkpoint_latest.pt: 1 completed epochs, step 3" in out
    final = load_checkpoint(fold / "checkpoint_final.pt")
    assert final["epoch"] == 3 and final["scheduler"]["step_count"] == 9
    assert len(final["logs"]["train_loss"]) == 3

    # The same run without interruption ends with the same weights and curves.
    monkeypatch.setenv("smitunet_results", str(tmp_path / "reference"))
    train(_args(HANGING, 3, 3, 0), capsys)
    monkeypatch.setenv("smitunet_results", str(dataset["results"]))
    ref = load_checkpoint(fold_dir(tmp_path / "reference", "HangingTrainer") / "checkpoint_final.pt")
    for key, value in ref["state_dict"].items():
        assert torch.allclose(final["state_dict"][key], value, atol=1e-6, rtol=1e-5), key
    np.testing.assert_allclose(final["logs"]["train_loss"], ref["logs"]["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(final["logs"]["lr"], ref["logs"]["lr"], rtol=1e-9)

    # Outputs of a finished run.
    metrics = load_json(fold / "metrics.json")
    assert [row["epoch"] for row in metrics] == [0, 1, 2] and "pseudo_dice_a" in metrics[0]
    assert (fold / "metrics.csv").read_text().count("\n") == 4
    assert (fold / "progress.png").stat().st_size > 10_000
    assert "epoch 2:" in (fold / "training_log.txt").read_text()
    summary = load_json(fold / "validation" / "summary.json")
    assert set(summary["mean"]) == {"1", "2"} and 0 <= summary["foreground_mean"]["dice"] <= 1
    for entry in summary["metric_per_case"]:
        seg, geometry = read_image(fold / "validation" / f"{entry['case']}.nii.gz")
        assert seg.shape == (20, 24, 20) and set(np.unique(seg)) <= {0, 1, 2}

    # A larger --epochs extends the finished run; the same --epochs again has nothing left to do.
    out = train(_args(HANGING, 4, 3, 0, "--c"), capsys)
    assert "resumed from checkpoint_final.pt: 3 completed epochs" in out
    assert load_checkpoint(fold / "checkpoint_final.pt")["epoch"] == 4
    out = train(_args(HANGING, 4, 3, 0, "--c"), capsys)
    assert "training already complete (4 epochs)" in out


def test_entry_point_plugin_trains_through_cli(dataset, tmp_path, capsys, monkeypatch, plugin_path):
    install_example_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    train(_args("ExampleTrainer", 1, 2, 0), capsys)
    ckpt = load_checkpoint(fold_dir(dataset["results"], "ExampleTrainer") / "checkpoint_final.pt")
    assert ckpt["trainer_name"] == "ExampleTrainer"
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(1e-3)  # the plug-in's own setting


def test_test_module_trainer_trains_through_cli(dataset, capsys):
    train(_args(f"{__name__}:PolyScheduleTrainer", 1, 2, 0), capsys)
    ckpt = load_checkpoint(fold_dir(dataset["results"], "PolyScheduleTrainer") / "checkpoint_final.pt")
    assert ckpt["trainer_name"].endswith(":PolyScheduleTrainer")
    assert ckpt["scheduler"]["decay"] == "poly"


def test_cli_errors_are_one_line(dataset, capsys):
    err = train_fails(_args("NopeTrainer", 1), capsys)
    assert "error: unknown trainer 'NopeTrainer'; available: SMITTrainer, ConvUNetTrainer" in err
    assert "fold 7 does not exist" in train_fails(["901", "3d_fullres", "7", "--epochs", "1"], capsys)
    assert "no configuration '2d'" in train_fails(["901", "2d", "0"], capsys)
    assert "--epochs must be at least 1" in train_fails(["901", "3d_fullres", "0", "--epochs", "0"], capsys)


def test_default_data_workers_follow_the_device(dataset):
    from smitunet.training.cli import build_parser, make_trainer
    from smitunet.utils.device import default_num_workers

    assert default_num_workers("cpu", cpu_count=64) == 2
    assert default_num_workers("cuda", cpu_count=16) == 12          # capped at nnU-Net's 12
    assert default_num_workers("cuda", cpu_count=8) == 7             # one core stays for the training process
    assert default_num_workers("cuda", world_size=4, cpu_count=16) == 3
    assert default_num_workers("cuda", world_size=8, cpu_count=8) == 2
    trainer = make_trainer(build_parser().parse_args(["901", "3d_fullres", "0", "--device", "cpu"]))
    assert trainer.options.num_workers == 2
    trainer = make_trainer(build_parser().parse_args(["901", "3d_fullres", "0", "--device", "cpu", "--num_workers", "0"]))
    assert trainer.options.num_workers == 0


def test_continue_from_a_weights_only_checkpoint_is_one_line(dataset, capsys):
    """A checkpoint that holds the contract's required fields only (weights for prediction) cannot be resumed."""
    train(_args("SMITTrainer", 1, 2, 0), capsys)
    path = fold_dir(dataset["results"], "SMITTrainer") / "checkpoint_final.pt"
    full = load_checkpoint(path)
    torch.save({k: full[k] for k in ("format", "kind", "version", "network", "state_dict", "plans", "configuration",
                                     "epoch")}, path)
    err = train_fails(_args("SMITTrainer", 2, 2, 0, "--c"), capsys)
    assert "checkpoint_final.pt: holds the weights only" in err and len(err.strip().splitlines()) == 1
