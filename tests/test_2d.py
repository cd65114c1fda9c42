"""The ``2d`` configuration (issue 17): planned for every dataset, slices of the 3d_fullres data, a 2D Swin U-Net that
trains, predicts with the input's exact geometry, and takes SMIT 3D weights by value."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smitunet.errors import SmitunetError
from smitunet.networks import create_network
from smitunet.networks.checkpoint_adapter import adapt_checkpoint, load_pretrained
from smitunet.plans import Plans
from smitunet.preprocessing.planner import plan_experiment
from support.planning import DATASET_JSON, fingerprint, make_plans

# Strides of a 3-stage 2D network, and of the 3D network that equals it on a slice repeated twice along depth.
STRIDES_2D = [[2, 2], [2, 2], [2, 2], [1, 2]]
STRIDES_3D = [[2, 2, 2]] + [[1, *s] for s in STRIDES_2D[1:]]


def _plan(fp, **kwargs) -> Plans:
    return plan_experiment("Dataset001_T", DATASET_JSON, fp, preset="smit_tiny", **kwargs)


# -- planning ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, spacing, json_extra", [
    ((36, 50, 35), (1.0, 1.0, 1.0), {}),                                     # small isotropic (Hippocampus-like)
    ((24, 160, 144), (5.0, 0.7, 0.7), {}),                                   # anisotropic MRI
    ((40, 48, 40), (1.0, 1.0, 1.0), {"labels": {"background": 0, "whole": [1, 2], "core": [2]},
                                     "regions_class_order": [1, 2]}),       # regions
])
def test_2d_is_planned_for_every_dataset_and_shares_the_3d_fullres_data(shape, spacing, json_extra):
    plans = plan_experiment("Dataset001_T", {**DATASET_JSON, **json_extra}, fingerprint(shape, spacing),
                            preset="smit_tiny")
    full, flat = plans.configuration("3d_fullres"), plans.configuration("2d")
    assert flat.spatial_dims == 2 and len(flat.patch_size) == 2 and flat.network.kwargs["spatial_dims"] == 2
    assert all(len(s) == 2 for s in flat.network.kwargs["strides"])
    # Same preprocessing, so the same folder: no second copy of the data.
    assert flat.data_identifier == full.data_identifier
    assert (flat.spacing, flat.normalization, flat.use_mask_for_norm) == (full.spacing, full.normalization,
                                                                           full.use_mask_for_norm)
    assert "spatial_dims" not in full.network.kwargs  # 3D kwargs as in every earlier plan
    assert Plans.from_dict(json.loads(json.dumps(plans.to_dict()))) == plans
    net = create_network(flat.network.name, **flat.network.kwargs)
    assert net(torch.zeros(1, 1, *flat.patch_size))[0].shape == (1, plans.num_classes, *flat.patch_size)


def test_anisotropic_dataset_gets_its_2d_patch_from_the_in_plane_median():
    # 5 mm slices of 0.7 mm pixels; in-plane sizes vary, so the median is not any single case's or the mean's.
    fp = fingerprint((20, 200, 180), (5.0, 0.7, 0.7), n=5)
    fp["shapes_after_crop"] = [[20, 140, 260], [22, 150, 250], [18, 190, 170], [24, 200, 150], [20, 130, 240]]
    fp["shapes_before_crop"] = fp["shapes_after_crop"]
    plans = _plan(fp)
    full, flat = plans.configuration("3d_fullres"), plans.configuration("2d")
    assert full.spacing == [5.0, 0.7, 0.7] and full.median_image_shape == [20, 150, 240]
    strides = np.prod(flat.network.kwargs["strides"], axis=0)
    # The in-plane median (150, 240) rounded up to the network's total stride: the whole slice, not 3D's patch.
    assert flat.patch_size == [int(np.ceil(m / s) * s) for m, s in zip([150, 240], strides)] == [160, 256]
    assert flat.batch_size >= 2 and flat.estimated_memory_gb <= 8.0
    # A small memory target shrinks the slice patch (never beyond the in-plane median) and keeps a batch of 2.
    tight = _plan(fp, gpu_memory_target_gb=0.05).configuration("2d")
    assert np.prod(tight.patch_size) < np.prod(flat.patch_size) and tight.batch_size >= 2


def test_plans_without_2d_still_load_and_a_shared_folder_is_read_only_when_preprocessing_matches():
    old = make_plans([1.0, 1.0, 1.0]).to_dict()
    old["version"] = 1  # written before the 2d configuration existed
    assert list(Plans.from_dict(old).configurations) == ["3d_fullres"]
    plans = _plan(fingerprint((36, 50, 35), (1.0, 1.0, 1.0))).to_dict()
    plans["configurations"]["3d_fullres"]["spacing"] = [2.0, 2.0, 2.0]  # a hand edit of one of the two only
    edited = Plans.from_dict(plans, "plans.json")
    assert edited.configuration("3d_fullres").spacing == [2.0, 2.0, 2.0]  # the folder's owner stays usable
    with pytest.raises(SmitunetError, match="2d reads the preprocessed cases of 3d_fullres .* differs from it in "
                                            "spacing") as exc:
        edited.configuration("2d")  # 2d would train on data of another spacing than it predicts with
    assert "\n" not in str(exc.value)
    plans["configurations"]["3d_fullres"]["spacing"] = [1.0, 1.0, 1.0]
    plans["configurations"]["2d"]["spacing"] = [1.0, 1.0, 1.0]
    plans["configurations"]["2d"]["patch_size"] = [16, 16, 16]
    with pytest.raises(SmitunetError, match="2d.patch_size .* is 3D but the network's spatial_dims is 2"):
        Plans.from_dict(plans, "plans.json")


# -- network and pretrained weights --------------------------------------------------------------------

def _smit_3d_encoder_state(seed=0):
    torch.manual_seed(seed)
    net3 = create_network("smit_small", 1, 3, [2, 32, 48], strides=STRIDES_3D, num_stages=3)
    state = net3.encoder.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if key.endswith("relative_position_bias_table"):
                value.normal_()  # not the zero-ish init: the test should see which plane was taken
    net3.encoder.load_state_dict(state)
    return net3, state


def test_smit_3d_checkpoint_adapts_into_2d_by_value_with_a_report():
    net3, state = _smit_3d_encoder_state()
    net2 = create_network("smit_small", 1, 3, [32, 48], strides=STRIDES_2D, num_stages=3, spatial_dims=2)
    adapted, report = adapt_checkpoint(dict(state), net2)
    kernel = adapted["encoder.patch_embed.proj.weight"]
    assert kernel.shape == (48, 1, 2, 2)
    torch.testing.assert_close(kernel, state["patch_embed.proj.weight"].sum(dim=2))
    table3 = state["layers.0.blocks.0.attn.relative_position_bias_table"]  # (7^3, heads), window 4
    plane = table3.reshape(7, 7, 7, -1)[3].reshape(49, -1)                  # zero depth offset
    torch.testing.assert_close(adapted["encoder.layers.0.blocks.0.attn.relative_position_bias_table"], plane)
    torch.testing.assert_close(adapted["encoder.layers.1.downsample.reduction.weight"],
                               state["layers.1.downsample.reduction.weight"])  # merges keep the 3D shape
    how = dict(map(tuple, report.adapted))
    assert how["patch_embed.proj.weight"] == "3D kernel summed over depth"
    assert how["layers.2.blocks.1.attn.relative_position_bias_table"] == "zero-depth-offset plane of the 3D table"
    assert report.matched_fraction == 1.0 and not report.missing
    assert "summed over depth" in report.summary() and "zero-depth-offset plane" in report.summary()
    # By value: the adapted 2D encoder is the 3D one applied to the slice repeated along depth.
    load_pretrained(net2, dict(state))
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        for f2, f3 in zip(net2.encoder(x), net3.encoder(x[:, :, None].repeat(1, 1, 2, 1, 1))):
            torch.testing.assert_close(f2, f3[:, :, 0], rtol=1e-4, atol=1e-5)


def test_a_3d_tensor_without_a_2d_rule_is_skipped_and_reported_the_rest_stays_strict():
    _, state = _smit_3d_encoder_state()
    net2 = create_network("smit_small", 1, 3, [32, 48], strides=STRIDES_2D, num_stages=3, spatial_dims=2)
    odd = dict(state)
    odd["layers.0.blocks.0.attn.relative_position_bias_table"] = torch.zeros(5 * 7 * 7, 4)  # a (3, 4, 4) window
    _, report = adapt_checkpoint(odd, net2)
    assert ["layers.0.blocks.0.attn.relative_position_bias_table",
            "no 2D counterpart for a relative-position table of 245 rows (not a cubic 3D window)"] in report.skipped
    assert report.missing == ["layers.0.blocks.0.attn.relative_position_bias_table"]
    assert "skipped  1 tensor(s): no 2D counterpart" in report.summary()
    wide = dict(state)
    wide["layers.0.blocks.0.attn.qkv.weight"] = torch.zeros(144, 96)  # another width: an error, as in 3D
    with pytest.raises(SmitunetError, match="qkv.weight"):
        adapt_checkpoint(wide, net2)


# -- data, augmentation, sliding window ----------------------------------------------------------------

def test_slice_sampling_oversamples_foreground_and_2d_augmentation_keeps_shapes(tmp_path):
    from smitunet.training.augmentation import AugmentationParams, spatial_mirror_axes, training_transforms
    from smitunet.training.data import PatchLoader, PreprocessedCases
    from support.training import make_preprocessed_dataset

    folder = make_preprocessed_dataset(tmp_path, num_cases=3) / "smitunetPlans_3d_fullres"
    cases = PreprocessedCases(folder, ["tiny_000", "tiny_001", "tiny_002"])
    loader = PatchLoader(cases, [16, 24], global_batch_size=6, sample_indices=range(6), seed=0,
                         oversample_foreground=0.5)
    batch = loader.generate_train_batch()
    assert batch["data"].shape == (6, 1, 16, 24) and batch["seg"].shape == (6, 1, 16, 24)
    assert all((batch["seg"][j] > 0).any() for j in range(3, 6))  # the forced half: a foreground slice each
    # A patch of the whole (y, x) plane is exactly one slice of its case.
    whole = PatchLoader(cases, [24, 20], global_batch_size=2, sample_indices=range(2), seed=1)
    sample = whole.generate_train_batch()
    data = cases.data(sample["keys"][0])
    assert any(np.array_equal(sample["data"][0, 0], data[0, z]) for z in range(data.shape[1]))
    assert spatial_mirror_axes((0, 1, 2), 2) == (0, 1) and spatial_mirror_axes((0, 1, 2), 3) == (0, 1, 2)
    transform = training_transforms([16, 24], [1.0, 1.0, 1.0], AugmentationParams(p_rotation=1.0, p_scale=1.0))
    out = transform(data=np.random.rand(2, 1, 30, 30).astype(np.float32),
                    seg=np.random.randint(0, 3, (2, 1, 30, 30)).astype(np.float32))
    assert tuple(out["data"].shape) == (2, 1, 16, 24) and tuple(out["seg"].shape) == (2, 1, 16, 24)


def test_slice_wise_sliding_window_equals_the_network_slice_by_slice():
    from smitunet.inference.sliding_window import predict_sliding_window

    torch.manual_seed(0)
    net = create_network("smit_tiny", 1, 3, [16, 32], strides=STRIDES_2D, num_stages=3, spatial_dims=2).eval()
    volume = torch.randn(1, 5, 16, 32)
    logits = predict_sliding_window(net, volume, [16, 32], 3, mirror_axes=None, tile_batch_size=2,
                                    use_gaussian=False)
    assert logits.shape == (3, 5, 16, 32)
    with torch.no_grad():
        expected = net(volume[0][:, None])  # (z, 1, y, x): slices as a batch
    torch.testing.assert_close(logits, expected.permute(1, 0, 2, 3), rtol=1e-4, atol=1e-5)
    # Mirroring in 2D flips y and x only (a z flip of one slice would be a wasted pass).
    stats: dict = {}
    out = predict_sliding_window(net, torch.randn(1, 3, 20, 40), [16, 32], 3, mirror_axes=(0, 1, 2), stats=stats)
    assert out.shape == (3, 3, 20, 40)
    assert stats["forward_passes"] == stats["tiles"] * 4


# -- the whole configuration ---------------------------------------------------------------------------

def test_2d_trains_one_short_epoch_and_predicts_with_the_exact_input_geometry(smitunet_dirs, tmp_path):
    from smitunet import api
    from smitunet.dataset.synthetic import generate_synthetic_dataset
    from smitunet.imageio import read_image
    from smitunet.inference.cli import main as predict_main
    from smitunet.training.cli import main as train_main

    # Anisotropic z (3 mm) so that the test data looks like what 2d is for.
    dataset = generate_synthetic_dataset(smitunet_dirs["raw"], num_training=5, num_test=2, shape=(8, 28, 24),
                                         spacing=(3.0, 1.0, 1.0))
    (plans,) = api.plan_and_preprocess([999], preset="smit_tiny", num_processes=1)
    folders = [p.name for p in (smitunet_dirs["preprocessed"] / plans.dataset_name).iterdir() if p.is_dir()]
    assert folders == ["smitunetPlans_3d_fullres"]  # 2d reads the same cases
    train_main(["999", "2d", "0", "--epochs", "1", "--iters_per_epoch", "2", "--num_workers", "0",
                "--device", "cpu", "--disable_tta"])
    fold = smitunet_dirs["results"] / plans.dataset_name / "SMITTrainer__smitunetPlans__2d" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert 0.0 <= summary["foreground_mean"]["dice"] <= 1.0 and len(summary["metric_per_case"]) == 1
    predict_main(["-i", str(dataset / "imagesTs"), "-o", str(tmp_path / "preds"), "-d", "999", "-c", "2d",
                  "--device", "cpu", "--disable_tta", "-npp", "0"])
    for label_file in sorted((dataset / "labelsTs").iterdir()):
        predicted, geometry = read_image(tmp_path / "preds" / label_file.name)
        _, reference = read_image(label_file)
        assert geometry == reference and predicted.shape == reference.shape_zyx
        assert set(np.unique(predicted)) <= {0, 1, 2}
