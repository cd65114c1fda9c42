"""Evaluate a folder of predicted label files against a folder of reference label files -> summary.json."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from smitunet.errors import SmitunetError
from smitunet.evaluation.metrics import case_metrics, class_metrics, foreground_mean, mean_metrics
from smitunet.imageio import image_ending, read_image
from smitunet.utils.files import json_safe, save_json

Label = int | tuple[int, ...]


def list_label_files(folder: str | Path) -> dict[str, Path]:
    """``{case: path}`` of the image files in ``folder`` (hidden/temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SmitunetError(f"{folder}: folder not found")
    files = {}
    for p in sorted(folder.iterdir()):
        ending = image_ending(p)
        if ending and p.is_file() and not p.name.startswith("."):
            files[p.name[: -len(ending)]] = p
    return files


def match_cases(ref_dir: str | Path, pred_dir: str | Path, allow_subset: bool = False) -> list[tuple[str, Path, Path]]:
    """Pair each prediction with its reference, by case name; name every case that is missing."""
    refs, preds = list_label_files(ref_dir), list_label_files(pred_dir)
    if not preds:
        raise SmitunetError(f"{pred_dir}: no prediction files found")
    no_ref = sorted(set(preds) - set(refs))
    if no_ref:
        raise SmitunetError(f"{ref_dir}: no reference for {len(no_ref)} predicted case(s): {_names(no_ref)}")
    no_pred = sorted(set(refs) - set(preds))
    if no_pred and not allow_subset:
        raise SmitunetError(f"{pred_dir}: missing predictions for {len(no_pred)} case(s): {_names(no_pred)} "
                            "(pass --subset to evaluate only the predicted cases)")
    return [(case, refs[case], preds[case]) for case in sorted(preds)]


def _names(cases: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(cases[:limit])
    return shown + (f", ... (+{len(cases) - limit})" if len(cases) > limit else "")


def evaluate_case(case: str, ref_file: Path, pred_file: Path, labels: Sequence[Label] | None,
                  nsd_tolerance_mm: float, ignore_label: int | None = None) -> dict:
    ref, ref_geo = read_image(ref_file)
    pred, pred_geo = read_image(pred_file)
    if (diff := ref_geo.matches(pred_geo)) is not None:
        raise SmitunetError(f"{pred_file}: geometry differs from reference {ref_file.name}: {diff}")
    if labels is None:  # every label present in either; absent ones are filled in later as empty-vs-empty
        labels = [int(v) for v in np.union1d(np.unique(ref), np.unique(pred)) if v != 0 and v != ignore_label]
    metrics = case_metrics(pred, ref, labels, ref_geo.spacing_zyx, nsd_tolerance_mm, ignore_label)
    return {"case": case, "reference_file": str(ref_file), "prediction_file": str(pred_file), "metrics": metrics}


def evaluate_pairs(pairs: Iterable[tuple[str, Path, Path]], labels: Sequence[Label] | None = None,
                   nsd_tolerance_mm: float = 1.0, num_processes: int = 1, ignore_label: int | None = None) -> dict:
    """Summary dict (``metric_per_case``, ``mean`` per label, ``foreground_mean``) for (case, ref, pred) triples;
    reference voxels of ``ignore_label`` are left out of every metric."""
    pairs = list(pairs)
    args = [(c, r, p, labels, nsd_tolerance_mm, ignore_label) for c, r, p in pairs]
    if num_processes > 1 and len(args) > 1:
        with ProcessPoolExecutor(min(num_processes, len(args))) as pool:
            per_case = list(pool.map(evaluate_case, *zip(*args)))
    else:
        per_case = [evaluate_case(*a) for a in args]
    keys = _fill_missing_labels(per_case) if labels is None else None
    means = mean_metrics([c["metrics"] for c in per_case])
    return {"labels": keys if keys is not None else [_key(lab) for lab in labels],
            "nsd_tolerance_mm": nsd_tolerance_mm, "ignore_label": ignore_label, "num_cases": len(per_case),
            "foreground_mean": foreground_mean(means), "mean": means, "metric_per_case": per_case}


def _key(label: Label) -> str:
    return ",".join(map(str, label)) if isinstance(label, (tuple, list)) else str(label)


def _fill_missing_labels(per_case: list[dict]) -> list[str]:
    """Give every case every label seen in any case (a label absent from both files is empty-vs-empty)."""
    keys = sorted({k for c in per_case for k in c["metrics"]}, key=int)
    empty = np.zeros((1, 1, 1), bool)
    for c in per_case:
        for k in keys:
            if k not in c["metrics"]:
                c["metrics"][k] = class_metrics(empty, empty, (1.0, 1.0, 1.0))
        c["metrics"] = {k: c["metrics"][k] for k in keys}
    return keys


def evaluate_folders(ref_dir: str | Path, pred_dir: str | Path, labels: Sequence[Label] | None = None,
                     output_file: str | Path | None = None, nsd_tolerance_mm: float = 1.0,
                     num_processes: int = 1, allow_subset: bool = False, ignore_label: int | None = None) -> dict:
    """Evaluate ``pred_dir`` against ``ref_dir`` and write ``summary.json`` (default: into ``pred_dir``)."""
    pairs = match_cases(ref_dir, pred_dir, allow_subset)
    summary = evaluate_pairs(pairs, labels, nsd_tolerance_mm, num_processes, ignore_label)
    summary.update(reference_folder=str(ref_dir), prediction_folder=str(pred_dir))
    save_json(json_safe(summary), output_file or Path(pred_dir) / "summary.json")
    return summary
