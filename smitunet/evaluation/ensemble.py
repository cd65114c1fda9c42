"""Cross-validation of an ensemble of two trained models: average their validation softmax probabilities per case.

The probabilities of each fold's held-out cases are ``fold_F/validation/{case}.npz`` (``probabilities``
(K, z, y, x) float32 in the case's original geometry), written by ``smitunet_train --npz``. Where a case lacks
them, they are computed once with that fold's ``checkpoint_final.pt`` from the raw images (the prediction
engine, so preprocessing and export equal ``smitunet_predict``) and stored under the same name, so a re-run
costs nothing; a probability file older than the fold's checkpoint_final (an earlier training run) is redone
(``best_configuration.ensure_probabilities``: this module runs no prediction). The ensemble's labels go to ``results/DatasetXXX/ensembles/{name}/crossval/{case}{ending}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from smitunet.errors import SmitunetError
from smitunet.evaluation.evaluate import list_label_files
from smitunet.imageio import read_image, write_image
from smitunet.inference.export import regions_to_labels

def validation_cases_per_fold(model_dir: Path, folds: Sequence[str]) -> dict[str, str]:
    """case -> fold whose validation holds it (from the fold validation label files)."""
    return {case: fold for fold in folds for case in list_label_files(model_dir / f"fold_{fold}" / "validation")}


def probability_file(model_dir: Path, fold: str, case: str) -> Path:
    return model_dir / f"fold_{fold}" / "validation" / f"{case}.npz"


def load_probabilities(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return np.asarray(npz["probabilities"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise SmitunetError(f"{path}: not a probability file with 'probabilities' ({exc})") from None


def write_ensemble_crossval(member_dirs: Sequence[Path], folds: Sequence[str], out_folder: Path,
                            label_values: Sequence[int], file_ending: str,
                            regions_class_order: Sequence[int] | None = None) -> dict[str, Path]:
    """Average the members' validation probabilities per case, arg-max (or, with ``regions_class_order``, paint
    the thresholded regions), write labels; case -> label file."""
    assignments = [validation_cases_per_fold(d, folds) for d in member_dirs]
    cases = sorted(assignments[0])
    for d, a in zip(member_dirs[1:], assignments[1:]):
        if sorted(a) != cases:
            raise SmitunetError(f"{d}: validation cases differ from {member_dirs[0]}; ensembled models need the "
                                "same splits")
    lookup = None if regions_class_order else \
        np.asarray(sorted(label_values), dtype=np.uint8 if max(label_values) < 256 else np.int16)
    written = {}
    for case in tqdm(cases, desc="ensemble cross-validation", disable=None):
        out = out_folder / f"{case}{file_ending}"
        _, geometry = read_image(member_dirs[0] / f"fold_{assignments[0][case]}" / "validation" /
                                 f"{case}{file_ending}")
        mean = average_probabilities([probability_file(d, a[case], case) for d, a in zip(member_dirs, assignments)])
        labels = regions_to_labels(mean, list(regions_class_order)) if lookup is None else lookup[mean.argmax(0)]
        write_image(labels, geometry, out)
        written[case] = out
    return written


def average_probabilities(files: Sequence[Path]) -> np.ndarray:
    """Mean of the files' probabilities, holding at most two volumes at once."""
    mean = None
    for f in files:
        p = load_probabilities(f)
        if mean is not None and p.shape != mean.shape:
            raise SmitunetError(f"{f}: probabilities of shape {p.shape} differ from {files[0]} ({mean.shape})")
        mean = p if mean is None else np.add(mean, p, out=mean)
    mean /= len(files)
    return mean
