#!/usr/bin/env python
"""smitunet vs nnU-Net v2 on Task04 Hippocampus, side by side, in one run on this machine.

    python benchmarks/compare_nnunet.py [--budget-minutes 30] [--pretrained smit.pt] [--quick]

Prints one table (plan + preprocess, training speed and data waiting, prediction speed and memory,
fold-0 validation Dice after the same wall-clock training budget) and writes it with date, versions and
the machine to benchmarks/results/. Every speed figure is a ratio of two measurements from this run.
See benchmarks/README.md for how each figure is measured and how nnU-Net is driven on a CPU-only machine.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _nnunet_env as nn  # noqa: E402
import _smitunet_env as su  # noqa: E402
import preprocess  # noqa: E402
from _compare_table import build_markdown  # noqa: E402
from _predict_side import make_input_folder, predict  # noqa: E402
from _report import machine_description, now_utc, write_results  # noqa: E402
from _train_side import budget_epochs, run_nnunet  # noqa: E402
from _train_side import run_smitunet as _run_smitunet  # noqa: E402
from smitunet.preprocessing.case_arrays import labelled_cases  # noqa: E402
from smitunet.utils.files import save_json  # noqa: E402


@dataclass
class Settings:
    budget_s: float | None      # None: quick mode trains a fixed tiny schedule instead
    calibration_iters: int      # iterations per epoch of the 2-epoch calibration runs
    iters_per_epoch: int        # of the budgeted runs
    fixed_epochs: int           # quick mode only
    val_cases: int | None       # fold-0 validation cases (None: the whole fold, 32)
    predict_cases: int
    precision: str = "fp32"     # smitunet's training and prediction autocast (--precision of its CLIs)


def settings_for(args) -> Settings:
    if args.quick:
        return Settings(budget_s=None, calibration_iters=0, iters_per_epoch=3, fixed_epochs=2, val_cases=4,
                        predict_cases=2, precision=args.precision)
    return Settings(budget_s=args.budget_minutes * 60, calibration_iters=min(4, args.iters_per_epoch), iters_per_epoch=args.iters_per_epoch,
                    fixed_epochs=0, val_cases=args.val_cases, predict_cases=args.predict_cases,
                    precision=args.precision)


def write_common_splits(val_cases: int | None) -> list[str]:
    """One seeded 5-fold split written into both tools' preprocessed folders, so fold 0 is the same."""
    folder = su.preprocessed_dataset_dir() / "smitunetPlans_3d_fullres"
    cases = labelled_cases(folder)
    order = np.random.default_rng(12345).permutation(len(cases))
    splits = []
    for chunk in np.array_split(order, 5):
        val = sorted(cases[i] for i in chunk)
        splits.append({"train": sorted(set(cases) - set(val)), "val": val})
    if val_cases is not None:  # quick mode: a shorter fold-0 validation, the other cases still train
        splits[0]["val"] = splits[0]["val"][:val_cases]
        splits[0]["train"] = sorted(set(cases) - set(splits[0]["val"]))
    for target in (su.preprocessed_dataset_dir(), nn.preprocessed_dataset_dir()):
        save_json(splits, target / "splits_final.json")
    return splits[0]["val"]


