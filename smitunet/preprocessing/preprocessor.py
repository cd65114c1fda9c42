"""Preprocessing of one case, shared by training data preparation and prediction, and its inverse.

``preprocess_case``: crop to the nonzero region, normalize per channel, resample to the plan's spacing.
``restore_original_geometry``: resample a prediction back and undo the crop, giving the original shape.
Both work channel by channel (class by class) in float32 so a 512x512x300 CT stays within a few copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from smitunet.errors import SmitunetError
from smitunet.imageio import Geometry
from smitunet.plans import Plans
from smitunet.preprocessing.cropping import box_shape, crop, nonzero_bbox
from smitunet.preprocessing.normalization import normalize_channel
from smitunet.preprocessing.resampling import (compute_new_shape, resample_data, resample_probabilities,
                                               resample_seg, separate_axis)


def _as_seg_volume(seg: np.ndarray) -> np.ndarray:
    if seg.ndim == 4 and seg.shape[0] == 1:
        seg = seg[0]
    if seg.ndim != 3:
        raise SmitunetError(f"segmentation must be (z, y, x) or (1, z, y, x), got shape {seg.shape}")
    return seg


def _normalization_mask(cropped: np.ndarray, needed: bool) -> np.ndarray | None:
    """nnU-Net's nonzero mask (holes filled): z-score inside it when cropping removed much of the image."""
    if not needed:
        return None
    mask = np.any(cropped != 0, axis=0)
    return ndimage.binary_fill_holes(mask)


def preprocess_case(data: np.ndarray, geometry: Geometry, plans: Plans, configuration: str,
                    seg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Crop, normalize and resample one case.

    ``data`` (C, z, y, x) as read (any numeric dtype); ``seg`` optional (z, y, x) or (1, z, y, x) labels.
    Returns float32 (C, z', y', x') data, int16 (1, z', y', x') labels (or None) and the properties that
    ``restore_original_geometry`` needs.
    """
    cfg = plans.configuration(configuration)
    if data.ndim != 4 or data.shape[0] != plans.num_channels:
        raise SmitunetError(f"expected data of shape ({plans.num_channels}, z, y, x), got {data.shape}")
    if tuple(data.shape[1:]) != geometry.shape_zyx:
        raise SmitunetError(f"data shape {data.shape[1:]} does not match its geometry {geometry.shape_zyx}")
    box = nonzero_bbox(data)
    cropped = np.array(crop(data, box), dtype=np.float32)  # own float32 copy, normalized in place
    mask = _normalization_mask(cropped, any(cfg.use_mask_for_norm))
    for c in range(cropped.shape[0]):
        normalize_channel(cropped[c], cfg.normalization[c], cfg.use_mask_for_norm[c], mask,
                          plans.foreground_intensity_properties.get(str(c)))
    del mask
    spacing = list(geometry.spacing_zyx)
    shape = compute_new_shape(cropped.shape[1:], spacing, cfg.spacing)
    axis = separate_axis(spacing, cfg.spacing, cfg.anisotropy_threshold)
    out = resample_data(cropped, shape, cfg.resampling_order_data, axis)
    del cropped
    out_seg = None
    if seg is not None:
        seg = _as_seg_volume(seg)
        if tuple(seg.shape) != geometry.shape_zyx:
            raise SmitunetError(f"segmentation shape {seg.shape} does not match the image {geometry.shape_zyx}")
        out_seg = resample_seg(crop(seg, box), shape, cfg.resampling_order_seg, axis)[None]
    properties = {
        "geometry": geometry.to_dict(),
        "shape_before_cropping": [int(s) for s in data.shape[1:]],
        "bbox_used_for_cropping": box,
        "shape_after_cropping_before_resampling": box_shape(box),
        "spacing_original": [float(s) for s in spacing],
        "spacing_target": [float(s) for s in cfg.spacing],
    }
    return out, out_seg, properties


def restore_original_geometry(array: np.ndarray, properties: dict[str, Any], plans: Plans, configuration: str,
                              is_seg: bool) -> np.ndarray:
    """Undo resampling and cropping.

    ``is_seg``: ``array`` is (z, y, x) labels -> (z, y, x) int16 labels in the original shape.
    Otherwise ``array`` is (K, z, y, x) probabilities -> float32 (K, z, y, x); outside the crop region class 0
    gets 1 and the other classes 0 (with regions every channel gets 0: there is no background channel).
    """
    cfg = plans.configuration(configuration)
    box = properties["bbox_used_for_cropping"]
    cropped_shape = properties["shape_after_cropping_before_resampling"]
    full_shape = properties["shape_before_cropping"]
    axis = separate_axis(properties["spacing_target"], properties["spacing_original"], cfg.anisotropy_threshold)
    (z0, z1), (y0, y1), (x0, x1) = box
    if is_seg:
        seg = _as_seg_volume(np.asarray(array))
        restored = resample_seg(seg, cropped_shape, cfg.resampling_order_seg, axis)
        out = np.zeros(full_shape, dtype=np.int16)
        out[z0:z1, y0:y1, x0:x1] = restored
        return out
    if array.ndim != 4:
        raise SmitunetError(f"probabilities must be (K, z, y, x), got shape {array.shape}")
    restored = resample_probabilities(np.asarray(array, dtype=np.float32), cropped_shape, axis)
    out = np.zeros((array.shape[0], *full_shape), dtype=np.float32)
    if not plans.has_regions:
        out[0] = 1.0
    out[:, z0:z1, y0:y1, x0:x1] = restored
    return out
