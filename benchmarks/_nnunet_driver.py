"""Drive nnU-Net v2 training on a CPU-only machine through its Python API.  Runs INSIDE the nnU-Net venv.

    benchmarks/work/venv-nnunet/bin/python benchmarks/_nnunet_driver.py --fold 0 --epochs E --iters I \
        --t0 UNIX_TIME [--budget-s S] [--validate] --out result.json

Why not ``nnUNetv2_train``: its trainer lookup imports every trainer module, one of which imports a CUDA
build of torchvision that fails on a CPU-only torch, and its schedule (1000 x 250) has no command-line
override. Here the default ``nnUNetTrainer`` is built directly, its schedule attributes are set on the
instance before training, and its own epoch loop (``run_training``) is replayed step by step so that the
time spent in ``next(dataloader_train)`` can be told apart from the train step.

Budget: the clock starts at ``--t0`` (when the caller launched this process, imports included); after each
epoch the loop stops if another epoch of the same length would end past ``--budget-s``. The result JSON
holds per-epoch times, the data-wait fraction and, with ``--validate``, nnU-Net's fold validation
(sliding window with mirroring over the held-out cases, ``validation/summary.json``).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path


class TimedBatches:
    """Wraps nnU-Net's training data loader; accumulates the time spent waiting for batches."""

    def __init__(self, loader):
        self.loader = loader
        self.wait_s = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.loader)
        self.wait_s += time.perf_counter() - start
        return batch


def build_trainer(fold: int, epochs: int, iters: int, val_iters: int, dataset: str = "Dataset004_Hippocampus",
                  plans_name: str = "nnUNetPlans"):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    folder = join(nnUNet_preprocessed, dataset)
    plans = load_json(join(folder, f"{plans_name}.json"))
    plans["continue_training"] = False  # 2.8.1's trainer pops this key (run_training.get_trainer_from_args sets it)
    trainer = nnUNetTrainer(plans, "3d_fullres", fold, load_json(join(folder, "dataset.json")),
                            device=torch.device("cpu"))
    trainer.num_epochs = epochs                      # read by configure_optimizers (poly LR over these)
    trainer.num_iterations_per_epoch = iters
    trainer.num_val_iterations_per_epoch = val_iters
    return trainer


def train_one_epoch(trainer, batches: TimedBatches) -> dict:
    import torch

    start, wait_before = time.perf_counter(), batches.wait_s
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    train_start = time.perf_counter()
    outputs = [trainer.train_step(next(batches)) for _ in range(trainer.num_iterations_per_epoch)]
    train_s = time.perf_counter() - train_start
    trainer.on_train_epoch_end(outputs)
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        val_outputs = [trainer.validation_step(next(trainer.dataloader_val))
                       for _ in range(trainer.num_val_iterations_per_epoch)]
        trainer.on_validation_epoch_end(val_outputs)
    trainer.on_epoch_end()
    wait_s = batches.wait_s - wait_before
    return {"epoch_s": time.perf_counter() - start, "train_s": train_s, "wait_s": wait_s,
            "data_wait_fraction": wait_s / train_s, "iters": trainer.num_iterations_per_epoch,
            "pseudo_dice": [float(x) for x in trainer.logger.get_value("dice_per_class_or_region", step=-1)]}


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads or multiprocessing.cpu_count())  # what nnUNetv2_train -device cpu does
    if args.seed is not None:  # nnU-Net has no seed option; seeded here so that repeated runs are reproducible
        import random

        import numpy as np

        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
    trainer = build_trainer(args.fold, args.epochs, args.iters, args.val_iters, args.dataset, args.plans)
    trainer.on_train_start()
    if args.no_mirroring:  # validation without test-time mirroring (on_train_start sets the axes; validation reads them)
        trainer.inference_allowed_mirroring_axes = None
    batches = TimedBatches(trainer.dataloader_train)
    epochs: list[dict] = []
    stopped_by_budget = False
    for _ in range(trainer.current_epoch, trainer.num_epochs):
        epochs.append(train_one_epoch(trainer, batches))
        elapsed = time.time() - args.t0
        if args.budget_s and trainer.current_epoch < trainer.num_epochs \
                and elapsed + epochs[-1]["epoch_s"] > args.budget_s:
            stopped_by_budget = True
            break
    trainer.on_train_end()  # writes checkpoint_final.pth, stops the augmentation workers
    result = {"epochs": epochs, "planned_epochs": args.epochs, "stopped_by_budget": stopped_by_budget,
              "train_wall_s": time.time() - args.t0, "patch_size": list(trainer.configuration_manager.patch_size),
              "batch_size": trainer.batch_size, "da_processes": _da_processes(),
              "output_folder": trainer.output_folder}
    if args.validate:
        start = time.time()
        trainer.perform_actual_validation(save_probabilities=False)
        result["validation_wall_s"] = time.time() - start
        result["validation_summary"] = str(Path(trainer.output_folder) / "validation" / "summary.json")
    return result


def _da_processes() -> int:
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    return get_allowed_n_proc_DA()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--val-iters", type=int, required=True)
    p.add_argument("--t0", type=float, default=None, help="unix time the caller launched this process")
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--validate", action="store_true")
    p.add_argument("--dataset", default="Dataset004_Hippocampus")
    p.add_argument("--plans", default="nnUNetPlans")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--no-mirroring", action="store_true", help="fold validation without test-time mirroring")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    args.t0 = args.t0 or time.time()
    result = run(args)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out)
    os._exit(0)  # nnU-Net's background augmenter threads can keep the interpreter alive after shutdown


if __name__ == "__main__":
    main()
