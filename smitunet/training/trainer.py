"""Trainers: what to train and how one step goes (network, loss, optimiser, schedule, augmentation, sampling,
``train_step``, ``validation_step`` and the epoch hooks) as small methods.

A plug-in subclasses ``Trainer`` (or a built-in) and overrides only what it changes. The bookkeeping around the
steps (setup, resume, checkpoints, logging, fold validation) is the private engine of ``loop``; it sets the
objects the steps use on the trainer (``network``, ``model``, ``loss``, ``optimizer``, ``lr_schedule``,
``grad_scaler``) before the first step, and ``Trainer.run`` starts it.

Default schedules (what a GPU user should run; ``--epochs/--iters_per_epoch`` override them):
- ``ConvUNetTrainer``: nnU-Net's 1000 epochs x 250 iterations, SGD (Nesterov, momentum 0.99) with poly decay.
- ``SMITTrainer``: 500 epochs x 250 iterations, AdamW with 5 % linear warmup then cosine decay. Half of
  nnU-Net's budget because AdamW + cosine converges in fewer steps than SGD + poly, and fine-tuning starts
  from a pretrained encoder; transformers from scratch benefit from the full 1000 (``--epochs 1000``).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smitunet.errors import SmitunetError
from smitunet.paths import previous_stage_dir
from smitunet.plans import ConfigurationPlan, NetworkConfig, Plans, label_values_of
from smitunet.training.augmentation import AugmentationParams, no_augmentation_transforms, training_transforms
from smitunet.training.augmentation import rotation_angles, sampling_patch_size
from smitunet.training.data import (CascadeCases, PatchLoader, PreprocessedCases, label_index_map,
                                    missing_previous_stage)
from smitunet.utils.distributed import DistContext
from smitunet.utils.precision import autocast_dtype
from smitunet.training.losses import DeepSupervisionLoss, DiceCELoss, RegionDiceBCELoss
from smitunet.training.schedule import WarmupDecaySchedule


@dataclass
class TrainingOptions:
    epochs: int | None = None             # None: the trainer's default
    iters_per_epoch: int | None = None
    num_workers: int = 2                  # background augmentation processes; 0 = in the training process
    seed: int = 0
    pretrained: Path | None = None
    accept_partial_pretrained: bool = False   # load even when < 90 % of the encoder's tensors match
    pretrained_branch: str = "teacher"        # which encoder of a student/teacher checkpoint
    labelled_cases: list[str] | None = None   # --labelled_cases: the fold's other training cases are unlabelled
    monai_merge_order: str | None = None      # a MONAI file's patch-merging order (None: detected)
    export_probabilities: bool = False    # --npz: also save softmax probabilities during fold validation
    disable_tta: bool = False             # --disable_tta: fold validation without test-time mirroring
    compile: bool = False                 # --compile: the training step's forward through torch.compile
    precision: str = "auto"               # --precision: auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16


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
    # test-time mirroring in fold validation and prediction, (z, y, x) numbering (2d mirrors y and x)
    validation_mirror_axes: tuple[int, ...] | None = (0, 1, 2)

    def __init__(self, ctx: TrainingContext):
        self.ctx = ctx
        self.plans = ctx.plans
        self.config: ConfigurationPlan = ctx.plans.configuration(ctx.configuration)
        self.device = ctx.device
        self.options = ctx.options
        # Set by the engine before the first step (see the module doc).
        self.network: nn.Module | None = None       # the bare network (checkpoints, validation)
        self.model: nn.Module | None = None         # what the step calls: the network or its DDP wrapper
        self.loss: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_schedule: WarmupDecaySchedule | None = None
        self.grad_scaler: torch.amp.GradScaler | None = None
        self.loss_scale = 1.0                       # this process's share of the global batch x processes
        self.data_folder: Path | None = None        # the configuration's preprocessed cases
        self.unlabelled_cases: list[str] = []       # training cases used without their labels (--labelled_cases)

    def run(self, continue_training: bool = False, validation_only: bool = False):
        """Train this fold (or resume it; ``validation_only`` loads checkpoint_final) and return the
        ``TrainedFold`` that ``smitunet.api.train`` hands to the fold validation."""
        from smitunet.training.loop import TrainingLoop

        return TrainingLoop(self).run(continue_training=continue_training, validation_only=validation_only)

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

    # A plug-in architecture: "package.module:function", called as function(cfg.name, **cfg.kwargs); recorded in
    # every checkpoint so that prediction rebuilds the same network (None: the built-in registry).
    network_builder: str | None = None

    def build_network(self, cfg: NetworkConfig) -> nn.Module:
        from smitunet.networks.registry import build_from_config

        return build_from_config(cfg.name, cfg.kwargs, self.network_builder)

    def load_pretrained(self, network: nn.Module, path: Path):
        """Load pretrained encoder weights through the checkpoint adapter; returns its report."""
        from smitunet.networks.checkpoint_adapter import load_pretrained

        return load_pretrained(network, path, prefer=self.options.pretrained_branch,
                               accept_partial=self.options.accept_partial_pretrained,
                               monai_merge=self.options.monai_merge_order)

    # -- optimisation --------------------------------------------------------------------------------
    def build_loss(self) -> nn.Module:
        if self.plans.has_regions:  # sigmoid outputs, one per region (nnU-Net v2's region-based training)
            return DeepSupervisionLoss(RegionDiceBCELoss(list(self.plans.foreground_regions.values()),
                                                         ignore_label=self.plans.ignore_label))
        return DeepSupervisionLoss(DiceCELoss(ignore_label=self.plans.ignore_label))

    def parameter_groups(self, network: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in network.parameters() if p.requires_grad], "lr": self.initial_lr}]

    def build_optimizer(self, network: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameter_groups(network), lr=self.initial_lr, weight_decay=self.weight_decay)

    def build_lr_schedule(self, optimizer: torch.optim.Optimizer, total_steps: int) -> WarmupDecaySchedule:
        return WarmupDecaySchedule(optimizer, total_steps, int(self.warmup_fraction * total_steps), self.lr_decay)

    # -- steps ---------------------------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """Training iterations done so far over the whole run (resumes included)."""
        return self.lr_schedule.step_count

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """``--precision``: float16 on CUDA by default; on the CPU fp32 unless bf16 is asked for (oneDNN's
        bf16 kernels halve the step where the CPU has AVX512-bf16 or AMX)."""
        return autocast_dtype(self.options.precision, self.device, cuda_auto=torch.float16)

    def autocast(self):
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def train_step(self, batch: dict) -> float:
        """One optimisation step on an augmented batch (``data``, ``seg``); returns the loss."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["seg"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss(self.model(data), target)
        self.optimize(loss)
        return float(loss.detach())

    def optimize(self, loss: torch.Tensor) -> None:
        """Backward, gradient clipping, optimiser and schedule step (with the AMP gradient scaler)."""
        # DDP averages gradients over ranks; scaling by the shard's share makes that the global-batch mean.
        self.grad_scaler.scale(loss * self.loss_scale).backward()
        for p in self.network.parameters():
            if not p.requires_grad:  # frozen now (e.g. a warm-up): no update, whatever DDP left in .grad
                p.grad = None
        self.grad_scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip_norm)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.lr_schedule.step()

    @torch.no_grad()
    def validation_step(self, batch: dict) -> tuple[float, np.ndarray]:
        """Loss and (tp, fp, fn) voxel counts per evaluated label (``plans.evaluated_labels``: foreground labels,
        or regions), shape (3, L), on a validation batch (voxels of the ignore label are not counted)."""
        data = batch["data"].to(self.device)
        target = batch["seg"].to(self.device)
        with self.autocast():
            output = self.network(data)
            loss = self.loss(output, target)
        logits = output[0] if isinstance(output, (list, tuple)) else output
        ref = target[:, 0].long()
        annotated = None if self.plans.ignore_label is None else ref != self.plans.ignore_label
        evaluated = self.plans.evaluated_labels
        stats = np.zeros((3, len(evaluated)))
        pred_index = None if self.plans.has_regions else logits.argmax(1)
        for i, label in enumerate(evaluated):
            if self.plans.has_regions:  # sigmoid > 0.5, i.e. logit > 0
                p, r = logits[:, i] > 0, torch.isin(ref, torch.tensor(label, device=ref.device))
            else:
                p, r = pred_index == label, ref == label
            if annotated is not None:
                p = p & annotated
            stats[:, i] = [(p & r).sum().item(), (p & ~r).sum().item(), (~p & r).sum().item()]
        return float(loss), stats

    def extra_state(self) -> dict[str, Any]:
        """What a trainer keeps beyond the network and optimiser (e.g. a teacher), in every checkpoint, so that
        ``--c`` resumes exactly; tensors and plain containers only."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore ``extra_state`` when resuming."""

    # -- hooks (nothing by default) --------------------------------------------------------------------
    def on_train_start(self) -> None:
        """After setup and resume, before the first training step of this process."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first step of ``epoch``."""

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        """After ``epoch``'s validation patches; ``record`` is what the log keeps of it."""

    def on_train_end(self) -> None:
        """After the last epoch, before checkpoint_final and the fold validation."""

    # -- data ----------------------------------------------------------------------------------------
    def augmentation_params(self) -> AugmentationParams | None:
        """None disables augmentation (patches are cut at the network's size)."""
        return AugmentationParams()

    def sampling_patch_size(self) -> list[int]:
        params = self.augmentation_params()
        if params is None:
            return list(self.config.patch_size)
        return sampling_patch_size(self.config.patch_size,
                                   rotation_angles(self.config.spacing, params, self.config.patch_size),
                                   params.scale_range)

    def training_transforms(self):
        params = self.augmentation_params()
        if params is None:
            return no_augmentation_transforms(self.previous_stage_labels)
        return training_transforms(self.config.patch_size, self.config.spacing, params, self.previous_stage_labels)

    def validation_transforms(self):
        """The pseudo-Dice patches: no augmentation."""
        return no_augmentation_transforms(self.previous_stage_labels)

    # -- cascade (nnU-Net's 3d_cascade_fullres) ---------------------------------------------------------
    @property
    def is_cascaded(self) -> bool:
        return self.config.previous_stage is not None

    @property
    def previous_stage_labels(self) -> list[int] | None:
        """The labels whose one-hot channels follow the image channels of a cascade's input (None: no cascade)."""
        return list(self.plans.foreground_labels) if self.is_cascaded else None

    def previous_stage_folder(self) -> Path | None:
        """``TRAINER__PLANS__3d_lowres/predicted_next_stage/3d_cascade_fullres``: the previous stage's out-of-fold
        predictions, written by its five fold validations (as nnU-Net)."""
        if not self.is_cascaded:
            return None
        return previous_stage_dir(Path(self.ctx.output_dir).parent, self.config.previous_stage)

    def build_cases(self, cases: list[str]) -> PreprocessedCases:
        """The labelled cases to sample patches from (a cascade's with their previous-stage segmentation)."""
        if not self.is_cascaded:
            return PreprocessedCases(self.data_folder, cases)
        folder = self.previous_stage_folder()
        missing = missing_previous_stage(folder, cases)
        if missing:
            raise SmitunetError(self._missing_previous_stage(folder, missing))
        return CascadeCases(self.data_folder, cases, folder)

    def _missing_previous_stage(self, folder: Path, missing: list[str]) -> str:
        from smitunet.plans import DEFAULT_PLANS_NAME
        from smitunet.training.registry import DEFAULT_TRAINER
        from smitunet.training.splits import SPLITS_FILE
        from smitunet.utils.files import load_json

        previous, case = self.config.previous_stage, missing[0]
        splits_file = self.ctx.preprocessed_dataset_dir / SPLITS_FILE
        splits = load_json(splits_file) if splits_file.is_file() else []
        fold = next((str(i) for i, s in enumerate(splits) if case in s.get("val", [])), "F")
        options = "".join([f" -tr {self.ctx.trainer_name}" if self.ctx.trainer_name != DEFAULT_TRAINER else "",
                           f" -p {self.plans.plans_name}" if self.plans.plans_name != DEFAULT_PLANS_NAME else ""])
        more = f" and {len(missing) - 1} more case(s)" if len(missing) > 1 else ""
        # a fold trained before its validation wrote them needs only the validation again (--val), not training
        trained = (folder.parent.parent / f"fold_{fold}" / "checkpoint_final.pt").is_file()
        return (f"{folder}: no {previous} prediction of case {case}{more}; {self.ctx.configuration} trains on the "
                f"out-of-fold predictions of all five {previous} folds: run smitunet_train {self.plans.dataset_name} "
                f"{previous} {fold}{options}{' --val' if trained else ''}")

    def label_map(self):
        """Label value -> network channel for the softmax loss (None: identity). Region losses read the raw values
        (a region lists them, e.g. BraTS's 1, 2, 4), so they are never remapped."""
        return None if self.plans.has_regions else label_index_map(label_values_of(self.plans.labels))

    def build_train_loader(self, cases: PreprocessedCases, sample_indices, start_batch: int) -> PatchLoader:
        return PatchLoader(cases, self.sampling_patch_size(), self.config.batch_size, sample_indices,
                           seed=self.options.seed, start_batch=start_batch,
                           oversample_foreground=self.oversample_foreground, num_workers=self.options.num_workers,
                           label_map=self.label_map())

    def build_val_loader(self, cases: PreprocessedCases, sample_indices) -> PatchLoader:
        # A fixed seed offset: the same validation patches every epoch, so the pseudo-Dice curve is not noise.
        return PatchLoader(cases, self.config.patch_size, self.config.batch_size, sample_indices,
                           seed=self.options.seed + 7919, start_batch=0,
                           oversample_foreground=self.oversample_foreground, num_workers=1,
                           label_map=self.label_map())


