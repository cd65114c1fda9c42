"""Five-fold cross-validation splits in ``splits_final.json`` (nnU-Net v2 layout).

The file is a list of ``{"train": [...], "val": [...]}``. It is created once (shuffled with a fixed seed)
and reused from then on, so a user can replace it with their own split before training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smitunet.errors import SmitunetError
from smitunet.utils.files import load_json, save_json

SPLITS_FILE = "splits_final.json"
NUM_FOLDS = 5
SPLIT_SEED = 12345


def make_splits(cases: list[str], num_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[dict]:
    """K-fold split of the sorted case list, shuffled with ``seed`` (independent of the training seed)."""
    cases = sorted(cases)
    if len(cases) < 2:
        raise SmitunetError(f"need at least 2 training cases for cross-validation, found {len(cases)}")
    k = min(num_folds, len(cases))
    order = np.random.default_rng(seed).permutation(len(cases))
    folds = np.array_split(order, k)
    splits = []
    for i in range(k):
        val = sorted(cases[j] for j in folds[i])
        train = sorted(c for c in cases if c not in set(val))
        splits.append({"train": train, "val": val})
    return splits


def _validate_splits(splits, path: Path, cases: set[str]) -> None:
    if not isinstance(splits, list) or not splits:
        raise SmitunetError(f"{path}: must be a non-empty list of {{'train': [...], 'val': [...]}}")
    for i, s in enumerate(splits):
        if not isinstance(s, dict) or not isinstance(s.get("train"), list) or not isinstance(s.get("val"), list):
            raise SmitunetError(f"{path}: fold {i} must have 'train' and 'val' lists")
        unknown = sorted((set(s["train"]) | set(s["val"])) - cases)
        if unknown:
            raise SmitunetError(f"{path}: fold {i} names cases that are not preprocessed: {', '.join(unknown[:5])}")


def load_or_create_splits(preprocessed_dataset_dir: Path, cases: list[str], write: bool = True) -> list[dict]:
    """Read ``splits_final.json`` if present (a user-supplied file is respected), else create and save it."""
    path = Path(preprocessed_dataset_dir) / SPLITS_FILE
    if path.is_file():
        splits = load_json(path)  # unreadable or non-JSON: one line naming the file
        _validate_splits(splits, path, set(cases))
        return splits
    splits = make_splits(cases)
    if write:
        save_json(splits, path)
    return splits


def cases_for_fold(splits: list[dict], fold: str | int, all_cases: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) for ``fold``; fold ``all`` trains on every case and validates on the training cases."""
    if str(fold) == "all":
        cases = sorted(all_cases)
        return cases, cases
    f = int(fold)
    if not 0 <= f < len(splits):
        raise SmitunetError(f"fold {f} does not exist: {SPLITS_FILE} has {len(splits)} folds (0-{len(splits) - 1})")
    return list(splits[f]["train"]), list(splits[f]["val"])
