"""Trainers: what to train (network, loss, optimiser, schedule, augmentation, sampling) as small methods.

A plug-in subclasses ``Trainer`` (or a built-in) and overrides only what it changes. How training runs
(the epoch loop, checkpoints, logging, fold validation) lives in ``loop``, ``checkpointing``, ``logger`` and
``validation`` and is shared by every trainer.

Default schedules (what a GPU user should run; ``--epochs/--iters_per_epoch`` override them):
- ``ConvUNetTrainer``: nnU-Net's 1000 epochs x 250 iterations, SGD (Nesterov, momentum 0.99) with poly decay.
- ``SMITTrainer``: 500 epochs x 250 iterations, AdamW with 5 % linear warmup then cosine decay. Half of
  nnU-Net's budget because AdamW + cosine converges in fewer steps than SGD + poly, and fine-tuning starts
  from a pretrained encoder; transformers from scratch benefit from the full 1000 (``--epochs 1000``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smitunet.plans import ConfigurationPlan, NetworkConfig, Plans
from smitunet.training.augmentation import AugmentationParams, no_augmentation_transforms, training_transforms
from smitunet.training.augmentation import rotation_angles, sampling_patch_size
from smitunet.training.data import PatchLoader, PreprocessedCases, label_index_map
from smitunet.training.distributed import DistContext
from smitunet.training.losses import DeepSupervisionLoss, DiceCELoss
from smitunet.training.schedule import WarmupDecaySchedule


@dataclass
class TrainingOptions:
    epochs: int | None = None             # None: the trainer's default
    iters_per_epoch: int | None = None
    num_workers: int = 2                  # background augmentation processes; 0 = in the training process
    seed: int = 0
    pretrained: Path | None = None
    export_probabilities: bool = False    # --npz: also save softmax probabilities during fold validation
    disable_tta: bool = False             # --disable_tta: fold validation without test-time mirroring


@dataclass
class TrainingContext:
    """Where and what a trainer trains; filled in by the CLI."""

    plans: Plans
    configuration: str
    fold: str | int
    dataset_json: dict
    preprocessed_dataset_dir: Path
    output_dir: Path                      # .../TRAINER__PLANS__CONFIG/fold_F
    trainer_name: str
    device: torch.device
    dist: DistContext
    options: TrainingOptions


class Trainer:
    """Base trainer. Override the small methods below; keep the loop untouched."""

    default_epochs = 500
    default_iters_per_epoch = 250
    max_val_iterations = 50               # pseudo-Dice batches per epoch (fewer for short runs)
    initial_lr = 1e-3
    weight_decay = 1e-2
    warmup_fraction = 0.05
    lr_decay = "cosine"
    grad_clip_norm = 12.0
    oversample_foreground = 1 / 3
    ema_momentum = 0.9                    # EMA of the pseudo-Dice that selects checkpoint_best
    validation_mirror_axes: tuple[int, ...] | None = (0, 1, 2)  # test-time mirroring in fold validation

    def __init__(self, ctx: TrainingContext):
        self.ctx = ctx
        self.plans = ctx.plans
        self.config: ConfigurationPlan = ctx.plans.configuration(ctx.configuration)
        self.device = ctx.device
        self.options = ctx.options

    # -- schedule ------------------------------------------------------------------------------------
    @property
    def num_epochs(self) -> int:
        return int(self.options.epochs or self.default_epochs)

    @property
    def iters_per_epoch(self) -> int:
        return int(self.options.iters_per_epoch or self.default_iters_per_epoch)

    @property
    def val_iterations(self) -> int:
        return max(1, min(self.max_val_iterations, self.iters_per_epoch // 5))

    # -- network -------------------------------------------------------------------------------------
    def network_config(self) -> NetworkConfig:
        """The network as the plans describe it; ``kwargs`` are stored in every checkpoint."""
        kwargs = dict(self.config.network.kwargs)
        kwargs["deep_supervision"] = True
        return NetworkConfig(self.config.network.name, kwargs)

    def build_network(self, cfg: NetworkConfig) -> nn.Module:
        from smitunet.networks import create_network

        return create_network(cfg.name, **cfg.kwargs)

    def load_pretrained(self, network: nn.Module, path: Path):
        """Load pretrained encoder weights through the checkpoint adapter; returns its report."""
        from smitunet.networks.checkpoint_adapter import load_pretrained

        return load_pretrained(network, path)

    # -- optimisation --------------------------------------------------------------------------------
    def build_loss(self) -> nn.Module:
        return DeepSupervisionLoss(DiceCELoss())

    def parameter_groups(self, network: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in network.parameters() if p.requires_grad], "lr": self.initial_lr}]

    def build_optimizer(self, network: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameter_groups(network), lr=self.initial_lr, weight_decay=self.weight_decay)

    def build_lr_schedule(self, optimizer: torch.optim.Optimizer, total_steps: int) -> WarmupDecaySchedule:
        return WarmupDecaySchedule(optimizer, total_steps, int(self.warmup_fraction * total_steps), self.lr_decay)

    # -- data ----------------------------------------------------------------------------------------
    def augmentation_params(self) -> AugmentationParams | None:
        """None disables augmentation (patches are cut at the network's size)."""
        return AugmentationParams()

    def sampling_patch_size(self) -> list[int]:
        params = self.augmentation_params()
        if params is None:
            return list(self.config.patch_size)
        return sampling_patch_size(self.config.patch_size, rotation_angles(self.config.spacing, params),
                                   params.scale_range)

    def training_transforms(self):
        params = self.augmentation_params()
        if params is None:
            return no_augmentation_transforms()
        return training_transforms(self.config.patch_size, self.config.spacing, params)

    def build_train_loader(self, cases: PreprocessedCases, sample_indices, start_batch: int) -> PatchLoader:
        return PatchLoader(cases, self.sampling_patch_size(), self.config.batch_size, sample_indices,
                           seed=self.options.seed, start_batch=start_batch,
                           oversample_foreground=self.oversample_foreground, num_workers=self.options.num_workers,
                           label_map=label_index_map(self.plans.labels.values()))

    def build_val_loader(self, cases: PreprocessedCases, sample_indices) -> PatchLoader:
        # A fixed seed offset: the same validation patches every epoch, so the pseudo-Dice curve is not noise.
        return PatchLoader(cases, self.config.patch_size, self.config.batch_size, sample_indices,
                           seed=self.options.seed + 7919, start_batch=0,
                           oversample_foreground=self.oversample_foreground, num_workers=1,
                           label_map=label_index_map(self.plans.labels.values()))


class SMITTrainer(Trainer):
    """The SMIT Swin U-Net of the plans; ``--pretrained`` fine-tunes its encoder at a lower learning rate."""

    initial_lr = 5e-4
    weight_decay = 1e-2
    grad_clip_norm = 5.0
    encoder_lr_scale = 0.25               # pretrained encoder learns 4x slower than the fresh decoder

    def parameter_groups(self, network: nn.Module) -> list[dict[str, Any]]:
        encoder = getattr(network, "encoder", None)
        if self.options.pretrained is None or encoder is None:
            return super().parameter_groups(network)
        enc_ids = {id(p) for p in encoder.parameters()}
        enc = [p for p in network.parameters() if id(p) in enc_ids and p.requires_grad]
        rest = [p for p in network.parameters() if id(p) not in enc_ids and p.requires_grad]
        return [{"params": enc, "lr": self.initial_lr * self.encoder_lr_scale},
                {"params": rest, "lr": self.initial_lr}]


class ConvUNetTrainer(Trainer):
    """The convolutional U-Net baseline at the plans' patch size, trained as nnU-Net trains it."""

    default_epochs = 1000
    initial_lr = 1e-2
    weight_decay = 3e-5
    warmup_fraction = 0.0
    lr_decay = "poly"

    def network_config(self) -> NetworkConfig:
        from smitunet.networks.registry import get_preset

        own = self.config.network.kwargs
        kwargs = dict(get_preset("conv_unet"))
        # Same input, output, patch and strides as the plans' network, so the patch stays divisible.
        shared = ("in_channels", "num_classes", "patch_size", "num_stages", "strides", "norm")
        kwargs.update({key: own[key] for key in shared if key in own})
        kwargs.setdefault("in_channels", self.plans.num_channels)
        kwargs.setdefault("num_classes", self.plans.num_classes)
        kwargs.setdefault("patch_size", list(self.config.patch_size))
        kwargs["deep_supervision"] = True
        return NetworkConfig("conv_unet", kwargs)

    def build_optimizer(self, network: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameter_groups(network), lr=self.initial_lr, momentum=0.99, nesterov=True,
                               weight_decay=self.weight_decay)