class Phases:
    """Runs named phases; a failing phase is recorded (one line + log) and the others go on."""

    def __init__(self, results: dict):
        self.results = results
        self.results.setdefault("errors", {})
        self.results.setdefault("phase_wall_s", {})

    def run(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            value = fn(*args, **kwargs)
            self.results[name] = value
            return value
        except Exception as exc:  # noqa: BLE001 - a benchmark reports every phase it can
            print(f"[{name}] failed: {exc}", file=sys.stderr)
            self.results["errors"][name] = "".join(traceback.format_exception_only(exc)).strip()
            return None
        finally:
            self.results["phase_wall_s"][name] = time.perf_counter() - start


def train_both(phases: Phases, s: Settings, pretrained: Path | None) -> None:
    run_smitunet = functools.partial(_run_smitunet, precision=s.precision)
    if s.budget_s is None:
        phases.run("train_smitunet", run_smitunet, "quick", s.fixed_epochs, s.iters_per_epoch, None, True)
        if pretrained:  # proves the --pretrained path end to end; its Dice means nothing after 6 iterations
            phases.run("train_smitunet_pretrained", run_smitunet, "quick_pretrained", s.fixed_epochs,
                       s.iters_per_epoch, None, True, pretrained)
        phases.run("train_nnunet", run_nnunet, "quick", s.fixed_epochs, s.iters_per_epoch, None, True)
        return
    cal_su = phases.run("calibrate_smitunet", run_smitunet, "calibration", 2, s.calibration_iters, None, False)
    cal_nn = phases.run("calibrate_nnunet", run_nnunet, "calibration", 2, s.calibration_iters, None, False)
    if cal_su:
        epochs = budget_epochs(cal_su, s.calibration_iters, s.iters_per_epoch, s.budget_s)
        phases.run("train_smitunet", run_smitunet, "budget", epochs, s.iters_per_epoch, s.budget_s, True)
        if pretrained:
            phases.run("train_smitunet_pretrained", run_smitunet, "pretrained", epochs, s.iters_per_epoch,
                       s.budget_s, True, pretrained)
    if cal_nn:
        epochs = budget_epochs(cal_nn, s.calibration_iters, s.iters_per_epoch, s.budget_s)
        phases.run("train_nnunet", run_nnunet, "budget", epochs, s.iters_per_epoch, s.budget_s, True)


def predict_both(phases: Phases, val_cases: list[str], n_cases: int, precision: str = "fp32") -> None:
    inp = make_input_folder(val_cases[:n_cases])
    for tool in ("smitunet", "nnunet"):
        trained = phases.results.get(f"train_{tool}")
        if not trained:
            continue
        for tta in (True, False):
            phases.run(f"predict_{tool}_{'tta' if tta else 'notta'}", predict, tool, trained["model_results_dir"],
                       inp, tta, precision=precision)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-minutes", type=float, default=30.0, help="training wall-clock budget per tool (30)")
    p.add_argument("--pretrained", type=Path, default=None,
                   help="a smitunet_pretrain checkpoint: also train smitunet from it under the same budget")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (< 10 min on 2 idle cores): 2x3 training iterations each, 4 validation cases, "
                        "2 prediction cases (and, with --pretrained, the same tiny fine-tune from it); its Dice is not a "
                        "budget comparison")
    p.add_argument("--iters-per-epoch", type=int, default=25, help="iterations per epoch in the budgeted runs")
    p.add_argument("--predict-cases", type=int, default=10, help="fold-0 validation cases timed in prediction")
    p.add_argument("--val-cases", type=int, default=None,
                   help="cut the fold-0 validation to the first N of its 32 cases (default: all; quick: 4)")
    p.add_argument("--np", type=int, default=os.cpu_count(), help="preprocessing worker processes, both tools")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="smitunet's training and prediction precision (bf16: CPUs with AVX512-bf16 or AMX; the "
                        "calibration runs under it too, so the budget buys bf16 iterations); nnU-Net stays fp32")
    p.add_argument("--reuse-preprocessed", action="store_true",
                   help="skip the plan + preprocess measurement and train on the existing preprocessed data")
    args = p.parse_args(argv)
    if args.pretrained is not None and not args.pretrained.is_file():
        raise SystemExit(f"error: {args.pretrained}: pretrained checkpoint not found")

    s = settings_for(args)
    start = time.perf_counter()
    results = {"date": now_utc(), "machine": machine_description(), "settings": asdict(s),
               "mode": "quick" if args.quick else "budget", "pretrained": str(args.pretrained or "")}
    phases = Phases(results)
    nn.ensure_venv()
    if args.reuse_preprocessed:
        for tool in preprocess.TOOLS:
            preprocess.prepare(tool)
    else:
        phases.run("preprocess", preprocess.measure, list(preprocess.TOOLS), args.np)
    val_cases = write_common_splits(s.val_cases)
    train_both(phases, s, args.pretrained)
    predict_both(phases, val_cases, s.predict_cases, s.precision)
    results["versions"] = {"smitunet": su.smitunet_versions(), "nnU-Net": nn.nnunet_versions()}
    results["total_wall_s"] = time.perf_counter() - start

    markdown = build_markdown(results)
    print("\n" + markdown)
    md_path, _ = write_results(f"compare_nnunet_{results['mode']}", markdown, results)
    print(f"\nwritten: {md_path}")


if __name__ == "__main__":
    main()
