"""Semi-supervised fine-tuning (mean teacher + bidirectional copy-paste) and --labelled_cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smitunet.checkpoint_io import load_checkpoint
from smitunet.training.cli import main as train_main
from smitunet.training.losses import deep_supervision_weights, downsample_target
from smitunet.training.semi_supervised import (SMITSemiSupervisedTrainer, copy_paste, cuboid_mask, ema_update,
                                                largest_component_pseudo_labels,
                                                rampup, region_dice_ce)
from support.training import fold_dir, make_preprocessed_dataset

SEMI = "SMITSemiSupervisedTrainer"


def test_cuboid_mask_and_bidirectional_copy_paste_by_value():
    mask = cuboid_mask((3, 3, 3), 2 / 3, np.random.default_rng(0))
    assert mask.sum() == 8 and set(mask.unique().tolist()) == {0.0, 1.0}
    labelled = torch.full((2, 1, 3, 3, 3), 1.0)
    unlabelled = torch.full((2, 1, 3, 3, 3), 5.0)
    mixed, from_labelled = copy_paste(labelled, unlabelled, mask)
    inside = mask.bool()
    # pair 0: the labelled crop with the unlabelled cuboid pasted in; pair 1: the other way round
    assert torch.equal(mixed[0, 0][inside], torch.full((8,), 5.0)) and torch.equal(mixed[0, 0][~inside], torch.ones(19))
    assert torch.equal(mixed[1, 0][inside], torch.ones(8)) and torch.equal(mixed[1, 0][~inside], torch.full((19,), 5.0))
    assert torch.equal(from_labelled[0, 0], 1 - mask) and torch.equal(from_labelled[1, 0], mask)
    # targets follow the same mixing: labels where the crop came from the labelled image, pseudo-labels elsewhere
    labels, pseudo = torch.ones(2, 1, 3, 3, 3, dtype=torch.long), torch.full((2, 1, 3, 3, 3), 2, dtype=torch.long)
    target = torch.where(from_labelled.bool(), labels, pseudo)
    assert torch.equal(target[0, 0][inside], torch.full((8,), 2)) and torch.equal(target[1, 0][inside], torch.ones(8, dtype=torch.long))


def test_region_loss_ignores_voxels_outside_the_region_and_ramp():
    logits = torch.randn(2, 3, 4, 4, 4)
    target = torch.randint(0, 3, (2, 1, 4, 4, 4))
    region = torch.ones(2, 1, 4, 4, 4)
    region[..., :2] = 0
    other = target.clone()
    other[..., :2] = (other[..., :2] + 1) % 3   # changes only voxels outside the region
    assert torch.allclose(region_dice_ce(logits, target, region), region_dice_ce(logits, other, region))
    assert region_dice_ce(logits, target, torch.zeros_like(region)) == 0   # an empty region teaches nothing
    assert rampup(0, 100, 0.4) == pytest.approx(np.exp(-5)) and rampup(40, 100, 0.4) == 1.0


def test_region_loss_by_value_dice_pooled_over_the_batch():
    # 2 classes, 2 samples of 2 voxels; logits give p(foreground) = 0.5 at every voxel (log-odds 0)
    logits = torch.zeros(2, 2, 2, 1, 1)
    target = torch.tensor([1, 0, 0, 0]).view(2, 1, 2, 1, 1)
    region = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(2, 1, 2, 1, 1)
    ce = np.log(2)                                   # every region voxel: -log 0.5
    dice = (2 * 0.5 + 1e-5) / ((0.5 * 3) + 1 + 1e-5)  # pooled: intersection 0.5, predicted 1.5, reference 1
    assert float(region_dice_ce(logits, target, region)) == pytest.approx(ce + 1 - dice, rel=1e-6)


def test_the_unlabelled_weight_scales_the_pseudo_labelled_loss_not_its_voxels():
    """A weight on voxels cancels out of a Dice ratio; the pseudo-labelled region's loss is weighted as a whole, so
    halving the weight halves its part of the mixed loss."""
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4, 4)
    target = torch.randint(0, 2, (2, 1, 4, 4, 4))
    labelled = torch.zeros(2, 1, 4, 4, 4)
    labelled[..., :2] = 1
    pseudo = 1 - labelled

    class Probe(SMITSemiSupervisedTrainer):
        def __init__(self, scale):  # no context needed for the loss alone
            self.deep_supervision, self.scale = False, scale

        def unlabelled_scale(self):
            return self.scale

    whole = Probe(1.0).mixed_loss(logits, target, labelled, pseudo)
    half = Probe(0.5).mixed_loss(logits, target, labelled, pseudo)
    alone = region_dice_ce(logits, target, labelled)
    assert float(whole - alone) == pytest.approx(2 * float(half - alone), rel=1e-5)
    assert float(Probe(0.0).mixed_loss(logits, target, labelled, pseudo)) == pytest.approx(float(alone))


def test_mixed_loss_over_deep_supervision_outputs_is_the_weighted_sum_by_value():
    """Each output gets the mixed loss with its target and both regions brought to its size (nearest), weighted as
    the labelled-only loss weights the outputs; without deep supervision only the finest output counts."""
    torch.manual_seed(1)
    target = torch.randint(0, 2, (2, 1, 8, 8, 8))
    labelled = torch.zeros(2, 1, 8, 8, 8)
    labelled[..., :3] = 1
    pseudo = 1 - labelled
    outputs = [torch.randn(2, 2, *(8 // 2 ** i,) * 3) for i in range(3)]

    class Probe(SMITSemiSupervisedTrainer):
        def __init__(self, deep_supervision):
            self.deep_supervision = deep_supervision

        def unlabelled_scale(self):
            return 0.3

    expected = 0.0
    for w, out in zip(deep_supervision_weights(3), outputs):
        t, lab, ps = (downsample_target(m, out.shape[2:]) for m in (target, labelled, pseudo))
        expected += w * (region_dice_ce(out, t, lab) + 0.3 * region_dice_ce(out, t, ps))
    assert float(Probe(True).mixed_loss(outputs, target, labelled, pseudo)) == pytest.approx(float(expected), rel=1e-6)
    finest = region_dice_ce(outputs[0], target, labelled) + 0.3 * region_dice_ce(outputs[0], target, pseudo)
    assert float(Probe(False).mixed_loss(outputs, target, labelled, pseudo)) == pytest.approx(float(finest), rel=1e-6)


def test_teacher_gets_no_gradient_and_follows_the_ema_formula():
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    for p in teacher.parameters():
        p.requires_grad_(False)
    before = [p.clone() for p in teacher.parameters()]
    student(torch.randn(4, 3)).sum().backward()
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        assert t.grad is None and not t.requires_grad
        assert torch.allclose(t, 0.9 * b + 0.1 * s.detach())


@pytest.fixture
def dataset(smitunet_dirs, tmp_path):
    folder = make_preprocessed_dataset(smitunet_dirs["preprocessed"], num_cases=8)
    (tmp_path / "labelled.txt").write_text("tiny_000\ntiny_001\n")
    return smitunet_dirs, folder


def _train(trainer: str, tmp_path, epochs: int = 2, *extra: str):
    train_main(["901", "3d_fullres", "0", "-tr", trainer, "--epochs", str(epochs), "--iters_per_epoch", "2",
                "--num_workers", "0", "--disable_tta", "--labelled_cases", str(tmp_path / "labelled.txt"), *extra])


def _final(results, trainer):
    return load_checkpoint(fold_dir(results, trainer) / "checkpoint_final.pt")


def test_unlabelled_cases_never_supervise(dataset, tmp_path, monkeypatch, capsys):
    dirs, folder = dataset
    data = folder / "smitunetPlans_3d_fullres"
    for trainer in ("SMITTrainer", SEMI):
        monkeypatch.setenv("smitunet_results", str(tmp_path / f"clean_{trainer}"))
        _train(trainer, tmp_path)
    splits = __import__("json").loads((folder / "splits_final.json").read_text())
    unlabelled = [c for c in splits[0]["train"] if c not in ("tiny_000", "tiny_001")]
    assert unlabelled
    for case in unlabelled:  # corrupt every label file of the unlabelled cases
        np.save(data / f"{case}_seg.npy", np.full_like(np.load(data / f"{case}_seg.npy"), 2))
        (data / f"{case}_locations.npz").write_bytes(b"garbage")
    for trainer in ("SMITTrainer", SEMI):
        monkeypatch.setenv("smitunet_results", str(tmp_path / f"corrupt_{trainer}"))
        _train(trainer, tmp_path)
        a, b = _final(tmp_path / f"clean_{trainer}", trainer), _final(tmp_path / f"corrupt_{trainer}", trainer)
        for key, value in a["state_dict"].items():
            assert torch.equal(value, b["state_dict"][key]), (trainer, key)
    out = capsys.readouterr().out
    assert f"2 training (+{len(unlabelled)} unlabelled)" in out


class InterruptibleSemi(SMITSemiSupervisedTrainer):
    """Stops at the start of epoch ``STOP_AT`` (a stand-in for a killed run), as a user's Ctrl-C would."""

    stop_at = None

    def on_epoch_start(self, epoch):
        if epoch == InterruptibleSemi.stop_at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop_at", [1, 2])  # in the labelled-only warm-up (iterations 0-2 of 6), and after it
