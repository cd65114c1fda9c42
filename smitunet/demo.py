"""``smitunet_demo``: the whole pipeline on the embedded synthetic dataset, in a few minutes on a CPU.

generate data -> plan + preprocess (smit_tiny) -> train briefly -> predict the unseen imagesTs ->
evaluate against labelsTs and print the mean Dice. Everything lives under ``--work_dir``; the demo points
``$smitunet_raw/_preprocessed/_results`` there for its own run only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from smitunet.errors import SmitunetError, cli_entry
from smitunet.training.trainer import SMITTrainer

DATASET_ID = 999
DATASET_NAME = "Dataset999_Synthetic"
DEMO_TRAINER = "smitunet.demo:SMITDemoTrainer"
TARGET_DICE = 0.8


class SMITDemoTrainer(SMITTrainer):
    """SMITTrainer with a short-run schedule: a higher peak learning rate and a brief warmup."""

    initial_lr = 2e-3
    warmup_fraction = 0.02
    validation_mirror_axes = None  # the demo scores the unseen test cases; keep fold validation quick


@contextlib.contextmanager
def demo_folders(work_dir: Path) -> Iterator[dict[str, Path]]:
    """Point the three smitunet folder variables into ``work_dir`` and restore them afterwards."""
    folders = {kind: work_dir / kind for kind in ("raw", "preprocessed", "results")}
    for path in folders.values():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SmitunetError(f"--work_dir {work_dir}: cannot create {path} ({exc.strerror or exc})") from None
    if not os.access(work_dir, os.W_OK):
        raise SmitunetError(f"--work_dir {work_dir}: not writable")
    saved = {kind: os.environ.get(f"smitunet_{kind}") for kind in folders}
    for kind, path in folders.items():
        os.environ[f"smitunet_{kind}"] = str(path)
    try:
        yield folders
    finally:
        for kind, value in saved.items():
            if value is None:
                os.environ.pop(f"smitunet_{kind}", None)
            else:
                os.environ[f"smitunet_{kind}"] = value


class Stages:
    """Prints a header per stage and its wall time."""

    def __init__(self):
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, title: str):
        print(f"\n=== [{len(self.timings) + 1}/5] {title} ===", flush=True)
        t0 = time.perf_counter()
        yield
        self.timings[title] = time.perf_counter() - t0
        print(f"--- {title}: {self.timings[title]:.1f} s", flush=True)

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def run_demo(work_dir: Path, epochs: int, iters_per_epoch: int, num_training: int, num_test: int,
             device: str = "cpu", seed: int = 0, num_workers: int = 1, tta: bool = True) -> dict:
    """Run all stages; returns the evaluation summary (with ``timings``)."""
    from smitunet import api
    from smitunet.dataset.synthetic import generate_synthetic_dataset
    from smitunet.inference.predictor import PredictionOptions

    stages = Stages()
    with demo_folders(Path(work_dir).resolve()) as folders:
        with stages.stage("generate the synthetic dataset"):
            dataset = generate_synthetic_dataset(folders["raw"], DATASET_ID, num_training=num_training,
                                                 num_test=num_test, seed=seed, overwrite=True)
            print(f"{num_training} training + {num_test} unseen test cases in {dataset}")
        with stages.stage("plan and preprocess (smit_tiny)"):
            api.plan_and_preprocess([DATASET_ID], preset="smit_tiny", configurations=["3d_fullres"], clean=True)
        with stages.stage(f"train fold 0 ({epochs} epochs x {iters_per_epoch} iterations)"):
            api.train(DATASET_ID, "3d_fullres", 0, trainer=DEMO_TRAINER, epochs=epochs, iters_per_epoch=iters_per_epoch,
                      device=device, num_workers=num_workers, seed=seed)
        predictions = Path(work_dir).resolve() / "predictions"
        with stages.stage("predict the unseen imagesTs"):
            api.predict(dataset / "imagesTs", predictions, dataset=DATASET_ID, trainers=["SMITDemoTrainer"],
                        options=PredictionOptions(device=device, num_processes=0, use_tta=tta))
        with stages.stage("evaluate against labelsTs"):
            summary = api.evaluate(dataset / "labelsTs", predictions)
            for label, m in summary["mean"].items():
                print(f"label {label}: Dice {m['dice']:.4f}  HD95 {m['hd95']:.2f} mm  NSD {m['nsd']:.4f}")
    summary["timings"] = dict(stages.timings, total=stages.total)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smitunet_demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", type=Path, default=Path("smitunet_demo_work"),
                   help="where data, models and predictions go (default ./smitunet_demo_work)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--iters_per_epoch", type=int, default=20)
    p.add_argument("--num_training", type=int, default=20)
    p.add_argument("--num_test", type=int, default=6)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--num_workers", type=int, default=1, help="background augmentation processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--disable_tta", action="store_true", help="predict without mirroring (faster)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.epochs < 1 or args.iters_per_epoch < 1 or args.num_training < 5 or args.num_test < 1:
        raise SmitunetError("--epochs/--iters_per_epoch/--num_test must be >= 1 and --num_training >= 5")
    summary = run_demo(args.work_dir, args.epochs, args.iters_per_epoch, args.num_training, args.num_test,
                       args.device, args.seed, args.num_workers, not args.disable_tta)
    dice = summary["foreground_mean"]["dice"]
    verdict = "above" if dice > TARGET_DICE else "BELOW"
    print(f"\nmean Dice on {summary['num_cases']} unseen cases: {dice:.4f} ({verdict} the {TARGET_DICE} target); "
          f"total {summary['timings']['total']:.0f} s")


if __name__ == "__main__":
    main()
