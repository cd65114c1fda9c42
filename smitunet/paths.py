"""Where raw data, preprocessed data and results live, and how a dataset id resolves to a folder.

Environment variables ``smitunet_raw``, ``smitunet_preprocessed`` and ``smitunet_results`` (as in nnU-Net);
when unset, ``./smitunet_data/{raw,preprocessed,results}`` is used and the user is told once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from smitunet.errors import SmitunetError
from smitunet.utils.log import logger

_ENV = {"raw": "smitunet_raw", "preprocessed": "smitunet_preprocessed", "results": "smitunet_results"}
_warned: set[str] = set()


def _base(kind: str) -> Path:
    var = _ENV[kind]
    value = os.environ.get(var)
    if value:
        return Path(value)
    default = Path.cwd() / "smitunet_data" / kind
    if var not in _warned:
        _warned.add(var)
        logger.warning(f"note: ${var} is not set; using {default}")
    return default


def raw_dir() -> Path:
    return _base("raw")


def preprocessed_dir() -> Path:
    return _base("preprocessed")


def results_dir() -> Path:
    return _base("results")


_DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def _existing_datasets(*bases: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for base in bases:
        if base.is_dir():
            for child in base.iterdir():
                m = _DATASET_RE.match(child.name)
                if m and child.is_dir():
                    found[child.name] = int(m.group(1))
    return found


def resolve_dataset_name(identifier: str | int, search: tuple[str, ...] = ("raw", "preprocessed", "results")) -> str:
    """Turn ``4``, ``004`` or ``Dataset004_Hippocampus`` into the dataset folder name.

    Looks in the raw, preprocessed and results folders (in that order of preference). An unknown or
    ambiguous id raises a SmitunetError that lists the datasets that exist.
    """
    bases = [_base(kind) for kind in search]
    existing = _existing_datasets(*bases)
    text = str(identifier).strip()
    if _DATASET_RE.match(text):
        if text in existing:
            return text
        raise SmitunetError(f"dataset {text} not found in {', '.join(map(str, bases))}; "
                            f"available: {', '.join(sorted(existing)) or 'none'}")
    if not text.isdigit():
        raise SmitunetError(f"dataset id {text!r} is neither a number nor a DatasetXXX_Name folder name")
    wanted = int(text)
    matches = sorted(name for name, num in existing.items() if num == wanted)
    if not matches:
        raise SmitunetError(f"no dataset with id {wanted:03d} in {', '.join(map(str, bases))}; "
                            f"available: {', '.join(sorted(existing)) or 'none'}")
    if len(matches) > 1:
        raise SmitunetError(f"dataset id {wanted:03d} is ambiguous: {', '.join(matches)}; pass the full name")
    return matches[0]


def training_output_dir(dataset_name: str, trainer: str, plans_name: str, configuration: str) -> Path:
    return results_dir() / dataset_name / f"{trainer}__{plans_name}__{configuration}"


# Cascades (nnU-Net): a model folder's fold validations write the segmentations its next stage trains on into
# ``TRAINER__PLANS__CONFIG/predicted_next_stage/{next configuration}/{case}.npy``.
PREDICTED_NEXT_STAGE = "predicted_next_stage"


def sibling_model_dir(model_dir: Path, configuration: str) -> Path:
    """The folder of the same trainer and plans for another configuration (``TRAINER__PLANS__CONFIG``)."""
    trainer, plans_name, _ = Path(model_dir).name.split("__")
    return Path(model_dir).parent / f"{trainer}__{plans_name}__{configuration}"


def next_stage_dir(model_dir: Path, next_configuration: str) -> Path:
    return Path(model_dir) / PREDICTED_NEXT_STAGE / next_configuration


def previous_stage_dir(model_dir: Path, previous_configuration: str) -> Path:
    """Where a cascade model folder finds its previous stage's predictions of the training cases."""
    return next_stage_dir(sibling_model_dir(model_dir, previous_configuration), Path(model_dir).name.split("__")[2])


# The results layout beyond single models (read by prediction, written by find_best_configuration).
ENSEMBLES_FOLDER = "ensembles"
INFERENCE_INFORMATION_FILE = "inference_information.json"


def ensemble_name(member_folders) -> str:
    """nnU-Net's naming ``ensemble___{TRAINER__PLANS__CONFIG}___{...}``, members sorted (order-free)."""
    return "ensemble___" + "___".join(sorted(member_folders))
