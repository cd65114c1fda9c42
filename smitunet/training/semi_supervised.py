"""Semi-supervised fine-tuning: a mean teacher and bidirectional copy-paste (BCP) between labelled and unlabelled
crops, as a trainer class (``-tr SMITSemiSupervisedTrainer``).

Each step takes a labelled batch (augmented, as every trainer's) and an unlabelled batch of the same size (the
fold's training cases outside ``--labelled_cases``, augmented the same way; their label files are never read). A
cuboid covering ``mix_fraction`` of each axis is cut at a random place; pair j mixes labelled crop j and
unlabelled crop j, in alternating directions (BCP, Bai et al. CVPR 2023):

- even j: the labelled crop with the unlabelled crop's cuboid pasted in;
- odd j: the unlabelled crop with the labelled crop's cuboid pasted in.

The student learns from the labelled crops as they are (the loss of ``SMITTrainer``) and, in the same forward pass,
from the mixed crops, with two losses as in BCP: one over the labelled voxels against their labels, plus one over the
unlabelled voxels where the teacher's probability reaches ``confidence``, against its pseudo-labels (the arg-max of
the teacher on the unmixed unlabelled crop), times ``unlabelled_weight`` and a ramp ``exp(-5 (1 - t/T)^2)`` over the
first ``rampup_fraction`` of the run. The weight multiplies the second loss, not its voxels: inside one Dice ratio a
per-voxel weight cancels out, and the pseudo-labels then taught at full strength from the first mixed step. The
teacher is an exponential moving average of the student (``teacher_momentum``), receives no gradients, and is kept
in every checkpoint, so ``--c`` resumes exactly. Checkpoints hold the student's weights: ``smitunet_predict`` and
the fold validation use the student (BCP's choice; the teacher trails it by about 1 / (1 - momentum) steps).

As in BCP's first stage, the first ``supervised_warmup_fraction`` of the run is the labelled-only step of
``SMITTrainer`` (the teacher follows the student by EMA meanwhile): a teacher that has not learnt anything yet only
teaches background, and on a short budget the mixing then costs more than the unlabelled crops bring (Left Atrium,
CPU protocol, 8 labelled: about 10 Dice points below labelled-only without the warm-up). As in BCP, each
pseudo-label class keeps only its largest connected component in the crop. Every output of the
deep-supervision pyramid is supervised, as in the labelled-only step.

Why the labelled crops are kept whole beside the mixed ones (``labelled_step``; BCP itself trains on the mixed crops
only): on a short budget the mixed-only step halves the labelled signal (a pair keeps 30 % or 70 % of its labelled
crop) while the pseudo-labels, from a teacher no better than the student, add little. On the Left Atrium CPU protocol
(8 labelled) the mixed-only step ended 6-10 Dice points below labelled-only training, its validation Dice falling as
soon as the mixed steps began, while the unlabelled weight was still near 0 on its ramp. Keeping the labelled crops
whole brought that to about 5-7 points below (3 seeds). Diagnosis rows on the same protocol put the rest on the
mixing itself: copy-paste with no pseudo-label loss at all scores as low, while pseudo-labels on unmixed crops lose
3-4 points. A CPU-sized crop holds most of the atrium's surroundings, the anatomy a pasted cuboid breaks.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smitunet.errors import SmitunetError
from smitunet.postprocessing import keep_largest_component
from smitunet.training.batches import BatchStream
from smitunet.training.data import PatchLoader, UnlabelledCases
from smitunet.training.losses import DeepSupervisionLoss
from smitunet.training.trainer import SMITTrainer
from smitunet.utils.distributed import shard_of_batch


def cuboid_mask(shape, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """Float (z, y, x) mask: 1 inside a cuboid of ``round(fraction * size)`` voxels per axis at a random place."""
    mask = torch.zeros(tuple(int(s) for s in shape))
    sizes = [max(1, int(round(fraction * s))) for s in shape]
    lower = [int(rng.integers(0, s - c + 1)) for s, c in zip(shape, sizes)]
    mask[tuple(slice(lo, lo + c) for lo, c in zip(lower, sizes))] = 1.0
    return mask


def copy_paste(labelled: torch.Tensor, unlabelled: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional copy-paste of (B, C, *spatial) batches: returns the mixed batch and, per voxel, whether it
    came from the labelled crop (B, 1, *spatial). Pair j: even j pastes the unlabelled cuboid into the labelled
    crop, odd j the labelled cuboid into the unlabelled crop."""
    inside = mask.to(labelled.dtype)[None, None]                        # (1, 1, *spatial)
    odd = (torch.arange(labelled.shape[0], device=labelled.device) % 2 == 1).view(-1, 1, *[1] * mask.ndim)
    from_labelled = torch.where(odd, inside, 1 - inside)                  # (B, 1, *spatial)
    mixed = labelled * from_labelled + unlabelled * (1 - from_labelled)
    return mixed, from_labelled


