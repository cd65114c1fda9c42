"""Pretraining losses: L1 / MSE on masked voxels, self-distillation cross-entropy, centering, teacher temperature,
GMIM's cross-correlation (redundancy reduction)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked voxels only (``voxel_mask`` (B, 1, ...) broadcasts over channels).

    Zero (with a gradient path) when nothing is masked, so a step never divides by zero.
    """
    mask = voxel_mask.to(prediction.dtype).expand_as(prediction)
    total = mask.sum()
    return ((prediction - target).abs() * mask).sum() / total.clamp_min(1.0)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked voxels only (GMIM's reconstruction); zero when nothing is masked."""
    mask = voxel_mask.to(prediction.dtype).expand_as(prediction)
    return ((prediction - target).square() * mask).sum() / mask.sum().clamp_min(1.0)


def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit (biased) variance of each feature over the items axis (-2): BatchNorm without affine."""
    mean = z.mean(dim=-2, keepdim=True)
    var = z.var(dim=-2, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = 0.005,
                           normalise: bool = True) -> torch.Tensor:
    """Barlow Twins' redundancy reduction: C = z_a^T z_b / n over the n items of ``(n, d)`` (or ``(B, n, d)``:
    one C per sample, averaged), loss = sum_i (C_ii - 1)^2 + lambd * sum_{i != j} C_ij^2.

    ``normalise`` standardises every feature over the items first (Barlow Twins' BatchNorm), so C is a correlation
    matrix: its diagonal can reach 1 and the loss cannot be lowered by scaling the features.
    """
    if normalise:
        z_a, z_b = standardise(z_a), standardise(z_b)
    c = z_a.transpose(-2, -1) @ z_b / z_a.shape[-2]
    diagonal = torch.diagonal(c, dim1=-2, dim2=-1)
    on = (diagonal - 1).square().sum(dim=-1)
    off = c.square().sum(dim=(-2, -1)) - diagonal.square().sum(dim=-1)
    return (on + lambd * off).mean()


def teacher_probabilities(teacher_logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """Centred, sharpened teacher distribution (DINO): softmax((t - center) / temperature)."""
    return F.softmax((teacher_logits - center) / temperature, dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temperature: float,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy H(teacher, student) over the last axis, averaged over items (weighted when ``weights``).

    For patch tokens ``weights`` is the masked fraction of each token, so visible tokens add nothing.
    """
    ce = -(teacher_probs * F.log_softmax(student_logits / student_temperature, dim=-1)).sum(dim=-1)
    if weights is None:
        return ce.mean()
    weights = weights.to(ce.dtype)
    return (ce * weights).sum() / weights.sum().clamp_min(1e-6)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """center <- m * center + (1 - m) * mean of the teacher outputs (averaged over every process under DDP)."""
    flat = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    batch_sum = flat.sum(dim=0, keepdim=True)
    count = torch.tensor([float(flat.shape[0])], device=flat.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_sum)
        dist.all_reduce(count)
    batch_mean = batch_sum / count.clamp_min(1.0)
    return center * momentum + batch_mean.view_as(center) * (1.0 - momentum)


def teacher_temperature(step: int, warmup_steps: int, start: float = 0.04, end: float = 0.07) -> float:
    """Linear warm-up of the teacher temperature from ``start`` to ``end`` over ``warmup_steps``, then ``end``."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
