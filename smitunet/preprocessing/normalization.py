"""Intensity normalization per channel, in place on float32 (no float64 copy of a volume).

Schemes (chosen from the channel name as nnU-Net does): ``CT`` clips to the foreground 0.5/99.5 percentiles
of the whole dataset and z-scores with the dataset's foreground mean/std; ``ZScore`` z-scores each image
(inside the nonzero mask when cropping removed a lot, the outside set to 0); ``RescaleTo01`` maps each image's
range to [0, 1]; ``NoNorm`` leaves values as they are.
"""

from __future__ import annotations

import numpy as np

from smitunet.errors import SmitunetError

_CHUNK = 1 << 22


def scheme_for_channel(channel_name: str) -> str:
    name = channel_name.strip().lower()
    if name == "ct":
        return "CT"
    if name in ("nonorm", "no_norm", "none"):
        return "NoNorm"
    if name in ("rescale_to_0_1", "rescaleto01", "rgb_to_0_1"):
        return "RescaleTo01"
    return "ZScore"


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and std with float64 accumulation over chunks, never a float64 copy of a whole volume."""
    flat = values.reshape(-1)
    n = flat.size
    if n == 0:
        return 0.0, 1.0
    total = sum(float(flat[i:i + _CHUNK].sum(dtype=np.float64)) for i in range(0, n, _CHUNK))
    mean = total / n
    sq = 0.0
    for i in range(0, n, _CHUNK):
        d = flat[i:i + _CHUNK].astype(np.float64)
        d -= mean
        d *= d  # elementwise, not np.dot: BLAS thread start-up dominates on small volumes
        sq += float(d.sum())
    return mean, float(np.sqrt(sq / n))


def normalize_channel(volume: np.ndarray, scheme: str, use_mask: bool, mask: np.ndarray | None,
                      intensity_properties: dict[str, float] | None) -> None:
    """Normalize one float32 (z, y, x) volume in place."""
    if scheme == "NoNorm":
        return
    if scheme == "CT":
        if intensity_properties is None:
            raise SmitunetError("CT normalization needs the dataset's foreground intensity statistics")
        p = intensity_properties
        np.clip(volume, p["percentile_00_5"], p["percentile_99_5"], out=volume)
        volume -= np.float32(p["mean"])
        volume /= np.float32(max(p["std"], 1e-8))
        return
    if scheme == "RescaleTo01":
        lo, hi = float(volume.min()), float(volume.max())
        volume -= np.float32(lo)
        volume /= np.float32(max(hi - lo, 1e-8))
        return
    if scheme != "ZScore":
        raise SmitunetError(f"unknown normalization scheme {scheme!r}")
    if use_mask and mask is not None and mask.any():
        mean, std = _mean_std(volume[mask])
        volume -= np.float32(mean)
        volume /= np.float32(max(std, 1e-8))
        volume[~mask] = 0
    else:
        mean, std = _mean_std(volume)
        volume -= np.float32(mean)
        volume /= np.float32(max(std, 1e-8))