def region_dice_ce(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor, smooth: float = 1e-5,
                   batch_dice: bool = True) -> torch.Tensor:
    """Cross-entropy plus soft Dice (foreground classes) over the voxels where ``region`` (B, 1, *spatial) is 1,
    both normalised over the region alone and the Dice pooled over the batch (BCP's masked losses; per sample
    without ``batch_dice``). A weight on the region's voxels would cancel out of the Dice ratio, so callers weight
    the returned value instead."""
    logits = logits.float()
    target = target[:, 0].long()
    m = region[:, 0].float()
    ce = (F.cross_entropy(logits, target, reduction="none") * m).sum() / m.sum().clamp(min=1.0)
    probs = torch.softmax(logits, 1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
    axes = (0, *range(2, logits.ndim)) if batch_dice else tuple(range(2, logits.ndim))
    mb = m[:, None]
    intersection = (probs * onehot * mb).sum(axes)
    denominator = (probs * mb).sum(axes) + (onehot * mb).sum(axes)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return ce + (1 - dice.mean())


def largest_component_pseudo_labels(pseudo: torch.Tensor, foreground: list[int]) -> torch.Tensor:
    """BCP's pseudo-label clean-up: per crop and foreground class, only the largest connected component stays;
    the rest becomes background. A teacher that over-segments (other bright blood pools, in LGE-MRI) would
    otherwise teach its own mistakes back to the student."""
    cleaned = pseudo.cpu().numpy().astype(np.int16)
    for b in range(cleaned.shape[0]):
        for label in foreground:
            keep_largest_component(cleaned[b, 0], label)
    return torch.from_numpy(cleaned).to(pseudo.device, pseudo.dtype)


def mixed_target(labels: torch.Tensor, pseudo: torch.Tensor, from_labelled: torch.Tensor, confident: torch.Tensor,
                 ignore_label: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target of the mixed crops and its two regions (B, 1, *spatial, 0/1): the labelled voxels, against their
    labels (less those of the ignore label, whose target gets a stand-in class so one-hot stays in range), and the
    unlabelled voxels where the teacher is ``confident``, against its pseudo-labels."""
    take = from_labelled.bool()
    target = torch.where(take, labels.long(), pseudo)
    labelled_region = take
    if ignore_label is not None:
        ignored = take & (labels == ignore_label)
        target = target.masked_fill(ignored, 0)
        labelled_region = take & ~ignored
    return target, labelled_region.float(), (~take & confident.bool()).float()


def split_output(output, first: int):
    """A network output (a tensor, or the deep-supervision list) split along the batch after ``first`` samples."""
    if isinstance(output, (list, tuple)):
        return [o[:first] for o in output], [o[first:] for o in output]
    return output[:first], output[first:]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter (buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def rampup(iteration: int, total: int, fraction: float) -> float:
    """Sigmoid-shaped ramp from ~0 to 1 over the first ``fraction`` of ``total`` iterations (mean teacher's)."""
    length = fraction * total
    if length <= 0 or iteration >= length:
        return 1.0
    return float(math.exp(-5.0 * (1.0 - iteration / length) ** 2))


class SMITSemiSupervisedTrainer(SMITTrainer):
    teacher_momentum = 0.99
    mix_fraction = 2 / 3           # cuboid side per axis (BCP)
    unlabelled_weight = 0.5        # BCP's alpha for the pseudo-labelled voxels
    confidence = 0.8               # pseudo-labels where the teacher is less sure carry no loss
    pseudo_largest_component = True  # BCP: only the largest connected component of each pseudo-label class
    rampup_fraction = 0.4          # of the semi-supervised iterations (after the warm-up)
    supervised_warmup_fraction = 0.5  # labelled-only steps first (BCP's pre-training stage)
    deep_supervision = True        # the mixed-crop loss on every output of the pyramid, not just the finest
    labelled_step = True           # the labelled crops, whole, in every mixed step too (see the module's docstring)
    unlabelled_seed_offset = 104729

    def __init__(self, ctx):
        super().__init__(ctx)
        self.teacher: nn.Module | None = None
        self._unlabelled: BatchStream | None = None

    # -- teacher --------------------------------------------------------------------------------------
    def _make_teacher(self) -> nn.Module:
        teacher = copy.deepcopy(self.network)
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.deep_supervision = False
        return teacher.eval()

    def extra_state(self) -> dict[str, Any]:
        return {} if self.teacher is None else {"teacher": self.teacher.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "teacher" in state:
            self.teacher = self._make_teacher()
            self.teacher.load_state_dict(state["teacher"])

    # -- data -----------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        if self.plans.has_regions:  # its pseudo-labels are a softmax arg-max
            raise SmitunetError(f"{type(self).__name__} does not support region-based labels yet")
        if self.is_cascaded:  # unlabelled cases have no previous-stage segmentation to read
            raise SmitunetError(f"{type(self).__name__} does not support {self.ctx.configuration} (a cascade) yet")
        if not self.unlabelled_cases:
            raise SmitunetError(f"{type(self).__name__} needs unlabelled cases: pass --labelled_cases FILE so that the "
                                "fold's other training cases are used without their labels")
        if self.teacher is None:  # a fresh run: the teacher starts as the student (after any pretrained loading)
            self.teacher = self._make_teacher()
        shard = shard_of_batch(self.config.batch_size, self.ctx.dist)
        loader = PatchLoader(UnlabelledCases(self.data_folder, self.unlabelled_cases), self.sampling_patch_size(),
                             self.config.batch_size, shard, seed=self.options.seed + self.unlabelled_seed_offset,
                             start_batch=max(0, self.iteration - self.warmup_iterations()), oversample_foreground=0.0,
                             num_workers=self.options.num_workers)
        self._unlabelled = BatchStream(loader, self.training_transforms(), self.options.num_workers)

    def on_train_end(self) -> None:
        if self._unlabelled is not None:
            self._unlabelled.close()
            self._unlabelled = None
        super().on_train_end()

    # -- the step -------------------------------------------------------------------------------------
    def warmup_iterations(self) -> int:
        return int(round(self.supervised_warmup_fraction * self.num_epochs * self.iters_per_epoch))

    def unlabelled_scale(self) -> float:
        warmup = self.warmup_iterations()
        total = self.num_epochs * self.iters_per_epoch - warmup
        return self.unlabelled_weight * rampup(self.iteration - warmup, total, self.rampup_fraction)

    def mixed_loss(self, output, target: torch.Tensor, labelled_region: torch.Tensor,
                   pseudo_region: torch.Tensor) -> torch.Tensor:
        """``mixed_output_loss`` on the finest output, or on every deep-supervision output (target and regions
        brought to its size, nearest), weighted as the labelled-only loss weights them."""
        if isinstance(output, (list, tuple)) and not self.deep_supervision:
            output = output[0]
        scale = self.unlabelled_scale()
        loss = DeepSupervisionLoss(lambda logits, t, labelled, pseudo: self.mixed_output_loss(logits, t, labelled,
                                                                                               pseudo, scale))
        return loss(output, target, labelled_region, pseudo_region)

    def mixed_output_loss(self, logits: torch.Tensor, target: torch.Tensor, labelled_region: torch.Tensor,
                          pseudo_region: torch.Tensor, scale: float) -> torch.Tensor:
        """One output's mixed-crop loss: ``region_dice_ce`` of the labelled region plus ``scale`` (the ramped
        ``unlabelled_weight``) times that of the confident pseudo-labelled region."""
        return region_dice_ce(logits, target, labelled_region) + scale * region_dice_ce(logits, target, pseudo_region)

    def train_step(self, batch: dict) -> float:
        if self.iteration < self.warmup_iterations():
            loss = super().train_step(batch)
            ema_update(self.teacher, self.network, self.teacher_momentum)
            return loss
        encoder = getattr(self.network, "encoder", None)
        if encoder is not None:
            frozen = self.encoder_frozen()
            for p in encoder.parameters():
                p.requires_grad_(not frozen)
        labelled = batch["data"].to(self.device, non_blocking=True)
        labels = batch["seg"].to(self.device, non_blocking=True)
        unlabelled = next(self._unlabelled)["data"].to(self.device, non_blocking=True)
        with torch.no_grad(), self.autocast():
            teacher_probs = torch.softmax(self.teacher(unlabelled).float(), 1)
        confident, pseudo = teacher_probs.max(1, keepdim=True)
        if self.pseudo_largest_component:
            pseudo = largest_component_pseudo_labels(pseudo, self.plans.foreground_labels)
        rng = np.random.default_rng([self.options.seed, self.iteration, 17])
        mask = cuboid_mask(labelled.shape[2:], self.mix_fraction, rng).to(self.device)
        mixed, from_labelled = copy_paste(labelled, unlabelled, mask)
        target, labelled_region, pseudo_region = mixed_target(labels, pseudo, from_labelled,
                                                              confident >= self.confidence, self.plans.ignore_label)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            if self.labelled_step:  # one forward pass over both (instance norm: each crop is normalised alone)
                output = self.model(torch.cat([labelled, mixed]))
                whole, mixed_output = split_output(output, labelled.shape[0])
                loss = self.loss(whole, labels) + self.mixed_loss(mixed_output, target, labelled_region, pseudo_region)
            else:
                loss = self.mixed_loss(self.model(mixed), target, labelled_region, pseudo_region)
        self.optimize(loss)
        ema_update(self.teacher, self.network, self.teacher_momentum)
        return float(loss.detach())
