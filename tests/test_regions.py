"""Region-based training (nnU-Net v2's ``"whole": [1, 2, 3]`` labels with ``regions_class_order``): sigmoid
outputs with Dice + BCE, export by painting the thresholded regions in order, evaluation per region."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smitunet.dataset.raw import load_dataset_json
from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.errors import SmitunetError
from smitunet.imageio import read_image
from smitunet.inference.export import probabilities_to_labels, regions_to_labels
from smitunet.plans import Plans
from smitunet.training.losses import RegionDiceBCELoss
from smitunet.utils.files import load_json, save_json
from support.planning import make_plans

REGIONS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
ORDER = [1, 2, 3]


def _region_plans() -> Plans:
    d = make_plans([1.0, 1.0, 1.0]).to_dict()
    d.update(labels=dict(REGIONS), regions_class_order=list(ORDER))
    return Plans.from_dict(d)


def _write_dataset_json(folder, **extra):
    save_json({"channel_names": {"0": "MRI"}, "labels": REGIONS, "numTraining": 1, "file_ending": ".nii.gz", **extra},
              folder / "dataset.json")


def test_dataset_json_accepts_regions_with_their_class_order(tmp_path):
    _write_dataset_json(tmp_path, regions_class_order=ORDER)
    assert load_dataset_json(tmp_path)["labels"]["core"] == [2, 3]
    for bad in (None, [1, 2], [1, 2, "3"]):
        _write_dataset_json(tmp_path, **({} if bad is None else {"regions_class_order": bad}))
        with pytest.raises(SmitunetError, match="regions_class_order"):
            load_dataset_json(tmp_path)


def test_region_plans_have_one_sigmoid_output_per_region():
    plans = _region_plans()
    assert plans.has_regions and plans.num_classes == 3  # no background channel
    assert plans.foreground_labels == [1, 2, 3]  # oversampling centres on any labelled voxel
    assert plans.evaluated_labels == [(1, 2, 3), (2, 3), (3,)]
    assert plans.evaluated_names == ["whole", "core", "enhancing"]
    assert plans.export_labels == {"background": 0, "whole": 1, "core": 2, "enhancing": 3}
    d = plans.to_dict()
    d["regions_class_order"] = None
    with pytest.raises(SmitunetError, match="regions_class_order"):
        Plans.from_dict(d)
    assert make_plans([1.0, 1.0, 1.0]).regions_class_order is None  # label plans are unchanged


def test_regions_are_painted_in_order_by_value():
    # voxel:      0     1     2     3     4
    whole = [0.9, 0.9, 0.9, 0.2, 0.6]
    core = [0.1, 0.7, 0.8, 0.9, 0.4]
    enhancing = [0.0, 0.2, 0.51, 0.9, 0.5]  # 0.5 itself is not above the threshold
    p = np.array([whole, core, enhancing], np.float32)[:, None, None, :]
    assert regions_to_labels(p, [1, 2, 3])[0, 0].tolist() == [1, 2, 3, 3, 1]
    # the order decides who wins an overlap: painting "whole" last covers the inner regions
    assert regions_to_labels(p[[1, 2, 0]], [2, 3, 1])[0, 0].tolist() == [1, 1, 1, 3, 1]


def test_region_export_restores_the_crop_with_background_outside():
    plans = _region_plans()
    p = np.zeros((3, 2, 2, 2), np.float32)
    p[:, 0] = 0.9  # slice 0: all three regions -> 3; slice 1: none -> 0
    properties = {"bbox_used_for_cropping": [[1, 3], [0, 2], [0, 2]],
                  "shape_after_cropping_before_resampling": [2, 2, 2], "shape_before_cropping": [4, 2, 2], "spacing_original": [1.0, 1.0, 1.0],
                  "spacing_target": [1.0, 1.0, 1.0]}
    expected = np.zeros((4, 2, 2), np.uint8)
    expected[1] = 3
    for keep in (False, True):  # the label-map path and the probability-restoring path
        labels, restored = probabilities_to_labels(p, properties, plans, "3d_fullres", keep)
        assert np.array_equal(labels, expected)
    assert restored[:, 0].max() == 0.0  # outside the crop no region is present (no background channel)


def test_region_dice_bce_by_value():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 4, 3, generator=g)
    target = torch.randint(0, 5, (2, 1, 5, 4, 3), generator=g)  # 4 = ignore
    regions = [(1, 2, 3), (2, 3), (3,)]
    loss = RegionDiceBCELoss(regions, ignore_label=4)(logits, target)
    expected = []
    for b in range(2):
        keep = target[b, 0] != 4
        x = logits[b][:, keep]                              # (R, N) annotated voxels only
        t = torch.stack([torch.isin(target[b, 0][keep], torch.tensor(r)) for r in regions]).float()
        bce = F.binary_cross_entropy_with_logits(x, t)
        s = torch.sigmoid(x)
        dice = (2 * (s * t).sum(1) + 1e-5) / (s.sum(1) + t.sum(1) + 1e-5)
        expected.append(bce + 1 - dice.mean())
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)


def test_region_dataset_trains_predicts_and_is_evaluated_per_region(smitunet_dirs, tmp_path):
    from smitunet import api
    from smitunet.inference.predictor import PredictionOptions
    from smitunet.preprocessing.cli import main as preprocess_main
    from smitunet.training.cli import main as train_main

    raw = generate_synthetic_dataset(smitunet_dirs["raw"], num_training=4, num_test=1, shape=(20, 24, 20),
                                     num_structures=3)
    dj = load_json(raw / "dataset.json")
    dj.update(labels=dict(REGIONS), regions_class_order=ORDER)
    save_json(dj, raw / "dataset.json")

    preprocess_main(["-d", "999", "--preset", "smit_tiny", "-np", "1"])
    plans = Plans.load(smitunet_dirs["preprocessed"] / raw.name / "smitunetPlans.json")
    assert plans.regions_class_order == ORDER
    assert plans.configurations["3d_fullres"].network.kwargs["num_classes"] == 3

    train_main(["999", "3d_fullres", "0", "--epochs", "1", "--iters_per_epoch", "2", "--num_workers", "0",
                "--disable_tta"])
    fold = smitunet_dirs["results"] / raw.name / "SMITTrainer__smitunetPlans__3d_fullres" / "fold_0"
    summary = load_json(fold / "validation" / "summary.json")
    assert list(summary["mean"]) == ["1,2,3", "2,3", "3"]  # one entry per region
    header = (fold / "metrics.csv").read_text().splitlines()[0].split(",")
    assert [h for h in header if h.startswith("pseudo_dice_")] == \
        ["pseudo_dice_whole", "pseudo_dice_core", "pseudo_dice_enhancing"]  # pseudo Dice per region

    api.predict(raw / "imagesTs", tmp_path / "pred", dataset=999, folds=["0"],
                options=PredictionOptions(use_tta=False, device="cpu"))
    pred = read_image(tmp_path / "pred" / "test_000.nii.gz")[0]
    assert set(np.unique(pred).tolist()) <= {0, 1, 2, 3}
    result = api.evaluate(raw / "labelsTs", tmp_path / "pred", labels=[(1, 2, 3), (2, 3), 3])
    assert result["labels"] == ["1,2,3", "2,3", "3"]
    ref = read_image(raw / "labelsTs" / "test_000.nii.gz")[0]
    whole_p, whole_r = pred > 0, ref > 0
    dice = 2 * (whole_p & whole_r).sum() / (whole_p.sum() + whole_r.sum())
    assert result["mean"]["1,2,3"]["dice"] == pytest.approx(dice)


def test_pseudo_dice_counts_per_region():
    from smitunet.training.losses import DeepSupervisionLoss
    from smitunet.training.trainer import Trainer, TrainingOptions

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g)
    target = torch.randint(0, 4, (2, 1, 4, 4, 4), generator=g)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    trainer = Trainer.__new__(Trainer)  # only what validation_step reads
    trainer.plans, trainer.device, trainer.network = _region_plans(), torch.device("cpu"), Fixed()
    trainer.options = TrainingOptions()  # the default precision (autocast)
    trainer.loss = DeepSupervisionLoss(RegionDiceBCELoss(list(trainer.plans.foreground_regions.values())))
    _, stats = trainer.validation_step({"data": torch.zeros(2, 1, 4, 4, 4), "seg": target})
    core_p, core_r = logits[:, 1] > 0, torch.isin(target[:, 0], torch.tensor([2, 3]))
    assert stats[:, 1].tolist() == [(core_p & core_r).sum().item(), (core_p & ~core_r).sum().item(),
                                    (~core_p & core_r).sum().item()]


def test_region_targets_keep_their_raw_values():
    from smitunet.training.trainer import Trainer

    d = make_plans([1.0, 1.0, 1.0]).to_dict()
    d.update(labels={"background": 0, "whole": [1, 2, 4], "core": [1, 4], "enhancing": [4]},
             regions_class_order=[2, 1, 4])  # BraTS's values: no 3
    trainer = Trainer.__new__(Trainer)
    trainer.plans = Plans.from_dict(d)
    assert trainer.label_map() is None  # a softmax lookup would turn 4 into 3 and empty the "enhancing" region
