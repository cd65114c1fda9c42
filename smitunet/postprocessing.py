"""Applying postprocessing to predicted labels: the part that prediction and evaluation share (a leaf: it imports
no stage). ``smitunet.evaluation.postprocessing`` decides the postprocessing from validation results.

``postprocessing.json`` (written by smitunet_find_best_configuration into the model folder):
``{"keep_largest_component": [labels...], "per_label": {label: {"dice_before", "dice_after", "num_cases"}}}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from acvl_utils.morphology.morphology_helper import remove_all_but_largest_component

from smitunet.errors import SmitunetError
from smitunet.utils.files import json_safe, load_json, save_json

POSTPROCESSING_FILE = "postprocessing.json"


def keep_largest_component(labels: np.ndarray, label: int) -> np.ndarray:
    """Set every voxel of ``label`` outside its largest 26-connected component to background (in place)."""
    mask = labels == label
    if mask.any():
        labels[mask & ~remove_all_but_largest_component(mask)] = 0
    return labels


def apply_postprocessing(labels: np.ndarray, config: dict | None) -> np.ndarray:
    for label in (config or {}).get("keep_largest_component", []):
        keep_largest_component(labels, int(label))
    return labels


def load_postprocessing(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / POSTPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        config = load_json(path)
        [int(v) for v in config["keep_largest_component"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SmitunetError(f"{path}: not a valid postprocessing file ({exc})") from None
    return config


def save_postprocessing(config: dict, model_dir: str | Path) -> Path:
    path = Path(model_dir) / POSTPROCESSING_FILE
    save_json(json_safe(config), path)
    return path
