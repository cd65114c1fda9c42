"""nnU-Net's configurations side by side at an equal CPU budget: Hippocampus fold 0, ``2d`` against ``3d_fullres``.

    python benchmarks/configurations.py                                   # 15 min per configuration, 1 thread each
    python benchmarks/configurations.py -c 2d 3d_fullres 3d_lowres --budget_minutes 30 --threads 2 --jobs 1
    python benchmarks/configurations.py --quick                           # smoke run of every step

Each configuration is planned and preprocessed by ``smitunet_plan_and_preprocess`` (2d shares 3d_fullres' data), a
short calibration run of each alone turns the wall budget into epochs (``_train_side.budget_epochs``, the rule of
``compare_nnunet.py`` and ``label_efficiency.py``), and each then trains on fold 0 for those epochs and validates
on the fold's held-out cases with ``smitunet_train``'s own fold validation. Calibration runs one at a time, so the
epochs do not depend on what else ran; ``--jobs 2`` then trains the configurations side by side.
Work folder: ``benchmarks/work/configurations`` (git-ignored). Report: ``benchmarks/results/configurations_*``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _jobs import Job, run_jobs  # noqa: E402
from _measure import run_measured  # noqa: E402
from _smitunet_env import work_env  # noqa: E402
from _report import RESULTS_DIR, machine_description, now_utc  # noqa: E402
from _train_side import budget_epochs, read_dice  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAINER, PLANS = "SMITTrainer", "smitunetPlans"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "Task04_Hippocampus",
                   help="an MSD task folder (converted with smitunet_convert_msd)")
    p.add_argument("-d", "--dataset_id", type=int, default=4)
    p.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres"])
    p.add_argument("--baseline", default="3d_fullres", help="the configuration the ratios are taken against")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--budget_minutes", type=float, default=15.0, help="training wall budget of one run alone")
    p.add_argument("--iters_per_epoch", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="threads of each run")
    p.add_argument("--jobs", type=int, default=2, help="runs trained side by side after calibration")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "configurations")
    p.add_argument("--quick", action="store_true", help="1-minute budget, a smoke run of every step")
    args = p.parse_args(argv)
    if args.quick:
        args.budget_minutes, args.iters_per_epoch = 1.0, 5
    if args.baseline not in args.configurations:
        p.error(f"--baseline {args.baseline} is not among -c {args.configurations}")
    args.work = args.work.resolve()
    return args


def env_for(args, results: str) -> dict[str, str]:
    return work_env(args.work, results, args.threads)


def run(name: str, cmd: list, env: dict, log: Path) -> None:
    run_jobs([Job(name, [str(c) for c in cmd], env, log)], 1)


def dataset_name(args) -> str:
    found = sorted((args.work / "raw").glob(f"Dataset{args.dataset_id:03d}_*"))
    if not found:
        raise SystemExit(f"error: no converted dataset {args.dataset_id} under {args.work / 'raw'}")
    return found[0].name


def prepare(args) -> str:
    logs = args.work / "logs"
    if not any((args.work / "raw").glob(f"Dataset{args.dataset_id:03d}_*/dataset.json")):
        run("convert", ["smitunet_convert_msd", "-i", args.source, "-d", args.dataset_id], env_for(args, "results"),
            logs / "convert.log")
    name = dataset_name(args)
    plans = args.work / "preprocessed" / name / f"{PLANS}.json"
    missing = [c for c in args.configurations
               if not plans.is_file() or c not in json.loads(plans.read_text())["configurations"]]
    if missing or not (args.work / "preprocessed" / name / "splits_final.json").is_file():
        shutil.rmtree(args.work / "preprocessed" / name, ignore_errors=True)
        run("plan_and_preprocess", ["smitunet_plan_and_preprocess", "-d", args.dataset_id, "-np", 2, "-c",
                                    *args.configurations], env_for(args, "results"), logs / "plan_and_preprocess.log")
    configs = json.loads(plans.read_text())["configurations"]
    absent = [c for c in args.configurations if c not in configs]
    if absent:
        raise SystemExit(f"error: {plans} has no configuration {', '.join(absent)} (planned: {', '.join(configs)})")
    return name


def fold_dir(args, name: str, results: str, configuration: str) -> Path:
    return args.work / results / name / f"{TRAINER}__{PLANS}__{configuration}" / f"fold_{args.fold}"


def train_cmd(args, configuration: str, epochs: int, iters: int) -> list:
    return ["smitunet_train", args.dataset_id, configuration, args.fold, "-tr", TRAINER, "--device", "cpu",
            "--epochs", epochs, "--iters_per_epoch", iters, "--num_workers", 1]


def _steady(values: list[float]) -> float:
    rest = values[1:] or values
    return sorted(rest)[len(rest) // 2]


def calibrate(args, name: str, configuration: str) -> dict:
    iters = max(2, args.iters_per_epoch // 2)
    results = f"calibration_{configuration}"
    shutil.rmtree(args.work / results, ignore_errors=True)
    folder = fold_dir(args, name, results, configuration)
    log = args.work / "logs" / f"calibrate_{configuration}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # stopped once its final checkpoint is written: the fold validation after it is no part of an epoch
    m = run_measured(train_cmd(args, configuration, 2, iters), env=env_for(args, results), log_path=log,
                     stop_when=lambda _: (folder / "checkpoint_final.pt").is_file())
    if not (folder / "checkpoint_final.pt").is_file():
        raise SystemExit(f"error: calibration of {configuration} failed (exit {m.returncode}); see {log}")
    rows = json.loads((folder / "metrics.json").read_text())
    measured = {"train_s_per_iter": _steady([r["train_time"] / iters for r in rows]),
                "epoch_overhead_s": _steady([r["epoch_time"] - r["train_time"] for r in rows]), "startup_s": 0.0}
    measured["epochs"] = budget_epochs(measured, iters, args.iters_per_epoch, 60 * args.budget_minutes)
    return measured


def collect(args, name: str, configuration: str, calibration: dict, wall_s: float) -> dict:
    folder = fold_dir(args, name, f"results_{configuration}", configuration)
    rows = json.loads((folder / "metrics.json").read_text())
    plans = json.loads((args.work / "preprocessed" / name / f"{PLANS}.json").read_text())["configurations"][configuration]
    return {"configuration": configuration, "patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
            "spacing": plans["spacing"], "epochs": len(rows), "iterations": len(rows) * args.iters_per_epoch,
            "train_s_per_iter": _steady([r["train_time"] / args.iters_per_epoch for r in rows]),
            "train_s": sum(r["epoch_time"] for r in rows), "wall_s": wall_s,
            "calibration": calibration, "dice": read_dice(folder / "validation" / "summary.json"),
            "model_folder": str(folder)}


def report(args, name: str, runs: dict) -> str:
    base = runs[args.baseline]["dice"]["mean"]
    classes = [k for k in runs[args.baseline]["dice"] if k != "mean"]
    lines = [f"# Configurations at an equal CPU budget: {name}, fold {args.fold} ({now_utc()})", "",
             f"Each configuration trained for the epochs that fit {args.budget_minutes:g} min of one run alone "
             f"({args.threads} thread(s), measured by a calibration run of each alone), {args.iters_per_epoch} "
             f"iterations per epoch, {args.jobs} run(s) side by side; Dice on the fold's validation cases "
             f"(smitunet_train's fold validation, mirroring on). Ratios against {args.baseline}.", "",
             "| configuration | patch | batch | epochs x iterations | s/iteration | "
             + " | ".join(f"Dice {c}" for c in classes) + f" | Dice mean | mean / {args.baseline} |",
             "|---|---|---|---|---|" + "---|" * len(classes) + "---|---|"]
    for c, r in runs.items():
        lines.append(f"| {c} | {'x'.join(map(str, r['patch_size']))} | {r['batch_size']} | {r['epochs']} x "
                     f"{args.iters_per_epoch} | {r['train_s_per_iter']:.2f} | "
                     + " | ".join(f"{r['dice'][k]:.4f}" for k in classes)
                     + f" | {r['dice']['mean']:.4f} | {r['dice']['mean'] / base:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    name = prepare(args)
    calibration = {c: calibrate(args, name, c) for c in args.configurations}
    jobs = []
    for c in args.configurations:
        shutil.rmtree(args.work / f"results_{c}", ignore_errors=True)
        jobs.append(Job(c, [str(x) for x in train_cmd(args, c, calibration[c]["epochs"], args.iters_per_epoch)],
                        env_for(args, f"results_{c}"), args.work / "logs" / f"train_{c}.log"))
    start = time.time()
    walls = run_jobs(jobs, max(1, args.jobs))
    runs = {c: collect(args, name, c, calibration[c], walls.get(c, time.time() - start)) for c in args.configurations}
    text = report(args, name, runs)
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
    stem = RESULTS_DIR / f"configurations_{name.split('_', 1)[1]}{'_quick' if args.quick else ''}_{stamp}"
    RESULTS_DIR.mkdir(exist_ok=True)
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine, "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": runs}, indent=1))
    print(text)
    print(f"written: {stem}.md/.json")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(f"error: {exc}")
