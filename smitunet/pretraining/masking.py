"""Token masks for masked-image pretraining, on the patch-embedding token grid (z, y, x raster order).

A mask is a bool array ``(B, num_tokens)``; True marks a token the student sees as the mask token. The grid is
the network patch divided by the patch-embedding stride, so one token covers ``stride`` voxels per axis.

- ``block_mask``: SMIT's block masking: the grid is cut into blocks (default 16^3 voxels), blocks are masked in
  random order until the mask ratio is reached, so every block is either wholly masked or wholly visible.
- ``token_dropout_mask``: SMART's patch dropout of the teacher's input tokens (independent per token).
- ``attention_guided_mask``: SMART's (AttMask-style) mask: the tokens the teacher's class attention ranks highest,
  the rest drawn at random; ``scores_to_grid`` brings the deepest stage's scores to the token grid.
- ``tokens_to_voxels`` / ``masked_fraction_at``: the same mask at voxel resolution (for the L1 on masked voxels)
  or pooled to a coarser stage grid (for patch-token distillation on masked tokens).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MIN_BLOCKS_PER_AXIS = 4  # small patches: shrink blocks so the ratio stays reachable in steps of a few percent


def block_tokens_for(block_voxels: Sequence[int], token_stride: Sequence[int], grid: Sequence[int]) -> list[int]:
    """Block size in tokens: the requested voxel size over the token stride, shrunk for small grids."""
    out = []
    for voxels, stride, size in zip(block_voxels, token_stride, grid):
        tokens = max(1, int(voxels) // int(stride))
        out.append(max(1, min(tokens, size // MIN_BLOCKS_PER_AXIS if size >= MIN_BLOCKS_PER_AXIS else 1)))
    return out


def cell_ids(grid: Sequence[int], cell: Sequence[int]) -> np.ndarray:
    """Id of the (cell-sized) block that holds each token of ``grid``, in raster order; shape (prod(grid),)."""
    axes = [np.arange(g) // c for g, c in zip(grid, cell)]
    counts = [int(np.ceil(g / c)) for g, c in zip(grid, cell)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return ((zz * counts[1] + yy) * counts[2] + xx).reshape(-1)


def mask_cells_in_random_order(ids: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Mask whole cells in random order until at least ``round(ratio * n)`` tokens are masked."""
    n = ids.size
    target = int(round(ratio * n))
    if target <= 0:
        return np.zeros(n, dtype=bool)
    sizes = np.bincount(ids)
    order = rng.permutation(sizes.size)
    before = np.cumsum(sizes[order]) - sizes[order]  # tokens already masked when this cell's turn comes
    chosen = np.zeros(sizes.size, dtype=bool)
    chosen[order[before < target]] = True
    return chosen[ids]


def mask_within_cells(ids: np.ndarray, cell_ratios: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """In each cell mask ``round(ratio_c * n_c)`` tokens chosen at random (GMIM's grid masking)."""
    sizes = np.bincount(ids, minlength=cell_ratios.size)
    quota = np.rint(np.clip(cell_ratios, 0.0, 1.0) * sizes).astype(np.int64)
    order = np.lexsort((rng.random(ids.size), ids))  # tokens grouped by cell, random order inside a cell
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(ids.size, dtype=np.int64)
    rank[order] = np.arange(ids.size) - starts[ids[order]]
    return rank < quota[ids]


def block_mask(batch_size: int, grid: Sequence[int], ratio: float, block_tokens: Sequence[int],
               rng: np.random.Generator) -> torch.Tensor:
    """SMIT block masking: bool ``(B, prod(grid))``, whole blocks masked up to ``ratio`` (one block over at most)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    ids = cell_ids(grid, block_tokens)
    return torch.from_numpy(np.stack([mask_cells_in_random_order(ids, ratio, rng) for _ in range(batch_size)]))


def token_dropout_mask(batch_size: int, num_tokens: int, rate: float, rng: np.random.Generator) -> torch.Tensor:
    """SMART's noisy teacher: each input token is dropped independently with probability ``rate``."""
    return torch.from_numpy(rng.random((batch_size, num_tokens)) < rate)


def tokens_to_voxels(mask: torch.Tensor, grid: Sequence[int], token_stride: Sequence[int]) -> torch.Tensor:
    """Token mask ``(B, N)`` -> voxel mask ``(B, 1, *grid * stride)`` (each token covers its stride box)."""
    m = mask.view(mask.shape[0], 1, *grid).to(torch.float32)
    for axis, s in enumerate(token_stride):
        m = m.repeat_interleave(int(s), dim=2 + axis)
    return m


def masked_fraction_at(mask: torch.Tensor, grid: Sequence[int], factor: Sequence[int]) -> torch.Tensor:
    """Fraction of masked tokens under each token of a grid ``factor`` times coarser: ``(B, N_coarse)``."""
    m = mask.view(mask.shape[0], 1, *grid).to(torch.float32)
    factor = [int(f) for f in factor]
    if any(f > 1 for f in factor):
        m = F.avg_pool3d(m, kernel_size=factor, stride=factor)
    return m.flatten(1)


def scores_to_grid(scores: torch.Tensor, grid: Sequence[int], factor: Sequence[int]) -> torch.Tensor:
    """Deepest-stage scores ``(B, N_deep)`` -> token-grid scores ``(B, prod(grid))`` by nearest upsampling.

    Nearest, not trilinear: every token inherits the score of the deepest token whose receptive box holds it, so a
    highly attended deepest token masks its whole box (a block, as SMIT's masks are) rather than a blurred rim.
    """
    coarse = [g // int(f) for g, f in zip(grid, factor)]
    up = scores.view(scores.shape[0], 1, *coarse).to(torch.float32)
    if list(coarse) != list(grid):
        up = F.interpolate(up, size=list(grid), mode="nearest")
    return up.flatten(1)


def attention_guided_mask(scores: torch.Tensor, priority: torch.Tensor, ratio: float, share: float) -> torch.Tensor:
    """Bool ``(B, N)``: ``round(ratio * N)`` tokens per row, of which ``round(share * that)`` are the highest-scored
    (ties broken by ``priority``) and the rest the lowest-``priority`` ones among the others.

    ``priority`` is a uniform random ``(B, N)`` drawn with the step's seed, so the mask stays a pure function of the
    step (resume and worker processes give the same stream) given the teacher's scores.
    """
    b, n = scores.shape
    total = int(round(ratio * n))
    top = int(round(share * total))
    shuffled = torch.argsort(priority, dim=1)                  # random order: equal scores keep it (stable sort)
    by_score = torch.argsort(-scores.gather(1, shuffled), dim=1, stable=True)
    ranked = shuffled.gather(1, by_score)
    mask = torch.zeros(b, n, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, ranked[:, :top], True)
    rest = torch.argsort(priority.masked_fill(mask, float("inf")), dim=1)[:, :total - top]
    mask.scatter_(1, rest, True)
    return mask
