"""One pretraining step's losses: masked reconstruction, masked patch-token and cross-view global distillation;
SMART adds class-token co-distillation with an attention-guided mask, GMIM's Siamese variant replaces the
distillation by a cross-correlation to an unmasked, intensity-augmented target view.

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
from smitunet.pretraining.gmim import gmim_mask, hierarchical_remasks, target_views
from smitunet.pretraining.losses import (cross_correlation_loss, distillation_loss, masked_l1, masked_mse,
                                         teacher_probabilities)
from smitunet.pretraining.masking import (attention_guided_mask, block_mask, block_tokens_for, masked_fraction_at,
                                          scores_to_grid, token_dropout_mask, tokens_to_voxels)


@dataclass
class StepMasks:
    """Masks of one step for the stacked views: the student's token mask, GMIM's deeper-stage re-masks,
    SMART's teacher token dropout, SMART's random priorities for the attention-guided mask (``tokens`` is then
    built in the step, from the teacher's attention) and GMIM's augmented target views (each None when the
    method does not use it)."""

    tokens: torch.Tensor
    stage: list[torch.Tensor] | None = None
    teacher_dropout: torch.Tensor | None = None
    priority: torch.Tensor | None = None
    target_views: torch.Tensor | None = None

    def to(self, device: torch.device) -> "StepMasks":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return StepMasks(self.tokens.to(device), None if self.stage is None else [m.to(device) for m in self.stage],
                         move(self.teacher_dropout), move(self.priority), move(self.target_views))


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
    if settings.uses_siamese:
        return siamese_losses(student, teacher, views, masks, settings, grid, token_stride, stage_factors)
    if settings.uses_class_attention:  # the teacher first: its class attention decides the student's mask
        with torch.no_grad():
            target = teacher(views, token_dropout=masks.teacher_dropout, reconstruct=False)
        masks = replace(masks, tokens=guided_tokens(target["class_attention"], masks.priority, settings, grid,
                                                    stage_factors[-1]))
        out = student(views, mask=masks.tokens, stage_masks=masks.stage)
    else:  # student first, as the recorded SMIT runs did (any stochastic depth draws in this order)
        out = student(views, mask=masks.tokens, stage_masks=masks.stage)
        with torch.no_grad():
            target = teacher(views, token_dropout=masks.teacher_dropout, reconstruct=False)
    hidden = hidden_tokens(masks, grid, stage_factors)
    rec = masked_l1(out["reconstruction"], views, tokens_to_voxels(hidden, grid, token_stride))

    weights = masked_fraction_at(hidden, grid, stage_factors[-1])  # masked share of each deepest token
    patch_probs = teacher_probabilities(target["patch_logits"], centers["patch"], teacher_temp)
    patch = distillation_loss(out["patch_logits"], patch_probs, settings.student_temperature, weights)

    glob = cross_view_distillation(out["global_logits"], target["global_logits"], centers["global"], teacher_temp,
                                   settings)
    total = settings.weight_reconstruction * rec + settings.weight_patch * patch + settings.weight_global * glob
    terms = {"reconstruction": float(rec.detach()), "patch": float(patch.detach()), "global": float(glob.detach())}
    teacher_logits = {"patch": target["patch_logits"], "global": target["global_logits"]}
    if settings.uses_class_attention:
        cls = cross_view_distillation(out["class_logits"], target["class_logits"], centers["class"], teacher_temp,
                                      settings)
        total = total + settings.weight_class * cls
        terms["class"] = float(cls.detach())
        teacher_logits["class"] = target["class_logits"]
    return total, {"loss": float(total.detach()), **terms}, teacher_logits


def cross_view_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
                            teacher_temp: float, settings: PretrainSettings) -> torch.Tensor:
    """DINO's cross-view term: each view's student output learns the other view's centred, sharpened teacher
    output (item i of ``[view1; view2]`` is paired with item i of the other half; class tokens k with k)."""
    probs = teacher_probabilities(teacher_logits, center, teacher_temp)
    half = probs.shape[0] // 2
    swapped = torch.cat([probs[half:], probs[:half]])
    return distillation_loss(student_logits, swapped, settings.student_temperature)


def guided_tokens(attention: torch.Tensor, priority: torch.Tensor, settings: PretrainSettings, grid: Sequence[int],
                  deepest_factor: Sequence[int]) -> torch.Tensor:
    """SMART's student mask from the teacher's class attention ``(B, heads, K, N_deep)``: mean over heads and
    class tokens ranks the deepest tokens; nearest upsampling puts the ranking on the mask's token grid."""
    scores = scores_to_grid(attention.mean(dim=(1, 2)), grid, deepest_factor)
    return attention_guided_mask(scores, priority, settings.mask_ratio, settings.attention_mask_share)


def siamese_losses(online: nn.Module, target: nn.Module, views: torch.Tensor, masks: StepMasks,
                   settings: PretrainSettings, grid: Sequence[int], token_stride: Sequence[int],
                   stage_factors: Sequence[Sequence[int]]) -> tuple[torch.Tensor, dict[str, float], dict]:
    """GMIM: MSE reconstruction of the masked voxels plus the cross-correlation between the online branch's
    projected deepest tokens (masked view) and the target's (the same crop unmasked, intensity-augmented).

    The items of C are all deepest tokens of all crops in the batch (token i of the target lies where token i of
    the online crop does), each of the ``projection_dim`` features standardised over them as Barlow Twins'
    BatchNorm does over its batch. The reference computes one C per crop over its tokens, unstandardised; pooling
    gives C more items than the few deepest tokens of a small crop (fewer than ``projection_dim`` would leave it
    rank-deficient), and standardising makes C a correlation that feature scaling cannot game.
    """
    out = online(views, mask=masks.tokens, stage_masks=masks.stage, distill=False, project=True)
    with torch.no_grad():
        goal = target(masks.target_views, distill=False, project=True, reconstruct=False)
    hidden = hidden_tokens(masks, grid, stage_factors)
    rec = masked_mse(out["reconstruction"], views, tokens_to_voxels(hidden, grid, token_stride))
    dim = out["projection"].shape[-1]
    corr = cross_correlation_loss(out["projection"].reshape(-1, dim), goal["projection"].reshape(-1, dim),
                                  settings.correlation_lambda)
    total = settings.weight_reconstruction * rec + settings.weight_correlation * corr
    return total, {"loss": float(total.detach()), "reconstruction": float(rec.detach()),
                   "correlation": float(corr.detach())}, {}


def make_step_masks(views: np.ndarray, settings: PretrainSettings, grid: Sequence[int], token_stride: Sequence[int],
                    stage_factors: Sequence[Sequence[int]], rng: np.random.Generator) -> StepMasks:
    """The student's mask for each stacked view by ``settings.method``, plus SMART's teacher token dropout."""
    n = views.shape[0]
    stage = None
    if settings.method == "gmim":
        gmim = replace(settings.gmim, ratio=settings.mask_ratio)
        tokens = gmim_mask(views, grid, token_stride, gmim, rng)
        stage = hierarchical_remasks(tokens, grid, stage_factors[1:], gmim.remask_ratio, rng)
    elif settings.uses_class_attention:  # placeholder: the step replaces it by the attention-guided mask
        tokens = torch.zeros(n, int(np.prod(grid)), dtype=torch.bool)
    else:
        tokens = block_mask(n, grid, settings.mask_ratio, block_tokens_for(settings.block_voxels, token_stride, grid),
                            rng)
    dropout = priority = targets = None
    if settings.method == "smart" and settings.teacher_drop_rate > 0:
        dropout = token_dropout_mask(n, int(np.prod(grid)), settings.teacher_drop_rate, rng)
    if settings.uses_class_attention:
        priority = torch.from_numpy(rng.random((n, int(np.prod(grid)))))
    if settings.uses_siamese:
        targets = torch.from_numpy(target_views(views, rng))
    return StepMasks(tokens, stage, dropout, priority, targets)
