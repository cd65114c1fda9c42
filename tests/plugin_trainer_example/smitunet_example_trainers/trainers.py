"""Trainers that override a few small methods of the built-ins."""

from __future__ import annotations

import os
import time

import torch

from smitunet.training.losses import DeepSupervisionLoss, DiceCELoss
from smitunet.training.trainer import SMITTrainer


class ExampleTrainer(SMITTrainer):
    """A plug-in that changes the loss weighting, the optimiser and the oversampling; marks its checkpoints."""

    oversample_foreground = 0.5
    initial_lr = 1e-3

    def build_loss(self):
        return DeepSupervisionLoss(DiceCELoss(ce_weight=0.5, dice_weight=1.0))

    def build_optimizer(self, network):
        self.optimizer_built_by_plugin = True
        return torch.optim.Adam(self.parameter_groups(network), lr=self.initial_lr)


class NoAugmentationTrainer(SMITTrainer):
    """No augmentation: the torchrun test compares 1 and 2 processes on identical batches."""

    validation_mirror_axes = None

    def augmentation_params(self):
        return None


class HangingTrainer(SMITTrainer):
    """With ``SMITUNET_TEST_HANG_AT=E:I`` it blocks inside iteration I of epoch E: a reproducible point to
    SIGKILL a run mid-epoch. Without the variable it trains exactly like SMITTrainer."""

    validation_mirror_axes = None

    def build_loss(self):
        loss = super().build_loss()
        hang = os.environ.get("SMITUNET_TEST_HANG_AT")
        if not hang:
            return loss
        epoch, iteration = (int(v) for v in hang.split(":"))
        marker = os.environ["SMITUNET_TEST_HANG_MARKER"]
        training_calls = {"n": 0}
        target_call = epoch * self.iters_per_epoch + iteration

        def hanging_forward(outputs, target, _inner=loss.forward):
            if torch.is_grad_enabled():  # training steps only, not the validation patches
                if training_calls["n"] == target_call:
                    with open(marker, "w") as f:
                        f.write("hanging\n")
                    time.sleep(600)
                training_calls["n"] += 1
            return _inner(outputs, target)

        loss.forward = hanging_forward
        return loss
