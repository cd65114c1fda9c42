"""The momentum teacher: an exact copy of the student at the start, then an exponential moving average.

Unlike the official SMIT code, the momentum follows one cosine from ``base`` to ``final`` over the whole run
(``total_steps = epochs * iters_per_epoch``), so it does not restart every epoch, and the teacher starts as the
student instead of an independent random initialisation.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_at(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Cosine schedule: ``base`` at step 0, ``final`` at ``total_steps``."""
    if total_steps <= 0:
        return final
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def make_teacher(student: nn.Module) -> nn.Module:
    """Exact copy of the student (encoder and heads) that never takes gradients."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter (matched by name)."""
    student_params = dict(student.named_parameters())
    pairs = [(t, student_params[name].detach()) for name, t in teacher.named_parameters()]
    teacher_side = [t for t, _ in pairs]
    torch._foreach_mul_(teacher_side, momentum)
    torch._foreach_add_(teacher_side, [s for _, s in pairs], alpha=1.0 - momentum)
    student_buffers = dict(student.named_buffers())
    for name, buffer in teacher.named_buffers():
        buffer.copy_(student_buffers[name])
