"""Two augmented views per sample: random crops of one preprocessed volume, then intensity/mirror augmentation.

Every batch is a pure function of ``(seed, step, rank)``, so a resumed run continues the same data stream and
each torchrun process draws different samples.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform

from smitunet.pretraining.config import PretrainSettings
from smitunet.pretraining.objective import make_step_masks


def view_transforms() -> Compose:
    return Compose([
        MirrorTransform((0, 1, 2)),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.5),
        ContrastAugmentationTransform(p_per_sample=0.5),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
        GaussianNoiseTransform(noise_variance=(0, 0.05), p_per_sample=0.3),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
    ])


def crop_at(volume: np.ndarray, corner: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    """``(C, *patch)`` float32 crop with lower corner ``corner`` (may lie outside: zero padding)."""
    out = np.zeros((volume.shape[0], *patch), dtype=np.float32)
    src, dst = [], []
    for c, p, s in zip(corner, patch, volume.shape[1:]):
        lo, hi = max(c, 0), min(c + p, s)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - c, lo - c + max(hi - lo, 0)))
    out[(slice(None), *dst)] = volume[(slice(None), *src)]
    return out


def corner_range(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """Inclusive range of lower corners per axis; a volume smaller than the patch is centred (padded both sides)."""
    ranges = []
    for s, p in zip(shape, patch):
        if s >= p:
            ranges.append((0, s - p))
        else:
            centred = -((p - s) // 2)
            ranges.append((centred, centred))
    return ranges


def two_corners(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """A random crop and a second one shifted by at most half a patch (the views overlap, as global crops do)."""
    ranges = corner_range(shape, patch)
    first = [int(rng.integers(lo, hi + 1)) for lo, hi in ranges]
    second = []
    for (lo, hi), c, p in zip(ranges, first, patch):
        a, b = max(lo, c - p // 2), min(hi, c + p // 2)
        second.append(int(rng.integers(a, b + 1)))
    return first, second


class ViewSampler:
    """``batch(step)`` -> float32 ``(2B, C, *patch)``: the first views of B samples, then their second views."""

    def __init__(self, volumes: Sequence[np.ndarray], patch: Sequence[int], batch_size: int, seed: int = 0,
                 rank: int = 0, augment: bool = True):
        if not volumes:
            raise ValueError("no volumes to sample from")
        self.volumes, self.patch, self.batch_size = volumes, [int(p) for p in patch], int(batch_size)
        self.seed, self.rank = int(seed), int(rank)
        self.transforms = view_transforms() if augment else None

    def batch(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(step), self.rank])
        first, second = [], []
        for _ in range(self.batch_size):
            volume = self.volumes[int(rng.integers(len(self.volumes)))]
            a, b = two_corners(volume.shape[1:], self.patch, rng)
            first.append(crop_at(volume, a, self.patch))
            second.append(crop_at(volume, b, self.patch))
        views = np.stack(first + second)
        if self.transforms is not None:
            seed = int(rng.integers(2 ** 31))  # batchgenerators draws from numpy's and Python's global RNGs
            np.random.seed(seed)
            random.seed(seed)
            views = self.transforms(data=views)["data"]
        return np.ascontiguousarray(views, dtype=np.float32)


class StepBatches(torch.utils.data.Dataset):
    """Item ``i`` = the views and masks of step ``first_step + i``: a pure function of ``(seed, step, rank)``, so
    background workers can prepare steps ahead and a resumed run continues the same stream."""

    def __init__(self, sampler: ViewSampler, settings: PretrainSettings, grid: Sequence[int], token_stride: Sequence[int],
                 stage_factors: Sequence[Sequence[int]], seed: int, rank: int, first_step: int, total_steps: int):
        self.sampler, self.settings, self.grid = sampler, settings, list(grid)
        self.token_stride, self.stage_factors = token_stride, stage_factors
        self.seed, self.rank, self.first_step = int(seed), int(rank), int(first_step)
        self.length = max(int(total_steps) - self.first_step, 0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        step = self.first_step + int(index)
        views = self.sampler.batch(step)
        rng = np.random.default_rng([self.seed, step, self.rank, 1])
        masks = make_step_masks(views, self.settings, self.grid, self.token_stride, self.stage_factors, rng)
        return torch.from_numpy(views), masks
