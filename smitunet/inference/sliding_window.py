"""Sliding-window inference: Gaussian-weighted overlapping tiles, optional mirroring TTA, tile batching.

Used for fold validation by the trainer and for prediction. Memory: the only full-volume arrays are the
float32 logit accumulator ``(K, z, y, x)`` and one float32 weight map ``(z, y, x)``, both on the output
device; tiles are computed on ``device`` and added in place.

A 2D network (the ``2d`` configuration, a 2D ``patch_size``) predicts the volume slice by slice: its tiles are
(1, y, x) boxes handed to the network without the z axis, so the result has the volume's shape as in 3D.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


@lru_cache(maxsize=8)
def _gaussian_numpy(patch_size: tuple[int, ...], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Importance map peaking at 1 in the tile centre, never 0 (so every voxel gets some weight)."""
    axes = []
    for size in patch_size:
        coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
        sigma = max(size * sigma_scale, 1e-3)
        axes.append(np.exp(-0.5 * (coords / sigma) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g /= g.max()
    g = np.maximum(g, 1e-6)  # keep tile corners weighted so no voxel can end with a zero total weight
    return g.astype(np.float32)


def gaussian_importance_map(patch_size: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.from_numpy(_gaussian_numpy(tuple(int(p) for p in patch_size))).to(device)


def tile_starts(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[list[int]]:
    """Per axis, evenly spaced tile starts covering the image with at most ``step_size * patch`` between them."""
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    starts = []
    for size, patch in zip(image_size, patch_size):
        if size <= patch:
            starts.append([0])
            continue
        target_step = patch * step_size
        num = int(np.ceil((size - patch) / target_step)) + 1
        actual = (size - patch) / (num - 1)
        starts.append([int(round(actual * i)) for i in range(num)])
    return starts


def _pad_to_patch(data: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad spatial axes smaller than the patch (centred); return the padded data and the crop back."""
    spatial = data.shape[1:]
    pads, crop = [], [slice(None)]
    for size, patch in zip(spatial, patch_size):
        total = max(0, int(patch) - int(size))
        before = total // 2
        pads.append((before, total - before))
        crop.append(slice(before, before + size))
    if not any(p for pair in pads for p in pair):
        return data, tuple(crop)
    flat = [v for pair in reversed(pads) for v in pair]  # F.pad wants the last axis first
    return torch.nn.functional.pad(data, flat, mode="constant", value=0.0), tuple(crop)


def _mirror_combinations(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """All subsets of the mirror axes, as tensor dims of a (B, C, z, y, x) batch; () is the identity."""
    if not mirror_axes:
        return [()]
    dims = [int(a) + 2 for a in mirror_axes]
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


class _SliceWise(nn.Module):
    """A 2D network seen as a 3D one on (B, C, 1, y, x) tiles (a submodule, so eval/train reach the network)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor):
        out = self.network(x[:, :, 0])
        return [o.unsqueeze(2) for o in out] if isinstance(out, (list, tuple)) else out.unsqueeze(2)


def _forward(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    out = model(batch)
    if isinstance(out, (list, tuple)):  # deep supervision left on: full resolution comes first
        out = out[0]
    return out


def _predict_batch(model, batch, combos, autocast_dtype):
    device_type = batch.device.type
    # CUDA autocasts to fp16 or bf16; the CPU only to bf16 (its fp16 autocast is slow and barely covered)
    usable = device_type == "cuda" or (device_type == "cpu" and autocast_dtype == torch.bfloat16)
    ctx = (torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None and usable
           else contextlib.nullcontext())
    with ctx:
        total = None
        for dims in combos:
            x = torch.flip(batch, dims) if dims else batch
            y = _forward(model, x)
            y = torch.flip(y, dims) if dims else y
            total = y.float() if total is None else total + y.float()
    return total / len(combos)


def tile_batch_default(config, device: torch.device | str) -> int:
    """Tiles per forward pass for a configuration plan: 2d slices in batches of its training batch (training
    needed more memory, with gradients); 3D tiles 4 at a time on a GPU, 1 on the CPU."""
    if len(config.patch_size) == 2:
        return int(config.batch_size)
    return 4 if torch.device(device).type == "cuda" else 1


@torch.no_grad()  # not inference_mode: callers update the returned tensor in place
def predict_sliding_window(model: nn.Module, data: torch.Tensor | np.ndarray, patch_size: Sequence[int],
                           num_classes: int, step_size: float = 0.5,
                           mirror_axes: Sequence[int] | None = (0, 1, 2), tile_batch_size: int = 1,
                           device: torch.device | str = "cpu", use_gaussian: bool = True,
                           output_device: torch.device | str | None = None,
                           autocast_dtype: torch.dtype | None = None, stats: dict | None = None,
                           progress: bool | None = None) -> torch.Tensor:
    """Predict logits ``(num_classes, z, y, x)`` float32 for one case ``data`` ``(C, z, y, x)``.

    ``mirror_axes`` are spatial axes (0=z, 1=y, 2=x) for test-time mirroring (all 2^n flips averaged);
    None or () disables it. A 2D ``patch_size`` (y, x) predicts slice by slice (z is then never mirrored).
    ``output_device`` (default: ``device``) holds the accumulators.
    ``autocast_dtype`` (torch.float16 / torch.bfloat16) applies on CUDA; on the CPU only bf16 does. When ``stats``
    is a dict, it receives ``tiles``, ``forward_passes`` and ``forward_seconds`` (pure network time, synchronised).
    """
    device = torch.device(device)
    output_device = torch.device(output_device) if output_device is not None else device
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) == 2:
        patch_size = (1, *patch_size)
        mirror_axes = tuple(a for a in mirror_axes or () if a != 0)  # flipping a single slice along z is a no-op
        model = _SliceWise(model)
    data = torch.as_tensor(data)
    if data.ndim != 4:
        raise ValueError(f"expected data (C, z, y, x), got shape {tuple(data.shape)}")
    data, crop = _pad_to_patch(data.float(), patch_size)
    spatial = tuple(data.shape[1:])

    logits = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=output_device)
    weights = torch.zeros(spatial, dtype=torch.float32, device=output_device)
    tile_weight = (gaussian_importance_map(patch_size, device) if use_gaussian
                   else torch.ones(patch_size, dtype=torch.float32, device=device))
    tile_weight_out = tile_weight.to(output_device)
    combos = _mirror_combinations(mirror_axes)

    slicers = [tuple(slice(s, s + p) for s, p in zip(start, patch_size))
               for start in itertools.product(*tile_starts(spatial, patch_size, step_size))]
    was_training = model.training
    model.eval()
    forward_seconds = 0.0
    show = sys.stderr.isatty() if progress is None else progress
    try:
        for i in tqdm(range(0, len(slicers), tile_batch_size), disable=not show, desc="tiles", leave=False):
            chunk = slicers[i:i + tile_batch_size]
            batch = torch.stack([data[(slice(None), *s)] for s in chunk]).to(device, non_blocking=True)
            t0 = time.perf_counter()
            pred = _predict_batch(model, batch, combos, autocast_dtype)
            if stats is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            forward_seconds += time.perf_counter() - t0
            if pred.shape[1] != num_classes:
                raise ValueError(f"model returned {pred.shape[1]} channels, expected num_classes={num_classes}")
            pred = (pred * tile_weight).to(output_device)
            for j, s in enumerate(chunk):
                logits[(slice(None), *s)] += pred[j]
                weights[s] += tile_weight_out
    finally:
        model.train(was_training)
    logits /= weights
    if stats is not None:
        stats["tiles"] = stats.get("tiles", 0) + len(slicers)
        stats["forward_passes"] = stats.get("forward_passes", 0) + len(slicers) * len(combos)
        stats["forward_seconds"] = stats.get("forward_seconds", 0.0) + forward_seconds
    return logits[crop]
