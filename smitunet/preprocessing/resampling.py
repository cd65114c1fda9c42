"""Resampling to a target shape, float32 throughout (lean on a 512x512x300 CT).

Images: cubic spline (order 3) per channel. Labels: one-hot per class with linear interpolation (order 1),
then the class with the highest value wins, computed class by class so no (K, z, y, x) array is ever made.
When the spacing is anisotropic (one axis more than ``anisotropy_threshold`` times coarser) the fine axes
are interpolated slice by slice and the coarse axis with nearest neighbour, as nnU-Net does, so that
interpolation never mixes distant slices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from smitunet.dataset.integrity import label_values

ANISOTROPY_THRESHOLD = 3.0


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    return [max(1, int(round(s * sp / nsp))) for s, sp, nsp in zip(shape, spacing, new_spacing)]


def separate_axis(spacing: Sequence[float], new_spacing: Sequence[float],
                  threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The coarse axis to resample on its own (nearest), or None when both spacings are near isotropic."""
    for sp in (spacing, new_spacing):
        sp = np.asarray(sp, dtype=float)
        if sp.max() / sp.min() > threshold:
            axis = int(np.argmax(sp))
            if np.sum(sp == sp[axis]) == 1:  # an unambiguous coarse axis
                return axis
    return None


def _zoom(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample a float32 2D/3D array to ``shape`` (pixel-centre aligned, edges replicated)."""
    if tuple(volume.shape) == tuple(shape):
        return volume.astype(np.float32, copy=False)
    factors = [n / o for n, o in zip(shape, volume.shape)]
    if order > 1:
        # Prefilter in float32 ourselves: ndimage.zoom would make a float64 copy of the whole volume.
        volume = ndimage.spline_filter(volume, order=order, output=np.float32, mode="nearest")
    return ndimage.zoom(volume, factors, output=np.float32, order=order, mode="nearest", grid_mode=True,
                        prefilter=False)


def _nearest_along(volume: np.ndarray, axis: int, size: int) -> np.ndarray:
    old = volume.shape[axis]
    if old == size:
        return volume
    index = np.minimum(((np.arange(size) + 0.5) * old / size).astype(np.intp), old - 1)
    return np.take(volume, index, axis=axis)


def resample_volume(volume: np.ndarray, shape: Sequence[int], order: int, axis: int | None = None) -> np.ndarray:
    """One (z, y, x) float volume to ``shape``; with ``axis`` the fine axes per slice, ``axis`` by nearest."""
    volume = volume.astype(np.float32, copy=False)
    if tuple(volume.shape) == tuple(shape):
        return volume
    if axis is None:
        return _zoom(volume, shape, order)
    in_plane = [s for a, s in enumerate(shape) if a != axis]
    slices = [_zoom(np.take(volume, i, axis=axis), in_plane, order) for i in range(volume.shape[axis])]
    return _nearest_along(np.stack(slices, axis=axis), axis, shape[axis])


def resample_data(data: np.ndarray, shape: Sequence[int], order: int = 3, axis: int | None = None) -> np.ndarray:
    """(C, z, y, x) float32 to (C, *shape), channel by channel."""
    if tuple(data.shape[1:]) == tuple(shape):
        return data.astype(np.float32, copy=False)
    out = np.empty((data.shape[0], *shape), dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = resample_volume(data[c], shape, order, axis)
    return out


def _linear_box(mask: np.ndarray, box: list[tuple[int, int]], shape: Sequence[int]):
    """Linear interpolation of ``mask`` restricted to ``box``; returns (output slices, values).

    Same pixel-centre mapping as the whole volume (input coordinate = (o + 0.5) * old / new - 0.5), so the
    values equal those of a full-volume resampling: the box has a one-voxel zero margin, or reaches the edge.
    """
    old = mask.shape
    out_slices, offsets, scales = [], [], []
    for (i0, i1), n_old, n_new in zip(box, old, shape):
        scale = n_old / n_new
        o0 = 0 if i0 == 0 else max(0, int(np.floor((i0 + 0.5) / scale - 0.5)))
        o1 = n_new if i1 == n_old else min(n_new, int(np.ceil((i1 - 0.5) / scale - 0.5)) + 1)
        out_slices.append(slice(o0, o1))
        offsets.append(scale * (o0 + 0.5) - 0.5 - i0)
        scales.append(scale)
    block = mask[tuple(slice(a, b) for a, b in box)].astype(np.float32)
    out_shape = [s.stop - s.start for s in out_slices]
    values = ndimage.affine_transform(block, np.asarray(scales), offset=offsets, output_shape=out_shape,
                                      output=np.float32, order=1, mode="nearest")
    return tuple(out_slices), values


def _class_boxes(seg: np.ndarray, classes: list[int]) -> dict[int, list[tuple[int, int]]]:
    """Bounding box of each class, grown by one voxel (the zero margin _linear_box relies on)."""
    boxes = {}
    for k in classes:
        mask = seg == k
        box = []
        for axis in range(3):
            hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
            box.append((max(0, int(hit[0]) - 1), min(seg.shape[axis], int(hit[-1]) + 2)))
        boxes[k] = box
    return boxes


def resample_seg(seg: np.ndarray, shape: Sequence[int], order: int = 1, axis: int | None = None,
                 dtype=np.int16) -> np.ndarray:
    """(z, y, x) integer labels to ``shape``: per-class one-hot, linear interpolation, highest value wins.

    Each foreground class is interpolated only inside its own bounding box; background's score is
    1 - (sum of the others), exact for linear interpolation. With ``axis`` that axis is taken by nearest
    neighbour first (which commutes with the in-plane interpolation, as nnU-Net's separate-z resampling).
    Extra memory: three output-sized arrays, whatever the number of classes.
    """
    if tuple(seg.shape) == tuple(shape):
        return seg.astype(dtype, copy=False)
    classes = sorted(label_values(seg)[0])
    if len(classes) == 1:
        return np.full(shape, classes[0], dtype=dtype)
    if order == 0:
        return _nearest_seg(seg, shape, dtype)
    if axis is not None:
        seg = _nearest_along(seg, axis, shape[axis])
    foreground = [k for k in classes if k != 0]
    out = np.zeros(shape, dtype=dtype)
    best = np.zeros(shape, dtype=np.float32)
    total = np.zeros(shape, dtype=np.float32)
    for k, box in _class_boxes(seg, foreground).items():
        where, score = _linear_box(seg == k, box, shape)
        region_best, region_out = best[where], out[where]
        win = score > region_best
        region_out[win] = k
        np.maximum(region_best, score, out=region_best)
        best[where], out[where] = region_best, region_out
        total[where] += score
    out[1.0 - total >= best] = 0  # background wins where it scores at least as high (ties: lowest class)
    return out


def _nearest_seg(seg: np.ndarray, shape: Sequence[int], dtype) -> np.ndarray:
    out = seg
    for axis, size in enumerate(shape):
        out = _nearest_along(out, axis, size)
    return out.astype(dtype, copy=False)


def resample_probabilities(probs: np.ndarray, shape: Sequence[int], axis: int | None = None) -> np.ndarray:
    """(K, z, y, x) class probabilities/logits to (K, *shape), linear per class (as nnU-Net's export)."""
    return resample_data(probs, shape, order=1, axis=axis)
