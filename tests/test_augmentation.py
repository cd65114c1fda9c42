"""Augmentation pipeline (batchgenerators) and the patch loader: shapes, labels, oversampling, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smitunet.training.augmentation import (AugmentationParams, rotation_angles, sampling_patch_size,
                                            training_transforms)
from smitunet.training.batches import BatchStream
from smitunet.training.data import PatchLoader, PreprocessedCases, crop_with_padding
from support.training import CONFIG, PATCH, make_preprocessed_dataset


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = make_preprocessed_dataset(tmp_path_factory.mktemp("pre"), num_cases=4)
    data_dir = folder / f"smitunetPlans_{CONFIG}"
    return PreprocessedCases(data_dir, [f"tiny_{i:03d}" for i in range(4)])


def test_sampling_patch_covers_rotation_and_zoom():
    params = AugmentationParams()
    iso = sampling_patch_size([16, 16, 16], rotation_angles([1, 1, 1], params), params.scale_range)
    assert all(s > 16 * 1.4 for s in iso)  # rotated by 30 degrees and zoomed out by 1.4
    aniso_angles = rotation_angles([5.0, 1.0, 1.0], params)
    assert aniso_angles[1] == (0.0, 0.0) and aniso_angles[2] == (0.0, 0.0) and aniso_angles[0][1] > 0
    aniso = sampling_patch_size([4, 32, 32], aniso_angles, params.scale_range)
    assert aniso[0] == int(np.ceil(4 * 1.4))  # in-plane rotation leaves the coarse axis alone


def test_crop_with_padding_fills_outside_with_zero():
    a = np.arange(27, dtype=np.float32).reshape(1, 3, 3, 3) + 1
    out = crop_with_padding(a, np.array([-1, 0, 1]), [3, 3, 3])
    assert out.shape == (1, 3, 3, 3)
    assert np.all(out[0, 0] == 0) and np.all(out[0, :, :, 2] == 0)
    assert np.array_equal(out[0, 1:, :, :2], a[0, :2, :, 1:])


def test_augmented_batch_shapes_and_labels(cases):
    params = AugmentationParams(p_rotation=1.0, p_scale=1.0)
    patch = sampling_patch_size(PATCH, rotation_angles([1, 1, 1], params), params.scale_range)
    loader = PatchLoader(cases, patch, 3, [0, 1, 2], seed=0)
    batch = training_transforms(PATCH, [1, 1, 1], params)(**loader.generate_train_batch())
    assert batch["data"].shape == (3, 1, *PATCH) and batch["seg"].shape == (3, 1, *PATCH)
    assert isinstance(batch["data"], torch.Tensor) and torch.isfinite(batch["data"]).all()
    assert set(batch["seg"].unique().tolist()) <= {0.0, 1.0, 2.0}


def test_foreground_oversampling_share(cases):
    loader = PatchLoader(cases, [8, 8, 8], 3, [0, 1, 2], seed=1, oversample_foreground=1 / 3)
    forced_fg, free_fg = [], []
    for _ in range(40):
        seg = loader.generate_train_batch()["seg"]
        forced_fg.append(bool((seg[2] > 0).any()))          # the last third of the batch is forced
        free_fg.extend(bool((s > 0).any()) for s in seg[:2])
    assert all(forced_fg)
    assert np.mean(free_fg) < 0.95  # random placement misses the small objects sometimes
    assert loader.num_forced == 1


def test_batches_depend_only_on_seed_and_index(cases):
    """Same stream with 0 and 2 background workers (augmentation on), and shards add up to the global batch."""
    transform = training_transforms(PATCH, [1, 1, 1], AugmentationParams(p_rotation=1.0, p_scale=1.0))
    patch = sampling_patch_size(PATCH, rotation_angles([1, 1, 1], AugmentationParams()), (0.7, 1.4))

    def first_batches(workers):
        loader = PatchLoader(cases, patch, 2, [0, 1], seed=3, start_batch=5, num_workers=workers)
        stream = BatchStream(loader, transform, workers)
        try:
            return [next(stream) for _ in range(4)]
        finally:
            stream.close()

    inproc, workers = first_batches(0), first_batches(2)
    for a, b in zip(inproc, workers):
        assert a["batch_index"] == b["batch_index"]
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["seg"], b["seg"])
    assert [b["batch_index"] for b in inproc] == [5, 6, 7, 8]

    whole = PatchLoader(cases, PATCH, 2, [0, 1], seed=3).generate_train_batch()
    parts = [PatchLoader(cases, PATCH, 2, [j], seed=3).generate_train_batch() for j in (0, 1)]
    assert np.array_equal(whole["data"], np.concatenate([p["data"] for p in parts]))
    assert np.array_equal(whole["seg"], np.concatenate([p["seg"] for p in parts]))


def test_non_consecutive_label_values_map_to_channels(cases):
    from smitunet.training.data import label_index_map

    assert label_index_map([0, 1, 2]) is None
    lookup = label_index_map([0, 4, 2])
    assert lookup[[0, 2, 4]].tolist() == [0, 1, 2]
    loader = PatchLoader(cases, PATCH, 2, [0, 1], seed=0, label_map=label_index_map([0, 1, 2]))
    assert set(np.unique(loader.generate_train_batch()["seg"])) <= {0, 1, 2}
