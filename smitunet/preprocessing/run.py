"""Plan and preprocess one raw dataset: integrity check, fingerprint, plans, preprocessed cases (typed options; the
CLI and ``smitunet.api.plan_and_preprocess`` call it).

Nothing is written under ``smitunet_preprocessed`` for a dataset until all of its checks have passed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

from smitunet.dataset.integrity import check_case_files
from smitunet.dataset.raw import list_test_cases, load_dataset_json, scan_training_cases
from smitunet.contracts import Fingerprint
from smitunet.errors import DatasetIntegrityError, SmitunetError
from smitunet.paths import preprocessed_dir, raw_dir, resolve_dataset_name
from smitunet.plans import DEFAULT_PLANS_NAME, Plans, label_values_of
from smitunet.preprocessing.fingerprint import extract_fingerprint, raw_signature
from smitunet.preprocessing.planner import DEFAULT_GPU_MEMORY_GB, DEFAULT_PRESET, plan_experiment
from smitunet.preprocessing.store import preprocess_dataset
from smitunet.utils.files import save_json
from smitunet.utils.log import logger
from smitunet.utils.parallel import CasePool

UNLABELLED_FOLDER = "imagesUnlabelled"


@dataclass
class PlanOptions:
    plans_name: str = DEFAULT_PLANS_NAME
    preset: str = DEFAULT_PRESET
    gpu_memory_target: float = DEFAULT_GPU_MEMORY_GB
    configurations: Sequence[str] | None = None   # None: every planned configuration
    verify_dataset_integrity: bool = False
    preprocess: bool = True                       # False: plan only (--no_pp)
    use_existing_plans: bool = False
    clean: bool = False
    spacing: Sequence[float] | None = None        # 3d_fullres target spacing override (z, y, x)
    pretrained: object | None = None              # a PretrainedArchitecture (read_architecture)
    decoder: str | None = None                    # Swin U-Net decoder: "res" (default) or "light"


def _warn(lines: list[str], limit: int = 20) -> None:
    for line in lines[:limit]:
        logger.warning(f"warning: {line}")
    if len(lines) > limit:
        logger.warning(f"warning: ... and {len(lines) - limit} more")


def _check_test_images(dataset_dir: Path, dj: dict, pool: CasePool, folder: str = "imagesTs") -> list[str]:
    cases, problems = list_test_cases(dataset_dir, dj, folder=folder)
    allowed = set(label_values_of(dj["labels"]))
    for found, _warnings in pool.imap(partial(_check_one, allowed=allowed), sorted(cases.items()),
                                     total=len(cases), desc=f"check {folder}"):
        problems += found
    return problems


def unlabelled_cases(dataset_dir: Path, dj: dict, training: dict) -> tuple[dict, list[str]]:
    """``imagesUnlabelled/{case}_{channel:04d}{ending}``: images without labels, for semi-supervised trainers."""
    cases, problems = list_test_cases(dataset_dir, dj, folder=UNLABELLED_FOLDER)
    clash = sorted(set(cases) & set(training))
    problems += [f"{dataset_dir / UNLABELLED_FOLDER}: case {c} is also a training case; rename one" for c in clash]
    return {c: {"images": e["images"], "label": None} for c, e in cases.items()}, problems


def _check_one(item, allowed):
    case, entry = item
    return check_case_files(case, entry["images"], entry["label"], allowed)


def _fingerprint(dataset_dir: Path, out_dir: Path, dj: dict, cases: dict, pool: CasePool,
                 options: PlanOptions, cache: dict) -> Fingerprint:
    path = out_dir / "dataset_fingerprint.json"
    if path.is_file() and not (options.clean or options.verify_dataset_integrity):
        try:
            old = Fingerprint.load(path)
            if old.raw_signature == raw_signature(dataset_dir, cases):
                return old
        except SmitunetError:
            pass  # unreadable or of another version: extracted again
    fingerprint, problems, warnings = extract_fingerprint(dataset_dir, dj, cases, pool,
                                                          cache=cache if options.preprocess else None)
    _warn(warnings)
    if problems:
        raise DatasetIntegrityError(problems)
    return Fingerprint.from_dict(fingerprint, str(path))


def summary(plans: Plans, counts: dict[str, dict]) -> str:
    lines = [f"{plans.dataset_name}: plans {plans.plans_name} for preset {plans.planner.get('preset')}"]
    for name, c in plans.configurations.items():
        k = c.network.kwargs
        lines.append(f"  {name}: spacing {c.spacing} median shape {c.median_image_shape} patch {c.patch_size} "
                     f"batch {c.batch_size} stages {k.get('num_stages')} strides {k.get('strides')} "
                     f"norm {c.normalization} est. memory {c.estimated_memory_gb} GB")
        if name in counts and counts[name].get("shared_with"):
            lines.append(f"    cases: those of {counts[name]['shared_with']} ({c.data_identifier})")
        elif name in counts:
            lines.append(f"    cases: {counts[name]['preprocessed']} preprocessed, {counts[name]['skipped']} "
                         "already done")
    return "\n".join(lines)


def run_dataset(identifier: str, options: PlanOptions, pool: CasePool) -> tuple[Plans, dict[str, dict]]:
    """Plans (and, unless ``options.preprocess`` is False, the preprocessed cases) of one dataset; returns the plans
    and per configuration the counts of preprocessed / already done cases."""
    name = resolve_dataset_name(identifier, search=("raw",))
    dataset_dir = raw_dir() / name
    out_dir = preprocessed_dir() / name
    dj = load_dataset_json(dataset_dir)
    cases, problems = scan_training_cases(dataset_dir, dj)
    unlabelled, found = unlabelled_cases(dataset_dir, dj, cases)
    problems += found
    if options.verify_dataset_integrity:
        problems += _check_test_images(dataset_dir, dj, pool)
    if unlabelled:  # read in full whenever they are preprocessed: geometry, channels, NaN (one line per case)
        problems += _check_test_images(dataset_dir, dj, pool, UNLABELLED_FOLDER)
    if problems:
        raise DatasetIntegrityError(problems)
    cache: dict = {}  # small cases read by the fingerprint pass, reused by preprocessing
    fingerprint = dataclasses.replace(_fingerprint(dataset_dir, out_dir, dj, cases, pool, options, cache),
                                      num_unlabelled_cases=len(unlabelled))
    plans_path = out_dir / f"{options.plans_name}.json"
    if options.use_existing_plans:
        plans = Plans.load(plans_path)
    else:
        plans = plan_experiment(name, dj, fingerprint, preset=options.preset, plans_name=options.plans_name,
                                gpu_memory_target_gb=options.gpu_memory_target,
                                target_spacing_override=options.spacing, pretrained=options.pretrained,
                                decoder=options.decoder)
        for note in plans.planner.get("notes", []):
            logger.warning(f"note: {name}: {note}")
    # Every check passed: only now does anything get written for this dataset.
    save_json(dj, out_dir / "dataset.json")
    save_json(fingerprint.to_dict(), out_dir / "dataset_fingerprint.json")
    if not options.use_existing_plans:
        plans.save(plans_path)
    counts = {}
    if options.preprocess:
        done: dict[str, str] = {}  # data_identifier -> the configuration that preprocessed it in this run
        for config in options.configurations or list(plans.configurations):
            if config not in plans.configurations:
                logger.warning(f"note: {name}: plans have no configuration {config}; skipped")
                continue
            if conflict := plans.shared_data_conflict(config):  # e.g. 3d_fullres' spacing edited by hand, not 2d's
                logger.warning(f"note: {name}: {conflict}; {config} skipped")
                continue
            identifier = plans.configurations[config].data_identifier
            if identifier in done:  # 2d reads 3d_fullres' cases (equal preprocessing: no conflict above)
                counts[config] = {"preprocessed": 0, "skipped": 0, "shared_with": done[identifier]}
                continue
            done[identifier] = config
            counts[config] = preprocess_dataset({**cases, **unlabelled}, plans, config, out_dir / identifier, pool,
                                                force=options.clean, cache=cache)
    return plans, counts
