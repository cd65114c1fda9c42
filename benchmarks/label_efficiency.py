"""Label efficiency: fine-tune on few labelled cases, with and without SMIT pretraining, beside nnU-Net v2.

    python benchmarks/label_efficiency.py --protocol cpu --labelled 8 --seeds 0 1 2      # the Left Atrium
    python benchmarks/label_efficiency.py --protocol cpu --labelled 8 --rows probe_random probe_smit --seeds 0
    python benchmarks/label_efficiency.py --report_only                                   # tables from the file

Any dataset in nnU-Net v2 raw format (or an MSD task folder) works: ``--source FOLDER -d ID``. The default is
``../shared/data/Dataset010_LeftAtrium``. Cases: see ``_le_data`` (``case_order.txt``: the first N are
labelled, the last ``--num_eval`` are evaluated and never labelled nor, without ``--pretrain_on_all``,
pretrained on). Rows (``--rows``), each fine-tuned with the same budget and evaluated on the same cases:

- ``scratch``: ``smitunet_train`` from random weights on N labelled cases;
- ``smit`` (``smart``, ``gmim``): the same from ``smitunet_pretrain --method M`` weights, pretrained once on the
  images of every non-evaluation case (labels never read);
- ``nnunet``: nnU-Net v2 (its own virtual environment, planned at the same target spacing), same cases;
- ``upper``: ``scratch`` with every non-evaluation case labelled (its N is that count, whatever ``--labelled``);
- ``probe_random`` / ``probe_smit``: the encoder frozen (random / pretrained), only the decoder trains;
- ``smit_uniform_lr`` / ``smit_warmup``: the fine-tuning recipe's ablations (no layer-wise decay; encoder frozen for
  the first 10 % of the iterations);
- ``semi`` / ``semi_smit`` / ``semi_gmim``: ``SMITSemiSupervisedTrainer`` (scratch / pretrained) on every
  non-evaluation case with ``--labelled_cases`` the same N; its iterations cost more, so its own calibration fits
  the same wall budget.

The fine-tuning budget is wall time (``--budget_minutes``) of one run alone with ``--threads`` threads; a short
calibration run of each tool turns it into that tool's epochs, recorded in the results file, so later runs
(other rows, seeds, invocations, ``--jobs`` side by side) train the same iterations.

Everything is resumable: the work folder keeps the data, the pretraining (continued with ``--c`` when it was
interrupted) and each fine-tuned model folder (``smitunet_predict`` reads ``<work>/results_<row>_s<seed>``);
``<work>/label_efficiency.json`` records each finished run as it ends, and a rerun skips it. The report (md, json,
two plots) goes to ``benchmarks/results/``.

Protocols (``--protocol``; every setting can be overridden):
- ``cpu``: 2-core machine; 1.25 mm, a small memory target (patch 48x48x64, batch 2, 3 Swin stages on the Left
  Atrium; nnU-Net plans its own 1 GB target), fold validation without mirroring, two jobs of one thread each.
- ``cpu_bf16``: ``cpu`` with smitunet's fine-tuning and pretraining under ``--precision bf16`` (a CPU with
  AVX512-bf16 or AMX): about twice the iterations in the same budget, 1500 pretraining steps instead of 900.
- ``gpu``: the dataset's own spacing, nnU-Net's default 8 GB target, mirroring, CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _le_data as data  # noqa: E402
import _le_report as report  # noqa: E402
import _nnunet_env as nn  # noqa: E402
from _jobs import Job, run_jobs  # noqa: E402
from _report import RESULTS_DIR, machine_description, now_utc  # noqa: E402
from _train_side import budget_epochs, epoch_seconds, val_iters  # noqa: E402
from smitunet.training.semi_supervised import SMITSemiSupervisedTrainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLUGIN_TRAINERS = {name: f"label_efficiency_trainers:{name}" for name in (
    "SMITTrainerFrozenEncoder", "SMITTrainerUniformLR", "SMITTrainerEncoderWarmup",
    "SMITSemiSupervisedTrainerNoWarmup", "SMITSemiSupervisedTrainerNoLCC", "SMITSemiSupervisedTrainerMixedOnly",
    "SMITSemiSupervisedTrainerVoxelWeight", "SMITSemiSupervisedTrainerNoMix", "SMITSemiSupervisedTrainerNoPseudo")}
METHODS = ("smit", "smart", "gmim")
# row -> (pretraining method or None, trainer); nnunet is nnU-Net's own trainer
SMITUNET_ROWS = {"scratch": (None, "SMITTrainer"), "upper": (None, "SMITTrainer"),
                 **{m: (m, "SMITTrainer") for m in METHODS},
                 "smit_uniform_lr": ("smit", "SMITTrainerUniformLR"), "smit_warmup": ("smit", "SMITTrainerEncoderWarmup"),
                 "probe_random": (None, "SMITTrainerFrozenEncoder"), "probe_smit": ("smit", "SMITTrainerFrozenEncoder"),
                 "semi": (None, "SMITSemiSupervisedTrainer"), "semi_smit": ("smit", "SMITSemiSupervisedTrainer"),
                 "semi_gmim": ("gmim", "SMITSemiSupervisedTrainer"),
                 "semi_nowarmup": (None, "SMITSemiSupervisedTrainerNoWarmup"),
                 "semi_nolcc": (None, "SMITSemiSupervisedTrainerNoLCC"),
                 "semi_mixedonly": (None, "SMITSemiSupervisedTrainerMixedOnly"),
                 "semi_voxelweight": (None, "SMITSemiSupervisedTrainerVoxelWeight"),
                 "semi_nomix": (None, "SMITSemiSupervisedTrainerNoMix"),
                 "semi_nopseudo": (None, "SMITSemiSupervisedTrainerNoPseudo")}
# Every row also exists with the light decoder ("<row>_light"): the same plans (patch, strides, spacing) with
# decoder "light", so the encoder carries the representation; the same pretraining.
LIGHT = "_light"
LIGHT_PLANS = "smitunetPlans_light"
SMITUNET_ROWS |= {f"{row}{LIGHT}": spec for row, spec in SMITUNET_ROWS.items()}
# on every non-evaluation case, --labelled_cases the first N
# the step each semi-supervised row calibrates its budget with: today's (labelled crops beside the mixed ones) or
# the mixed crops only (the first three versions)
SEMI_STEP = {"semi": "semi", "semi_smit": "semi", "semi_gmim": "semi", "semi_nowarmup": "semi_mixedonly",
             "semi_nolcc": "semi_mixedonly", "semi_mixedonly": "semi_mixedonly", "semi_voxelweight": "semi",
             "semi_nomix": "semi", "semi_nopseudo": "semi"}
SEMI_STEP_TRAINER = {"semi": "SMITSemiSupervisedTrainer", "semi_mixedonly": "SMITSemiSupervisedTrainerMixedOnly"}
SEMI_ROWS = tuple(r + light for light in ("", LIGHT) for r in SEMI_STEP)
ROWS = (*SMITUNET_ROWS, "nnunet")


def plans_of(row: str) -> str:
    return LIGHT_PLANS if row.endswith(LIGHT) else "smitunetPlans"


def semi_step(row: str) -> str | None:
    """The calibrated step of a semi-supervised row (``semi``, ``semi_mixedonly``, + ``_light``); None for others."""
    light = LIGHT if row.endswith(LIGHT) else ""
    base = row[: -len(LIGHT)] if light else row
    return f"{SEMI_STEP[base]}{light}" if base in SEMI_STEP else None


def budget_key(row: str) -> str:
    step = semi_step(row)
    if step is None:
        return f"smitunet{LIGHT if row.endswith(LIGHT) else ''}_epochs"
    if row.startswith("semi_nowarmup"):
        return f"{step}_epochs"
    return f"{step}_warmup_epochs"  # a labelled-only warm-up first: cheaper steps, so more of them


PROTOCOLS = {
    # smitunet's target gives patch 48x48x64 / batch 2 with its AdamW + fp16 estimate (the same plans as 1.0 under
    # the earlier SGD + fp32 estimate the recorded runs were planned with); nnU-Net plans with its own 1 GB
    "cpu": dict(spacing=[1.25, 1.25, 1.25], gpu_memory_target=0.6, nnunet_gpu_memory_target=1.0, device="cpu", tta=False, budget_minutes=40.0,
                iters_per_epoch=25, threads=1, jobs=2, workers=1, pretrain_epochs=30, pretrain_iters=30,
                pretrain_batch=2, pretrain_workers=1, pretrain_threads=1, precision="auto"),
    "gpu": dict(spacing=None, gpu_memory_target=8.0, nnunet_gpu_memory_target=8.0, device="cuda", tta=True, budget_minutes=30.0,
                iters_per_epoch=250, threads=4, jobs=4, workers=3, pretrain_epochs=100, pretrain_iters=100,
                pretrain_batch=16, pretrain_workers=6, pretrain_threads=4, precision="auto"),
}
# The CPU protocol with smitunet's steps under bf16 autocast (--precision bf16; CPUs with AVX512-bf16 or AMX): the
# same 40-minute fine-tuning budget buys about twice the iterations, and 1500 pretraining steps cost about what 900
# fp32 steps do. nnU-Net has no CPU bf16 and runs as in ``cpu``.
PROTOCOLS["cpu_bf16"] = dict(PROTOCOLS["cpu"], precision="bf16", pretrain_epochs=50)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "Dataset010_LeftAtrium",
                   help="dataset folder: nnU-Net v2 raw format or an MSD task")
    p.add_argument("-d", "--dataset_id", type=int, default=None, help="id for both tools (default: the folder's)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="cpu")
    p.add_argument("--work", type=Path, default=None, help="work folder (default benchmarks/work/le_<id>_<protocol>)")
    p.add_argument("--labelled", type=int, nargs="+", default=[8])
    p.add_argument("--num_eval", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=["scratch", "smit", "nnunet"], metavar="ROW[:SEEDS]",
                   help=f"rows in the order their runs are started, each optionally with its own comma-separated "
                        f"seeds (e.g. probe_random:0); rows: {', '.join(ROWS)}")
    p.add_argument("--split_seed", type=int, default=0, help="case order when the dataset has no case_order.txt")
    p.add_argument("--pretrain_on_all", action="store_true", help="also pretrain on the evaluation cases' images")
    p.add_argument("--preset", default="smit_small")
    p.add_argument("--decoder", choices=("res", "light"), default=None, help="the Swin U-Net decoder planned")
    for name, kind in (("spacing", float), ("gpu_memory_target", float), ("nnunet_gpu_memory_target", float),
                       ("device", str), ("budget_minutes", float),
                       ("iters_per_epoch", int), ("threads", int), ("jobs", int), ("workers", int),
                       ("pretrain_epochs", int), ("pretrain_iters", int), ("pretrain_batch", int),
                       ("pretrain_workers", int), ("pretrain_threads", int), ("precision", str)):
        p.add_argument(f"--{name}", type=kind, nargs=3 if name == "spacing" else None, default=None,
                       help="default: the protocol's")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="mirroring in fold validation")
    p.add_argument("--smitunet_epochs", type=int, default=None,
                   help="smitunet's labelled-only epochs instead of a calibration on this machine: a variant sized "
                        "against the recorded budget by a step-time ratio measured here (recorded in the budget)")
    p.add_argument("--tag", default="", help="a variant of the protocol (e.g. mem1 with --gpu_memory_target 1.0): "
                   "its own work folder and results files, the protocol's pretrained checkpoints reused")
    p.add_argument("--recalibrate", action="store_true", help="measure the budget again (finished runs are kept)")
    p.add_argument("--report_only", action="store_true")
    args = p.parse_args(argv)
    args.row_plan = []  # (row, seeds or None) in the order the runs are started; a row may appear again
    for entry in args.rows:
        row, _, seeds = entry.partition(":")
        if row not in ROWS:
            p.error(f"--rows: unknown row {row!r}; choose from {', '.join(ROWS)}")
        args.row_plan.append((row, [int(s) for s in seeds.split(",")] if seeds else None))
    args.rows = list(dict.fromkeys(row for row, _ in args.row_plan))
    for key, value in PROTOCOLS[args.protocol].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.source = args.source.resolve()
    if not (args.source / "dataset.json").is_file():
        sys.exit(f"error: {args.source}: no dataset.json (give --source a dataset folder)")
    if args.dataset_id is None:
        digits = args.source.name[7:10] if args.source.name.startswith("Dataset") else args.source.name[4:6]
        if not digits.isdigit():
            sys.exit(f"error: {args.source.name}: give the dataset id with -d")
        args.dataset_id = int(digits)
    args.name = data.dataset_name(args.source, args.dataset_id)
    variant = f"{args.protocol}_{args.tag}" if args.tag else args.protocol
    args.work = (args.work or REPO / "benchmarks" / "work" / f"le_{args.dataset_id:03d}_{variant}").resolve()
    args.stem = f"label_efficiency_{args.name}_{variant}"  # the results files
    return args


# -- environments ---------------------------------------------------------------------------------------------
def smitunet_env(args, results: str | None = None, threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # This checkout's smitunet first (before any installed copy): a long protocol can run from a frozen worktree
    # while development goes on, and every row of it trains with the same code.
    path = [str(Path(__file__).resolve().parent), str(REPO), env.get("PYTHONPATH", "")]
    threads = str(threads or args.threads)
    env.update(smitunet_raw=str(args.work / "raw"), smitunet_preprocessed=str(args.work / "preprocessed"),
               smitunet_results=str(args.work / (results or "results")), OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, PYTHONPATH=os.pathsep.join(p for p in path if p))
    return env


def nnunet_env(args, results: str) -> dict[str, str]:
    root = args.work / "nnunet"
    env = nn.nnunet_env(args.threads)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / results), nnUNet_n_proc_DA=str(args.workers),
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    for sub in ("raw", "preprocessed"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return env


def run_now(name: str, cmd: list, env: dict, log: Path) -> None:
    run_jobs([Job(name, cmd, env, log)], 1)


# -- stages ---------------------------------------------------------------------------------------------------
def stage_raw(args) -> Path:
    raw = args.work / "raw" / args.name
    if (raw / "dataset.json").is_file():
        return raw
    raw.parent.mkdir(parents=True, exist_ok=True)
    if data.dataset_kind(args.source) == "nnunetv2":
        raw.symlink_to(args.source, target_is_directory=True)
    else:
        run_now("convert", ["smitunet_convert_msd", "-i", args.source, "-d", args.dataset_id], smitunet_env(args),
                args.work / "logs" / "convert.log")
    return raw


def plans_path(args) -> Path:
    return args.work / "preprocessed" / args.name / "smitunetPlans.json"


def plan_smitunet(args) -> None:
    if plans_path(args).is_file():
        return
    cmd = ["smitunet_plan_and_preprocess", "-d", args.dataset_id, "--preset", args.preset, "-c", "3d_fullres",
           "--gpu_memory_target", args.gpu_memory_target, "-np", max(2, args.jobs)]
    cmd += ["--decoder", args.decoder] if args.decoder else []
    run_now("plan_and_preprocess", cmd + (["--spacing", *args.spacing] if args.spacing else []),
            smitunet_env(args, threads=args.pretrain_threads), args.work / "logs" / "plan_and_preprocess.log")


def plan_light(args) -> None:
    """The light-decoder plans: a copy of the plans with ``decoder: light`` (same patch, strides and spacing),
    preprocessed under their own name."""
    light = plans_path(args).with_name(f"{LIGHT_PLANS}.json")
    if not light.is_file():
        plans = json.loads(plans_path(args).read_text())
        plans["plans_name"] = LIGHT_PLANS
        for name, config in plans["configurations"].items():
            config["data_identifier"] = f"{LIGHT_PLANS}_{name}"
            config["network"]["kwargs"]["decoder"] = "light"
        light.write_text(json.dumps(plans, indent=1))
    if not (light.parent / f"{LIGHT_PLANS}_3d_fullres").is_dir() or len(list(
            (light.parent / f"{LIGHT_PLANS}_3d_fullres").glob("*.json"))) < len(list(
            (light.parent / "smitunetPlans_3d_fullres").glob("*.json"))):
        run_now("plan_and_preprocess_light", ["smitunet_plan_and_preprocess", "-d", args.dataset_id, "-pl", LIGHT_PLANS,
                                              "--use_existing_plans", "-c", "3d_fullres", "-np", max(2, args.jobs)],
                smitunet_env(args, threads=args.pretrain_threads), args.work / "logs" / "plan_and_preprocess.log")


def plan_nnunet(args) -> str:
    """nnU-Net's own plans and preprocessing, at the same target spacing; returns its plans name."""
    plans = "nnUNetPlans" if not args.spacing else "nnUNetPlans_" + "x".join(f"{s:g}" for s in args.spacing)
    pre = args.work / "nnunet" / "preprocessed" / args.name
    if (pre / f"{plans}.json").is_file() and (pre / f"{plans}_3d_fullres").is_dir():
        return plans
    nn.ensure_venv()
    env = nnunet_env(args, "results")
    raw = args.work / "nnunet" / "raw" / args.name
    if not raw.exists():
        raw.symlink_to(args.work / "raw" / args.name, target_is_directory=True)
    bin_ = nn.venv_bin
    log = args.work / "logs" / "nnunet_plan.log"
    cores = str(max(2, args.jobs))
    run_now("nnunet_fingerprint", [bin_("nnUNetv2_extract_fingerprint"), "-d", args.dataset_id, "-np", cores], env, log)
    plan = [bin_("nnUNetv2_plan_experiment"), "-d", args.dataset_id, "-gpu_memory_target", args.nnunet_gpu_memory_target]
    if args.spacing:
        plan += ["-overwrite_target_spacing", *args.spacing, "-overwrite_plans_name", plans]
    run_now("nnunet_plan", plan, env, log)
    run_now("nnunet_preprocess", [bin_("nnUNetv2_preprocess"), "-d", args.dataset_id, "-plans_name", plans,
                                  "-c", "3d_fullres", "-np", cores], env, log)
    return plans


