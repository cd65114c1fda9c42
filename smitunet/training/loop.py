"""The engine behind ``Trainer.run`` (private: trainers override their own methods, not this): setup, resume,
the epoch loop around the trainer's ``train_step``/``validation_step`` and hooks, checkpoints, fold validation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from smitunet.errors import SmitunetError
from smitunet.paths import PREDICTED_NEXT_STAGE
from smitunet.plans import Plans
from smitunet.preprocessing import case_arrays
from smitunet.training import checkpointing as ckpt
from smitunet.training.batches import BatchStream
from smitunet.training.data import PreprocessedCases
from smitunet.utils.compile import maybe_compile
from smitunet.utils.distributed import all_reduce_sum, barrier, shard_of_batch
from smitunet.training.logger import TrainingLogger, empty_logs
from smitunet.training.splits import cases_for_fold, load_or_create_splits
from smitunet.training.trainer import Trainer
from smitunet.utils.files import save_json


@dataclass
class TrainedFold:
    """What a finished (or loaded) fold hands to its fold validation."""

    network: torch.nn.Module
    plans: Plans
    configuration: str
    data_folder: Path
    validation_cases: list[str]
    output_dir: Path
    epochs: int
    needs_validation: bool               # trained now, --val, or no validation summary yet
    mirror_axes: tuple[int, ...] | None
    save_probabilities: bool
    log: Callable[[str], None]
    previous_stage_folder: Path | None = None   # a cascade's previous-stage segmentations (its input)
    next_stage_folder: Path | None = None       # where this fold's validation writes them for the next stage


def split_labelled(train_cases: list[str], labelled: list[str] | None, fold) -> tuple[list[str], list[str]]:
    """(labelled, unlabelled) training cases of the fold: with a ``--labelled_cases`` list, every training case not
    listed is unlabelled (its label is never read for training); without one, all are labelled."""
    if labelled is None:
        return list(train_cases), []
    wanted = set(labelled)
    unknown = sorted(wanted - set(train_cases))
    if unknown:
        raise SmitunetError(f"--labelled_cases: {len(unknown)} case(s) are not training cases of fold {fold}: "
                            f"{', '.join(unknown[:5])}")
    if not wanted:
        raise SmitunetError("--labelled_cases lists no case")
    return [c for c in train_cases if c in wanted], [c for c in train_cases if c not in wanted]


def image_only_cases(folder: Path) -> list[str]:
    """Preprocessed cases without a label file: the dataset's ``imagesUnlabelled``."""
    return case_arrays.image_only_cases(folder)


def preprocessed_cases(folder: Path) -> list[str]:
    cases = case_arrays.labelled_cases(folder)
    if not cases:
        raise SmitunetError(f"{folder}: no preprocessed cases; run smitunet_plan_and_preprocess first")
    return cases


