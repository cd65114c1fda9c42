"""Planner: spacing rule, Swin stage layout per axis, memory-driven patch and batch, 3d_lowres, plans JSON."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smitunet.networks.registry import create_network
from smitunet.plans import Plans
from smitunet.preprocessing.planner import (axis_merges, network_geometry, plan_experiment, stage_layout,
                                            target_spacing)
from support.planning import DATASET_JSON, fingerprint


def total_strides(strides):
    return [int(np.prod([s[a] for s in strides])) for a in range(3)]


def test_target_spacing_median_and_anisotropy_rule():
    assert target_spacing([[1, 1, 1], [1.2, 1, 1], [0.8, 1, 1]], [[30, 40, 40]] * 3) == [1.0, 1.0, 1.0]
    # Thick slices (5 mm vs 0.8 mm) with few slices: the coarse axis takes its 10th percentile.
    spacings = [[5.0, 0.8, 0.8]] * 8 + [[2.5, 0.8, 0.8]] * 2
    assert target_spacing(spacings, [[30, 512, 512]] * 10)[0] == pytest.approx(np.percentile([5.0] * 8 + [2.5] * 2, 10))
    # Anisotropic spacing but many slices: plain median.
    assert target_spacing(spacings, [[400, 512, 512]] * 10)[0] == 5.0


def test_small_axes_stop_merging_instead_of_padding():
    assert [axis_merges(s, 4) for s in (35, 50, 36, 16, 7, 128)] == [2, 2, 2, 1, 0, 4]
    patch, stages, strides = network_geometry([36, 50, 35], [1, 1, 1], max_stages=4)
    assert patch == [40, 56, 40] and stages == 2 and total_strides(strides) == [8, 8, 8]
    patch, stages, strides = network_geometry([30, 101, 122], [3, 3, 3], max_stages=4)
    assert patch == [32, 112, 128] and total_strides(strides) == [4, 16, 16] and stages == 3
    # Thick slices (4 mm vs 1 mm): z is merged only once the fine axes are within 2x of it (nnU-Net's rule).
    _, _, strides = network_geometry([40, 256, 256], [4.0, 1.0, 1.0], max_stages=4)
    assert [s[0] for s in strides[1:]] == [1, 2, 2, 1] and [s[1] for s in strides[1:]] == [2, 2, 2, 2]


def test_stage_layout_clips_windows_to_small_feature_maps():
    layout = stage_layout([40, 56, 40], [[2, 2, 2], [2, 2, 2], [2, 2, 2]], 4)
    assert [s["feature_size"] for s in layout] == [[20, 28, 20], [10, 14, 10], [5, 7, 5]]
    layout = stage_layout([16, 32, 32], [[2, 2, 2], [2, 2, 2], [1, 2, 2]], 7)
    assert layout[1]["window"] == [4, 7, 7]


def test_hippocampus_like_plan_and_network_builds_from_it(tmp_path):
    plans = plan_experiment("Dataset004_H", DATASET_JSON, fingerprint([36, 50, 35], [1, 1, 1], n=160),
                            preset="smit_tiny")
    c = plans.configuration("3d_fullres")
    assert c.spacing == [1.0, 1.0, 1.0] and c.patch_size == [40, 56, 40]
    assert c.batch_size >= 2 and "3d_lowres" not in plans.configurations
    assert c.normalization == ["ZScore"] and c.use_mask_for_norm == [False]
    kw = c.network.kwargs
    assert c.network.name == "smit_tiny" and kw["patch_size"] == c.patch_size and kw["deep_supervision"] is True
    assert kw["in_channels"] == 1 and kw["num_classes"] == 3 and len(kw["strides"]) == kw["num_stages"] + 1
    for key in ("embed_dim", "depths", "num_heads", "window_size"):
        assert key in kw
    plans.save(tmp_path / "plans.json")
    loaded = Plans.load(tmp_path / "plans.json")
    assert loaded == plans
    net = create_network(loaded.configuration("3d_fullres").network.name, **loaded.configuration("3d_fullres").network.kwargs)
    net.deep_supervision = False
    with torch.no_grad():
        out = net(torch.zeros(1, 1, *c.patch_size))
    assert tuple(out.shape) == (1, 3, *c.patch_size)


def test_batch_is_capped_at_five_percent_of_the_dataset_but_at_least_two():
    few = plan_experiment("D", DATASET_JSON, fingerprint([36, 50, 35], [1, 1, 1], n=10), preset="smit_tiny")
    many = plan_experiment("D", DATASET_JSON, fingerprint([36, 50, 35], [1, 1, 1], n=400), preset="smit_tiny")
    assert few.configuration("3d_fullres").batch_size == 2
    patch = np.prod(many.configuration("3d_fullres").patch_size)
    assert many.configuration("3d_fullres").batch_size == int(0.05 * 400 * 36 * 50 * 35 / patch)


def test_memory_target_shrinks_the_patch_and_large_images_get_3d_lowres():
    fp = fingerprint([112, 112, 112], [1, 1, 1], n=20)
    big = plan_experiment("D", DATASET_JSON, fp, preset="smit_tiny", gpu_memory_target_gb=8)
    small = plan_experiment("D", DATASET_JSON, fp, preset="smit_tiny", gpu_memory_target_gb=0.2)
    pb, ps = big.configuration("3d_fullres"), small.configuration("3d_fullres")
    assert np.prod(ps.patch_size) < np.prod(pb.patch_size)
    assert pb.patch_size == [112, 112, 112] and ps.estimated_memory_gb <= 0.2
    for c in (pb, ps):
        assert all(p % t == 0 for p, t in zip(c.patch_size, total_strides(c.network.kwargs["strides"])))
    assert "3d_lowres" not in big.configurations
    assert np.prod(ps.patch_size) < 0.25 * 112 ** 3  # so a low-resolution configuration is planned
    low = small.configuration("3d_lowres")
    assert low.spacing[0] > 1.0 and low.data_identifier == "smitunetPlans_3d_lowres"
    assert np.prod(low.patch_size) >= 0.2 * np.prod(low.median_image_shape)


def test_ct_channel_gets_ct_normalization_and_cropped_mri_uses_the_mask():
    ct = dict(DATASET_JSON, channel_names={"0": "CT"})
    plans = plan_experiment("D", ct, fingerprint([30, 101, 122], [3, 3, 3], n=1), preset="smit_tiny")
    assert plans.configuration("3d_fullres").normalization == ["CT"]
    assert plans.configuration("3d_fullres").use_mask_for_norm == [False]
    mri = plan_experiment("D", DATASET_JSON, fingerprint([30, 40, 40], [1, 1, 1], relative=0.5), preset="smit_tiny")
    assert mri.configuration("3d_fullres").use_mask_for_norm == [True]


def test_unknown_preset_is_a_clear_error():
    from smitunet.errors import SmitunetError

    with pytest.raises(SmitunetError, match="unknown network preset 'nope'"):
        plan_experiment("D", DATASET_JSON, fingerprint([30, 40, 40], [1, 1, 1]), preset="nope")
