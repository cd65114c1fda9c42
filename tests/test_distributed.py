"""torchrun: 2 CPU processes (gloo) sharing the global batch match 1 process on the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from smitunet.checkpoint_io import load_checkpoint
from smitunet.training.cli import main as train_main
from support.training import REPO_ROOT, cli_env, fold_dir, make_preprocessed_dataset

PLUGIN_DIR = Path(__file__).parent / "plugin_trainer_example"
# No augmentation: the batches are then a pure function of (seed, batch index, sample index), identical
# whether one process computes the global batch or two processes compute one half each.
TRAINER = "smitunet_example_trainers.trainers:NoAugmentationTrainer"
ARGS = ["901", "3d_fullres", "0", "-tr", TRAINER, "--epochs", "2", "--iters_per_epoch", "2", "--num_workers", "0"]


def test_two_process_torchrun_matches_single_process(smitunet_dirs, tmp_path, monkeypatch, plugin_path, capsys):
    make_preprocessed_dataset(smitunet_dirs["preprocessed"], batch_size=2)
    ddp_results = tmp_path / "ddp_results"
    env = dict(cli_env([PLUGIN_DIR]), smitunet_results=str(ddp_results))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "smitunet.training.cli", *ARGS], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "(x2 processes share it)" in proc.stdout
    assert proc.stdout.count("epoch 1:") == 1  # only rank 0 logs (and writes)

    train_main(ARGS)  # the single-process reference, same global batch of 2
    capsys.readouterr()

    single = load_checkpoint(fold_dir(smitunet_dirs["results"], "NoAugmentationTrainer") / "checkpoint_final.pt")
    ddp = load_checkpoint(fold_dir(ddp_results, "NoAugmentationTrainer") / "checkpoint_final.pt")
    assert ddp["epoch"] == single["epoch"] == 2
    worst = max((ddp["state_dict"][k] - v).abs().max().item() for k, v in single["state_dict"].items())
    assert worst < 2e-4, worst  # only the order of the gradient all-reduce differs
    assert single["logs"]["train_loss"][0] != single["logs"]["train_loss"][1]  # it did train
    np.testing.assert_allclose(ddp["logs"]["train_loss"], single["logs"]["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(ddp["logs"]["val_loss"], single["logs"]["val_loss"], rtol=1e-4)
    assert (fold_dir(ddp_results, "NoAugmentationTrainer") / "validation" / "summary.json").is_file()
