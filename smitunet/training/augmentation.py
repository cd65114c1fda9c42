"""Training augmentation built from batchgenerators transforms (nnU-Net's recipe, without elastic deformation).

The data loader cuts a patch larger than the network's (``sampling_patch_size``) so that rotation and
scaling never pull in empty corners; ``SpatialTransform`` then cuts the centred network patch.

A 2D patch (``2d``) gets the same transforms in 2D (batchgenerators picks the dimension from the patch), with
nnU-Net's 2D rotation (in-plane, +-180 degrees, +-15 for elongated patches). Mirror axes are always numbered in
the volume's (z, y, x) order; in 2D the slice axis z is dropped.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from batchgenerators.augmentations.utils import rotate_coords_2d, rotate_coords_3d
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import NumpyToTensor

from smitunet.training.cascade_transforms import MovePreviousStageToData, PerturbPreviousStage


@dataclass
class AugmentationParams:
    rotation_degrees: float = 30.0
    scale_range: tuple[float, float] = (0.7, 1.4)
    mirror_axes: tuple[int, ...] | None = (0, 1, 2)   # (z, y, x) numbering, also for 2d
    anisotropy_threshold: float = 3.0  # above it, rotate only in-plane (around the low-resolution axis)
    p_rotation: float = 0.2
    p_scale: float = 0.2


def rotation_angles(spacing: Sequence[float], params: AugmentationParams,
                    patch_size: Sequence[int] | None = None) -> list[tuple[float, float]]:
    """Angle ranges (radians) around axes (z, y, x); anisotropic data rotates only around its coarse axis.

    A 2D ``patch_size``: one in-plane range, nnU-Net's (+-180 degrees; +-15 when the patch is more than 1.5x longer
    one way, where a large turn would cut the long axis short)."""
    if patch_size is not None and len(patch_size) == 2:
        limit = 15.0 if max(patch_size) / min(patch_size) > 1.5 else 180.0
        return [(-np.deg2rad(limit), np.deg2rad(limit))]
    a = np.deg2rad(params.rotation_degrees)
    spacing = np.asarray(spacing, dtype=float)
    if spacing.max() / spacing.min() > params.anisotropy_threshold:
        coarse = int(np.argmax(spacing))
        return [(-a, a) if axis == coarse else (0.0, 0.0) for axis in range(3)]
    return [(-a, a)] * 3


def sampling_patch_size(patch_size: Sequence[int], angles: list[tuple[float, float]],
                        scale_range: tuple[float, float]) -> list[int]:
    """Bounding box of the patch under the worst rotation and largest zoom-out (scale > 1 samples wider)."""
    patch = np.asarray(patch_size, dtype=float)
    corners = np.array(list(itertools.product(*[(-p / 2, p / 2) for p in patch]))).T  # (n, 2^n)
    extent = patch.copy()
    steps = 73 if len(patch) == 2 else 5  # 2D: one angle, so 5-degree steps over +-180 cost nothing
    grid = [np.linspace(lo, hi, steps) if hi > lo else [0.0] for lo, hi in angles]
    for turn in itertools.product(*grid):
        rotated = (rotate_coords_2d(corners.copy(), turn[0]) if len(patch) == 2
                   else rotate_coords_3d(corners.copy(), *turn))
        extent = np.maximum(extent, rotated.max(axis=1) - rotated.min(axis=1))
    extent *= max(1.0, scale_range[1])
    return [int(np.ceil(e)) for e in extent]


def training_transforms(patch_size: Sequence[int], spacing: Sequence[float],
                        params: AugmentationParams | None = None,
                        previous_stage_labels: Sequence[int] | None = None) -> AbstractTransform:
    """``previous_stage_labels``: a cascade's foreground labels; its previous-stage segmentation (label channel
    1, augmented spatially with the label) becomes perturbed one-hot input channels, after the intensity
    transforms (which must not touch it)."""
    params = params or AugmentationParams()
    angles = rotation_angles(spacing, params, patch_size)
    angles += [(0.0, 0.0)] * (3 - len(angles))  # 2D: batchgenerators rotates by angle_x only
    transforms = [
        SpatialTransform(
            list(patch_size), patch_center_dist_from_border=None, do_elastic_deform=False,
            do_rotation=True, angle_x=angles[0], angle_y=angles[1], angle_z=angles[2], p_rot_per_axis=1,
            do_scale=True, scale=params.scale_range, border_mode_data="constant", border_cval_data=0, order_data=3,
            border_mode_seg="constant", border_cval_seg=0, order_seg=1, random_crop=False,
            p_el_per_sample=0, p_scale_per_sample=params.p_scale, p_rot_per_sample=params.p_rotation,
            independent_scale_for_each_axis=False),
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    mirror_axes = spatial_mirror_axes(params.mirror_axes, len(patch_size))
    if mirror_axes:
        transforms.append(MirrorTransform(mirror_axes))
    if previous_stage_labels is not None:
        transforms += [MovePreviousStageToData(previous_stage_labels), PerturbPreviousStage(len(previous_stage_labels))]
    transforms.append(NumpyToTensor(["data", "seg"], "float"))
    return Compose(transforms)


def spatial_mirror_axes(axes: Sequence[int] | None, spatial_dims: int) -> tuple[int, ...]:
    """Mirror axes given in (z, y, x) numbering, as axes of a ``spatial_dims`` patch (2D: y, x -> 0, 1)."""
    axes = tuple(int(a) for a in axes or ())
    return axes if spatial_dims == 3 else tuple(a - 1 for a in axes if a > 0)


def no_augmentation_transforms(previous_stage_labels: Sequence[int] | None = None) -> AbstractTransform:
    """Validation batches (and deterministic tests): only the conversion to tensors (a cascade's previous stage
    moved into the input first, unperturbed)."""
    move = [] if previous_stage_labels is None else [MovePreviousStageToData(previous_stage_labels)]
    return Compose([*move, NumpyToTensor(["data", "seg"], "float")])
