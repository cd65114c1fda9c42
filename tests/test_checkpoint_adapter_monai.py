"""Equivalence with a real peer: MONAI's SwinUNETR encoder and ours, given the same weights via the adapter.

Normalisation: MONAI's ``SwinTransformer(normalize=True)`` returns ``layer_norm`` (no affine) of the patch
embedding and of each stage's *merged* output; our encoder's ``forward_intermediates`` gives the raw tensors,
to which the test applies the same parameter-free LayerNorm over channels. (Our ``forward`` instead returns
``norm{i}`` of each stage's blocks before merging, as SMIT does; with MONAI weights those norms are missing
and stay at identity affine, i.e. the same parameter-free LayerNorm.)

Window 4 at a 64^3 input keeps every stage at least as large as the window, so MONAI's relative-position
indexing (first n x n entries of the full index, only right for unclipped windows) is exercised where it is
correct; this proves the key map and the merge order.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smitunet.networks import create_network
from smitunet.networks.checkpoint_adapter import load_pretrained

pytest.importorskip("einops", reason="MONAI SwinUNETR needs einops (test extra)")
monai_swin = pytest.importorskip("monai.networks.nets.swin_unetr")

CONFIG = dict(embed_dim=12, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], window_size=4)


def _monai_encoder(seed: int = 0):
    torch.manual_seed(seed)
    model = monai_swin.SwinTransformer(in_chans=1, embed_dim=12, window_size=(4, 4, 4), patch_size=(2, 2, 2),
                                       depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), qkv_bias=True,
                                       patch_norm=False, downsample="merging", use_v2=False)
    with torch.no_grad():  # LayerNorms at random affine, so a wrong map of any norm would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _ln(t: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(t.permute(0, 2, 3, 4, 1), t.shape[1:2]).permute(0, 4, 1, 2, 3)


@pytest.mark.parametrize("layout", ["swinunetr_full", "model_swinvit"])
def test_monai_swin_encoder_equivalence(layout):
    monai_model = _monai_encoder()
    state = monai_model.state_dict()
    if layout == "swinunetr_full":  # SwinUNETR.state_dict(): swinViT.* with mlp.linear1/2
        checkpoint = {f"swinViT.{k}": v for k, v in state.items()}
        checkpoint["decoder1.conv_block.conv1.conv.weight"] = torch.zeros(2, 2, 3, 3, 3)
    else:  # model_swinvit.pt: {"state_dict": module.layers1.0..., mlp.fc1/fc2, SSL heads}
        sd = {f"module.{k}".replace(".linear1.", ".fc1.").replace(".linear2.", ".fc2."): v for k, v in state.items()}
        sd["module.rotation_head.weight"] = torch.zeros(4, 768)
        checkpoint = {"state_dict": sd}
    ours = create_network("swinunetr_ssl", 1, 2, [64, 64, 64], **CONFIG).eval()
    # This MONAI model merges in MONAI's current order; a bare-encoder file is taken as the legacy self-supervised
    # release unless told otherwise.
    report = load_pretrained(ours, checkpoint, monai_merge="merging")
    assert report.layout == "monai-swinunetr" and report.merge_order == "smit"
    assert sorted(report.missing) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert any("never loaded" in r or "dropped" in r for _, r in report.skipped)

    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        expected = monai_model(x, normalize=True)
        inter = ours.encoder.forward_intermediates(x)
        got = [_ln(inter["embed"])] + [_ln(m) for m in inter["merged"]]
        features = ours.encoder(x)
    assert len(expected) == len(got) == 5
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        assert (e - g).abs().max().item() <= 1e-4
    # forward(): identity-affine norm{i} of the blocks' output equals LayerNorm of the raw blocks output.
    for i, block_out in enumerate(inter["blocks"]):
        assert torch.allclose(features[i], _ln(block_out), atol=1e-5)
    assert torch.allclose(features[4], inter["merged"][3], atol=1e-6)


def test_monai_merge_order_matters():
    """Loading MONAI weights *without* the sub-voxel reorder changes the features: the reorder is needed."""
    from smitunet.networks import checkpoint_layouts

    monai_model = _monai_encoder(seed=1)
    checkpoint = {f"swinViT.{k}": v for k, v in monai_model.state_dict().items()}
    ours = create_network("swinunetr_ssl", 1, 2, [64, 64, 64], **CONFIG).eval()
    load_pretrained(ours, checkpoint)
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        good = ours.encoder.forward_intermediates(x)["merged"][0]
        sd = ours.encoder.state_dict()
        order = checkpoint_layouts._SMIT_ORDER
        for k in ("layers.0.downsample.reduction.weight", "layers.0.downsample.norm.weight"):
            sd[k] = checkpoint_layouts.reorder_merge(sd[k], k, order[:5] + (order[6], order[5], order[7]))
        ours.encoder.load_state_dict(sd)
        bad = ours.encoder.forward_intermediates(x)["merged"][0]
    assert (good - bad).abs().max().item() > 1e-3


class _LegacyMerging(monai_swin.PatchMerging):
    """MONAI's PatchMerging as of v0.9 (the SwinUNETR self-supervised release): slices 6 and 7 repeat 3 and 4."""

    def forward(self, x):
        x0 = x[:, 0::2, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, 0::2, :]
        x3 = x[:, 0::2, 0::2, 1::2, :]
        x4 = x[:, 1::2, 0::2, 1::2, :]
        x5 = x[:, 0::2, 1::2, 0::2, :]
        x6 = x[:, 0::2, 0::2, 1::2, :]
        x7 = x[:, 1::2, 1::2, 1::2, :]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3, x4, x5, x6, x7], -1)))


