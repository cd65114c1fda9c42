"""SMIT Swin U-Net and conv U-Net: official key layout, planner geometries, deep supervision, windows, merges."""

from __future__ import annotations

import json

import pytest
import torch

from smitunet.errors import SmitunetError
from smitunet.networks import create_network, get_preset
from smitunet.networks.swin_blocks import PatchMerging, effective_window, relative_position_index
from smitunet.preprocessing.planner import network_geometry
from support.paths import shared_path

# What the planner produces for the two real examples (checked below against network_geometry).
HIPPOCAMPUS = ([40, 56, 40], [[2, 2, 2], [2, 2, 2], [2, 2, 2]])
CT_EXAMPLE = ([32, 112, 128], [[2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]])  # 122x101x30 voxels at 3 mm


def _official_layout(model) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.encoder.state_dict().items()}


def test_smit_small_encoder_matches_official_key_file():
    reference = json.loads(shared_path("smit_keys", "smit_pretrain_keys.json").read_text())
    model = create_network("smit_small", 1, 3, [64, 64, 64])
    assert _official_layout(model) == reference


def test_smit_small_encoder_layout_core():
    """Same facts without ../shared: 155 tensors, merges for every stage, per-stage norms, no qkv bias."""
    layout = _official_layout(create_network("smit_small", 1, 3, [64, 64, 64]))
    assert len(layout) == 155
    assert layout["mask_token"] == [1, 1, 48]
    assert layout["patch_embed.proj.weight"] == [48, 1, 2, 2, 2] and layout["patch_embed.norm.weight"] == [48]
    for i, dim in enumerate([48, 96, 192, 384]):
        assert layout[f"layers.{i}.downsample.reduction.weight"] == [2 * dim, 8 * dim]
        assert layout[f"layers.{i}.downsample.norm.weight"] == [8 * dim]
        assert layout[f"norm{i}.weight"] == [dim]
        assert layout[f"layers.{i}.blocks.0.attn.relative_position_bias_table"] == [343, 4]
        assert layout[f"layers.{i}.blocks.0.attn.relative_position_index"] == [64, 64]
    assert "layers.2.blocks.3.mlp.fc2.weight" in layout
    assert not any(k.endswith("qkv.bias") for k in layout)


def test_planner_geometries_are_the_ones_tested():
    patch, stages, strides = network_geometry([36, 50, 35], [1.0, 1.0, 1.0], 4)
    assert (patch, strides) == HIPPOCAMPUS and stages == 2
    patch, stages, strides = network_geometry([30, 101, 122], [3.0, 3.0, 3.0], 4)
    assert (patch, strides) == CT_EXAMPLE and stages == 3


@pytest.mark.parametrize("geometry,classes,batch,deep_supervision", [
    (HIPPOCAMPUS, 3, 2, False), (HIPPOCAMPUS, 3, 2, True),
    (CT_EXAMPLE, 41, 1, True),  # big patch: trained with deep supervision, then run without it (below)
])
def test_smit_forward_backward_planner_patches(geometry, classes, batch, deep_supervision):
    patch, strides = geometry
    torch.manual_seed(0)
    model = create_network("smit_tiny", 1, classes, patch, num_stages=len(strides) - 1, strides=strides,
                           deep_supervision=deep_supervision)
    x = torch.randn(batch, 1, *patch)
    out = model(x)
    outputs = out if deep_supervision else [out]
    assert outputs[0].shape == (batch, classes, *patch)
    if deep_supervision:
        scales = model.deep_supervision_scales()
        assert len(scales) == len(outputs) == len(strides) - 1
        for o, s in zip(outputs, scales):
            assert list(o.shape[2:]) == [round(p * f) for p, f in zip(patch, s)]
    sum(o.float().mean() for o in outputs).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    model.deep_supervision = False
    with torch.no_grad():
        assert model(x).shape == (batch, classes, *patch)