def test_semi_supervised_resume_is_exact_and_keeps_the_teacher(dataset, tmp_path, monkeypatch, stop_at):
    import sys

    sys.modules[__name__].InterruptibleSemi = InterruptibleSemi
    name = f"{__name__}:InterruptibleSemi"
    monkeypatch.setenv("smitunet_results", str(tmp_path / "straight"))
    _train(name, tmp_path, 3)
    monkeypatch.setenv("smitunet_results", str(tmp_path / "resumed"))
    InterruptibleSemi.stop_at = stop_at
    with pytest.raises(SystemExit):
        _train(name, tmp_path, 3)
    InterruptibleSemi.stop_at = None
    _train(name, tmp_path, 3, "--c")
    a, b = _final(tmp_path / "straight", "InterruptibleSemi"), _final(tmp_path / "resumed", "InterruptibleSemi")
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], atol=1e-6, rtol=1e-5), key
    teacher_a, teacher_b = a["trainer_state"]["trainer"]["teacher"], b["trainer_state"]["trainer"]["teacher"]
    for key, value in teacher_a.items():
        assert torch.allclose(value, teacher_b[key], atol=1e-6, rtol=1e-5), key
    assert not torch.equal(teacher_a["heads.0.weight"], a["state_dict"]["heads.0.weight"])  # a lagging average