def test_legacy_monai_ssl_file_loads_with_the_order_it_was_trained_with(tmp_path):
    """model_swinvit.pt was made with the legacy merging: a network planned from the file reproduces MONAI's features
    (legacy gather), while SMIT's gather with any reorder cannot, and loading it there is refused."""
    from smitunet.errors import SmitunetError
    from smitunet.networks.checkpoint_architecture import read_architecture

    monai_model = _monai_encoder(seed=2)
    for layer in (monai_model.layers1, monai_model.layers2, monai_model.layers3, monai_model.layers4):
        layer[0].downsample.__class__ = _LegacyMerging
    checkpoint = {"state_dict": {f"module.{k}".replace(".linear1.", ".fc1.").replace(".linear2.", ".fc2."): v
                                 for k, v in monai_model.state_dict().items()}}
    arch = read_architecture(checkpoint)
    assert arch.merge_order == "monai_legacy" and arch.network_kwargs()["merge_order"] == "monai_legacy"
    ours = create_network("swinunetr_ssl", 1, 2, [64, 64, 64], merge_order="monai_legacy", **CONFIG).eval()
    assert load_pretrained(ours, checkpoint).merge_order == "monai_legacy"
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        expected = monai_model(x, normalize=True)
        inter = ours.encoder.forward_intermediates(x)
        got = [_ln(inter["embed"])] + [_ln(m) for m in inter["merged"]]
    for e, g in zip(expected, got):
        assert (e - g).abs().max().item() <= 1e-4
    smit_order = create_network("swinunetr_ssl", 1, 2, [64, 64, 64], **CONFIG)
    with pytest.raises(SmitunetError, match="legacy patch merging"):
        load_pretrained(smit_order, checkpoint)
    # Read as MONAI's current order instead (the previous default), stage features differ from MONAI's.
    load_pretrained(smit_order, checkpoint, monai_merge="merging")
    with torch.no_grad():
        wrong = _ln(smit_order.eval().encoder.forward_intermediates(x)["merged"][0])
    assert (wrong - expected[1]).abs().max().item() > 1e-2
