"""One pretraining step's losses: masked reconstruction, masked patch-token and cross-view global distillation.

Inputs are the two views of each sample stacked as one batch ``[view1; view2]`` (2B items), so the student and the
teacher each run one forward pass per step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smitunet.pretraining.config import PretrainSettings
from smitunet.pretraining.gmim import gmim_mask, hierarchical_remasks
from smitunet.pretraining.losses import distillation_loss, masked_l1, teacher_probabilities
from smitunet.pretraining.masking import (block_mask, block_tokens_for, masked_fraction_at, token_dropout_mask,
                                          tokens_to_voxels)


@dataclass
class StepMasks:
    """Masks of one step for the stacked views: the student's token mask, GMIM's deeper-stage re-masks and
    SMART's teacher token dropout (each None when the method does not use it)."""

    tokens: torch.Tensor
    stage: list[torch.Tensor] | None = None
    teacher_dropout: torch.Tensor | None = None

    def to(self, device: torch.device) -> "StepMasks":
        return StepMasks(self.tokens.to(device), None if self.stage is None else [m.to(device) for m in self.stage],
                         None if self.teacher_dropout is None else self.teacher_dropout.to(device))


def hidden_tokens(masks: StepMasks, grid: Sequence[int], stage_factors: Sequence[Sequence[int]]) -> torch.Tensor:
    """Every token the student could not see: the token mask plus the deeper re-masks brought to the token grid."""
    hidden = masks.tokens.view(masks.tokens.shape[0], *grid)
    for remask, factor in zip(masks.stage or [], stage_factors[1:]):
        coarse = [g // f for g, f in zip(grid, factor)]
        up = remask.view(remask.shape[0], 1, *coarse).to(torch.float32)
        up = F.interpolate(up, size=list(grid), mode="nearest")[:, 0] > 0.5
        hidden = hidden | up
    return hidden.flatten(1)


def pretraining_losses(student: nn.Module, teacher: nn.Module, views: torch.Tensor, masks: StepMasks,
                       centers: dict[str, torch.Tensor], teacher_temp: float, settings: PretrainSettings,
                       grid: Sequence[int], token_stride: Sequence[int], stage_factors: Sequence[Sequence[int]]
                       ) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
    """(weighted total, per-term values, teacher logits for the centre update)."""
    out = student(views, mask=masks.tokens, stage_masks=masks.stage)
    with torch.no_grad():
        target = teacher(views, token_dropout=masks.teacher_dropout, reconstruct=False)
    hidden = hidden_tokens(masks, grid, stage_factors)
    rec = masked_l1(out["reconstruction"], views, tokens_to_voxels(hidden, grid, token_stride))

    weights = masked_fraction_at(hidden, grid, stage_factors[-1])  # masked share of each deepest token
    patch_probs = teacher_probabilities(target["patch_logits"], centers["patch"], teacher_temp)
    patch = distillation_loss(out["patch_logits"], patch_probs, settings.student_temperature, weights)

    half = views.shape[0] // 2
    global_probs = teacher_probabilities(target["global_logits"], centers["global"], teacher_temp)
    swapped = torch.cat([global_probs[half:], global_probs[:half]])  # view 1 learns from view 2 and back
    glob = distillation_loss(out["global_logits"], swapped, settings.student_temperature)

    total = settings.weight_reconstruction * rec + settings.weight_patch * patch + settings.weight_global * glob
    terms = {"loss": float(total.detach()), "reconstruction": float(rec.detach()), "patch": float(patch.detach()),
             "global": float(glob.detach())}
    return total, terms, {"patch": target["patch_logits"], "global": target["global_logits"]}


def make_step_masks(views: np.ndarray, settings: PretrainSettings, grid: Sequence[int], token_stride: Sequence[int],
                    stage_factors: Sequence[Sequence[int]], rng: np.random.Generator) -> StepMasks:
    """The student's mask for each stacked view by ``settings.method``, plus SMART's teacher token dropout."""
    n = views.shape[0]
    stage = None
    if settings.method == "gmim":
        gmim = replace(settings.gmim, ratio=settings.mask_ratio)
        tokens = gmim_mask(views, grid, token_stride, gmim, rng)
        stage = hierarchical_remasks(tokens, grid, stage_factors[1:], gmim.remask_ratio, rng)
    else:
        tokens = block_mask(n, grid, settings.mask_ratio, block_tokens_for(settings.block_voxels, token_stride, grid),
                            rng)
    dropout = None
    if settings.method == "smart" and settings.teacher_drop_rate > 0:
        dropout = token_dropout_mask(n, int(np.prod(grid)), settings.teacher_drop_rate, rng)
    return StepMasks(tokens, stage, dropout)