def write_splits(args, evaluation: list[str], subsets: dict[int, list[str]]) -> dict[int, int]:
    """{labelled: fold}: one fold per subset in both tools' splits_final.json (the same indices)."""
    folds = {}
    for n, train in subsets.items():
        for root in (args.work / "preprocessed", args.work / "nnunet" / "preprocessed"):
            folds[n] = data.fold_for(root / args.name / "splits_final.json", train, evaluation)
    return folds


def pretrain_command(args, method: str, images: Path) -> list:
    return ["smitunet_pretrain", "-o", args.work / f"smit_{method}.pt", "-i", images, "--plans", plans_path(args),
            "-c", "3d_fullres", "--method", method, "--epochs", args.pretrain_epochs, "--iters_per_epoch",
            args.pretrain_iters, "--batch_size", args.pretrain_batch, "--seed", 0, "--device", args.device,
            "--export_weights", "student", "--num_workers", args.pretrain_workers, "--cache", args.work / "pretrain_cache",
            *precision_flags(args)]


def precision_flags(args) -> list:
    return [] if args.precision == "auto" else ["--precision", args.precision]


def pretraining_done(args, method: str) -> bool:
    log = args.work / f"smit_{method}_log.json"
    return log.is_file() and len(json.loads(log.read_text())) >= args.pretrain_epochs