def test_labelled_cases_errors_are_one_line(dataset, tmp_path, capsys):
    (tmp_path / "labelled.txt").write_text("nope_case\n")
    with pytest.raises(SystemExit) as exc:
        _train("SMITTrainer", tmp_path)
    assert exc.value.code == 2 and "are not training cases of fold 0: nope_case" in capsys.readouterr().err
    (tmp_path / "labelled.txt").write_text("tiny_000\n")
    with pytest.raises(SystemExit):
        train_main(["901", "3d_fullres", "0", "-tr", SEMI, "--epochs", "1", "--iters_per_epoch", "1",
                    "--num_workers", "0"])
    assert "needs unlabelled cases: pass --labelled_cases" in capsys.readouterr().err


def _unlabelled_dataset(raw, count: int = 2):
    import shutil

    from smitunet.dataset.synthetic import generate_synthetic_dataset

    dataset = generate_synthetic_dataset(raw, num_training=6, num_test=count, shape=(20, 24, 22))
    target = dataset / "imagesUnlabelled"
    target.mkdir()
    for image in sorted((dataset / "imagesTs").iterdir()):  # images whose labels we never give
        shutil.copy(image, target / image.name.replace("test_", "extra_"))
    return dataset


def test_images_unlabelled_are_preprocessed_without_labels_and_used(smitunet_dirs, tmp_path, capsys):
    from smitunet.preprocessing.cli import main as plan_main
    from smitunet.utils.files import load_json

    _unlabelled_dataset(smitunet_dirs["raw"])
    plan_main(["-d", "999", "--preset", "smit_tiny", "-np", "1"])
    folder = smitunet_dirs["preprocessed"] / "Dataset999_Synthetic"
    data = folder / "smitunetPlans_3d_fullres"
    extra = sorted(p.name for p in data.glob("extra_*"))
    assert extra and all(not n.endswith(("_seg.npy", "_locations.npz")) for n in extra)
    assert load_json(folder / "dataset_fingerprint.json")["num_unlabelled_cases"] == len(extra) // 2
    splits = load_json(folder / "splits_final.json") if (folder / "splits_final.json").exists() else None
    assert splits is None or not any(c.startswith("extra_") for s in splits for c in s["train"] + s["val"])
    capsys.readouterr()
    train_main(["999", "3d_fullres", "0", "-tr", SEMI, "--epochs", "1", "--iters_per_epoch", "1", "--num_workers", "0",
                "--disable_tta"])
    assert f"(+{len(extra) // 2} unlabelled)" in capsys.readouterr().out


