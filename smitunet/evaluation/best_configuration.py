"""``smitunet_find_best_configuration DATASET``: rank trained models by cross-validation, pick postprocessing.

For each model folder ``TRAINER__PLANS__CONFIG`` whose requested folds all hold fold validation
predictions (``fold_F/validation/{case}{ending}``, written by smitunet_train), the predictions of all folds
are evaluated together against the raw labels. The best model gets a ``postprocessing.json`` (largest
connected component per label, where it raises the mean Dice), and
``results/DatasetXXX/inference_information.json`` records the choice, which ``smitunet_predict -d DATASET``
then uses when several models are trained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smitunet.dataset.raw import list_training_cases
from smitunet.errors import SmitunetError, cli_entry
from smitunet.evaluation.evaluate import evaluate_pairs, json_safe, list_label_files
from smitunet.evaluation.postprocessing import determine_postprocessing, save_postprocessing
from smitunet.inference.model_folder import INFERENCE_INFORMATION_FILE
from smitunet.paths import raw_dir, resolve_dataset_name, results_dir
from smitunet.utils.files import save_json

DEFAULT_FOLDS = ("0", "1", "2", "3", "4")


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
    folder = raw_dir() / dataset_name
    if not (folder / "dataset.json").is_file():
        raise SmitunetError(f"{folder}: raw dataset not found; the cross-validation is evaluated against its labelsTr")
    return {case: Path(entry["label"]) for case, entry in list_training_cases(folder).items()}


def evaluate_model(model_dir: Path, folds, references: dict[str, Path], labels: list[int]) -> dict | None:
    predictions = validation_predictions(model_dir, folds)
    if predictions is None:
        return None
    missing = sorted(set(predictions) - set(references))
    if missing:
        raise SmitunetError(f"{model_dir}: validation cases without raw labels: {', '.join(missing[:5])}")
    pairs = [(case, references[case], predictions[case]) for case in sorted(predictions)]
    summary = evaluate_pairs(pairs, labels)
    save_json(json_safe(summary), model_dir / f"crossval_summary_folds_{'_'.join(folds)}.json")
    return {"folder": model_dir, "dice": summary["foreground_mean"]["dice"], "num_cases": len(pairs),
            "pairs": [(r, p) for _, r, p in pairs]}


def find_best(dataset: str | int, folds=DEFAULT_FOLDS, configurations=None, trainers=None, plans=None) -> dict:
    dataset_name = resolve_dataset_name(dataset, search=("results", "raw", "preprocessed"))
    references = reference_labels(dataset_name)
    from smitunet.dataset.raw import load_dataset_json

    labels = sorted(int(v) for v in load_dataset_json(raw_dir() / dataset_name)["labels"].values() if int(v) != 0)
    candidates, skipped = [], []
    for model_dir in sorted(p for p in (results_dir() / dataset_name).iterdir() if p.is_dir()):
        parts = model_dir.name.split("__")
        if len(parts) != 3 or not _wanted(parts, configurations, trainers, plans):
            continue
        result = evaluate_model(model_dir, folds, references, labels)
        if result is None:
            skipped.append(model_dir.name)
            continue
        result.update(trainer=parts[0], plans=parts[1], configuration=parts[2])
        candidates.append(result)
        print(f"{model_dir.name}: cross-validation mean Dice {result['dice']:.4f} ({result['num_cases']} cases)")
    if not candidates:
        raise SmitunetError(f"{results_dir() / dataset_name}: no model has validation predictions for folds "
                            f"{', '.join(folds)}" + (f" (incomplete: {', '.join(skipped)})" if skipped else ""))
    best = max(candidates, key=lambda c: c["dice"])
    post = determine_postprocessing(best["pairs"], labels)
    save_postprocessing(post, best["folder"])
    info = {"best": {k: best[k] for k in ("trainer", "plans", "configuration", "dice", "num_cases")},
            "folds": list(folds), "postprocessing": post,
            "candidates": [{k: c[k] for k in ("trainer", "plans", "configuration", "dice", "num_cases")}
                           for c in candidates],
            "incomplete": skipped,
            "predict_command": f"smitunet_predict -d {dataset_name} -i INPUT -o OUTPUT -tr {best['trainer']} "
                               f"-p {best['plans']} -c {best['configuration']} -f {' '.join(folds)}"}
    save_json(json_safe(info), results_dir() / dataset_name / INFERENCE_INFORMATION_FILE)
    return info


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
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    info = find_best(args.dataset, tuple(str(f) for f in args.folds), args.configurations, args.trainers, args.plans)
    best = info["best"]
    kept = info["postprocessing"]["keep_largest_component"]
    print(f"best: {best['trainer']}__{best['plans']}__{best['configuration']} (Dice {best['dice']:.4f}); "
          f"largest-component postprocessing for labels: {', '.join(map(str, kept)) or 'none'}")
    print(f"predict with: {info['predict_command']}")


if __name__ == "__main__":
    main()
