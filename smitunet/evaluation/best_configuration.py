"""``smitunet_find_best_configuration DATASET``: rank trained models by cross-validation, pick postprocessing.

For each model folder ``TRAINER__PLANS__CONFIG`` whose requested folds all hold fold validation
predictions (``fold_F/validation/{case}{ending}``, written by smitunet_train), the predictions of all folds
are evaluated together against the raw labels. The best model gets a ``postprocessing.json`` (largest
connected component per label, where it raises the mean Dice), and
``results/DatasetXXX/inference_information.json`` records the choice, which ``smitunet_predict -d DATASET``
then uses when several models are trained.

Ensembles (as nnU-Net): every pair of those models is also evaluated with the two models' validation softmax
probabilities averaged per case (``smitunet_train --npz`` output; missing ones are predicted once from the raw
images with the fold's checkpoint_final and kept). A pair wins only if it beats the best single model; its
postprocessing then goes to ``results/DatasetXXX/ensembles/{name}/`` and ``smitunet_predict -d DATASET`` runs
both models. ``--disable_ensembling`` ranks single models only.
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from smitunet.dataset.raw import list_training_cases, load_dataset_json
from smitunet.errors import SmitunetError, cli_entry
from smitunet.evaluation.ensemble import probability_file, validation_cases_per_fold, write_ensemble_crossval
from smitunet.evaluation.evaluate import evaluate_pairs, list_label_files
from smitunet.evaluation.postprocessing import determine_postprocessing
from smitunet.inference.inputs import InputCase
from smitunet.inference.predictor import PredictionOptions, Predictor
from smitunet.plans import (foreground_regions_of, has_regions_of, ignore_label_of, label_values_of,
                            segmentation_labels_of)
from smitunet.paths import ENSEMBLES_FOLDER, INFERENCE_INFORMATION_FILE, ensemble_name, raw_dir, resolve_dataset_name, \
    results_dir
from smitunet.postprocessing import save_postprocessing
from smitunet.preprocessing.preprocessor import restore_original_geometry
from smitunet.utils.files import json_safe, save_json, save_npz
from smitunet.utils.log import logger

DEFAULT_FOLDS = ("0", "1", "2", "3", "4")


def ensure_probabilities(model_dir: Path, folds: Sequence[str], raw_cases: dict[str, dict], use_tta: bool = True,
                         device: str = "auto") -> int:
    """Compute the missing validation probabilities of ``model_dir``; returns how many were computed."""
    per_fold: dict[str, list[str]] = {}
    for case, fold in validation_cases_per_fold(model_dir, folds).items():
        if not _is_current(probability_file(model_dir, fold, case), model_dir / f"fold_{fold}" / "checkpoint_final.pt"):
            per_fold.setdefault(fold, []).append(case)
    todo = sum(len(v) for v in per_fold.values())
    if todo:
        logger.warning(f"{model_dir.name}: predicting validation probabilities of {todo} case(s) (no --npz output "
                       "found)")
    for fold, cases in per_fold.items():
        _predict_fold_probabilities(model_dir, fold, cases, raw_cases, use_tta, device)
    return todo


def _is_current(probabilities: Path, checkpoint: Path) -> bool:
    """Fold validation writes probabilities after checkpoint_final; older ones belong to an earlier run."""
    if not probabilities.is_file():
        return False
    return not checkpoint.is_file() or probabilities.stat().st_mtime >= checkpoint.stat().st_mtime


def _predict_fold_probabilities(model_dir: Path, fold: str, cases: list[str], raw_cases: dict[str, dict],
                                use_tta: bool, device: str) -> None:
    checkpoint = model_dir / f"fold_{fold}" / "checkpoint_final.pt"
    if not checkpoint.is_file():
        raise SmitunetError(f"{checkpoint}: missing; needed to compute validation probabilities for ensembling "
                            "(or re-run smitunet_train --val --npz)")
    options = PredictionOptions(use_tta=use_tta, device=device, num_processes=0, apply_postprocessing=False,
                                progress=False)
    predictor = Predictor([checkpoint], options)
    model = predictor.model
    for case in tqdm(cases, desc=f"{model_dir.name} fold {fold}", disable=None):
        if case not in raw_cases:
            raise SmitunetError(f"{model_dir}: validation case {case} has no raw images")
        images = tuple(Path(p) for p in raw_cases[case]["images"])
        data, properties = predictor.preprocess(InputCase(case, images, ""))
        probabilities = predictor.predict_case(data)
        restored = restore_original_geometry(probabilities, properties, model.plans, model.configuration,
                                             is_seg=False)
        save_npz(probability_file(model_dir, fold, case), compressed=True,
                 probabilities=np.asarray(restored, dtype=np.float32))


def validation_predictions(model_dir: Path, folds) -> dict[str, Path] | None:
    """case -> prediction file over all folds, or None when a fold has no validation predictions yet."""
    files: dict[str, Path] = {}
    for fold in folds:
        folder = model_dir / f"fold_{fold}" / "validation"
        if not folder.is_dir():
            return None
        found = list_label_files(folder)
        if not found:
            return None
        files.update(found)
    return files


def reference_labels(dataset_name: str) -> dict[str, Path]:
    return {case: Path(entry["label"]) for case, entry in raw_cases(dataset_name).items()}


def raw_cases(dataset_name: str) -> dict[str, dict]:
    folder = raw_dir() / dataset_name
    if not (folder / "dataset.json").is_file():
        raise SmitunetError(f"{folder}: raw dataset not found; the cross-validation is evaluated against its labelsTr")
    return list_training_cases(folder)


def evaluate_predictions(predictions: dict[str, Path], references: dict[str, Path], labels: list[int | tuple[int, ...]],
                         summary_file: Path, where: Path, ignore_label: int | None = None) -> dict:
    missing = sorted(set(predictions) - set(references))
    if missing:
        raise SmitunetError(f"{where}: validation cases without raw labels: {', '.join(missing[:5])}")
    pairs = [(case, references[case], predictions[case]) for case in sorted(predictions)]
    summary = evaluate_pairs(pairs, labels, ignore_label=ignore_label)
    save_json(json_safe(summary), summary_file)
    return {"dice": summary["foreground_mean"]["dice"], "num_cases": len(pairs),
            "pairs": [(r, p) for _, r, p in pairs]}


def evaluate_model(model_dir: Path, folds, references: dict[str, Path], labels: list[int | tuple[int, ...]],
                   ignore_label: int | None = None) -> dict | None:
    predictions = validation_predictions(model_dir, folds)
    if predictions is None:
        return None
    result = evaluate_predictions(predictions, references, labels,
                                  model_dir / f"crossval_summary_folds_{'_'.join(folds)}.json", model_dir,
                                  ignore_label)
    return {"folder": model_dir, **result}


def evaluate_ensembles(candidates: list[dict], dataset_name: str, folds, labels: list[int | tuple[int, ...]],
                       references: dict[str, Path], use_tta: bool = True, device: str = "auto",
                       ignore_label: int | None = None) -> list[dict]:
    """Every pair of candidates, their validation probabilities averaged per case."""
    if len(candidates) < 2:
        return []
    cases = raw_cases(dataset_name)
    for c in candidates:
        ensure_probabilities(c["folder"], folds, cases, use_tta, device)
    dataset_json = load_dataset_json(raw_dir() / dataset_name)
    regions_order = dataset_json.get("regions_class_order") if has_regions_of(dataset_json["labels"]) else None
    label_values = None if regions_order else list(segmentation_labels_of(dataset_json["labels"]).values())
    ensembles = []
    for a, b in combinations(candidates, 2):
        name = ensemble_name([a["folder"].name, b["folder"].name])
        folder = results_dir() / dataset_name / ENSEMBLES_FOLDER / name
        predictions = write_ensemble_crossval([a["folder"], b["folder"]], folds, folder / "crossval", label_values,
                                              dataset_json["file_ending"], regions_order)
        result = evaluate_predictions(predictions, references, labels,
                                      folder / f"crossval_summary_folds_{'_'.join(folds)}.json", folder, ignore_label)
        members = [_identity(m) for m in (a, b)]
        ensembles.append({"folder": folder, "name": name, "ensemble": True, "members": members, **result})
        logger.info(f"{name}: cross-validation mean Dice {result['dice']:.4f} ({result['num_cases']} cases)")
    return ensembles


def _identity(candidate: dict) -> dict:
    return {k: candidate[k] for k in ("trainer", "plans", "configuration")}


def _summary(c: dict) -> dict:
    keys = ("name", "ensemble", "members", "dice", "num_cases") if c.get("ensemble") else \
        ("trainer", "plans", "configuration", "dice", "num_cases")
    return {k: c[k] for k in keys}


def find_best(dataset: str | int, folds=DEFAULT_FOLDS, configurations=None, trainers=None, plans=None,
              ensembling: bool = True, use_tta: bool = True, device: str = "auto") -> dict:
    dataset_name = resolve_dataset_name(dataset, search=("results", "raw", "preprocessed"))
    references = reference_labels(dataset_name)
    raw_labels = load_dataset_json(raw_dir() / dataset_name)["labels"]
    # scored: the labels, or the regions; the largest-component choice is per label value of the exported maps
    post_labels = [v for v in label_values_of(segmentation_labels_of(raw_labels)) if v != 0]
    labels = list(foreground_regions_of(raw_labels).values()) if has_regions_of(raw_labels) else post_labels
    ignore_label = ignore_label_of(raw_labels)
    candidates, skipped = [], []
    for model_dir in sorted(p for p in (results_dir() / dataset_name).iterdir() if p.is_dir()):
        parts = model_dir.name.split("__")
        if len(parts) != 3 or not _wanted(parts, configurations, trainers, plans):
            continue
        result = evaluate_model(model_dir, folds, references, labels, ignore_label)
        if result is None:
            skipped.append(model_dir.name)
            continue
        result.update(trainer=parts[0], plans=parts[1], configuration=parts[2])
        candidates.append(result)
        logger.info(f"{model_dir.name}: cross-validation mean Dice {result['dice']:.4f} ({result['num_cases']} cases)")
    if not candidates:
        raise SmitunetError(f"{results_dir() / dataset_name}: no model has validation predictions for folds "
                            f"{', '.join(folds)}" + (f" (incomplete: {', '.join(skipped)})" if skipped else ""))
    best_single = max(candidates, key=lambda c: c["dice"])
    ensembles = evaluate_ensembles(candidates, dataset_name, folds, labels, references, use_tta, device,
                                   ignore_label) \
        if ensembling else []
    best_ensemble = max(ensembles, key=lambda c: c["dice"], default=None)
    # an ensemble costs twice the prediction time: only strictly better wins
    best = best_ensemble if best_ensemble and best_ensemble["dice"] > best_single["dice"] else best_single
    post = determine_postprocessing(best["pairs"], post_labels, ignore_label)
    save_postprocessing(post, best["folder"])
    if best is not best_single:  # smitunet_predict --disable_ensemble uses the best single model
        save_postprocessing(determine_postprocessing(best_single["pairs"], post_labels, ignore_label),
                            best_single["folder"])
    info = {"best": _summary(best), "best_single": _summary(best_single), "folds": list(folds),
            "postprocessing": post, "candidates": [_summary(c) for c in candidates],
            "ensembles": [_summary(e) for e in ensembles], "incomplete": skipped,
            "predict_command": _predict_command(dataset_name, best, folds)}
    save_json(json_safe(info), results_dir() / dataset_name / INFERENCE_INFORMATION_FILE)
    return info


def _predict_command(dataset_name: str, best: dict, folds) -> str:
    members = best["members"] if best.get("ensemble") else [_identity(best)]
    spec = " ".join(f"-{flag} {' '.join(m[key] for m in members)}"
                    for flag, key in (("tr", "trainer"), ("p", "plans"), ("c", "configuration")))
    return f"smitunet_predict -d {dataset_name} -i INPUT -o OUTPUT {spec} -f {' '.join(folds)}"


def _wanted(parts, configurations, trainers, plans) -> bool:
    trainer, plan, config = parts
    return ((not configurations or config in configurations) and (not trainers or trainer in trainers)
            and (not plans or plan in plans))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smitunet_find_best_configuration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset id or name")
    p.add_argument("-c", "--configurations", nargs="+", default=None, help="only these configurations")
    p.add_argument("-tr", "--trainers", nargs="+", default=None, help="only these trainers")
    p.add_argument("-p", "--plans", nargs="+", default=None, help="only these plans")
    p.add_argument("-f", "--folds", nargs="+", default=list(DEFAULT_FOLDS), help="folds (default 0 1 2 3 4)")
    p.add_argument("--disable_ensembling", action="store_true", help="rank single models only, no pairs")
    p.add_argument("--disable_tta", action="store_true",
                   help="no mirroring when validation probabilities must be computed for ensembling (8x faster)")
    p.add_argument("--device", default="auto", help="device for those computations: auto | cpu | cuda | cuda:N")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    info = find_best(args.dataset, tuple(str(f) for f in args.folds), args.configurations, args.trainers, args.plans,
                     ensembling=not args.disable_ensembling, use_tta=not args.disable_tta, device=args.device)
    best = info["best"]
    kept = info["postprocessing"]["keep_largest_component"]
    name = best["name"] if best.get("ensemble") else f"{best['trainer']}__{best['plans']}__{best['configuration']}"
    print(f"best: {name} (Dice {best['dice']:.4f}); "
          f"largest-component postprocessing for labels: {', '.join(map(str, kept)) or 'none'}")
    print(f"predict with: {info['predict_command']}")


if __name__ == "__main__":
    main()