def committed_pretraining(args, method: str) -> Path:
    """Where a finished pretraining of this dataset, protocol and method is kept in the repository."""
    return RESULTS_DIR / "pretrained" / f"{args.name}_{args.protocol}_{method}.pt"


def adopt_committed_pretraining(args, method: str) -> bool:
    """A new work folder takes the committed pretraining (and its loss log) instead of pretraining again: on the
    CPU protocol it costs about an hour, and every earlier row was fine-tuned from it."""
    kept = committed_pretraining(args, method)
    log = kept.with_name(kept.stem + "_log.json")
    if pretraining_done(args, method) or not (kept.is_file() and log.is_file()):
        return False
    args.work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kept, args.work / f"smit_{method}.pt")
    shutil.copyfile(log, args.work / f"smit_{method}_log.json")
    return True


def pretrain_job(args, method: str, images: Path) -> Job | None:
    if adopt_committed_pretraining(args, method):
        print(f"pretraining {method}: the committed {committed_pretraining(args, method).name}", flush=True)
    if pretraining_done(args, method):
        return None
    cmd = pretrain_command(args, method, images)
    if (args.work / f"smit_{method}_state.pt").is_file():
        cmd.append("--c")  # an interrupted pretraining continues where it stopped
    return Job(f"pretrain_{method}", cmd, smitunet_env(args, threads=args.pretrain_threads),
               args.work / "logs" / f"pretrain_{method}.log")


