"""Cropping to the nonzero region (all channels), as nnU-Net does before planning and training."""

from __future__ import annotations

import numpy as np

Box = list[list[int]]  # [[z0, z1], [y0, y1], [x0, x1]], half-open


def nonzero_bbox(data: np.ndarray) -> Box:
    """Bounding box of voxels that are nonzero in any channel of ``data`` (C, z, y, x); whole image if none."""
    mask = np.any(data != 0, axis=0) if data.shape[0] > 1 else data[0] != 0
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=others))
        box.append([int(hit[0]), int(hit[-1]) + 1] if hit.size else [0, mask.shape[axis]])
    return box


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """Crop the last three axes of ``array`` to ``box`` (a view)."""
    (z0, z1), (y0, y1), (x0, x1) = box
    return array[..., z0:z1, y0:y1, x0:x1]


def box_shape(box: Box) -> list[int]:
    return [int(b - a) for a, b in box]
