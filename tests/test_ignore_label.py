"""The ignore label (nnU-Net v2's ``"ignore"``, the highest label value): no loss, no metric, no oversampling,
never predicted. By value where possible; one short end-to-end run on a mostly-ignored generated dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smitunet.dataset.raw import load_dataset_json
from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.errors import SmitunetError
from smitunet.evaluation.cli import main as evaluate_main
from smitunet.evaluation.metrics import case_metrics
from smitunet.evaluation.postprocessing import determine_postprocessing
from smitunet.imageio import Geometry, read_image, write_image
from smitunet.inference.export import label_lookup
from smitunet.plans import Plans
from smitunet.preprocessing.store import class_locations
from smitunet.training.data import PreprocessedCases, sample_patch
from smitunet.training.losses import DeepSupervisionLoss, DiceCELoss
from smitunet.training.trainer import Trainer, TrainingOptions
from smitunet.utils.files import load_json, save_json, save_npy, save_npz
from support.planning import make_plans

IGNORE = 3  # labels 0, 1, 2 and "ignore": 3


def _plans_with_ignore() -> Plans:
    plans = make_plans([1.0, 1.0, 1.0], labels=3)
    d = plans.to_dict()
    d["labels"] = {**d["labels"], "ignore": IGNORE}
    return Plans.from_dict(d)


# -- schema ------------------------------------------------------------------------------------------------
def _write_dataset_json(folder, labels):
    save_json({"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"},
              folder / "dataset.json")


def test_dataset_json_accepts_ignore_as_highest_label_only(tmp_path):
    _write_dataset_json(tmp_path, {"background": 0, "a": 1, "ignore": 2})
    assert load_dataset_json(tmp_path)["labels"]["ignore"] == 2
    _write_dataset_json(tmp_path, {"background": 0, "ignore": 1, "a": 2})
    with pytest.raises(SmitunetError, match="'ignore'.*highest"):
        load_dataset_json(tmp_path)


def test_plans_do_not_count_ignore_as_a_class():
    plans = _plans_with_ignore()
    assert plans.ignore_label == IGNORE
    assert plans.num_classes == 3 and plans.foreground_labels == [1, 2]
    assert IGNORE not in label_lookup(plans)  # an export can never write the ignore value
    assert make_plans([1.0, 1.0, 1.0], labels=3).ignore_label is None
    d = plans.to_dict()
    d["labels"] = {"background": 0, "ignore": 1, "a": 2}
    with pytest.raises(SmitunetError, match="highest"):
        Plans.from_dict(d)


# -- loss --------------------------------------------------------------------------------------------------
def _batch(seed=0, shape=(2, 3, 6, 5, 4)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g)
    target = torch.randint(0, 3, (shape[0], 1, *shape[2:]), generator=g)
    ignored = torch.rand((shape[0], 1, *shape[2:]), generator=g) < 0.6
    return logits, torch.where(ignored, torch.full_like(target, IGNORE), target), ignored


def test_dice_ce_with_ignore_equals_dice_ce_over_the_annotated_voxels_only():
    logits, target, ignored = _batch()
    loss = DiceCELoss(ignore_label=IGNORE)(logits, target)
    by_hand = []
    for b in range(logits.shape[0]):
        keep = ~ignored[b, 0]
        # the annotated voxels of sample b as a (1, K, N, 1, 1) "image": nothing ignored any more
        sample_logits = logits[b][:, keep][None, :, :, None, None]
        sample_target = target[b, 0][keep][None, None, :, None, None]
        by_hand.append(DiceCELoss()(sample_logits, sample_target))
    assert loss.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-6)
    # and it is not the plain loss with "ignore" treated as anything else
    assert loss.item() != pytest.approx(DiceCELoss()(logits, target.clamp(max=2)).item(), rel=1e-3)


def test_loss_does_not_depend_on_outputs_or_labels_at_ignored_voxels():
    logits, target, ignored = _batch(seed=1)
    loss_fn = DiceCELoss(ignore_label=IGNORE)
    logits.requires_grad_(True)
    loss = loss_fn(logits, target)
    loss.backward()
    assert logits.grad.abs().amax(1, keepdim=True)[ignored].max().item() == 0.0  # no gradient there
    changed = torch.where(ignored, torch.randn_like(logits) * 10, logits.detach())
    assert loss_fn(changed, target).item() == pytest.approx(loss.item(), rel=1e-6)


def test_a_fully_ignored_sample_adds_nothing():
    logits, target, _ = _batch(seed=2)
    target[1] = IGNORE
    loss_fn = DiceCELoss(ignore_label=IGNORE)
    both = loss_fn(logits, target)
    assert torch.isfinite(both)
    assert both.item() == pytest.approx(loss_fn(logits[:1], target[:1]).item() / 2, rel=1e-6)


def test_deep_supervision_keeps_ignoring_on_every_level():
    logits, target, ignored = _batch(seed=3, shape=(1, 3, 8, 8, 8))
    low = torch.randn(1, 3, 4, 4, 4)
    loss_fn = DeepSupervisionLoss(DiceCELoss(ignore_label=IGNORE), weights=[0.5, 0.5])
    base = loss_fn([logits, low], target)
    low_target = target[:, :, ::2, ::2, ::2]  # nearest downsampling by 2 picks these voxels
    low_changed = torch.where(low_target == IGNORE, torch.randn_like(low) * 10, low)
    assert loss_fn([logits, low_changed], target).item() == pytest.approx(base.item(), rel=1e-6)


def test_training_loss_is_unchanged_when_the_image_under_ignored_voxels_changes():
    """The trainer's loss on a 90 %-ignored label map, no augmentation: with a network without spatial context (a
    voxel-wise convolution, so that no ignored voxel's intensity reaches an annotated voxel's output), changing the
    image under the ignored voxels changes neither the loss nor any gradient."""
    trainer = Trainer.__new__(Trainer)  # only what build_loss reads
    trainer.plans = _plans_with_ignore()
    loss_fn = trainer.build_loss()
    gen = torch.Generator().manual_seed(4)
    target = torch.randint(0, 3, (2, 1, 10, 10, 10), generator=gen)
    ignored = torch.rand(target.shape, generator=gen) < 0.9
    target = torch.where(ignored, torch.full_like(target, IGNORE), target)
    image = torch.randn(2, 1, 10, 10, 10, generator=gen)
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, kernel_size=1)

    def loss_and_grads(data):
        network.zero_grad()
        loss = loss_fn(network(data), target)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in network.parameters()]

    base, grads = loss_and_grads(image)
    changed, changed_grads = loss_and_grads(torch.where(ignored, torch.randn_like(image) * 100, image))
    assert changed == base
    assert all(torch.equal(a, b) for a, b in zip(grads, changed_grads))
    assert loss_and_grads(image * 2)[0] != base  # the image does count where it is annotated


def test_pseudo_dice_counts_skip_ignored_voxels():
    logits, target, ignored = _batch(seed=4)

    class Fixed(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return self.out

    trainer = Trainer.__new__(Trainer)  # only what validation_step reads
    trainer.plans, trainer.device = _plans_with_ignore(), torch.device("cpu")
    trainer.options = TrainingOptions()  # the default precision (autocast)
    trainer.loss = DeepSupervisionLoss(DiceCELoss(ignore_label=IGNORE))
    batch = {"data": torch.zeros(2, 1, 6, 5, 4), "seg": target}
    trainer.network = Fixed(logits)
    loss, stats = trainer.validation_step(batch)
    trainer.network = Fixed(torch.where(ignored, torch.randn_like(logits) * 10, logits))
    loss2, stats2 = trainer.validation_step(batch)
    assert np.array_equal(stats, stats2) and loss == pytest.approx(loss2, rel=1e-6)
    pred, ref = logits.argmax(1), target[:, 0]
    tp1 = ((pred == 1) & (ref == 1)).sum().item()
    fp1 = ((pred == 1) & (ref != 1) & (ref != IGNORE)).sum().item()
    assert stats[:, 0].tolist()[:2] == [tp1, fp1]


# -- evaluation --------------------------------------------------------------------------------------------
def _reference_and_prediction(seed=0, shape=(12, 14, 10)):
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    ref[2:7, 3:9, 2:6] = 1
    ref[7:11, 5:12, 4:9] = 2
    ref[:, :, 7:] = IGNORE  # an unannotated slab, over part of label 2
    pred = np.where(rng.random(shape) < 0.1, rng.integers(0, 3, shape), np.where(ref == IGNORE, 0, ref))
    other = np.where(ref == IGNORE, rng.integers(0, 3, shape), pred)  # differs only inside the ignore region
    assert (other != pred).any()
    return ref, pred.astype(np.uint8), other.astype(np.uint8)


def test_predictions_differing_only_inside_ignore_score_the_same():
    ref, pred, other = _reference_and_prediction()
    a = case_metrics(pred, ref, [1, 2, (1, 2)], (1.0, 1.0, 1.0), ignore_label=IGNORE)
    b = case_metrics(other, ref, [1, 2, (1, 2)], (1.0, 1.0, 1.0), ignore_label=IGNORE)
    assert a == b
    annotated = ref != IGNORE
    tp = int(((pred == 2) & (ref == 2)).sum())
    fp = int(((pred == 2) & (ref != 2) & annotated).sum())
    assert (a["2"]["tp"], a["2"]["fp"]) == (tp, fp)
    assert case_metrics(pred, ref, [2], (1.0, 1.0, 1.0)) != case_metrics(other, ref, [2], (1.0, 1.0, 1.0))


def test_smitunet_evaluate_ignore_label_flag(tmp_path, capsys):
    ref, pred, other = _reference_and_prediction(seed=1)
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), ref.shape[::-1])
    write_image(ref, geometry, tmp_path / "ref" / "c.nii.gz")
    for name, arr in (("a", pred), ("b", other)):
        write_image(arr, geometry, tmp_path / name / "c.nii.gz")
        evaluate_main([str(tmp_path / "ref"), str(tmp_path / name), "-il", str(IGNORE)])
    a, b = (load_json(tmp_path / n / "summary.json") for n in ("a", "b"))
    assert a["labels"] == ["1", "2"] and a["ignore_label"] == IGNORE  # "3" is no class to score
    assert a["metric_per_case"][0]["metrics"] == b["metric_per_case"][0]["metrics"]
    post_a = determine_postprocessing([(tmp_path / "ref" / "c.nii.gz", tmp_path / "a" / "c.nii.gz")], [1, 2], IGNORE)
    assert post_a["per_label"]["2"]["dice_before"] == pytest.approx(a["mean"]["2"]["dice"])


# -- oversampling ------------------------------------------------------------------------------------------
def test_foreground_oversampling_never_centres_on_ignore(tmp_path):
    shape = (20, 20, 20)
    seg = np.full(shape, IGNORE, np.int16)  # mostly unannotated
    seg[8:12, 8:12, 8:12] = 1
    seg[4:6, 4:6, 4:6] = 0
    plans = _plans_with_ignore()
    locations = class_locations(seg, plans.foreground_labels, seed=0)
    assert sorted(locations) == ["class_1", "class_2"] and len(locations["class_2"]) == 0
    save_npy(np.zeros((1, *shape), np.float32), tmp_path / "c.npy")
    save_npy(seg[None], tmp_path / "c_seg.npy")
    save_npz(tmp_path / "c_locations.npz", **locations)
    cases = PreprocessedCases(tmp_path, ["c"])
    for i in range(50):
        _, patch, _ = sample_patch(cases, np.random.default_rng(i), [3, 3, 3], force_foreground=True)
        assert patch[0, 1, 1, 1] == 1  # the crop's centre voxel is foreground, never "ignore"


# -- end to end --------------------------------------------------------------------------------------------
def test_mostly_ignored_dataset_trains_and_predicts_without_the_ignore_value(smitunet_dirs, tmp_path):
    from smitunet import api
    from smitunet.inference.predictor import PredictionOptions
    from smitunet.preprocessing.cli import main as preprocess_main
    from smitunet.training.cli import main as train_main

    raw = generate_synthetic_dataset(smitunet_dirs["raw"], num_training=4, num_test=1, shape=(20, 24, 20))
    dj = load_json(raw / "dataset.json")
    dj["labels"]["ignore"] = IGNORE
    save_json(dj, raw / "dataset.json")
    rng = np.random.default_rng(0)
    for f in sorted((raw / "labelsTr").iterdir()):
        labels, geometry = read_image(f)
        labels = np.where(rng.random(labels.shape) < 0.9, IGNORE, labels).astype(np.uint8)  # 90 % unannotated
        write_image(labels, geometry, f)

    preprocess_main(["-d", "999", "--preset", "smit_tiny", "-np", "1"])
    pre = smitunet_dirs["preprocessed"] / raw.name
    plans = Plans.load(pre / "smitunetPlans.json")
    assert plans.num_classes == 3 and plans.configurations["3d_fullres"].network.kwargs["num_classes"] == 3
    data_folder = pre / plans.configurations["3d_fullres"].data_identifier
    for npz in data_folder.glob("*_locations.npz"):
        assert f"class_{IGNORE}" not in np.load(npz).files

    train_main(["999", "3d_fullres", "0", "--epochs", "1", "--iters_per_epoch", "2", "--num_workers", "0",
                "--disable_tta"])
    fold = smitunet_dirs["results"] / raw.name / "SMITTrainer__smitunetPlans__3d_fullres" / "fold_0"
    summary = load_json(fold / "validation" / "summary.json")
    assert sorted(summary["mean"]) == ["1", "2"]
    for f in (fold / "validation").glob("*.nii.gz"):
        assert IGNORE not in np.unique(read_image(f)[0])

    outputs = api.predict(raw / "imagesTs", tmp_path / "pred", dataset=999, folds=["0"],
                          options=PredictionOptions(use_tta=False, device="cpu"))
    assert outputs
    for f in (tmp_path / "pred").glob("*.nii.gz"):
        pred = read_image(f)[0]
        assert pred.shape == read_image(raw / "labelsTs" / f.name)[0].shape
        assert IGNORE not in np.unique(pred)


def test_semi_supervised_mixed_target_leaves_ignored_labelled_voxels_out_of_both_regions():
    from smitunet.training.semi_supervised import mixed_target

    labels = torch.tensor([[[[[0, 1, IGNORE, 2, 2]]]]])
    pseudo = torch.tensor([[[[[2, 2, 1, 1, 1]]]]])
    from_labelled = torch.tensor([[[[[1.0, 1.0, 1.0, 0.0, 0.0]]]]])
    confident = torch.tensor([[[[[True, True, True, True, False]]]]])
    target, labelled, pseudo_region = mixed_target(labels, pseudo, from_labelled, confident, IGNORE)
    assert target.flatten().tolist() == [0, 1, 0, 1, 1]
    assert labelled.flatten().tolist() == [1, 1, 0, 0, 0] and pseudo_region.flatten().tolist() == [0, 0, 0, 1, 0]
    target, labelled, pseudo_region = mixed_target(labels, pseudo, from_labelled, confident)  # no ignore label
    assert target.flatten().tolist() == [0, 1, IGNORE, 1, 1] and labelled.flatten().tolist() == [1, 1, 1, 0, 0]
