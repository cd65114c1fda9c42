"""Soft Dice + cross-entropy (labels) or + binary cross-entropy (regions), with deep supervision over the
network's lower-resolution outputs."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * (1 - soft Dice)`` over foreground classes.

    Dice is computed per sample (not over the whole batch) so the loss is a plain mean over samples: the
    gradient of a sharded batch under DistributedDataParallel then equals that of the whole batch.

    ``ignore_label`` (nnU-Net v2's ``ignore``): voxels with that target value are left out of both terms, as if
    they were not in the patch; per sample, CE is the mean over its annotated voxels (still a plain mean over
    samples, for the reason above). A sample with no annotated voxel contributes 0.
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1e-5,
                 include_background: bool = False, ignore_label: int | None = None):
        super().__init__()
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.smooth = smooth
        self.include_background = include_background
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, K, *spatial); ``target`` (B, 1, *spatial) integer labels."""
        target = target[:, 0].long()
        logits = logits.float()
        axes = tuple(range(2, logits.ndim))
        if self.ignore_label is None:
            ce = F.cross_entropy(logits, target)
            mask = None
        else:
            mask = target != self.ignore_label
            target = torch.where(mask, target, torch.zeros_like(target))  # any valid class; masked out below
            voxel_ce = F.cross_entropy(logits, target, reduction="none") * mask
            per_sample = voxel_ce.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
            ce = per_sample.mean()
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
        if mask is not None:
            keep = mask.unsqueeze(1).to(probs.dtype)
            probs, onehot = probs * keep, onehot * keep
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        intersection = (probs * onehot).sum(axes)
        denominator = probs.sum(axes) + onehot.sum(axes)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth)
        return self.ce_weight * ce + self.dice_weight * (1 - dice.mean())


class RegionDiceBCELoss(nn.Module):
    """nnU-Net v2's region loss: ``bce_weight * BCE + dice_weight * (1 - soft Dice)`` on sigmoid outputs, one
    channel per (possibly overlapping) region, no background channel.

    The integer target is turned into one binary map per region here (voxel in region = its label is one of the
    region's values), so deep supervision downsamples plain labels as for softmax training. As ``DiceCELoss``:
    per sample (a plain mean over samples), and voxels of ``ignore_label`` are left out of both terms.
    """

    def __init__(self, regions: Sequence[Sequence[int]], bce_weight: float = 1.0, dice_weight: float = 1.0,
                 smooth: float = 1e-5, ignore_label: int | None = None):
        super().__init__()
        self.regions = [tuple(int(v) for v in r) for r in regions]
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.smooth = smooth
        self.ignore_label = ignore_label

    def region_targets(self, target: torch.Tensor) -> torch.Tensor:
        """(B, 1, *spatial) labels -> (B, R, *spatial) float binary region maps."""
        labels = target[:, 0].long()
        return torch.stack([torch.isin(labels, torch.tensor(r, device=labels.device)) for r in self.regions],
                           1).float()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if logits.shape[1] != len(self.regions):
            raise ValueError(f"{logits.shape[1]} output channels but {len(self.regions)} regions")
        regions = self.region_targets(target)
        mask = torch.ones_like(target, dtype=logits.dtype) if self.ignore_label is None else \
            (target != self.ignore_label).to(logits.dtype)  # (B, 1, *spatial)
        bce = F.binary_cross_entropy_with_logits(logits, regions, reduction="none") * mask
        per_sample = bce.flatten(1).sum(1) / (mask.flatten(1).sum(1) * len(self.regions)).clamp_min(1)
        probs, regions = torch.sigmoid(logits) * mask, regions * mask
        axes = tuple(range(2, logits.ndim))
        intersection = (probs * regions).sum(axes)
        denominator = probs.sum(axes) + regions.sum(axes)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth)
        return self.bce_weight * per_sample.mean() + self.dice_weight * (1 - dice.mean())


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's weighting: halve per level, ignore the coarsest level, normalise to sum 1."""
    weights = [1 / 2 ** i for i in range(num_outputs)]
    if num_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer labels (B, 1, *spatial) to ``shape`` (keeps the ignore value as is)."""
    if tuple(target.shape[2:]) == tuple(shape):
        return target
    return F.interpolate(target.float(), size=tuple(shape), mode="nearest").to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over each output of a deep-supervision list; a single tensor passes through.

    ``maps`` after the target (e.g. a semi-supervised step's region masks) are brought to each output's size with
    the target (nearest) and passed on in the same order."""

    def __init__(self, loss: nn.Module | Callable[..., torch.Tensor], weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else list(weights)

    def forward(self, outputs, target: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target, *maps)
        weights = self.weights or deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"{len(outputs)} deep-supervision outputs but {len(weights)} weights")
        total = outputs[0].new_zeros(())
        for weight, out in zip(weights, outputs):
            if weight:
                shape = out.shape[2:]
                total = total + weight * self.loss(out, *(downsample_target(m, shape) for m in (target, *maps)))
        return total
