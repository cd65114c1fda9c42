"""Checkpoint contents load with weights_only=True; RNG states round-trip; the LR schedule resumes in place."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from smitunet.checkpoint_io import load_checkpoint
from smitunet.plans import NetworkConfig
from smitunet.training.checkpointing import (build_training_checkpoint, capture_rng_state, checkpoint_to_resume,
                                             restore_rng_state, save_training_checkpoint)
from smitunet.training.logger import empty_logs
from smitunet.training.schedule import WarmupDecaySchedule


def _optimizer():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_is_weights_only_loadable_and_complete(tmp_path):
    model, opt = _optimizer()
    schedule = WarmupDecaySchedule(opt, 100, 10)
    logs = empty_logs()
    logs["train_loss"].append(0.5)
    ckpt = build_training_checkpoint(
        network_config=NetworkConfig("smit_tiny", {"in_channels": 1}), state_dict=model.state_dict(), optimizer=opt,
        scheduler=schedule, scaler=torch.amp.GradScaler("cuda", enabled=False), epoch=3, logs=logs,
        extra={"best_ema_pseudo_dice": 0.7}, plans_dict={"plans_name": "p"}, configuration="3d_fullres",
        trainer_name="SMITTrainer", dataset_json={"labels": {"background": 0}}, fold=0, inference_mirror_axes=(1, 2))
    save_training_checkpoint(ckpt, tmp_path / "checkpoint_latest.pt")
    loaded = load_checkpoint(tmp_path / "checkpoint_latest.pt")  # torch.load(weights_only=True)
    for key in ("format", "kind", "version", "network", "state_dict", "optimizer", "scheduler", "scaler", "epoch",
                "rng", "logs", "plans", "configuration", "trainer_name", "dataset_json", "fold"):
        assert key in loaded, key
    assert loaded["inference_mirror_axes"] == [1, 2]
    assert loaded["kind"] == "training" and loaded["epoch"] == 3 and loaded["logs"]["train_loss"] == [0.5]
    assert torch.equal(loaded["state_dict"]["weight"], model.state_dict()["weight"])
    assert checkpoint_to_resume(tmp_path) == tmp_path / "checkpoint_latest.pt"


def test_rng_states_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


@pytest.mark.parametrize("decay", ["cosine", "poly"])
def test_schedule_warmup_decay_and_resume(decay):
    _, opt = _optimizer()
    schedule = WarmupDecaySchedule(opt, total_steps=100, warmup_steps=10, decay=decay)
    lrs = []
    for _ in range(100):
        lrs.append(schedule.get_last_lr()[0])
        schedule.step()
    assert lrs[0] < lrs[5] < lrs[10] and lrs[10] == pytest.approx(1e-3)  # warmup, then the peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-4  # monotone decay

    _, opt2 = _optimizer()
    resumed = WarmupDecaySchedule(opt2, total_steps=100, warmup_steps=10, decay=decay)
    resumed.load_state_dict({"step_count": 42})
    assert resumed.get_last_lr()[0] == pytest.approx(lrs[42])


def test_training_checkpoint_is_a_typed_contract(tmp_path):
    """Written from a TrainingCheckpoint, read back as one with every field typed; a plain dict written by hand with
    only the required fields (a checkpoint for prediction) loads with empty resume fields."""
    from smitunet.checkpoint_io import TrainingCheckpoint, load_training_checkpoint

    model, opt = _optimizer()
    ckpt = build_training_checkpoint(
        network_config=NetworkConfig("smit_tiny", {"in_channels": 1}), state_dict=model.state_dict(), optimizer=opt,
        scheduler=WarmupDecaySchedule(opt, 100, 10), scaler=torch.amp.GradScaler("cuda", enabled=False), epoch=2,
        logs=empty_logs(), extra={"trainer": {"k": 1}}, plans_dict={"plans_name": "p"}, configuration="3d_fullres",
        trainer_name="SMITTrainer", dataset_json={}, fold="all", network_builder="pkg.mod:build")
    assert isinstance(ckpt, TrainingCheckpoint)
    ckpt.save(tmp_path / "a.pt")
    back = load_training_checkpoint(tmp_path / "a.pt")
    assert isinstance(back, TrainingCheckpoint) and back.epoch == 2 and back.fold == "all"
    assert back.network == {"name": "smit_tiny", "kwargs": {"in_channels": 1}, "builder": "pkg.mod:build"}
    assert back.trainer_state == {"trainer": {"k": 1}} and back.optimizer["param_groups"]
    torch.save({"format": "smitunet", "kind": "training", "version": 1, "network": {"name": "n", "kwargs": {}},
                "state_dict": {}, "plans": {}, "configuration": "3d_fullres", "epoch": 5}, tmp_path / "b.pt")
    minimal = TrainingCheckpoint.load(tmp_path / "b.pt")
    assert minimal.epoch == 5 and minimal.optimizer == {} and minimal.inference_mirror_axes == [0, 1, 2]