def test_conv_unet_baseline_forward_backward():
    patch, strides = HIPPOCAMPUS
    model = create_network("conv_unet", 2, 3, patch, num_stages=2, strides=strides, deep_supervision=True,
                           base_features=8)
    out = model(torch.randn(1, 2, *patch))
    assert [tuple(o.shape[2:]) for o in out] == [(40, 56, 40), (20, 28, 20), (10, 14, 10)]
    assert model.deep_supervision_scales() == [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
    sum(o.mean() for o in out).backward()
    assert not hasattr(model, "encoder")


def test_batch_norm_option_and_patch_embedding_stride_one_axis():
    model = create_network("smit_tiny", 1, 2, [8, 32, 32], num_stages=2,
                           strides=[[1, 2, 2], [2, 2, 2], [1, 2, 2]], norm="batch")
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
    assert model(torch.randn(2, 1, 8, 32, 32)).shape == (2, 2, 8, 32, 32)


def test_window_clipped_where_feature_map_is_smaller():
    assert effective_window((2, 8, 3), (4, 4, 4), (2, 2, 2)) == ((2, 4, 3), (0, 2, 0))
    assert effective_window((4, 5, 5), (4, 4, 4), (2, 2, 2)) == ((4, 4, 4), (0, 2, 2))
    # A clipped window indexes the configured table with the same offsets as the full window would.
    full, clipped = relative_position_index((4, 4, 4), (4, 4, 4)), relative_position_index((2, 3, 4), (4, 4, 4))
    coords = [(z, y, x) for z in range(2) for y in range(3) for x in range(4)]
    flat = [z * 16 + y * 4 + x for z, y, x in coords]
    assert torch.equal(clipped, full[flat][:, flat])
    # and the network runs where the deepest stage (2x2x2) is smaller than the window
    model = create_network("smit_tiny", 1, 2, [32, 32, 32], num_stages=3)
    assert model(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


def test_stride_one_merge_equals_duplicated_voxels():
    """Along a stride-1 axis both sub-voxel offsets read the same voxel (pretrained Linear(8C->2C) kept)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 6, 8)
    merge_1 = PatchMerging(8, (1, 2, 2))
    merge_2 = PatchMerging(8, (2, 2, 2))
    merge_2.load_state_dict(merge_1.state_dict())
    expected = merge_2(x.repeat_interleave(2, dim=1))
    got = merge_1(x)
    assert got.shape == (1, 3, 2, 3, 16)
    assert torch.allclose(got, expected, atol=1e-6)


def test_mask_replaces_patch_tokens_with_mask_token():
    model = create_network("smit_tiny", 1, 2, [32, 32, 32], num_stages=4)
    encoder = model.encoder.eval()
    x = torch.randn(2, 1, 32, 32, 32)
    mask = torch.zeros(2, 16 ** 3, dtype=torch.bool)
    mask[0, :100] = True
    with torch.no_grad():
        plain, masked = encoder.embed(x), encoder.embed(x, mask)
        tokens = masked.reshape(2, -1, 12)
        assert torch.equal(tokens[0, :100], encoder.mask_token[0].expand(100, -1))
        assert torch.equal(tokens[0, 100:], plain.reshape(2, -1, 12)[0, 100:])
        assert torch.equal(masked[1], plain[1])
        features = encoder(x, mask)
    assert [f.shape[1] for f in features] == [12, 24, 48, 96, 192]
    with pytest.raises(ValueError, match="mask must be"):
        encoder(x, torch.zeros(2, 10, dtype=torch.bool))


def test_presets_and_factory_errors():
    preset = get_preset("smit_small")
    preset["depths"].append(99)
    assert get_preset("smit_small")["depths"] == [2, 2, 4, 2]
    assert get_preset("swinunetr_ssl")["num_heads"] == [3, 6, 12, 24]
    with pytest.raises(SmitunetError, match="unknown network preset"):
        create_network("smit_huge", 1, 2, [32, 32, 32])
    with pytest.raises(SmitunetError, match="not divisible"):
        create_network("smit_tiny", 1, 2, [40, 56, 40])
    with pytest.raises(SmitunetError, match="unknown setting"):
        create_network("smit_tiny", 1, 2, [32, 32, 32], colour="blue")
    with pytest.raises(SmitunetError, match="num_heads"):
        create_network("smit_tiny", 1, 2, [32, 32, 32], num_heads=[5, 2, 2, 4])
    with pytest.raises(SmitunetError, match="strides"):
        create_network("smit_tiny", 1, 2, [32, 32, 32], num_stages=2, strides=[[2, 2, 2], [3, 2, 2], [2, 2, 2]])


def test_light_decoder_projects_skips_and_plans_record_it():
    from smitunet.networks.blocks import Projection
    from smitunet.preprocessing.planner import plan_experiment
    from support.planning import DATASET_JSON, fingerprint

    kwargs = dict(num_stages=2, strides=[[2, 2, 2], [2, 2, 2], [2, 2, 2]], deep_supervision=True)
    light = create_network("smit_tiny", 1, 3, [32, 32, 32], decoder="light", **kwargs)
    res = create_network("smit_tiny", 1, 3, [32, 32, 32], **kwargs)
    assert isinstance(light.input_block, Projection) and all(isinstance(b, Projection) for b in light.skip_blocks)
    assert all(m.kernel_size == (1, 1, 1) for b in light.skip_blocks for m in b.modules() if isinstance(m, torch.nn.Conv3d))
    assert sum(p.numel() for p in light.parameters()) < sum(p.numel() for p in res.parameters())
    outputs = light(torch.randn(1, 1, 32, 32, 32))
    assert [tuple(o.shape) for o in outputs][0] == (1, 3, 32, 32, 32)
    # the encoder is the same: SMIT checkpoints load into either decoder
    assert light.encoder.state_dict().keys() == res.encoder.state_dict().keys()
    plans = plan_experiment("D", DATASET_JSON, fingerprint([36, 50, 35], [1, 1, 1]), preset="smit_tiny", decoder="light")
    assert plans.configuration("3d_fullres").network.kwargs["decoder"] == "light"
    with pytest.raises(SmitunetError, match="decoder must be 'res' or 'light'"):
        create_network("smit_tiny", 1, 3, [32, 32, 32], decoder="heavy", **kwargs)
