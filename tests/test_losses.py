"""Dice + cross-entropy and deep-supervision weighting."""

import torch

from smitunet.training.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, downsample_target


def _target():
    t = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    t[:, :, 2:6, 2:6, 2:6] = 1
    t[1, :, 0:2, 0:2, 0:2] = 2
    return t


def test_perfect_prediction_has_low_loss_and_wrong_has_high():
    target = _target()
    onehot = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    loss = DiceCELoss()
    good = loss(onehot * 20 - 10, target)
    bad = loss((1 - onehot) * 20 - 10, target)
    assert good.item() < 0.05
    assert bad.item() > 10


def test_dice_term_matches_hand_computation():
    target = _target()[:1]
    logits = torch.zeros(1, 3, 8, 8, 8)
    loss = DiceCELoss(ce_weight=0.0, smooth=0.0)(logits, target)
    # uniform softmax: p = 1/3 everywhere; class 1 has 64 voxels, class 2 none in sample 0
    p_sum = 512 / 3
    dice1 = 2 * (64 / 3) / (p_sum + 64)
    dice2 = 0.0  # empty reference, p>0: Dice 0 without smoothing
    assert abs(loss.item() - (1 - (dice1 + dice2) / 2)) < 1e-5


def test_deep_supervision_weights_follow_nnunet():
    w = deep_supervision_weights(4)
    assert abs(sum(w) - 1) < 1e-9 and w[-1] == 0
    assert abs(w[0] / w[1] - 2) < 1e-9 and abs(w[1] / w[2] - 2) < 1e-9
    assert deep_supervision_weights(1) == [1.0]


def test_deep_supervision_loss_downsamples_target_and_weights_levels():
    target = _target()
    full = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    half = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    base = DiceCELoss()
    ds = DeepSupervisionLoss(base, weights=[0.75, 0.25])
    expected = 0.75 * base(full, target) + 0.25 * base(half, downsample_target(target, (4, 4, 4)))
    assert torch.allclose(ds([full, half], target), expected)
    assert torch.allclose(ds(full, target), base(full, target))
    small = downsample_target(target, (4, 4, 4))
    assert small.shape == (2, 1, 4, 4, 4) and set(small.unique().tolist()) <= {0, 1, 2}
