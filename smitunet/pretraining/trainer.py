"""The pretraining run: student and momentum teacher, the step, per-epoch checkpoints, resume, logs, torchrun.

Files beside ``-o smit.pt`` (written by rank 0 only, atomically, every epoch): ``smit.pt`` (the teacher's
encoder in our format, usable after any epoch), ``smit_state.pt`` (everything ``--c`` needs: student, teacher,
optimizer, step, centres, RNG, logs), ``smit_log.json`` / ``smit_log.csv`` (per-term losses per epoch) and
``smit_progress.png``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from smitunet.checkpoint_io import load_checkpoint, save_checkpoint
from smitunet.errors import SmitunetError
from smitunet.networks import create_network
from smitunet.pretraining.config import PretrainSettings
from smitunet.pretraining.ema import ema_update, make_teacher, momentum_at
from smitunet.pretraining.export import save_official, save_pretrained
from smitunet.pretraining.losses import teacher_temperature, update_center
from smitunet.pretraining.model import PretrainNetwork
from smitunet.pretraining.objective import StepMasks, pretraining_losses
from smitunet.pretraining.progress import output_paths, terms_for, write_logs
from smitunet.pretraining.views import StepBatches, ViewSampler
from smitunet.utils.compile import maybe_compile
from smitunet.utils.precision import autocast_dtype
from smitunet.utils.distributed import DistContext
from smitunet.utils.log import logger

STATE_VERSION = 1
NO_DECAY_NAMES = ("mask_token", "relative_position_bias_table", "prototypes", "stage_mask_tokens")


@dataclass
class RunOptions:
    output: Path
    preset: str = "smit_small"
    patch: list[int] = field(default_factory=lambda: [96, 96, 96])
    network_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. strides / num_stages from plans
    epochs: int = 100
    iters_per_epoch: int = 250
    batch_size: int = 2
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    export_official: Path | None = None
    export_weights: str = "teacher"                                   # which encoder goes into smit.pt
    data_meta: dict[str, Any] = field(default_factory=dict)           # spacing, normalization, channel names
    num_workers: int = 2                                              # processes preparing steps ahead; 0 = inline
    compile: bool = False                                             # --compile: student and teacher forwards
    precision: str = "auto"                                           # --precision: auto/fp32 = fp32, bf16


def lr_at(step: int, total: int, settings: PretrainSettings) -> float:
    """Linear warm-up then cosine decay to ``min_lr`` over the whole run."""
    warmup = int(settings.lr_warmup_fraction * total)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return settings.min_lr + (settings.lr - settings.min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases, tokens and tables (DINO's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class PretrainingRun:
    def __init__(self, options: RunOptions, settings: PretrainSettings, volumes: Sequence[np.ndarray],
                 in_channels: int, dist: DistContext | None = None):
        settings.validate()
        self.options, self.settings, self.dist = options, settings, dist or DistContext()
        self.device = options.device
        torch.manual_seed(options.seed)  # same initial student (and so teacher) for the same seed
        model = create_network(options.preset, in_channels, 1, options.patch, **options.network_overrides)
        self.network = {"name": options.preset, "kwargs": dict(model.network_kwargs)}
        kwargs = self.network["kwargs"]
        self.student = PretrainNetwork(model.encoder, in_channels, kwargs["strides"], settings.out_dim,
                                       settings.hidden_dim, settings.bottleneck_dim,
                                       stage_mask_tokens=settings.method == "gmim",
                                       head_batch_norm=settings.head_batch_norm,
                                       class_tokens=settings.class_tokens if settings.uses_class_attention else 0,
                                       class_attention_depth=settings.class_attention_depth,
                                       projection_dim=settings.projection_dim if settings.uses_siamese else 0
                                       ).to(self.device)
        if self.dist.enabled and self.device.type == "cuda":  # head statistics over the global batch (DINO);
            # SyncBatchNorm has no CPU kernel, so gloo runs keep per-process statistics
            self.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        del model
        self.teacher = make_teacher(self.student)
        self.grid = [p // s for p, s in zip(options.patch, self.student.token_stride)]
        self.optimizer = torch.optim.AdamW(parameter_groups(self.student, settings.weight_decay), lr=settings.lr)
        centred = ("patch", "global", "class") if settings.uses_class_attention else ("patch", "global")
        self.centers = {name: torch.zeros(1, settings.out_dim, device=self.device) for name in centred}
        self.terms = terms_for(settings)
        self.sampler = ViewSampler(volumes, options.patch, options.batch_size, options.seed, self.dist.rank)
        self.step, self.epoch, self.rows = 0, 0, []
        self.paths = output_paths(Path(options.output))
        self.trained = self.student
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = DistributedDataParallel(self.student, device_ids=ids, find_unused_parameters=True)
        # --compile wraps only what the step calls: student and teacher stay the modules that are saved, exported
        # and EMA-updated (in place, so the teacher's compiled graph sees the new weights)
        self.trained = maybe_compile(self.trained, options.compile, self.device, distributed=self.dist.enabled,
                                     what="pretraining student")
        self.teacher_forward = maybe_compile(self.teacher, options.compile, self.device,
                                             distributed=self.dist.enabled, what="pretraining teacher")
        # Pretraining has no loss scaling, so only bf16 (float32's exponent range) is offered; auto stays fp32.
        if options.precision not in ("auto", "fp32", "bf16"):
            raise SmitunetError(f"--precision {options.precision}: pretraining runs in fp32 or bf16")
        self.autocast_dtype = None if options.precision == "auto" else autocast_dtype(options.precision, self.device)

    # -- schedule ------------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.options.epochs * self.options.iters_per_epoch

    def teacher_temp(self, step: int) -> float:
        warmup = int(self.settings.teacher_temperature_warmup_fraction * self.total_steps)
        return teacher_temperature(step, warmup, self.settings.warmup_teacher_temperature,
                                   self.settings.teacher_temperature)

    # -- one step -----------------------------------------------------------------------------------------
    def batch_stream(self):
        """Views and masks of every remaining step, prepared ahead by ``num_workers`` processes (same stream)."""
        steps = StepBatches(self.sampler, self.settings, self.grid, self.student.token_stride,
                            self.student.stage_factors, self.options.seed, self.dist.rank, self.step, self.total_steps)
        if self.options.num_workers == 0:
            return (steps[i] for i in range(len(steps)))
        loader = torch.utils.data.DataLoader(steps, batch_size=None, shuffle=False,
                                             num_workers=self.options.num_workers, prefetch_factor=4,
                                             pin_memory=self.device.type == "cuda")
        return iter(loader)

    def train_step(self, step: int, batch: tuple[torch.Tensor, StepMasks]) -> dict[str, float]:
        s = self.settings
        views, masks = batch
        views = views.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            total, terms, teacher_logits = pretraining_losses(
                self.trained, self.teacher_forward, views, masks.to(self.device), self.centers, self.teacher_temp(step),
                s, self.grid, self.student.token_stride, self.student.stage_factors)
        if not torch.isfinite(total):
            raise SmitunetError(f"pretraining diverged at step {step} (loss {float(total)}); lower --lr")
        lr = lr_at(step, self.total_steps, s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), s.grad_clip)
        self.optimizer.step()
        # GMIM's target is no moving average: it takes the online weights again after every step (momentum 0)
        momentum = 0.0 if s.uses_siamese else momentum_at(step, self.total_steps, s.momentum_base, s.momentum_final)
        ema_update(self.teacher, self.student, momentum)
        for name, logits in teacher_logits.items():
            self.centers[name] = update_center(self.centers[name], logits, s.center_momentum)
        return {**terms, "lr": lr, "momentum": momentum, "teacher_temperature": self.teacher_temp(step)}

    # -- epochs ------------------------------------------------------------------------------------------
    def run(self, continue_training: bool = False) -> None:
        if continue_training:
            self.resume()
        self._warn_short_teacher_horizon()
        show = self.dist.is_main and sys.stderr.isatty()
        stream = self.batch_stream()
        while self.epoch < self.options.epochs:
            start, sums, last = time.time(), dict.fromkeys(self.terms, 0.0), {}
            bar = tqdm(range(self.options.iters_per_epoch), desc=f"epoch {self.epoch}", disable=not show)
            for _ in bar:
                last = self.train_step(self.step, next(stream))
                self.step += 1
                for key in self.terms:
                    sums[key] += last[key]
                bar.set_postfix({k: f"{last[k]:.3f}" for k in self.terms})
            means = self._mean_over_processes([sums[k] / self.options.iters_per_epoch for k in self.terms])
            row = {"epoch": self.epoch, "step": self.step, **dict(zip(self.terms, means)), "lr": last["lr"],
                   "momentum": last["momentum"], "teacher_temperature": last["teacher_temperature"],
                   "epoch_time": time.time() - start}
            self.rows.append(row)
            self.epoch += 1
            self.save()
            if self.dist.is_main:
                logger.info(f"epoch {row['epoch']}: " + ", ".join(f"{k} {row[k]:.4f}" for k in self.terms)
                            + f", {row['epoch_time']:.1f} s")
        if self.options.export_official is not None and self.dist.is_main:
            save_official(self.options.export_official, self.exported_encoder())

    def _warn_short_teacher_horizon(self) -> None:
        horizon = 1.0 / max(1.0 - self.settings.momentum_base, 1e-9)  # steps the EMA averages over
        if self.settings.uses_siamese:  # the target is a copy of the online network, not an average
            return
        if self.options.export_weights == "teacher" and self.total_steps < 4 * horizon and self.dist.is_main:
            logger.warning(f"warning: {self.total_steps} steps is short for a teacher momentum of "
                           f"{self.settings.momentum_base} (it averages ~{horizon:.0f} steps), so the exported teacher "
                           "stays close to its initialisation; run longer or pass --export_weights student")

    def _mean_over_processes(self, values: list[float]) -> list[float]:
        if not self.dist.enabled:
            return values
        import torch.distributed as tdist

        t = torch.tensor(values, device=self.device)
        tdist.all_reduce(t)
        return (t / self.dist.world_size).tolist()

    # -- files -------------------------------------------------------------------------------------------
    def exported_encoder(self) -> torch.nn.Module:
        return (self.teacher if self.options.export_weights == "teacher" else self.student).encoder

    def meta(self) -> dict[str, Any]:
        o = self.options
        return {"preset": o.preset, "in_channels": int(self.network["kwargs"]["in_channels"]),
                "patch": list(o.patch), "method": self.settings.method, "steps": int(self.step),
                "epochs": int(self.epoch), "iters_per_epoch": o.iters_per_epoch, "batch_size": o.batch_size,
                "weights": o.export_weights, "settings": self.settings.to_dict(),
                "precision": "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32", **o.data_meta}

    def state(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"format": "smitunet", "kind": "pretraining_state", "version": STATE_VERSION,
                "student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step, "epoch": self.epoch,
                "centers": {k: v.detach().cpu() for k, v in self.centers.items()}, "rng": rng, "logs": self.rows,
                "settings": self.settings.to_dict(), "network": self.network,
                "run": {"iters_per_epoch": self.options.iters_per_epoch, "batch_size": self.options.batch_size,
                        "seed": self.options.seed, "epochs": self.options.epochs}}

    def save(self) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(self.state(), self.paths["state"])
        save_pretrained(self.options.output, self.exported_encoder(), self.network, self.meta())
        write_logs(self.rows, self.paths)

    def resume(self) -> None:
        path = self.paths["state"]
        if not path.is_file():
            raise SmitunetError(f"{path}: no pretraining state to continue from (--c); run without --c first")
        state = load_checkpoint(path, map_location=self.device)
        if state.get("kind") != "pretraining_state":
            raise SmitunetError(f"{path}: not a smitunet pretraining state")
        self._check_compatible(state, path)
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.rows = int(state["step"]), int(state["epoch"]), list(state["logs"])
        self.centers = {k: v.to(self.device) for k, v in state["centers"].items()}
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in state["rng"]["cuda"]])

    def _check_compatible(self, state: dict, path: Path) -> None:
        run = state["run"]
        for key in ("iters_per_epoch", "batch_size", "seed"):
            if run[key] != getattr(self.options, key):
                raise SmitunetError(f"{path}: was made with {key} {run[key]}, not {getattr(self.options, key)}")
        if state["network"] != self.network:
            raise SmitunetError(f"{path}: was made with another network ({state['network']['name']}, "
                                f"patch {state['network']['kwargs'].get('patch_size')}); use the same settings")
        stored = PretrainSettings.from_dict(state["settings"]).to_dict()  # older states lack the newer keys
        if stored != self.settings.to_dict():
            changed = sorted(k for k, v in self.settings.to_dict().items() if stored.get(k) != v)
            raise SmitunetError(f"{path}: was made with other pretraining settings ({', '.join(changed)})")
