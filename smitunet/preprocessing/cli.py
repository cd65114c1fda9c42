"""``smitunet_plan_and_preprocess``: integrity check, fingerprint, plans and preprocessed data for datasets.

Nothing is written under ``smitunet_preprocessed`` for a dataset until all of its checks have passed.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from smitunet.dataset.integrity import check_case_files
from smitunet.dataset.raw import list_test_cases, load_dataset_json, scan_training_cases
from smitunet.errors import DatasetIntegrityError, SmitunetError, cli_entry
from smitunet.paths import preprocessed_dir, raw_dir, resolve_dataset_name
from smitunet.plans import DEFAULT_PLANS_NAME, Plans
from smitunet.preprocessing.fingerprint import extract_fingerprint, raw_signature
from smitunet.preprocessing.parallel import CasePool, available_cores
from smitunet.preprocessing.planner import DEFAULT_GPU_MEMORY_GB, DEFAULT_PRESET, plan_experiment
from smitunet.preprocessing.store import preprocess_dataset
from smitunet.utils.files import load_json, save_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smitunet_plan_and_preprocess", description=__doc__.splitlines()[0])
    p.add_argument("-d", nargs="+", required=True, metavar="ID",
                   help="dataset id(s): 4, 004 or Dataset004_Hippocampus")
    p.add_argument("-pl", "--plans_name", default=DEFAULT_PLANS_NAME, help="plans file name (default %(default)s)")
    p.add_argument("--preset", default=DEFAULT_PRESET, help="network preset to plan for (default %(default)s; "
                   "smit_tiny for CPU)")
    p.add_argument("--gpu_memory_target", type=float, default=DEFAULT_GPU_MEMORY_GB,
                   help="GPU memory budget in GB for patch and batch size (default %(default)s)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="target spacing of 3d_fullres in mm, instead of the planned one (nnU-Net's "
                        "-overwrite_target_spacing); recorded in the plans")
    p.add_argument("--pretrained", type=Path, metavar="CKPT",
                   help="plan the network a pretrained checkpoint fits: embed dim, depths, heads and window from "
                        "it (official SMIT, MONAI SwinUNETR or smitunet_pretrain output, which also sets spacing, "
                        "normalisation and patch), keeping every Swin stage it holds where the data allows")
    p.add_argument("-c", nargs="+", default=None, metavar="CONFIG",
                   help="configurations to preprocess (default: all planned, 3d_fullres [+ 3d_lowres])")
    p.add_argument("-np", type=int, default=None, help="worker processes (default: available cores)")
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="also re-check reused fingerprints and check imagesTs")
    p.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    p.add_argument("--use_existing_plans", action="store_true",
                   help="preprocess with the existing (possibly hand-edited) plans file instead of re-planning")
    p.add_argument("--clean", action="store_true", help="recompute the fingerprint and every case")
    return p


def _warn(lines: list[str], limit: int = 20) -> None:
    for line in lines[:limit]:
        print(f"warning: {line}", file=sys.stderr)
    if len(lines) > limit:
        print(f"warning: ... and {len(lines) - limit} more", file=sys.stderr)


def _check_test_images(dataset_dir: Path, dj: dict, pool: CasePool) -> list[str]:
    cases, problems = list_test_cases(dataset_dir, dj)
    allowed = {int(v) for v in dj["labels"].values()}
    for found, _warnings in pool.imap(partial(_check_one, allowed=allowed), sorted(cases.items()),
                                     total=len(cases), desc="check imagesTs"):
        problems += found
    return problems


def _check_one(item, allowed):
    case, entry = item
    return check_case_files(case, entry["images"], entry["label"], allowed)


def _fingerprint(dataset_dir: Path, out_dir: Path, dj: dict, cases: dict, pool: CasePool, args,
                 cache: dict) -> dict:
    path = out_dir / "dataset_fingerprint.json"
    if path.is_file() and not (args.clean or args.verify_dataset_integrity):
        try:
            old = load_json(path)
            if old.get("raw_signature") == raw_signature(dataset_dir, cases):
                return old
        except ValueError:
            pass
    fingerprint, problems, warnings = extract_fingerprint(dataset_dir, dj, cases, pool,
                                                          cache=None if args.no_pp else cache)
    _warn(warnings)
    if problems:
        raise DatasetIntegrityError(problems)
    return fingerprint


def _summary(plans: Plans, counts: dict[str, dict]) -> str:
    lines = [f"{plans.dataset_name}: plans {plans.plans_name} for preset {plans.planner.get('preset')}"]
    for name, c in plans.configurations.items():
        k = c.network.kwargs
        lines.append(f"  {name}: spacing {c.spacing} median shape {c.median_image_shape} patch {c.patch_size} "
                     f"batch {c.batch_size} stages {k.get('num_stages')} strides {k.get('strides')} "
                     f"norm {c.normalization} est. memory {c.estimated_memory_gb} GB")
        if name in counts:
            lines.append(f"    cases: {counts[name]['preprocessed']} preprocessed, {counts[name]['skipped']} "
                         "already done")
    return "\n".join(lines)


def run_dataset(identifier: str, args, pool: CasePool, pretrained=None) -> Plans:
    name = resolve_dataset_name(identifier, search=("raw",))
    dataset_dir = raw_dir() / name
    out_dir = preprocessed_dir() / name
    dj = load_dataset_json(dataset_dir)
    cases, problems = scan_training_cases(dataset_dir, dj)
    if args.verify_dataset_integrity:
        problems += _check_test_images(dataset_dir, dj, pool)
    if problems:
        raise DatasetIntegrityError(problems)
    cache: dict = {}  # small cases read by the fingerprint pass, reused by preprocessing
    fingerprint = _fingerprint(dataset_dir, out_dir, dj, cases, pool, args, cache)
    plans_path = out_dir / f"{args.plans_name}.json"
    if args.use_existing_plans:
        plans = Plans.load(plans_path)
    else:
        plans = plan_experiment(name, dj, fingerprint, preset=args.preset, plans_name=args.plans_name,
                                gpu_memory_target_gb=args.gpu_memory_target, target_spacing_override=args.spacing,
                                pretrained=pretrained)
        for note in plans.planner.get("notes", []):
            print(f"note: {name}: {note}", file=sys.stderr)
    # Every check passed: only now does anything get written for this dataset.
    save_json(dj, out_dir / "dataset.json")
    save_json(fingerprint, out_dir / "dataset_fingerprint.json")
    if not args.use_existing_plans:
        plans.save(plans_path)
    counts = {}
    if not args.no_pp:
        for config in args.c or list(plans.configurations):
            if config not in plans.configurations:
                print(f"note: {name}: plans have no configuration {config}; skipped", file=sys.stderr)
                continue
            target = out_dir / plans.configurations[config].data_identifier
            counts[config] = preprocess_dataset(cases, plans, config, target, pool, force=args.clean,
                                                cache=cache)
    print(_summary(plans, counts))
    return plans


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    num_processes = args.np if args.np is not None else available_cores()
    if num_processes < 1:
        raise SmitunetError(f"-np must be at least 1, got {num_processes}")
    if args.use_existing_plans and (args.spacing or args.pretrained):
        raise SmitunetError("--use_existing_plans keeps the plans as they are; it cannot be combined with "
                            "--spacing or --pretrained")
    with CasePool(num_processes) as pool:  # before planning imports torch: workers stay lean
        pretrained = None
        if args.pretrained is not None:
            from smitunet.networks.checkpoint_architecture import read_architecture

            pretrained = read_architecture(args.pretrained)
            print(f"pretrained network: {pretrained.describe()}", file=sys.stderr)
        for identifier in args.d:
            run_dataset(identifier, args, pool, pretrained)


if __name__ == "__main__":
    main()