class TrainingLoop:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.ctx = trainer.ctx
        self.dist = self.ctx.dist
        self.device = self.ctx.device
        self.out = Path(self.ctx.output_dir)
        self.logger = TrainingLogger(self.out, enabled=self.dist.is_main, class_names=trainer.plans.evaluated_names)
        self.epoch = 0
        self.best_ema: float | None = None
        self.ema: float | None = None

    # -- setup ---------------------------------------------------------------------------------------
    def setup(self) -> None:
        t = self.trainer
        self.data_folder = self.ctx.preprocessed_dataset_dir / t.config.data_identifier
        all_cases = preprocessed_cases(self.data_folder)
        if self.dist.is_main:
            load_or_create_splits(self.ctx.preprocessed_dataset_dir, all_cases)
        barrier(self.dist)
        splits = load_or_create_splits(self.ctx.preprocessed_dataset_dir, all_cases, write=False)
        self.train_cases, self.val_cases = cases_for_fold(splits, self.ctx.fold, all_cases)
        self.train_cases, t.unlabelled_cases = split_labelled(self.train_cases, t.options.labelled_cases,
                                                              self.ctx.fold)
        t.unlabelled_cases += image_only_cases(self.data_folder)  # imagesUnlabelled, in every fold
        t.data_folder = self.data_folder
        if t.is_cascaded:  # every previous-stage segmentation present, before anything is written
            t.build_cases(sorted(set(self.train_cases) | set(self.val_cases)))
        if t.config.batch_size < self.dist.world_size:
            raise SmitunetError(f"batch size {t.config.batch_size} of the plans cannot be shared by "
                                f"{self.dist.world_size} processes; use at most {t.config.batch_size} processes")
        torch.manual_seed(t.options.seed)  # identical initial weights on every rank
        self.network_config = t.network_config()
        self.network = t.network = t.build_network(self.network_config).to(self.device)
        if t.network_builder is None and getattr(self.network, "network_name", None) is None:
            raise SmitunetError(f"trainer {self.ctx.trainer_name}: build_network returns its own "
                                f"{type(self.network).__name__}, which prediction could not rebuild; set network_builder "
                                "= 'package.module:function' (called as function(name, **kwargs)) instead")
        t.model = self.network
        if self.dist.enabled:
            # mask_token (pretraining only), zero-weighted outputs and frozen parts get no gradient.
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            t.model = DistributedDataParallel(self.network, device_ids=ids, find_unused_parameters=True)
        # --compile wraps what the step calls, never self.network: checkpoints keep the eager keys, and the
        # validation patches (another mode and batch) run eagerly instead of compiling a second graph
        t.model = maybe_compile(t.model, t.options.compile, self.device, distributed=self.dist.enabled,
                                what="training network")
        t.loss = t.build_loss()
        self.optimizer = t.optimizer = t.build_optimizer(self.network)
        self.schedule = t.lr_schedule = t.build_lr_schedule(self.optimizer, t.num_epochs * t.iters_per_epoch)
        # float16 needs loss scaling; bf16 has float32's exponent range and does not
        fp16 = t.autocast_dtype == torch.float16
        self.scaler = t.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.logger.logs = empty_logs()

    def log(self, message: str) -> None:
        self.logger.log(message)

    # -- checkpoints ---------------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        t = self.trainer
        return ckpt.build_training_checkpoint(
            network_config=self.network_config, state_dict=self.network.state_dict(), optimizer=self.optimizer,
            scheduler=self.schedule, scaler=self.scaler, epoch=self.epoch, logs=self.logger.logs,
            extra={"ema_pseudo_dice": self.ema, "best_ema_pseudo_dice": self.best_ema, "seed": t.options.seed,
                   "trainer": t.extra_state()},
            plans_dict=t.plans.to_dict(), configuration=self.ctx.configuration, trainer_name=self.ctx.trainer_name,
            dataset_json=self.ctx.dataset_json, fold=self.ctx.fold,
            inference_mirror_axes=t.validation_mirror_axes, network_builder=t.network_builder)

    def save(self, name: str) -> None:
        if self.dist.is_main:
            ckpt.save_training_checkpoint(self.checkpoint(), self.out / name)

    def restore(self, path: Path, weights_only: bool = False) -> None:
        state = ckpt.load_training_checkpoint(path)
        self.network.load_state_dict(state.state_dict)
        if weights_only:
            return
        if not (state.optimizer and state.scheduler and state.rng and "train_loss" in state.logs):
            raise SmitunetError(f"{path}: holds the weights only (no optimizer, schedule or RNG state), so training "
                                "cannot continue from it; start a new run with --pretrained instead")
        groups = len(state.optimizer.get("param_groups", []))
        if groups != len(self.optimizer.param_groups):
            raise SmitunetError(f"{path}: its optimizer has {groups} parameter groups but "
                                f"this run builds {len(self.optimizer.param_groups)}; continue with the options of the "
                                "original run (e.g. the same --pretrained)")
        self.optimizer.load_state_dict(state.optimizer)
        self.schedule.load_state_dict(state.scheduler)  # after the optimizer: it sets each group's lr
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        self.epoch = state.epoch
        done = len(state.logs["train_loss"])  # a key added since the checkpoint was written: NaN so far
        self.logger.logs = {key: list(state.logs.get(key, [float("nan")] * done)) for key in empty_logs()}
        extra = state.trainer_state
        self.ema, self.best_ema = extra.get("ema_pseudo_dice"), extra.get("best_ema_pseudo_dice")
        self.trainer.load_extra_state(extra.get("trainer") or {})
        ckpt.restore_rng_state(state.rng)
        self.log(f"resumed from {path.name}: {self.epoch} completed epochs, step {self.schedule.step_count}")

    # -- epochs --------------------------------------------------------------------------------------
    def run_epochs(self, stream: BatchStream, val_cases: PreprocessedCases) -> None:
        t = self.trainer
        shard = shard_of_batch(t.config.batch_size, self.dist)
        t.loss_scale = len(shard) * self.dist.world_size / t.config.batch_size
        t.on_train_start()
        while self.epoch < t.num_epochs:
            start, wait_before = time.perf_counter(), stream.wait_seconds
            lr = self.optimizer.param_groups[-1]["lr"]  # the decoder's (or only) group, at the epoch's start
            self.network.train()
            self.network.deep_supervision = True
            t.on_epoch_start(self.epoch)
            losses = []
            bar = tqdm(range(t.iters_per_epoch), desc=f"epoch {self.epoch}", leave=False,
                       disable=None if self.dist.is_main else True)  # None: shown on a terminal only
            for _ in bar:
                losses.append(t.train_step(next(stream)))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            train_time = time.perf_counter() - start
            wait = stream.wait_seconds - wait_before
            val_loss, dice = self.validate_patches(val_cases, shard)
            self.end_epoch(float(np.mean(losses)), val_loss, dice, lr, time.perf_counter() - start, wait / train_time,
                           train_time)
        t.on_train_end()

    def validate_patches(self, val_cases: PreprocessedCases, shard) -> tuple[float, list[float]]:
        t = self.trainer
        self.network.eval()
        loader = t.build_val_loader(val_cases, shard)
        to_tensors = t.validation_transforms()
        num_evaluated = len(t.plans.evaluated_labels)
        totals = torch.zeros(2 + 3 * num_evaluated, dtype=torch.float64)
        for _ in range(t.val_iterations):
            batch = to_tensors(**loader.generate_train_batch())
            loss, stats = t.validation_step(batch)
            totals[0] += loss * len(shard)
            totals[1] += len(shard)
            totals[2:] += torch.from_numpy(stats.reshape(-1))
        totals = all_reduce_sum(totals.to(self.device), self.dist).cpu()
        tp, fp, fn = totals[2:].reshape(3, num_evaluated).numpy()
        dice = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else float("nan") for a, b, c in zip(tp, fp, fn)]
        return float(totals[0] / totals[1]), dice

    def end_epoch(self, train_loss: float, val_loss: float, dice: list[float], lr: float, epoch_time: float,
                  wait_fraction: float, train_time: float) -> None:
        values = torch.tensor([train_loss, wait_fraction], dtype=torch.float64, device=self.device)
        train_loss, wait_fraction = (all_reduce_sum(values, self.dist) / self.dist.world_size).tolist()
        mean_dice = float(np.nanmean(dice)) if not all(np.isnan(dice)) else 0.0
        m = self.trainer.ema_momentum
        self.ema = mean_dice if self.ema is None else m * self.ema + (1 - m) * mean_dice
        record = dict(train_loss=train_loss, val_loss=val_loss, pseudo_dice=[float(np.nan_to_num(d)) for d in dice],
                      ema_pseudo_dice=self.ema, lr=lr, epoch_time=epoch_time, train_time=train_time,
                      data_wait_fraction=wait_fraction)
        self.logger.record_epoch(**record)
        self.trainer.on_epoch_end(self.epoch, record)
        self.epoch += 1
        dice_text = ", ".join(f"{d:.4f}" for d in dice)
        self.log(f"epoch {self.epoch - 1}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, pseudo Dice "
                 f"[{dice_text}], EMA {self.ema:.4f}, lr {self.logger.logs['lr'][-1]:.2e}, "
                 f"{epoch_time:.1f} s, data wait {100 * wait_fraction:.1f} %")
        if self.best_ema is None or self.ema > self.best_ema:
            self.best_ema = self.ema
            self.save("checkpoint_best.pt")
        self.save("checkpoint_latest.pt")
        self.logger.write_epoch_files(last_epoch=self.epoch >= self.trainer.num_epochs)
        barrier(self.dist)

    # -- the whole run -------------------------------------------------------------------------------
    def run(self, continue_training: bool = False, validation_only: bool = False) -> TrainedFold:
        """Train (or resume, or with ``validation_only`` load checkpoint_final); the fold validation that follows
        belongs to evaluation (``smitunet.api.train`` runs it)."""
        self.setup()
        if validation_only:
            final = self.out / "checkpoint_final.pt"
            if not final.is_file():
                raise SmitunetError(f"{final}: not found; --val needs a finished training run")
            self.restore(final, weights_only=True)
            trained = False
        else:
            trained = self.train(continue_training)
        t = self.trainer
        summary = self.out / "validation" / "summary.json"
        return TrainedFold(
            network=self.network, plans=t.plans, configuration=self.ctx.configuration, data_folder=self.data_folder,
            validation_cases=list(self.val_cases), output_dir=self.out, epochs=self.epoch,
            needs_validation=validation_only or trained or not summary.is_file(),
            mirror_axes=None if t.options.disable_tta else t.validation_mirror_axes,
            save_probabilities=t.options.export_probabilities, log=self.log,
            previous_stage_folder=t.previous_stage_folder(), next_stage_folder=self.next_stage_folder())

    def next_stage_folder(self) -> Path | None:
        """``predicted_next_stage`` of this model folder when a cascade follows this configuration (nnU-Net). Fold
        ``all`` writes none: its predictions of its own training cases would replace the out-of-fold ones."""
        if not self.trainer.plans.next_stages(self.ctx.configuration) or str(self.ctx.fold) == "all":
            return None
        return self.out.parent / PREDICTED_NEXT_STAGE

    def train(self, continue_training: bool) -> bool:
        """Train up to ``num_epochs``; False when there was nothing left to train."""
        t = self.trainer
        resume = ckpt.checkpoint_to_resume(self.out) if continue_training else None
        if resume is not None:
            self.restore(resume)
        else:
            if continue_training:
                self.log("--c: no checkpoint found; starting from scratch")
            stale = self.out / "checkpoint_final.pt"
            if self.dist.is_main and stale.is_file():  # a fresh run must not be resumed into an older one
                stale.unlink()
                self.log(f"starting a fresh run: removed the previous run's {stale.name}")
            if t.options.pretrained is not None:
                report = t.load_pretrained(self.network, Path(t.options.pretrained))
                self.log(report.summary())
                if self.dist.is_main:
                    save_json(report.to_dict(), self.out / "pretrained_report.json")
        if self.epoch >= t.num_epochs:
            self.log(f"training already complete ({self.epoch} epochs); raise --epochs to extend it")
            if not (self.out / "checkpoint_final.pt").is_file():
                self.save("checkpoint_final.pt")
            return False
        self.write_run_files()
        shard = shard_of_batch(t.config.batch_size, self.dist)
        train_cases = t.build_cases(self.train_cases)
        val_cases = t.build_cases(self.val_cases)
        loader = t.build_train_loader(train_cases, shard, start_batch=self.schedule.step_count)
        stream = BatchStream(loader, t.training_transforms(), t.options.num_workers)
        try:
            self.run_epochs(stream, val_cases)
        finally:
            stream.close()
        self.save("checkpoint_final.pt")
        barrier(self.dist)
        return True

    def write_run_files(self) -> None:
        t = self.trainer
        if not self.dist.is_main:
            return
        save_json(t.plans.to_dict(), self.out.parent / "plans.json")
        save_json(self.ctx.dataset_json, self.out.parent / "dataset.json")
        unlabelled = f" (+{len(t.unlabelled_cases)} unlabelled)" if t.unlabelled_cases else ""
        self.log(f"trainer {self.ctx.trainer_name}, fold {self.ctx.fold}: {len(self.train_cases)} training{unlabelled} / "
                 f"{len(self.val_cases)} validation cases; {t.num_epochs} epochs x {t.iters_per_epoch} iterations, "
                 f"batch {t.config.batch_size} (x{self.dist.world_size} processes share it), patch "
                 f"{t.config.patch_size}, network {self.network_config.name} "
                 f"({sum(p.numel() for p in self.network.parameters()) / 1e6:.2f} M parameters), device {self.device}, "
                 f"{t.options.num_workers} data workers")
