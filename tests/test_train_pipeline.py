"""End to end on the generated dataset: real preprocessing, then smitunet_train with --pretrained, background
workers, and fold validation at the original geometry against the raw labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smitunet.checkpoint_io import load_checkpoint
from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.imageio import read_image
from smitunet.networks import create_network
from smitunet.plans import Plans
from smitunet.preprocessing.cli import main as preprocess_main
from smitunet.training.cli import main as train_main
from smitunet.training.trainer import SMITTrainer
from smitunet.utils.files import load_json


def test_generated_dataset_pretrained_training_and_validation(smitunet_dirs, tmp_path, capsys):
    raw = generate_synthetic_dataset(smitunet_dirs["raw"], num_training=6, num_test=0, shape=(24, 28, 24))
    preprocess_main(["-d", "999", "--preset", "smit_tiny", "-np", "1"])
    plans = Plans.load(smitunet_dirs["preprocessed"] / raw.name / "smitunetPlans.json")
    net_cfg = plans.configurations["3d_fullres"].network

    # A "pretrained" SMIT checkpoint: a flat encoder state_dict in the official key layout (random weights).
    torch.manual_seed(123)
    donor = create_network(net_cfg.name, **net_cfg.kwargs)
    pretrained = {k: v for k, v in donor.encoder.state_dict().items()}
    torch.save(pretrained, tmp_path / "smit.pt")

    capsys.readouterr()
    train_main(["999", "3d_fullres", "0", "--pretrained", str(tmp_path / "smit.pt"), "--epochs", "1",
                "--iters_per_epoch", "2", "--num_workers", "1", "--npz"])
    out = capsys.readouterr().out
    fold = smitunet_dirs["results"] / raw.name / "SMITTrainer__smitunetPlans__3d_fullres" / "fold_0"
    assert "encoder tensors matched" in out
    report = load_json(fold / "pretrained_report.json")
    assert not report["missing"]

    ckpt = load_checkpoint(fold / "checkpoint_final.pt")
    groups = ckpt["optimizer"]["param_groups"]
    # Layer-wise decay: the patch embedding, then each encoder stage, then the decoder at the full rate.
    stages, decay = net_cfg.kwargs["num_stages"], SMITTrainer.layer_decay
    assert len(groups) == stages + 2
    assert [g["initial_lr"] for g in groups] == pytest.approx(
        [groups[-1]["initial_lr"] * decay ** (stages + 1 - d) for d in range(stages + 2)])
    # Two steps at the encoder's small learning rate: still close to the pretrained weights, not re-initialised.
    key = "patch_embed.proj.weight"
    moved = (ckpt["state_dict"]["encoder." + key] - pretrained[key]).abs().max().item()
    assert 0 < moved < 0.01

    summary = load_json(fold / "validation" / "summary.json")
    assert summary["reference"] == "raw"
    for entry in summary["metric_per_case"]:
        case = entry["case"]
        pred, geometry = read_image(fold / "validation" / f"{case}.nii.gz")
        ref, ref_geometry = read_image(raw / "labelsTr" / f"{case}.nii.gz")
        assert geometry.matches(ref_geometry) is None  # exported at the original geometry
        probs = np.load(fold / "validation" / f"{case}.npz")["probabilities"]
        assert probs.shape == (3, *ref.shape)
        assert np.array_equal(probs.argmax(0), pred)
