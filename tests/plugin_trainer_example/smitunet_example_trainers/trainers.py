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

    def train_step(self, batch):
        hang = os.environ.get("SMITUNET_TEST_HANG_AT")
        if hang:
            epoch, iteration = (int(v) for v in hang.split(":"))
            if self.iteration == epoch * self.iters_per_epoch + iteration:
                with open(os.environ["SMITUNET_TEST_HANG_MARKER"], "w") as f:
                    f.write("hanging\n")
                time.sleep(600)
        return super().train_step(batch)


class SkipNonFiniteTrainer(SMITTrainer):
    """Overrides only ``train_step``: a batch whose loss is not finite is skipped instead of stepped on, and each
    step's iteration and whether it was taken go to ``steps.txt`` in the fold folder."""

    def train_step(self, batch):
        data = batch["data"].to(self.device)
        target = batch["seg"].to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss(self.model(data), target)
        taken = bool(torch.isfinite(loss))
        with open(self.ctx.output_dir / "steps.txt", "a") as f:
            f.write(f"{self.iteration} {int(taken)}\n")
        if taken:
            self.optimize(loss)
        else:
            self.lr_schedule.step()  # the schedule still counts the iteration (exact resume)
        return float(loss.detach())


class TwoConvTrainer(SMITTrainer):
    """Trains a plug-in architecture; its builder is recorded in the checkpoints so that prediction rebuilds it."""

    network_builder = "smitunet_example_trainers.networks:build_two_conv"
    validation_mirror_axes = None


class OwnNetworkWithoutBuilderTrainer(SMITTrainer):
    """Returns its own network from build_network without a builder: refused, prediction could not rebuild it."""

    def build_network(self, cfg):
        from smitunet_example_trainers.networks import TwoConvNet

        return TwoConvNet(cfg.kwargs["in_channels"], cfg.kwargs["num_classes"])