def test_broken_unlabelled_image_is_one_line_naming_it_and_nothing_is_written(smitunet_dirs, capsys):
    import SimpleITK as sitk

    from smitunet.preprocessing.cli import main as plan_main

    dataset = _unlabelled_dataset(smitunet_dirs["raw"], count=1)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((24, 22), np.float32)),  # a 2D image: no 3D geometry
                    str(dataset / "imagesUnlabelled" / "extra_bad_0000.nii.gz"))
    with pytest.raises(SystemExit) as exc:
        plan_main(["-d", "999", "--preset", "smit_tiny", "-np", "1"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "extra_bad" in line]
    assert exc.value.code == 2 and len(lines) == 1 and "is 2D; expected a 3D image" in lines[0]
    assert not (smitunet_dirs["preprocessed"] / "Dataset999_Synthetic").exists()


class AllWarmup(SMITSemiSupervisedTrainer):
    supervised_warmup_fraction = 1.0


class NoWarmup(SMITSemiSupervisedTrainer):
    supervised_warmup_fraction = 0.0


def test_the_warmup_is_the_labelled_only_step(dataset, tmp_path, monkeypatch):
    """A run that is all warm-up trains exactly as SMITTrainer does (the unlabelled crops are not even drawn), and
    the warm-up is followed by mixed steps that change the result."""
    import sys

    sys.modules[__name__].AllWarmup, sys.modules[__name__].NoWarmup = AllWarmup, NoWarmup
    finals = {}
    for trainer in ("SMITTrainer", f"{__name__}:AllWarmup", f"{__name__}:NoWarmup", SEMI):
        short = trainer.split(":")[-1]
        monkeypatch.setenv("smitunet_results", str(tmp_path / short))
        _train(trainer, tmp_path)
        finals[short] = _final(tmp_path / short, short)["state_dict"]
    for key, value in finals["SMITTrainer"].items():
        assert torch.equal(value, finals["AllWarmup"][key]), key
    assert not all(torch.equal(v, finals[SEMI][k]) for k, v in finals["SMITTrainer"].items())
    assert not all(torch.equal(v, finals[SEMI][k]) for k, v in finals["NoWarmup"].items())


def test_pseudo_labels_keep_the_largest_component_of_each_class():
    pseudo = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    pseudo[0, 0, :3, :3, :3] = 1        # 27 voxels: kept
    pseudo[0, 0, 6:, 6:, 6:] = 1        # 8 voxels, apart: dropped to background
    pseudo[0, 0, 5, 0, 0] = 2           # the only class-2 component: kept
    pseudo[1, 0, 4:6, 4:6, 4:6] = 1     # each crop on its own: kept
    out = largest_component_pseudo_labels(pseudo, [1, 2])
    expected = pseudo.clone()
    expected[0, 0, 6:, 6:, 6:] = 0
    assert out.dtype == pseudo.dtype and torch.equal(out, expected)


class SeenInputs(NoWarmup):
    """Records, per step, the labelled batch and what the student's forward pass received."""

    steps: list = []

    def on_train_start(self):
        super().on_train_start()
        def record(module, args):
            if module.training:  # not the validation's passes
                SeenInputs.steps[-1].append(args[0].detach().clone())
        self.network.register_forward_pre_hook(record)

    def train_step(self, batch):
        SeenInputs.steps.append([batch["data"].clone()])
        return super().train_step(batch)


class SeenInputsMixedOnly(SeenInputs):
    labelled_step = False


def test_semi_step_keeps_the_labelled_crops_whole_beside_the_mixed_ones(dataset, tmp_path, monkeypatch):
    """Default step: one forward pass over the labelled crops as they are, then the mixed crops; the mixed-only
    ablation (BCP's step) sees the mixed crops alone."""
    import sys

    sys.modules[__name__].SeenInputs, sys.modules[__name__].SeenInputsMixedOnly = SeenInputs, SeenInputsMixedOnly
    seen = {}
    for trainer in ("SeenInputs", "SeenInputsMixedOnly"):
        SeenInputs.steps = []
        monkeypatch.setenv("smitunet_results", str(tmp_path / trainer))
        _train(f"{__name__}:{trainer}", tmp_path, 1)
        seen[trainer] = SeenInputs.steps
    assert len(seen["SeenInputs"]) == len(seen["SeenInputsMixedOnly"]) == 2
    assert all(len(s) == 2 for steps in seen.values() for s in steps)  # one student pass per step
    for (labelled, inputs), (labelled_m, inputs_m) in zip(seen["SeenInputs"], seen["SeenInputsMixedOnly"]):
        b = labelled.shape[0]
        assert inputs.shape[0] == 2 * b and torch.equal(inputs[:b], labelled)
        assert torch.equal(labelled, labelled_m) and inputs_m.shape[0] == b
        assert torch.equal(inputs[b:], inputs_m)  # the same mixed crops in both (same seeds, same first step)
        assert not torch.equal(inputs_m, labelled_m)
