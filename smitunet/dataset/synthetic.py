"""The embedded default dataset: small synthetic MRI-like volumes with two (or three) labelled structures.

Each case is a noisy "head" (an ellipsoid of tissue, air = 0 around it, so cropping has work to do) with a
smooth intensity bias, holding ellipsoids at random, non-overlapping positions and sizes whose intensities
differ clearly from the tissue (label 1 bright, label 2 dark, label 3 medium-bright). Everything is seeded,
so the same arguments give the same files. A small Swin U-Net learns it to Dice > 0.8 within minutes on a
CPU; ``imagesTs``/``labelsTs`` hold unseen cases for evaluation.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from smitunet.errors import SmitunetError
from smitunet.imageio import Geometry, write_image
from smitunet.paths import dataset_folder_name
from smitunet.utils.files import load_json, save_json

TISSUE = 100.0
STRUCTURES = (  # (label name, mean intensity, radius range in mm)
    ("bright", 170.0, (4.0, 7.0)),
    ("dark", 35.0, (3.5, 6.0)),
    ("medium", 140.0, (3.0, 5.0)),
)
NOISE_STD = 9.0


def _ellipsoid(grid: list[np.ndarray], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def _place(rng: np.random.Generator, head_center, head_radii, radii, taken: list[tuple[np.ndarray, float]]):
    """A centre inside the head, clear of the structures already placed (gives up gracefully)."""
    for _ in range(200):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        center = head_center + direction * rng.uniform(0, 0.55) * (head_radii - radii)
        if all(np.linalg.norm(center - c) > r + radii.max() + 1.5 for c, r in taken):
            return center
    return head_center + (head_radii - radii) * 0.5 * np.sign(rng.normal(size=3))


def make_case(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], num_structures: int,
              num_channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One case: float32 (C, z, y, x) image and uint8 (z, y, x) labels."""
    shape = np.asarray(shape)
    grid = [g.astype(np.float32) for g in np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")]
    head_center = shape / 2 + rng.uniform(-1.5, 1.5, size=3)
    head_radii = shape * rng.uniform(0.42, 0.48, size=3)
    head = _ellipsoid(grid, head_center, head_radii)
    labels = np.zeros(shape, dtype=np.uint8)
    means = np.full(shape, TISSUE, dtype=np.float32)
    taken: list[tuple[np.ndarray, float]] = []
    for k, (_, intensity, (lo, hi)) in enumerate(STRUCTURES[:num_structures], start=1):
        radii = rng.uniform(lo, hi, size=3) / np.asarray(spacing)
        center = _place(rng, head_center, head_radii, radii, taken)
        taken.append((center, float(radii.max())))
        blob = _ellipsoid(grid, center, radii) & head & (labels == 0)
        labels[blob] = k
        means[blob] = intensity + rng.normal(0, 5)
    bias = 1.0 + sum(rng.uniform(-0.08, 0.08) * (g / s - 0.5) for g, s in zip(grid, shape))
    channels = []
    for c in range(num_channels):
        # A second channel sees the same anatomy with another contrast (tissue dark, structures inverted).
        contrast = means if c == 0 else 2 * TISSUE - means + 40
        img = contrast * bias + rng.normal(0, NOISE_STD, size=tuple(shape))
        channels.append(np.where(head, np.maximum(img, 1.0), 0.0).astype(np.float32))
    return np.stack(channels), labels


def _parameters(num_training, num_test, seed, shape, spacing, num_structures, num_channels) -> dict:
    return {"num_training": num_training, "num_test": num_test, "seed": seed, "shape": list(shape),
            "spacing": list(spacing), "num_structures": num_structures, "num_channels": num_channels}


def generate_synthetic_dataset(raw_dir: str | Path, dataset_id: int = 999, name: str = "Synthetic",
                               num_training: int = 20, num_test: int = 5, seed: int = 0,
                               shape: Sequence[int] = (32, 40, 36), spacing: Sequence[float] = (1.0, 1.0, 1.0),
                               num_structures: int = 2, num_channels: int = 1, overwrite: bool = False) -> Path:
    """Write the dataset in the raw format under ``raw_dir`` and return its folder.

    ``shape``/``spacing`` are (z, y, x). An existing folder made with the same arguments is reused; one made
    differently is replaced only with ``overwrite``.
    """
    if not 1 <= num_structures <= len(STRUCTURES):
        raise SmitunetError(f"num_structures must be 1..{len(STRUCTURES)}, got {num_structures}")
    if num_training < 1 or num_test < 0 or num_channels < 1:
        raise SmitunetError("num_training must be >= 1, num_test >= 0 and num_channels >= 1")
    params = _parameters(num_training, num_test, seed, shape, spacing, num_structures, num_channels)
    final = Path(raw_dir) / dataset_folder_name(dataset_id, name)
    if (final / "dataset.json").is_file():
        if load_json(final / "dataset.json").get("synthetic_parameters") == params:
            return final
        if not overwrite:
            raise SmitunetError(f"{final} exists with other contents; pass overwrite=True to replace it")
    staging = final.parent / f".{final.name}.generating"
    shutil.rmtree(staging, ignore_errors=True)
    rng = np.random.default_rng(seed)
    spacing_xyz = tuple(float(s) for s in reversed(spacing))
    for split, count, prefix in (("Tr", num_training, "case"), ("Ts", num_test, "test")):
        for i in range(count):
            case = f"{prefix}_{i:03d}"
            image, labels = make_case(rng, shape, spacing, num_structures, num_channels)
            origin = tuple(float(v) for v in rng.uniform(-20, 20, size=3))
            geometry = Geometry(spacing_xyz, origin, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), tuple(reversed(labels.shape)))
            for c in range(num_channels):
                write_image(image[c], geometry, staging / f"images{split}" / f"{case}_{c:04d}.nii.gz")
            write_image(labels, geometry, staging / f"labels{split}" / f"{case}.nii.gz")
    channel_names = {str(c): "MRI" if c == 0 else f"MRI{c + 1}" for c in range(num_channels)}
    labels_json = {"background": 0, **{n: k for k, (n, _, _) in enumerate(STRUCTURES[:num_structures], start=1)}}
    save_json({"channel_names": channel_names, "labels": labels_json, "numTraining": num_training,
               "file_ending": ".nii.gz", "name": name,
               "description": "smitunet synthetic dataset: ellipsoids of distinct intensity in noisy tissue",
               "synthetic_parameters": params}, staging / "dataset.json")
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final
