"""Learning-rate schedule: linear warmup, then cosine or polynomial decay, stepped once per iteration.

The state is just the step count and the schedule's shape, so a resumed run continues on the same curve and a
run extended with more epochs stretches the decay over the new total.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer


class WarmupDecaySchedule:
    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, decay: str = "cosine",
                 poly_exponent: float = 0.9, min_lr_fraction: float = 0.0):
        if decay not in ("cosine", "poly", "constant"):
            raise ValueError(f"unknown decay {decay!r}; use cosine, poly or constant")
        self.optimizer = optimizer
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps - 1))
        self.decay, self.poly_exponent, self.min_lr_fraction = decay, poly_exponent, min_lr_fraction
        self.step_count = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.decay == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * progress))
        elif self.decay == "poly":
            f = (1 - progress) ** self.poly_exponent
        else:
            f = 1.0
        return self.min_lr_fraction + (1 - self.min_lr_fraction) * f

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        # Only the position is restored; the total comes from the current run (so --epochs can extend a run).
        self.step_count = int(state["step_count"])
        self._apply()