# -- budget ---------------------------------------------------------------------------------------------------
def _steady(values: list[float]) -> float:
    return sorted(values[1:] or values)[len(values[1:] or values) // 2]


def _calibrate_smitunet(args, name: str, cmd_extra: list, fold: int, budget_s: float, iters_cal: int) -> tuple[dict, int]:
    folder = args.work / "calibration" / name
    shutil.rmtree(folder, ignore_errors=True)
    start = time.time()
    run_now(f"calibrate_{name}", ["smitunet_train", args.dataset_id, "3d_fullres", fold, "--epochs", 2,
                                  "--iters_per_epoch", iters_cal, "--num_workers", args.workers, "--device",
                                  args.device, "--disable_tta", *precision_flags(args), *cmd_extra],
            smitunet_env(args, f"calibration/{name}"),
            args.work / "logs" / f"calibrate_{name}.log")
    rows = json.loads(next(folder.rglob("metrics.json")).read_text())
    measured = {"train_s_per_iter": _steady([r["train_time"] / iters_cal for r in rows]),
                "epoch_overhead_s": _steady([r["epoch_time"] - r["train_time"] for r in rows]),
                "startup_s": 0.0, "wall_s": time.time() - start}
    return measured, budget_epochs(measured, iters_cal, args.iters_per_epoch, budget_s)


def calibrate(args, results: dict, fold: int, nnunet_plans: str | None, semi: tuple[int, Path] | None = None,
              light: bool = False) -> dict:
    """Epochs per tool (and for the semi-supervised trainer, whose step costs more) for ``--budget_minutes``, from a
    2-epoch run of each alone; recorded in the results file and reused, a missing entry measured when first needed."""
    budget = {} if args.recalibrate else dict(results.get("budget") or {})
    budget_s = 60 * args.budget_minutes
    iters_cal = 10
    if "smitunet_epochs" not in budget:
        budget.update(budget_minutes=args.budget_minutes, iters_per_epoch=args.iters_per_epoch, threads=args.threads,
                      measured=now_utc())
        if args.smitunet_epochs:
            budget["smitunet"], budget["smitunet_epochs"] = {"set_by": "--smitunet_epochs"}, args.smitunet_epochs
        else:
            budget["smitunet"], budget["smitunet_epochs"] = _calibrate_smitunet(args, "smitunet", [], fold, budget_s,
                                                                                iters_cal)
    if nnunet_plans is not None and "nnunet_epochs" not in budget:
        result = args.work / "calibration" / "nnunet.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        env = nnunet_env(args, "calibration/nnunet")
        run_now("calibrate_nnunet", [nn.venv_python(), Path(__file__).resolve().parent / "_nnunet_driver.py",
                                     "--dataset", args.name, "--plans", nnunet_plans, "--fold", fold, "--epochs", 2,
                                     "--iters", iters_cal, "--val-iters", val_iters(iters_cal), "--threads",
                                     args.threads, "--out", result], env, args.work / "logs" / "calibrate_nnunet.log")
        epochs = json.loads(result.read_text())["epochs"]
        nnu = {"train_s_per_iter": _steady([e["train_s"] / e["iters"] for e in epochs]),
               "epoch_overhead_s": _steady([e["epoch_s"] - e["train_s"] for e in epochs]), "startup_s": 0.0}
        budget["nnunet"], budget["nnunet_epochs"] = nnu, budget_epochs(nnu, iters_cal, args.iters_per_epoch, budget_s)
    semi_rows = set(SEMI_ROWS) & set(args.rows)
    if light and "smitunet_light_epochs" not in budget:
        budget["smitunet_light"], budget["smitunet_light_epochs"] = _calibrate_smitunet(
            args, "smitunet_light", ["-p", LIGHT_PLANS], fold, budget_s, iters_cal)
    for name in sorted({semi_step(r) for r in semi_rows} if semi is not None else ()):
        light = LIGHT if name.endswith(LIGHT) else ""
        trainer = SEMI_STEP_TRAINER[name[: -len(LIGHT)] if light else name]
        if f"{name}_epochs" not in budget:
            semi_fold, labelled_file = semi
            budget[name], budget[f"{name}_epochs"] = _calibrate_smitunet(
                args, name, ["-tr", PLUGIN_TRAINERS.get(trainer, trainer), "--labelled_cases", labelled_file]
                + (["-p", LIGHT_PLANS] if light else []), semi_fold, budget_s, iters_cal)
        # the warm-up steps cost what a labelled-only step costs, the rest a semi-supervised step
        mixed, plain, key = budget.get(name), budget.get(f"smitunet{light}"), f"{name}_warmup_epochs"
        set_by_flag = bool(plain) and "set_by" in plain
        if set_by_flag and mixed and key not in budget and f"smitunet{light}_here" not in budget:
            # labelled-only epochs given by --smitunet_epochs: the semi-supervised ones follow by the ratio of the
            # two steps measured here, as the flag's own epochs were sized
            budget[f"smitunet{light}_here"] = _calibrate_smitunet(
                args, f"smitunet{light}_here", ["-p", LIGHT_PLANS] if light else [], semi_fold, budget_s, iters_cal)[0]
        if set_by_flag:
            plain = budget.get(f"smitunet{light}_here")
        if mixed and plain and key not in budget:
            share = SMITSemiSupervisedTrainer.supervised_warmup_fraction
            blended = dict(mixed, train_s_per_iter=share * plain["train_s_per_iter"]
                           + (1 - share) * mixed["train_s_per_iter"])
            if set_by_flag:
                ratio = (epoch_seconds(plain, iters_cal, args.iters_per_epoch)
                         / epoch_seconds(blended, iters_cal, args.iters_per_epoch))
                budget[key] = max(1, round(budget[f"smitunet{light}_epochs"] * ratio))
            else:
                budget[key] = budget_epochs(blended, iters_cal, args.iters_per_epoch, budget_s)
    results["budget"] = budget
    return budget


# -- fine-tuning runs -------------------------------------------------------------------------------------------
def smitunet_job(args, row: str, labelled: int, seed: int, fold: int, budget: dict) -> Job:
    method, trainer = SMITUNET_ROWS[row]
    epochs = budget[budget_key(row)]
    cmd = ["smitunet_train", args.dataset_id, "3d_fullres", fold, "-tr", PLUGIN_TRAINERS.get(trainer, trainer),
           "-p", plans_of(row), "--epochs", epochs, "--iters_per_epoch", args.iters_per_epoch, "--num_workers",
           args.workers, "--seed", seed, "--device", args.device, *precision_flags(args)]
    cmd += ["--labelled_cases", labelled_file(args, labelled)] if row in SEMI_ROWS else []
    cmd += [] if args.tta else ["--disable_tta"]
    cmd += ["--pretrained", args.work / f"smit_{method}.pt"] if method else []
    key = report.run_key(row, labelled, seed)
    job = Job(key, cmd, smitunet_env(args, f"results_{row}_s{seed}"), args.work / "logs" / f"{row}_L{labelled}_s{seed}.log",
              after=[f"pretrain_{method}"] if method else [])
    job.fold_dir = (args.work / f"results_{row}_s{seed}" / args.name / f"{trainer}__{plans_of(row)}__3d_fullres"
                    / f"fold_{fold}")
    return job


def nnunet_job(args, labelled: int, seed: int, fold: int, budget: dict, plans: str) -> Job:
    key = report.run_key("nnunet", labelled, seed)
    out = args.work / "nnunet" / f"run_L{labelled}_s{seed}.json"
    cmd = [nn.venv_python(), Path(__file__).resolve().parent / "_nnunet_driver.py", "--dataset", args.name, "--plans",
           plans, "--fold", fold, "--epochs", budget["nnunet_epochs"], "--iters", args.iters_per_epoch,
           "--val-iters", val_iters(args.iters_per_epoch), "--seed", seed, "--threads", args.threads, "--validate",
           "--out", out] + ([] if args.tta else ["--no-mirroring"])
    job = Job(key, cmd, nnunet_env(args, f"results_s{seed}"), args.work / "logs" / f"nnunet_L{labelled}_s{seed}.log")
    job.result_json = out
    return job


def labelled_file(args, labelled: int) -> Path:
    return args.work / f"labelled_L{labelled}.txt"


def finished_on_disk(job: Job, budget: dict) -> bool:
    """A run whose training and validation ended before this invocation recorded it (killed harness, or a run
    started by hand with the same command): it is collected instead of trained again."""
    if hasattr(job, "result_json"):
        return job.result_json.is_file()
    metrics = job.fold_dir / "metrics.json"
    epochs = int(job.cmd[job.cmd.index("--epochs") + 1])
    return ((job.fold_dir / "validation" / "summary.json").is_file() and metrics.is_file()
            and len(json.loads(metrics.read_text())) >= epochs)


def collect_smitunet(args, job: Job, seconds: float) -> dict:
    summary = json.loads((job.fold_dir / "validation" / "summary.json").read_text())
    metrics = json.loads((job.fold_dir / "metrics.json").read_text())
    curve = [_fg_mean({k: {"d": v} for k, v in r.items() if k.startswith("pseudo_dice_")}, "d") for r in metrics]
    iters = int(job.cmd[job.cmd.index("--iters_per_epoch") + 1])
    return {"dice": summary["foreground_mean"]["dice"], "hd95": summary["foreground_mean"]["hd95"],
            "per_case_dice": {c["case"]: _fg_mean(c["metrics"], "dice") for c in summary["metric_per_case"]},
            **lcc_scores(args, job.fold_dir / "validation"),
            "curve": curve, "curve_gain": report.curve_gain(curve), "iters_per_epoch": iters,
            "iterations": iters * len(metrics), "train_s": sum(r["epoch_time"] for r in metrics),
            "data_wait": _median([r["data_wait_fraction"] for r in metrics]), "wall_s": seconds,
            "model_folder": str(job.fold_dir)}


def collect_nnunet(args, job: Job, seconds: float) -> dict:
    """nnU-Net's fold validation predictions, scored by the same metrics code as smitunet's rows."""
    from smitunet.evaluation.evaluate import evaluate_folders

    run = json.loads(job.result_json.read_text())
    folder = Path(run["output_folder"]) / "validation"
    summary = evaluate_folders(args.work / "raw" / args.name / "labelsTr", folder, allow_subset=True,
                               output_file=folder / "summary_smitunet_metrics.json")
    curve = [float(sum(e["pseudo_dice"]) / len(e["pseudo_dice"])) for e in run["epochs"]]
    return {"dice": summary["foreground_mean"]["dice"], "hd95": summary["foreground_mean"]["hd95"],
            "per_case_dice": {c["case"]: _fg_mean(c["metrics"], "dice") for c in summary["metric_per_case"]},
            **lcc_scores(args, folder),
            "curve": curve, "curve_gain": report.curve_gain(curve), "iters_per_epoch": args.iters_per_epoch,
            "iterations": sum(e["iters"] for e in run["epochs"]), "train_s": run["train_wall_s"],
            "data_wait": _median([e["data_wait_fraction"] for e in run["epochs"]]), "wall_s": seconds,
            "patch_size": run["patch_size"], "batch_size": run["batch_size"], "model_folder": run["output_folder"]}


def lcc_scores(args, predictions: Path) -> dict:
    """``dice_lcc`` (mean over cases) and ``per_case_dice_lcc``: Dice after largest-component post-processing."""
    labels = sorted(v for k, v in json.loads((args.work / "raw" / args.name / "dataset.json").read_text())["labels"].items()
                    if isinstance(v, int) and v > 0 and k != "ignore")
    per_case = data.largest_component_dice(args.work / "raw" / args.name / "labelsTr", predictions, labels)
    return {} if per_case is None else {"dice_lcc": float(sum(per_case.values()) / len(per_case)),
                                        "per_case_dice_lcc": per_case}


def backfill_lcc(args, results: dict) -> None:
    """Runs recorded before the LCC column: scored from their kept predictions where this machine has them."""
    for key, run in results["runs"].items():
        if "dice_lcc" in run or not run.get("model_folder"):
            continue
        folder = Path(run["model_folder"]) / "validation"
        run.update(lcc_scores(args, folder))


def _fg_mean(metrics: dict, key: str) -> float:
    values = [m[key] for m in metrics.values()]
    return float(sum(values) / len(values))


def _median(values: list[float]) -> float:
    values = sorted(values)
    return float(values[len(values) // 2]) if values else float("nan")


# nnU-Net's runs depend on these settings only: a variant that leaves them as the protocol has them reuses the
# protocol's nnU-Net rows instead of spending the same 40-minute runs again
NNUNET_SETTINGS = ("spacing", "nnunet_gpu_memory_target", "budget_minutes", "iters_per_epoch", "threads", "device")


def adopt_nnunet_rows(args, results: dict) -> int:
    """A tagged variant takes over the nnU-Net runs (and their budget) recorded for its protocol when it changes
    none of :data:`NNUNET_SETTINGS`; returns how many it took. Its own nnU-Net runs, if any, are kept."""
    if not args.tag or any(getattr(args, k) != PROTOCOLS[args.protocol][k] for k in NNUNET_SETTINGS):
        return 0
    base_work = args.work.parent / f"le_{args.dataset_id:03d}_{args.protocol}"  # beside the variant's
    base_path = base_work / "label_efficiency.json"
    base = report.load_results(base_path if base_path.is_file() else
                               RESULTS_DIR / f"label_efficiency_{args.name}_{args.protocol}.json")
    taken = {k: dict(run, adopted_from=args.protocol) for k, run in base["runs"].items()
             if report.parse_key(k)[0] == "nnunet" and k not in results["runs"]}
    budget = results.setdefault("budget", {})
    for key in ("nnunet", "nnunet_epochs"):
        if key not in budget and key in base.get("budget", {}):
            budget[key] = base["budget"][key]
    results["runs"].update(taken)
    return len(taken)


# -- main -----------------------------------------------------------------------------------------------------
def describe(args, source_order: str, evaluation: list[str], subsets: dict, pool: int, budget: dict | None) -> list[str]:
    plans = json.loads(plans_path(args).read_text())["configurations"]["3d_fullres"]
    kw = plans["network"]["kwargs"]
    lines = [f"dataset {args.name} ({args.source.name}); cases ordered by {source_order}; {len(evaluation)} evaluation "
             f"cases (never labelled{'' if args.pretrain_on_all else ', not pretrained on'}); labelled subsets "
             f"{sorted(subsets)} of {pool} non-evaluation cases",
             f"protocol {args.protocol}: spacing {plans['spacing']} mm, patch {plans['patch_size']}, batch "
             f"{plans['batch_size']}, {plans['network']['name']} with {kw['num_stages']} Swin stages, device "
             f"{args.device}, fold validation {'with' if args.tta else 'without'} mirroring, {args.threads} thread(s) "
             f"per run, {args.jobs} run(s) at once, smitunet precision {args.precision}",
             f"pretraining: {args.pretrain_epochs} x {args.pretrain_iters} steps of {args.pretrain_batch} crops x 2 "
             f"views on the images of {'all' if args.pretrain_on_all else 'the non-evaluation'} cases"]
    if budget:
        lines.append(f"fine-tuning budget {budget['budget_minutes']} min of one run alone: smitunet "
                     f"{budget['smitunet_epochs']} x {budget['iters_per_epoch']} iterations"
                     + (f", nnU-Net {budget['nnunet_epochs']} x {budget['iters_per_epoch']}" if "nnunet_epochs" in budget
                        else ""))
    return lines


def write_report(args, results: dict) -> None:
    stem = args.stem
    work_md = args.work / f"{stem}.md"
    adopted = sorted({run["adopted_from"] for run in results["runs"].values() if run.get("adopted_from")})
    if adopted:
        line = (f"nnU-Net rows: the runs recorded for the {', '.join(adopted)} protocol (this variant changes none of "
                f"nnU-Net's settings: {', '.join(NNUNET_SETTINGS)})")
        results["description"] = [d for d in results.get("description", []) if not d.startswith("nnU-Net rows:")]
        results["description"].append(line)
        report.save_results(results, args.work / "label_efficiency.json")
    text = report.markdown(results, f"Label efficiency on {args.name} ({args.protocol} protocol"
                           + (f", variant {args.tag})" if args.tag else ")"))
    work_md.write_text(text + "\n")
    report.plot(results, args.work / f"{stem}.png", args.work / f"{stem}_curves.png")
    RESULTS_DIR.mkdir(exist_ok=True)
    for suffix in (".md", ".png", "_curves.png"):
        shutil.copyfile(args.work / f"{stem}{suffix}", RESULTS_DIR / f"{stem}{suffix}")
    shutil.copyfile(args.work / "label_efficiency.json", RESULTS_DIR / f"{stem}.json")
    print(text)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "label_efficiency.json"
    committed = RESULTS_DIR / f"{args.stem}.json"
    # A new work folder starts from the committed results: runs of earlier sessions are not repeated.
    results = report.load_results(results_path if results_path.is_file() else committed)
    if (args.work / "raw" / args.name / "dataset.json").is_file():
        backfill_lcc(args, results)
        report.save_results(results, results_path)
    adopted = adopt_nnunet_rows(args, results)
    if adopted:
        print(f"{adopted} nnU-Net run(s) taken from the {args.protocol} protocol's results (its settings unchanged)")
        report.save_results(results, results_path)
    if args.report_only:
        return write_report(args, results)
    raw = stage_raw(args)
    all_cases = sorted(p.name[: -len(".nii.gz")] if p.name.endswith(".nii.gz") else p.stem
                       for p in (raw / "labelsTr").iterdir() if not p.name.startswith("."))
    order, source_order = data.case_order(raw, all_cases, args.split_seed)
    pool = len(order) - args.num_eval
    wanted = sorted(set(args.labelled) | ({pool} if {"upper", f"upper{LIGHT}", *SEMI_ROWS} & set(args.rows) else set()))
    evaluation, subsets = data.select(order, wanted, args.num_eval)
    plan_smitunet(args)
    light = any(r.endswith(LIGHT) for r in args.rows)
    if light:
        plan_light(args)
    nnunet_plans = plan_nnunet(args) if "nnunet" in args.rows else None
    folds = write_splits(args, evaluation, subsets)
    for n, cases in subsets.items():  # the semi-supervised rows' labelled subsets (their fold trains on the pool)
        labelled_file(args, n).write_text("\n".join(cases) + "\n")
    semi = (folds[pool], labelled_file(args, min(args.labelled))) if set(args.rows) & set(SEMI_ROWS) else None
    budget = calibrate(args, results, folds[min(args.labelled)], nnunet_plans, semi, light)
    if nnunet_plans is not None and "nnunet_epochs" not in budget:
        sys.exit("error: the recorded budget has no nnU-Net calibration; rerun with --recalibrate")
    # every subset with a recorded run, not only this invocation's
    recorded = {report.parse_key(k)[1] for k in results["runs"]}
    results["description"] = describe(args, source_order, evaluation, {n: None for n in recorded | set(subsets)}, pool,
                                      budget)
    results["machine"] = results.get("machine") or machine_description()
    report.save_results(results, results_path)

    def record(job: Job, seconds: float) -> None:
        if job.name.startswith("pretrain_"):
            return
        row = report.parse_key(job.name)[0]
        run = collect_nnunet(args, job, seconds) if row == "nnunet" else collect_smitunet(args, job, seconds)
        results["runs"][job.name] = run
        report.save_results(results, results_path)
        print(f"  {job.name}: Dice {100 * run['dice']:.2f}, HD95 {run['hd95'] or float('nan'):.2f} mm", flush=True)

    pretrain_images = data.link_images(raw, order if args.pretrain_on_all else order[:pool], args.work / "pretrain_images")
    methods = sorted({SMITUNET_ROWS[r][0] for r in args.rows if r != "nnunet"} - {None})
    jobs = [j for j in (pretrain_job(args, m, pretrain_images) for m in methods) if j is not None]
    queued = set()
    for row, row_seeds in args.row_plan:
        for labelled in ([pool] if row.startswith("upper") else args.labelled):
            for seed in row_seeds or args.seeds:
                key = report.run_key(row, labelled, seed)
                if key in results["runs"] or key in queued:
                    continue
                queued.add(key)
                if row == "nnunet":
                    job = nnunet_job(args, labelled, seed, folds[labelled], budget, nnunet_plans)
                else:
                    job = smitunet_job(args, row, labelled, seed, folds[pool if row in SEMI_ROWS else labelled],
                                       budget)
                if finished_on_disk(job, budget):  # trained before this invocation, not yet recorded
                    record(job, None)
                    continue
                jobs.append(job)

    print(f"{len(jobs)} job(s) to run, {len(results['runs'])} run(s) already recorded in {results_path}", flush=True)
    run_jobs(jobs, max(1, args.jobs), on_done=record)
    write_report(args, results)


if __name__ == "__main__":
    main()