_ENCODER_DEPTH = re.compile(r"^(?:layers\.(\d+)|norm(\d+))\.")


def encoder_depth(name: str) -> int:
    """Depth of an encoder parameter for layer-wise decay: 0 patch embedding (and mask token), i+1 stage i."""
    m = _ENCODER_DEPTH.match(name)
    return 0 if m is None else int(m.group(1) or m.group(2)) + 1


class SMITTrainer(Trainer):
    """The SMIT Swin U-Net of the plans. With ``--pretrained`` the fine-tuning recipe applies:

    - layer-wise learning-rate decay: encoder stage i learns at ``initial_lr * layer_decay ** (num_stages - i)``,
      the patch embedding one factor lower still, the fresh decoder at ``initial_lr`` (BEiT's rule over stages);
    - ``encoder_warmup_iters``: the encoder stays frozen for the first K iterations while the fresh decoder
      learns to read it (0: off).
    """

    initial_lr = 5e-4
    weight_decay = 1e-2
    grad_clip_norm = 5.0
    layer_decay = 0.75
    encoder_warmup_iters = 0

    def parameter_groups(self, network: nn.Module) -> list[dict[str, Any]]:
        encoder = getattr(network, "encoder", None)
        if self.options.pretrained is None or encoder is None:
            return super().parameter_groups(network)
        depth_of = {id(p): encoder_depth(name) for name, p in encoder.named_parameters()}
        top = encoder.num_stages  # depth of the last stage
        by_depth: dict[int, list[nn.Parameter]] = {}
        for p in network.parameters():
            if p.requires_grad:
                by_depth.setdefault(depth_of.get(id(p), top + 1), []).append(p)
        return [{"params": by_depth[d], "lr": self.initial_lr * self.layer_decay ** (top + 1 - d)}
                for d in sorted(by_depth)]

    def encoder_frozen(self) -> bool:
        return self.options.pretrained is not None and self.iteration < self.encoder_warmup_iters

    def train_step(self, batch: dict) -> float:
        encoder = getattr(self.network, "encoder", None)  # a plug-in architecture may have none
        if encoder is not None:
            frozen = self.encoder_frozen()
            for p in encoder.parameters():
                p.requires_grad_(not frozen)  # frozen: no encoder backward at all, and no update
        return super().train_step(batch)


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
        shared = ("in_channels", "num_classes", "patch_size", "num_stages", "strides", "norm", "spatial_dims")
        kwargs.update({key: own[key] for key in shared if key in own})
        kwargs.setdefault("in_channels", self.plans.num_channels)
        kwargs.setdefault("num_classes", self.plans.num_classes)
        kwargs.setdefault("patch_size", list(self.config.patch_size))
        kwargs["deep_supervision"] = True
        return NetworkConfig("conv_unet", kwargs)

    def build_optimizer(self, network: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameter_groups(network), lr=self.initial_lr, momentum=0.99, nesterov=True,
                               weight_decay=self.weight_decay)
