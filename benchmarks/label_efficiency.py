"""Label efficiency of SMIT pretraining on Hippocampus: fine-tune on few labelled cases with and without it.

Steps (each through the product's own commands, in an isolated work folder; finished steps are reused):
1. convert the MSD Task04_Hippocampus folder to the raw format, plan and preprocess it (``--preset``);
2. pretrain the encoder on every Hippocampus image, labels unused (``smitunet_pretrain --plans``);
3. write ``splits_final.json`` whose fold 0 trains on ``--num_train`` labelled cases and validates on
   ``--num_eval`` other cases;
4. fine-tune fold 0 twice under the same budget: from scratch, and with ``--pretrained smit.pt``;
5. print the fold-validation Dice (mean over the anterior/posterior labels) of both and the difference.

Example (CPU, small budget)::

    python benchmarks/label_efficiency.py --pretrain_epochs 10 --pretrain_iters 50 \
        --finetune_epochs 20 --finetune_iters 25 --threads 2

The target is pretrained >= scratch + 3 Dice points with a realistic budget (GPU: the defaults of the
commands); tiny CPU budgets mostly measure noise, so the budgets are printed with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET = "Dataset004_Hippocampus"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--msd", type=Path, default=REPO.parent / "shared" / "data" / "Task04_Hippocampus")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "label_efficiency")
    p.add_argument("--preset", default="smit_tiny")
    p.add_argument("--method", default="smit", choices=("smit", "smart", "gmim"))
    p.add_argument("--pretrain_epochs", type=int, default=10)
    p.add_argument("--pretrain_iters", type=int, default=50)
    p.add_argument("--pretrain_batch", type=int, default=4)
    p.add_argument("--export_weights", default="student", choices=("teacher", "student"),
                   help="encoder written to smit.pt; short runs keep the EMA teacher near its initialisation, so "
                        "the student is the default here (default %(default)s)")
    p.add_argument("--finetune_epochs", type=int, default=20)
    p.add_argument("--finetune_iters", type=int, default=25)
    p.add_argument("--num_train", type=int, default=10)
    p.add_argument("--num_eval", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads per command (CPU)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--fresh", action="store_true", help="redo every step instead of reusing finished ones")
    return p.parse_args(argv)


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run one product command, its output appended to ``log``; returns the wall time in seconds."""
    start = time.time()
    print(f"$ {' '.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"command failed (exit {done.returncode}); see {log}")
    return time.time() - start


def environment(work: Path, results: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(smitunet_raw=str(work / "raw"), smitunet_preprocessed=str(work / "preprocessed"),
               smitunet_results=str(work / results), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def write_splits(preprocessed: Path, num_train: int, num_eval: int, seed: int) -> dict:
    cases = sorted(p.name[:-len(".json")] for p in (preprocessed / "smitunetPlans_3d_fullres").glob("*.json"))
    if len(cases) < num_train + num_eval:
        sys.exit(f"only {len(cases)} preprocessed cases; need {num_train + num_eval}")
    order = np.random.default_rng(seed).permutation(len(cases))
    split = {"train": sorted(cases[i] for i in order[:num_train]),
             "val": sorted(cases[i] for i in order[num_train:num_train + num_eval])}
    path = preprocessed / "splits_final.json"
    path.write_text(json.dumps([split], indent=2))
    return split


def fold_dice(work: Path, results: str) -> dict:
    folder = work / results / DATASET / "SMITTrainer__smitunetPlans__3d_fullres" / "fold_0" / "validation"
    summary = json.loads((folder / "summary.json").read_text())
    per_label = {k: v["dice"] for k, v in summary["mean"].items()}
    return {"mean": summary["foreground_mean"]["dice"], "per_label": per_label, "cases": len(summary["metric_per_case"])}


def main(argv=None) -> None:
    args = parse_args(argv)
    work = args.work.resolve()
    if args.fresh and work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log, times = work / "commands.log", {}
    env = environment(work, "results_scratch", args.threads)
    preprocessed = work / "preprocessed" / DATASET
    plans = preprocessed / "smitunetPlans.json"
    if not (work / "raw" / DATASET / "dataset.json").is_file():
        (work / "raw").mkdir(exist_ok=True)
        times["convert"] = run(["smitunet_convert_msd", "-i", str(args.msd), "-d", "4"], env, log)
    if not plans.is_file():
        times["plan_and_preprocess"] = run(["smitunet_plan_and_preprocess", "-d", "4", "--preset", args.preset,
                                            "-c", "3d_fullres", "-np", str(args.threads)], env, log)
    split = write_splits(preprocessed, args.num_train, args.num_eval, args.seed)
    smit = work / f"smit_{args.method}.pt"
    if not smit.is_file():
        times["pretrain"] = run(["smitunet_pretrain", "-o", str(smit), "-d", "4", "--plans", str(plans),
                                 "-c", "3d_fullres", "--method", args.method, "--epochs", str(args.pretrain_epochs),
                                 "--iters_per_epoch", str(args.pretrain_iters), "--batch_size", str(args.pretrain_batch),
                                 "--seed", str(args.seed), "--device", args.device, "--export_weights", args.export_weights],
                               env, log)
    budget = ["--epochs", str(args.finetune_epochs), "--iters_per_epoch", str(args.finetune_iters),
              "--num_workers", "0", "--seed", str(args.seed), "--device", args.device]
    results = {}
    for variant, extra in (("scratch", []), ("pretrained", ["--pretrained", str(smit)])):
        folder = f"results_{variant}_{args.method}" if variant == "pretrained" else "results_scratch"
        summary = work / folder / DATASET / "SMITTrainer__smitunetPlans__3d_fullres" / "fold_0" / "validation" / "summary.json"
        if args.fresh or not summary.is_file():
            times[f"finetune_{variant}"] = run(["smitunet_train", "4", "3d_fullres", "0", *budget, *extra],
                                               environment(work, folder, args.threads), log)
        results[variant] = fold_dice(work, folder)
    report(args, split, results, times, work)


def report(args, split: dict, results: dict, times: dict, work: Path) -> None:
    diff = 100 * (results["pretrained"]["mean"] - results["scratch"]["mean"])
    print()
    print(f"label efficiency, Hippocampus: fine-tune on {len(split['train'])} labelled cases, "
          f"evaluate on {results['scratch']['cases']} others ({args.preset})")
    print(f"budgets: pretrain {args.method} {args.pretrain_epochs} x {args.pretrain_iters} steps of batch "
          f"{args.pretrain_batch} (x2 views) on all images; fine-tune {args.finetune_epochs} x {args.finetune_iters} "
          f"iterations each")
    print(f"{'variant':<12} {'mean Dice':>10}  per label")
    for variant in ("scratch", "pretrained"):
        r = results[variant]
        labels = ", ".join(f"{k} {v:.4f}" for k, v in r["per_label"].items())
        print(f"{variant:<12} {r['mean']:>10.4f}  {labels}")
    print(f"difference: {diff:+.2f} Dice points (target +3.00)")
    for step, seconds in times.items():
        print(f"  time {step}: {seconds:.0f} s")
    (work / f"label_efficiency_{args.method}.json").write_text(json.dumps(
        {"results": results, "difference_points": diff, "times_s": times, "budgets": vars(args) | {
            "msd": str(args.msd), "work": str(args.work)}}, indent=2, default=str))


if __name__ == "__main__":
    main()
