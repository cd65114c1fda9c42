"""GMIM's content-adaptive grid masking, with hierarchical re-masking at deeper stages.

Per view:
1. The image (mean over channels) is quantised into ``bins`` intensity levels over its own 1-99 % range.
2. Grid resolution: the normalised entropy of the whole view picks the cell size: a busy view (high entropy)
   gets fine cells, a flat one coarse cells (``cell_tokens`` lists the candidates, coarse to fine).
3. Per-cell mask ratio: cells are ranked by their local entropy; the ratio goes linearly with the rank from
   ``ratio - spread`` (flattest cell) to ``ratio + spread`` (busiest), so boundaries and small details are hidden
   more often while the mean ratio stays ``ratio``. Inside a cell the masked tokens are drawn at random.
4. Hierarchical re-masking: at every deeper stage a further ``remask_ratio`` of the still-visible stage tokens is
   replaced by a learnable per-stage token, so the deep layers must infer content too.
5. Siamese branch (``target_views``): the target network sees each crop again, unmasked, after an intensity
   augmentation (gamma contrast, intensity shift, Gaussian noise; GMIM's probabilities and ranges).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from smitunet.pretraining.masking import cell_ids, mask_within_cells, masked_fraction_at


@dataclass
class GmimSettings:
    ratio: float = 0.7
    spread: float = 0.2
    bins: int = 32
    cell_tokens: tuple[int, ...] = (8, 4, 2)
    remask_ratio: float = 0.25


def quantise(volume: np.ndarray, bins: int) -> np.ndarray:
    """Intensity levels 0..bins-1 over the volume's 1-99 % range (a constant volume is all level 0)."""
    lo, hi = np.percentile(volume, [1, 99])
    if hi <= lo:
        return np.zeros(volume.shape, dtype=np.int64)
    q = np.floor((np.clip(volume, lo, hi) - lo) / (hi - lo) * bins).astype(np.int64)
    return np.minimum(q, bins - 1)


def normalised_entropy(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy of histograms in the last axis, divided by log(bins): 0 = one level, 1 = uniform."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return h / np.log(counts.shape[-1])


def choose_cell_tokens(global_entropy: float, candidates: Sequence[int], grid: Sequence[int]) -> list[int]:
    """Cell size (tokens per axis) for a view: candidates run coarse -> fine, entropy 0 -> 1 picks along them."""
    index = min(int(global_entropy * len(candidates)), len(candidates) - 1)
    size = int(candidates[index])
    return [max(1, min(size, g)) for g in grid]


def cell_ratios_from_entropy(entropies: np.ndarray, ratio: float, spread: float) -> np.ndarray:
    """Per-cell mask ratio rising linearly with the entropy rank; ties share the mean of their ranks."""
    n = entropies.size
    if n == 1:
        return np.array([ratio])
    order = np.argsort(entropies, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n)
    for value in np.unique(entropies):  # equal entropy -> equal ratio
        same = entropies == value
        ranks[same] = ranks[same].mean()
    return np.clip(ratio + spread * (2 * ranks / (n - 1) - 1), 0.0, 0.95)


def cell_entropies(levels: np.ndarray, token_stride: Sequence[int], grid: Sequence[int], cell: Sequence[int],
                   bins: int) -> np.ndarray:
    """Normalised entropy of the intensity levels inside each cell (cells in raster order)."""
    voxel_cell = [c * s for c, s in zip(cell, token_stride)]
    voxel_grid = [g * s for g, s in zip(grid, token_stride)]
    ids = cell_ids(voxel_grid, voxel_cell)
    num_cells = int(ids.max()) + 1
    counts = np.bincount(ids * bins + levels.reshape(-1), minlength=num_cells * bins).reshape(num_cells, bins)
    return normalised_entropy(counts)


def gmim_view_mask(view: np.ndarray, grid: Sequence[int], token_stride: Sequence[int], settings: GmimSettings,
                   rng: np.random.Generator) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Mask (prod(grid),) bool for one view (C, z, y, x), plus the cell size and per-cell ratios used."""
    levels = quantise(view.mean(axis=0), settings.bins)
    counts = np.bincount(levels.reshape(-1), minlength=settings.bins)
    cell = choose_cell_tokens(float(normalised_entropy(counts)), settings.cell_tokens, grid)
    ratios = cell_ratios_from_entropy(cell_entropies(levels, token_stride, grid, cell, settings.bins),
                                      settings.ratio, settings.spread)
    return mask_within_cells(cell_ids(grid, cell), ratios, rng), cell, ratios


def gmim_mask(views: np.ndarray, grid: Sequence[int], token_stride: Sequence[int], settings: GmimSettings,
              rng: np.random.Generator) -> torch.Tensor:
    """Bool ``(B, prod(grid))`` for a batch of views ``(B, C, z, y, x)``."""
    return torch.from_numpy(np.stack([gmim_view_mask(v, grid, token_stride, settings, rng)[0] for v in views]))


def hierarchical_remasks(mask: torch.Tensor, grid: Sequence[int], stage_factors: Sequence[Sequence[int]],
                         remask_ratio: float, rng: np.random.Generator) -> list[torch.Tensor]:
    """For each deeper stage (factor = its grid's coarsening vs the token grid) a bool ``(B, N_stage)`` mask of
    extra tokens to hide: ``remask_ratio`` of the stage tokens that are not already wholly masked."""
    remasks = []
    for factor in stage_factors:
        covered = masked_fraction_at(mask, grid, factor).numpy()
        visible = covered < 1.0
        draw = rng.random(covered.shape)
        remask = np.zeros_like(visible)
        for b in range(covered.shape[0]):
            candidates = np.flatnonzero(visible[b])
            k = int(round(remask_ratio * candidates.size))
            if k:
                remask[b, candidates[np.argsort(draw[b, candidates])[:k]]] = True
        remasks.append(torch.from_numpy(remask))
    return remasks


# GMIM's target-view augmentation: (probability, range) per transform; intensities are z-scored, so a shift of 0.4
# is 0.4 standard deviations.
CONTRAST = (0.7, (0.7, 1.5))      # gamma
SHIFT = (0.4, (-0.4, 0.4))        # additive offset
NOISE = (0.5, (0.0, 0.05))        # standard deviation of zero-mean Gaussian noise


def target_views(views: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Intensity-augmented copies of ``views`` (B, C, z, y, x), each transform applied per view with its
    probability; the geometry is untouched so that target token i lies where online token i does."""
    out = np.array(views, dtype=np.float32, copy=True)
    for v in out:
        if rng.random() < CONTRAST[0]:
            gamma = rng.uniform(*CONTRAST[1])
            lo, hi = float(v.min()), float(v.max())
            span = max(hi - lo, 1e-7)
            v[...] = ((v - lo) / span) ** gamma * span + lo
        if rng.random() < SHIFT[0]:
            v += np.float32(rng.uniform(*SHIFT[1]))
        if rng.random() < NOISE[0]:
            v += rng.normal(0.0, rng.uniform(*NOISE[1]), size=v.shape).astype(np.float32)
    return out
