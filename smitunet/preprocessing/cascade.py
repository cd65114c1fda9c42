"""The previous stage of a cascade (nnU-Net's 3d_lowres -> 3d_cascade_fullres) as network input.

The cascade's network reads the image channels followed by the previous stage's segmentation, one-hot over the
plans' foreground labels. Training reads that segmentation from ``{case}.npy`` files in the fullres preprocessed
geometry (written by the 3d_lowres fold validation); prediction computes it, or preprocesses a given one like a
label map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from smitunet.errors import SmitunetError
from smitunet.preprocessing.resampling import compute_new_shape


def one_hot(segmentation: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """(z, y, x) label values -> float32 (len(labels), z, y, x); values not listed (background) are all-zero."""
    segmentation = np.asarray(segmentation)
    out = np.empty((len(labels), *segmentation.shape), dtype=np.float32)
    for i, label in enumerate(labels):
        np.equal(segmentation, label, out=out[i], casting="unsafe")
    return out


def append_previous_stage(data: np.ndarray, segmentation: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """The cascade's input: ``data`` (C, z, y, x) then the one-hot of ``segmentation`` (z, y, x)."""
    if tuple(segmentation.shape) != tuple(data.shape[1:]):
        raise SmitunetError(f"previous-stage segmentation of shape {tuple(segmentation.shape)} does not match the "
                            f"image {tuple(data.shape[1:])}")
    return np.concatenate([np.asarray(data, dtype=np.float32), one_hot(segmentation, labels)])


def preprocessed_shape(properties: dict[str, Any], spacing: Sequence[float]) -> list[int]:
    """The shape ``preprocess_case`` gives this case at ``spacing`` (the crop is the same for every configuration)."""
    return compute_new_shape(properties["shape_after_cropping_before_resampling"], properties["spacing_original"],
                             spacing)


def previous_stage_file(folder: Path, case: str) -> Path:
    return Path(folder) / f"{case}.npy"


def load_previous_stage(folder: Path | None, case: str) -> np.ndarray:
    """int16 (1, z, y, x) previous-stage labels of ``case`` in the cascade's preprocessed geometry."""
    if folder is None:
        raise SmitunetError(f"case {case}: a cascade needs the previous stage's predictions, and no folder was given")
    path = previous_stage_file(folder, case)
    if not path.is_file():
        raise SmitunetError(f"{path}: previous-stage prediction of case {case} not found; train every fold of the "
                            "previous stage (its fold validation writes them)")
    return np.load(path, mmap_mode="r", allow_pickle=False)
