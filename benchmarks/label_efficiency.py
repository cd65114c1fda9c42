"""Label efficiency of SMIT pretraining on Hippocampus: fine-tune on few labelled cases with and without it.

Steps (each through the product's own commands, in an isolated work folder; finished steps are reused):
1. convert the MSD Task04_Hippocampus folder to the raw format, plan and preprocess it (``--preset``);
2. pretrain the encoder on every Hippocampus image, labels unused (``smitunet_pretrain --plans``), for
   ``--pretrain_epochs`` or, with ``--pretrain_minutes``, for as many epochs as a short calibration run says fit;
3. write ``splits_final.json`` whose fold 0 trains on ``--num_train`` labelled cases and validates on
   ``--num_eval`` other cases;
4. fine-tune fold 0 under the same budget for every seed of ``--finetune_seeds``: from scratch, and with
   ``--pretrained smit.pt`` for each trainer of ``--pretrained_trainers`` (``SMITTrainerEncoderLR1`` of
   ``label_efficiency_trainers.py`` trains the pretrained encoder at the decoder's learning rate);
5. print and write (``label_efficiency_<method>.{json,md}`` in the work folder) the fold-validation Dice (mean
   over the anterior/posterior labels) of every run, the mean over seeds and the differences.

``--jobs N`` runs up to N commands at once (scratch fine-tunes alongside pretraining): for a GPU with many CPU
cores. CPU example (small budget)::

    python benchmarks/label_efficiency.py --preset smit_small --pretrain_epochs 12 --pretrain_iters 25 \
        --pretrain_batch 4 --finetune_epochs 10 --finetune_iters 25 --threads 2 --device cpu

GPU example (4 minutes of pretraining, three seeds, two pretrained variants)::

    python benchmarks/label_efficiency.py --preset smit_small --pretrain_minutes 4 --pretrain_batch 16 \
        --finetune_seeds 0 1 2 --pretrained_trainers SMITTrainer SMITTrainerEncoderLR1 --jobs 10 --device cuda

The target is pretrained >= scratch + 3 Dice points; the budgets are printed with the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET = "Dataset004_Hippocampus"
PLUGIN_TRAINERS = {name: f"label_efficiency_trainers:{name}" for name in ("SMITTrainerEncoderLR1",
                                                                         "SMITTrainerFrozenEncoder")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--msd", type=Path, default=REPO.parent / "shared" / "data" / "Task04_Hippocampus")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "label_efficiency")
    p.add_argument("--preset", default="smit_tiny")
    p.add_argument("--method", default="smit", choices=("smit", "smart", "gmim"))
    p.add_argument("--pretrain_epochs", type=int, default=10)
    p.add_argument("--pretrain_minutes", type=float, default=None,
                   help="pretrain for about this long instead of --pretrain_epochs (a 2-epoch calibration run "
                        "measures the time per step first)")
    p.add_argument("--pretrain_iters", type=int, default=50)
    p.add_argument("--pretrain_batch", type=int, default=4)
    p.add_argument("--pretrain_workers", type=int, default=2)
    p.add_argument("--export_weights", default="student", choices=("teacher", "student"),
                   help="encoder written to smit.pt; short runs keep the EMA teacher near its initialisation, so "
                        "the student is the default here (default %(default)s)")
    p.add_argument("--finetune_epochs", type=int, default=20)
    p.add_argument("--finetune_iters", type=int, default=25)
    p.add_argument("--finetune_seeds", type=int, nargs="+", default=[0])
    p.add_argument("--finetune_workers", type=int, default=0)
    p.add_argument("--pretrained_trainers", nargs="+", default=["SMITTrainer"],
                   choices=["SMITTrainer", *PLUGIN_TRAINERS])
    p.add_argument("--scratch_trainers", nargs="+", default=["SMITTrainer"], choices=["SMITTrainer", *PLUGIN_TRAINERS],
                   help="trainers of the runs without --pretrained (SMITTrainerFrozenEncoder: a random-encoder probe)")
    p.add_argument("--num_train", type=int, default=10)
    p.add_argument("--num_eval", type=int, default=40)
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of pretraining")
    p.add_argument("--threads", type=int, default=2, help="torch threads per command (CPU)")
    p.add_argument("--jobs", type=int, default=1, help="commands run at once")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--fresh", action="store_true", help="redo every step instead of reusing finished ones")
    return p.parse_args(argv)


@dataclass
class Job:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    after: list[str] = field(default_factory=list)   # jobs that must have finished first
    process: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float | None = None


def run_jobs(jobs: list[Job], max_running: int) -> dict[str, float]:
    """Run the jobs, at most ``max_running`` at once, each after its dependencies; stop everything at the first
    failure (its log's tail is printed). Returns each job's wall time."""
    pending, running, done = list(jobs), [], {}
    while pending or running:
        for job in [j for j in pending if all(a in done for a in j.after)]:
            if len(running) >= max_running:
                break
            print(f"[{time.strftime('%H:%M:%S')}] start {job.name}: {' '.join(job.cmd)}", flush=True)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log, "a") as f:
                f.write(f"$ {' '.join(job.cmd)}\n")
                job.process = subprocess.Popen(job.cmd, env=job.env, stdout=f, stderr=subprocess.STDOUT)
            job.started = time.time()
            pending.remove(job)
            running.append(job)
        time.sleep(0.5)
        for job in list(running):
            code = job.process.poll()
            if code is None:
                continue
            running.remove(job)
            if code != 0:
                for other in running:
                    other.process.kill()
                tail = job.log.read_text().splitlines()[-15:]
                sys.exit(f"{job.name} failed (exit {code}); last lines of {job.log}:\n" + "\n".join(tail))
            done[job.name] = time.time() - job.started
            print(f"[{time.strftime('%H:%M:%S')}] done {job.name} in {done[job.name]:.0f} s", flush=True)
    return done


def environment(work: Path, results: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")]
    env.update(smitunet_raw=str(work / "raw"), smitunet_preprocessed=str(work / "preprocessed"),
               smitunet_results=str(work / results), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(p for p in path if p))
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


def validation_summary(work: Path, results: str, trainer: str) -> Path:
    return (work / results / DATASET / f"{trainer}__smitunetPlans__3d_fullres" / "fold_0" / "validation"
            / "summary.json")


def fold_dice(summary_path: Path) -> dict:
    summary = json.loads(summary_path.read_text())
    per_label = {k: v["dice"] for k, v in summary["mean"].items()}
    return {"mean": summary["foreground_mean"]["dice"], "per_label": per_label, "cases": len(summary["metric_per_case"])}


def pretrain_command(args, plans: Path, output: Path, epochs: int, iters: int) -> list[str]:
    return ["smitunet_pretrain", "-o", str(output), "-d", "4", "--plans", str(plans), "-c", "3d_fullres",
            "--method", args.method, "--epochs", str(epochs), "--iters_per_epoch", str(iters),
            "--batch_size", str(args.pretrain_batch), "--seed", str(args.seed), "--device", args.device,
            "--export_weights", args.export_weights, "--num_workers", str(args.pretrain_workers)]


def calibrated_epochs(args, plans: Path, work: Path, env: dict[str, str]) -> tuple[int, float]:
    """Epochs of ``--pretrain_iters`` steps that fit ``--pretrain_minutes``, from the second epoch of a short run
    (the first holds start-up and warm-up)."""
    out = work / "calibration" / "smit.pt"
    iters = max(5, min(args.pretrain_iters, 20))
    if not out.with_name("smit_log.json").is_file():
        run_jobs([Job("pretrain_calibration", pretrain_command(args, plans, out, 2, iters), env,
                      work / "logs" / "pretrain_calibration.log")], 1)
    rows = json.loads(out.with_name("smit_log.json").read_text())
    seconds_per_step = rows[-1]["epoch_time"] / iters
    epochs = max(1, math.floor(args.pretrain_minutes * 60 / (seconds_per_step * args.pretrain_iters)))
    print(f"calibration: {seconds_per_step:.3f} s per pretraining step -> {epochs} x {args.pretrain_iters} steps",
          flush=True)
    return epochs, seconds_per_step


def main(argv=None) -> None:
    args = parse_args(argv)
    work = args.work.resolve()
    if args.fresh and work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    logs, times = work / "logs", {}
    env = environment(work, "results_scratch", args.threads)
    preprocessed = work / "preprocessed" / DATASET
    plans = preprocessed / "smitunetPlans.json"
    if not (work / "raw" / DATASET / "dataset.json").is_file():
        (work / "raw").mkdir(exist_ok=True)
        times |= run_jobs([Job("convert", ["smitunet_convert_msd", "-i", str(args.msd), "-d", "4"], env,
                               logs / "convert.log")], 1)
    if not plans.is_file():
        times |= run_jobs([Job("plan_and_preprocess", [
            "smitunet_plan_and_preprocess", "-d", "4", "--preset", args.preset, "-c", "3d_fullres",
            "-np", str(max(args.threads, args.jobs))], env, logs / "plan_and_preprocess.log")], 1)
    split = write_splits(preprocessed, args.num_train, args.num_eval, args.seed)
    smit = work / f"smit_{args.method}.pt"
    jobs, pretrain_after, calibration = [], [], None
    if args.pretrain_minutes is not None and not smit.is_file():
        args.pretrain_epochs, calibration = calibrated_epochs(args, plans, work, env)
    if not smit.is_file():
        jobs.append(Job("pretrain", pretrain_command(args, plans, smit, args.pretrain_epochs, args.pretrain_iters),
                        env, logs / "pretrain.log"))
        pretrain_after = ["pretrain"]
    budget = ["--epochs", str(args.finetune_epochs), "--iters_per_epoch", str(args.finetune_iters),
              "--num_workers", str(args.finetune_workers), "--device", args.device]
    runs = {}  # variant -> seed -> (results folder, trainer folder name)
    variants = [("scratch" if t == "SMITTrainer" else f"scratch_{t}", t, []) for t in args.scratch_trainers] + [
        (f"pretrained_{t}", t, ["--pretrained", str(smit)]) for t in args.pretrained_trainers]
    for variant, trainer, extra in variants:
        for seed in args.finetune_seeds:
            folder = f"results_{variant}_{args.method}_seed{seed}" if extra else f"results_{variant}_seed{seed}"
            runs.setdefault(variant, {})[seed] = (folder, trainer)
            if args.fresh or not validation_summary(work, folder, trainer).is_file():
                jobs.append(Job(f"{variant}_seed{seed}", [
                    "smitunet_train", "4", "3d_fullres", "0", "-tr", PLUGIN_TRAINERS.get(trainer, trainer),
                    *budget, "--seed", str(seed), *extra], environment(work, folder, args.threads),
                    logs / f"{variant}_seed{seed}.log", after=pretrain_after if extra else []))
    times |= run_jobs(jobs, max(1, args.jobs))
    results = {variant: {seed: fold_dice(validation_summary(work, folder, trainer))
                         for seed, (folder, trainer) in seeds.items()} for variant, seeds in runs.items()}
    report(args, split, results, times, work, calibration)


def pretraining_losses(work: Path, method: str) -> list[dict]:
    path = work / f"smit_{method}_log.json"
    return json.loads(path.read_text()) if path.is_file() else []


def report(args, split: dict, results: dict, times: dict, work: Path, calibration: float | None) -> None:
    seeds = args.finetune_seeds
    means = {v: float(np.mean([r["mean"] for r in per_seed.values()])) for v, per_seed in results.items()}
    reference = "scratch" if "scratch" in means else next(iter(means))
    rows = pretraining_losses(work, args.method)
    lines = [f"Label efficiency, Hippocampus: fine-tune on {len(split['train'])} labelled cases, evaluate on "
             f"{len(split['val'])} others ({args.preset}, device {args.device})", ""]
    if rows:
        first, last = rows[0], rows[-1]
        lines.append(f"- pretraining ({args.method}, labels unused, {last['step']} steps of {args.pretrain_batch} "
                     f"samples x 2 views, {sum(r['epoch_time'] for r in rows):.0f} s): "
                     + ", ".join(f"{k} {first[k]:.3f} -> {last[k]:.3f}" for k in ("reconstruction", "patch", "global")))
    lines += [f"- fine-tuning: {args.finetune_epochs} x {args.finetune_iters} iterations per run, seeds {seeds}", "",
              "| variant | " + " | ".join(f"seed {s}" for s in seeds) + f" | mean | vs {reference} |",
              "|---|" + "---|" * (len(seeds) + 2)]
    for variant, per_seed in results.items():
        diff = "" if variant == reference else f"{100 * (means[variant] - means[reference]):+.2f} points"
        lines.append(f"| {variant} | " + " | ".join(f"{per_seed[s]['mean']:.4f}" for s in seeds)
                     + f" | {means[variant]:.4f} | {diff} |")
    lines.append("")
    if calibration is not None:
        lines.append(f"- calibration: {calibration:.3f} s per pretraining step alone -> {args.pretrain_epochs} epochs "
                     f"for {args.pretrain_minutes} minutes")
    lines += [f"- time {step}: {seconds:.1f} s" for step, seconds in times.items()]
    text = "\n".join(lines)
    print("\n" + text + "\n(target: pretrained >= scratch + 3.00 points)")
    (work / f"label_efficiency_{args.method}.md").write_text(text + "\n")
    (work / f"label_efficiency_{args.method}.json").write_text(json.dumps(
        {"results": results, "mean_dice": means, "pretraining_log": rows, "times_s": times,
         "calibration_s_per_step": calibration,
         "budgets": vars(args) | {"msd": str(args.msd), "work": str(args.work)}}, indent=2, default=str))


if __name__ == "__main__":
    main()
