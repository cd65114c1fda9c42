"""Checkpoint adapter: official SMIT wrappings, smitunet checkpoints, adaptations by value, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from smitunet.checkpoint_io import save_checkpoint
from smitunet.errors import SmitunetError
from smitunet.networks import create_network
from smitunet.networks.checkpoint_adapter import adapt_checkpoint, load_pretrained, resize_bias_table
from smitunet.networks.swin_blocks import relative_position_index
from support.paths import shared_path

PATCH = [32, 32, 32]


def _random_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v, generator=g) if "index" not in k else torch.zeros(v, dtype=torch.long))
            for k, v in shapes.items()}


def _wrappings(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    prefixed = {f"module.backbone.{k}": v for k, v in sd.items()}
    return {"flat": sd, "state_dict": {"state_dict": sd, "epoch": 3},
            "student_teacher": {"student": prefixed, "teacher": prefixed, "epoch": 100}}


def _check_official_load(shapes: dict[str, list[int]], tmp_path):
    sd = _random_state(shapes)
    for name, wrapped in _wrappings(sd).items():
        model = create_network("smit_small", 1, 3, PATCH)
        path = tmp_path / f"smit_{name}.pt"
        save_checkpoint(wrapped, path)
        report = load_pretrained(model, path)
        encoder_state = model.encoder.state_dict()
        assert report.missing == [] and report.adapted == []
        assert report.skipped == [["mask_token", "mask token: only used by masked-image pretraining"]]
        assert len(report.loaded) == len(encoder_state) - 1 == report.encoder_tensors
        for key in report.loaded:
            if not key.endswith("relative_position_index"):
                assert torch.equal(encoder_state[key], sd[key]), key
        assert "154/154 (100.0 %)" in report.summary()
        assert json.loads(json.dumps(report.to_dict()))["matched_fraction"] == 1.0


def test_official_wrappings_from_key_file(tmp_path):
    shapes = json.loads(shared_path("smit_keys", "smit_pretrain_keys.json").read_text())
    _check_official_load(shapes, tmp_path)


def test_official_wrappings_from_our_own_layout(tmp_path):
    model = create_network("smit_small", 1, 3, PATCH)
    _check_official_load({k: list(v.shape) for k, v in model.encoder.state_dict().items()}, tmp_path)


def test_teacher_preferred_and_selectable():
    model = create_network("smit_tiny", 1, 2, PATCH)
    teacher = {k: torch.full_like(v, 1.0) for k, v in model.encoder.state_dict().items() if "index" not in k}
    student = {k: torch.full_like(v, 2.0) for k, v in teacher.items()}
    ckpt = {"student": student, "teacher": teacher}
    sd, report = adapt_checkpoint(ckpt, model)
    assert report.wrapping == "teacher" and torch.all(sd["encoder.norm0.weight"] == 1.0)
    sd, report = adapt_checkpoint(ckpt, model, prefer="student")
    assert report.wrapping == "student" and torch.all(sd["encoder.norm0.weight"] == 2.0)


def test_smitunet_training_and_pretraining_checkpoints(tmp_path):
    source = create_network("smit_tiny", 1, 2, PATCH)
    training = {"format": "smitunet", "kind": "training", "version": 1, "state_dict": source.state_dict(),
                "network": {"name": "smit_tiny", "kwargs": {}}, "epoch": 7}
    save_checkpoint(training, tmp_path / "checkpoint_final.pt")
    target = create_network("smit_tiny", 1, 5, PATCH)
    decoder_before = target.up_blocks[0].block.conv1.weight.clone()
    report = load_pretrained(target, tmp_path / "checkpoint_final.pt")
    assert report.matched_fraction == 1.0 and report.wrapping.startswith("smitunet training")
    assert torch.equal(target.encoder.layers[0].blocks[0].attn.qkv.weight,
                       source.encoder.layers[0].blocks[0].attn.qkv.weight)
    assert torch.equal(target.up_blocks[0].block.conv1.weight, decoder_before)
    assert any(r == "decoder/segmentation head: never loaded" for _, r in report.skipped)

    pretraining = {"format": "smitunet", "kind": "pretraining", "version": 1,
                   "encoder": source.encoder.state_dict(), "meta": {"preset": "smit_tiny"}}
    save_checkpoint(pretraining, tmp_path / "smit.pt")
    bare_encoder = create_network("smit_tiny", 1, 2, PATCH).encoder
    report = load_pretrained(bare_encoder, tmp_path / "smit.pt", load_mask_token=True)
    assert report.matched_fraction == 1.0 and "mask_token" in report.loaded
    assert torch.equal(bare_encoder.mask_token, source.encoder.mask_token)


def test_in_channel_adaptation_by_value():
    torch.manual_seed(0)
    source = create_network("smit_tiny", 1, 2, PATCH).eval()
    target = create_network("smit_tiny", 3, 2, PATCH).eval()
    report = load_pretrained(target, source.encoder.state_dict())
    assert ["patch_embed.proj.weight", "input channels 1 -> 3"] in report.adapted
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        expected = source.encoder(x)
        got = target.encoder(x.repeat(1, 3, 1, 1, 1))
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, atol=1e-5)


def test_window_table_resize_keeps_shared_offsets():
    torch.manual_seed(0)
    table = torch.randn(7 ** 3, 2)  # window 4
    bigger, smaller = resize_bias_table(table, (6, 6, 6)), resize_bias_table(table, (3, 3, 3))
    assert bigger.shape == (11 ** 3, 2) and smaller.shape == (5 ** 3, 2)
    # Bias for every pair of positions inside a 3^3 window (offsets shared by all three tables) is unchanged.
    pos = [(z, y, x) for z in range(3) for y in range(3) for x in range(3)]
    def bias(t, window):
        full = relative_position_index(window, window)
        flat = [z * window[1] * window[2] + y * window[2] + x for z, y, x in pos]
        return t[full[flat][:, flat].reshape(-1)]
    original = bias(table, (4, 4, 4))
    assert torch.equal(bias(bigger, (6, 6, 6)), original)
    assert torch.equal(bias(smaller, (3, 3, 3)), original)


def test_window_adaptation_in_network():
    source = create_network("smit_tiny", 1, 2, PATCH)
    target = create_network("smit_tiny", 1, 2, PATCH, window_size=6)
    report = load_pretrained(target, source.encoder.state_dict())
    how = dict(report.adapted)
    assert how["layers.0.blocks.0.attn.relative_position_bias_table"].startswith("relative-position table resized")
    table = target.encoder.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (11 ** 3, 1)
    centre = 5 * 121 + 5 * 11 + 5  # offset (0, 0, 0)
    src_centre = 3 * 49 + 3 * 7 + 3
    assert torch.equal(table[centre], source.encoder.layers[0].blocks[0].attn.relative_position_bias_table[src_centre])


def test_fewer_stages_skip_unused():
    source = create_network("smit_small", 1, 2, PATCH)
    target = create_network("smit_small", 1, 2, [40, 56, 40], num_stages=2,
                            strides=[[2, 2, 2], [2, 2, 2], [2, 2, 2]])
    report = load_pretrained(target, source.encoder.state_dict())
    assert report.matched_fraction == 1.0
    skipped = dict(report.skipped)
    assert skipped["layers.3.blocks.1.mlp.fc1.weight"].startswith("stage 3")
    assert skipped["norm2.weight"].startswith("stage 2")


def test_mismatch_errors_name_tensors_and_partial_threshold():
    small = create_network("smit_small", 1, 2, PATCH).encoder.state_dict()
    ssl = create_network("swinunetr_ssl", 1, 2, [64, 64, 64])
    with pytest.raises(SmitunetError, match=r"head count or embedding width.*relative_position_bias_table"):
        adapt_checkpoint(small, ssl)
    tiny = create_network("smit_tiny", 1, 2, PATCH)
    with pytest.raises(SmitunetError, match=r"patch_embed.norm.weight \(48,\) vs network \(12,\)"):
        adapt_checkpoint({k: v for k, v in small.items() if k.startswith("patch_embed.norm")}, tiny)
    part = {k: v for k, v in tiny.encoder.state_dict().items() if k.startswith(("patch_embed", "layers.0"))}
    with pytest.raises(SmitunetError, match=r"encoder tensors \(\d+ %\) match.*accept_partial"):
        adapt_checkpoint(part, tiny)
    sd, report = adapt_checkpoint(part, tiny, accept_partial=True)
    assert report.matched_fraction < 0.9 and len(report.missing) > 0
    conv = create_network("conv_unet", 1, 2, PATCH)
    with pytest.raises(SmitunetError, match="no SMIT Swin encoder"):
        adapt_checkpoint(part, conv)
    with pytest.raises(SmitunetError, match="checkpoint file not found"):
        adapt_checkpoint("/nonexistent/smit.pt", tiny)


def test_official_finetuning_checkpoint_loads_encoder_only(tmp_path):
    """The official SMIT fine-tuning network: encoder under ``transformer.``, UNETR decoder never loaded."""
    shapes = json.loads(shared_path("smit_keys", "smit_finetune_keys.json").read_text())
    sd = _random_state(shapes, seed=3)
    save_checkpoint({"state_dict": sd}, tmp_path / "smit_finetuned.pt")
    model = create_network("smit_small", 1, 3, PATCH)
    report = load_pretrained(model, tmp_path / "smit_finetuned.pt")
    assert report.matched_fraction == 1.0 and report.missing == []
    skipped = dict(report.skipped)
    assert len(skipped) == len(shapes) - 154
    assert set(skipped.values()) == {"decoder/segmentation head: never loaded"}
    assert torch.equal(model.encoder.norm3.weight, sd["transformer.norm3.weight"])
