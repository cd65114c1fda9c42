"""Pretraining pieces by value: L1 on masked voxels, distillation, centering, temperatures, EMA teacher, heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smitunet.networks import create_network
from smitunet.pretraining.config import PretrainSettings
from smitunet.pretraining.ema import ema_update, make_teacher, momentum_at
from smitunet.pretraining.heads import ProjectionHead, ReconstructionHead, pixel_shuffle_3d
from smitunet.pretraining.losses import (distillation_loss, masked_l1, teacher_probabilities, teacher_temperature,
                                         update_center)
from smitunet.pretraining.model import PretrainNetwork
from smitunet.pretraining.objective import make_step_masks, pretraining_losses

PATCH = [16, 16, 16]


def tiny_student(method: str = "smit") -> PretrainNetwork:
    torch.manual_seed(0)
    net = create_network("smit_tiny", 1, 2, PATCH, num_stages=3)  # total stride 16
    return PretrainNetwork(net.encoder, 1, net.network_kwargs["strides"], out_dim=32, hidden_dim=16,
                           bottleneck_dim=8, stage_mask_tokens=method == "gmim")


def test_masked_l1_counts_only_masked_voxels():
    pred = torch.zeros(1, 2, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2, 2)
    target[:, :, 0] = 3.0                     # error 3 on the first z slice
    target[:, :, 1] = 100.0                   # huge error where nothing is masked
    mask = torch.zeros(1, 1, 2, 2, 2)
    mask[:, :, 0] = 1
    assert masked_l1(pred, target, mask).item() == pytest.approx(3.0)
    pred.requires_grad_(True)
    loss = masked_l1(pred, target, mask)
    loss.backward()
    assert pred.grad[:, :, 1].abs().sum() == 0 and pred.grad[:, :, 0].abs().sum() > 0
    assert masked_l1(pred, target, torch.zeros(1, 1, 2, 2, 2)).item() == 0.0


def test_distillation_cross_entropy_and_token_weights():
    student = torch.log(torch.tensor([[0.5, 0.25, 0.25]])) * 0.1   # softmax(student / 0.1) = [.5, .25, .25]
    teacher = torch.tensor([[1.0, 0.0, 0.0]])
    assert distillation_loss(student, teacher, 0.1).item() == pytest.approx(-math.log(0.5), rel=1e-5)
    # per-token weights: a visible token (weight 0) adds nothing however wrong it is
    s = torch.stack([student[0], torch.tensor([10.0, -10.0, 0.0])])[None]
    t = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    weighted = distillation_loss(s, t, 0.1, torch.tensor([[1.0, 0.0]]))
    assert weighted.item() == pytest.approx(-math.log(0.5), rel=1e-5)


def test_centering_and_teacher_temperature():
    logits = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    center = torch.zeros(1, 2)
    new = update_center(center, logits, momentum=0.9)
    assert torch.allclose(new, torch.tensor([[0.2, 0.4]]))
    probs = teacher_probabilities(torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]]), 0.04)
    assert torch.allclose(probs, torch.tensor([[0.5, 0.5]]))        # centring removes the shared offset
    sharp = teacher_probabilities(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), 0.04)
    assert sharp[0, 0] > 0.999
    assert teacher_temperature(0, 10) == pytest.approx(0.04)
    assert teacher_temperature(5, 10) == pytest.approx(0.055)
    assert teacher_temperature(10, 10) == teacher_temperature(99, 10) == pytest.approx(0.07)


def test_momentum_cosine_over_the_whole_run():
    total = 4 * 100                                                  # epochs x iterations
    assert momentum_at(0, total) == pytest.approx(0.996)
    assert momentum_at(200, total) == pytest.approx(0.998)
    assert momentum_at(400, total) == pytest.approx(1.0)
    values = [momentum_at(s, total) for s in range(total)]
    assert all(b >= a for a, b in zip(values, values[1:]))         # never restarts at an epoch boundary
    assert momentum_at(100, total) > momentum_at(99, total) > 0.996


def test_ema_update_formula_and_teacher_is_exact_copy_without_grad():
    student = tiny_student()
    teacher = make_teacher(student)
    for (name, s), (_, t) in zip(student.state_dict().items(), teacher.state_dict().items()):
        assert torch.equal(s, t), name
    assert not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, 0.9)
    for name, p in teacher.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(student.named_parameters())[name]
        assert torch.allclose(p, expected, atol=1e-6), name


def test_model_matches_encoder_and_teacher_gets_no_gradient():
    student = tiny_student()
    x = torch.randn(2, 1, *PATCH)
    mask = torch.zeros(2, 512, dtype=torch.bool)
    mask[:, :100] = True
    deepest = student.deepest_features(x, mask)
    reference = student.encoder(x, mask)[student.num_stages - 1]
    assert torch.allclose(deepest.permute(0, 4, 1, 2, 3), reference, atol=1e-6)
    # masking changes the features only through the mask token
    student.encoder.mask_token.data.zero_()
    teacher = make_teacher(student)
    settings = PretrainSettings(out_dim=32)
    rng = np.random.default_rng(0)
    masks = make_step_masks(np.random.randn(4, 1, *PATCH).astype(np.float32), settings, [8, 8, 8], [2, 2, 2],
                            student.stage_factors, rng)
    centers = {"patch": torch.zeros(1, 32), "global": torch.zeros(1, 32)}
    views = torch.randn(4, 1, *PATCH)
    total, terms, teacher_logits = pretraining_losses(student, teacher, views, masks, centers, 0.04, settings,
                                                      [8, 8, 8], [2, 2, 2], student.stage_factors)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher_logits["patch"].requires_grad
    assert student.encoder.mask_token.grad is not None and student.encoder.mask_token.grad.abs().sum() > 0
    assert set(terms) == {"loss", "reconstruction", "patch", "global"}
    expected = terms["reconstruction"] + 0.1 * terms["patch"] + 0.1 * terms["global"]
    assert terms["loss"] == pytest.approx(expected, rel=1e-5)


def test_mask_token_replaces_only_masked_tokens():
    student = tiny_student()
    x = torch.randn(1, 1, *PATCH)
    mask = torch.zeros(1, 512, dtype=torch.bool)
    mask[0, 5] = True
    embedded = student.encoder.embed(x, mask).reshape(1, 512, -1)
    plain = student.encoder.embed(x).reshape(1, 512, -1)
    assert torch.equal(embedded[0, 5], student.encoder.mask_token.view(-1))
    keep = torch.ones(512, dtype=torch.bool)
    keep[5] = False
    assert torch.equal(embedded[0, keep], plain[0, keep])


def test_heads_shapes_and_pixel_shuffle_layout():
    x = torch.arange(8.0).view(1, 8, 1, 1, 1)
    out = pixel_shuffle_3d(x, 1, [2, 2, 2])
    assert out.shape == (1, 1, 2, 2, 2) and torch.equal(out.flatten(), torch.arange(8.0))
    head = ReconstructionHead(6, 2, [4, 2, 1])
    assert head(torch.randn(3, 6, 2, 3, 5)).shape == (3, 2, 8, 6, 5)
    proj = ProjectionHead(6, out_dim=10, hidden_dim=8, bottleneck_dim=4)
    logits = proj(torch.randn(3, 7, 6))
    assert logits.shape == (3, 7, 10) and logits.abs().max() <= 1.0 + 1e-5   # cosine to unit prototypes


def test_batchnorm_head_gives_the_teacher_a_sharp_target_from_the_first_step():
    # Crops of one body region pool to nearly the same feature vector: a large common part, small differences.
    torch.manual_seed(0)
    pooled = torch.randn(1, 48) + 0.05 * torch.randn(8, 48)

    def teacher_entropy(batch_norm: bool) -> float:
        torch.manual_seed(1)
        head = ProjectionHead(48, out_dim=256, hidden_dim=64, bottleneck_dim=32, batch_norm=batch_norm)
        with torch.no_grad():
            logits = head(pooled)
        probs = teacher_probabilities(logits, logits.mean(0, keepdim=True), 0.04)
        return float(-(probs * probs.log()).sum(-1).mean())

    uniform = math.log(256)
    assert teacher_entropy(False) > uniform - 0.05       # plain MLP head: centring leaves a uniform target
    assert teacher_entropy(True) < uniform - 2.0         # BatchNorm head: per-sample targets from step 0


def test_projection_head_flattens_tokens_for_batchnorm():
    head = ProjectionHead(6, out_dim=10, hidden_dim=8, bottleneck_dim=4).train()
    tokens = torch.randn(3, 7, 6)
    assert torch.allclose(head(tokens).reshape(21, 10), head(tokens.reshape(21, 6)), atol=1e-6)


def test_smart_and_gmim_masks():
    student = tiny_student("gmim")
    views = np.random.default_rng(0).normal(size=(4, 1, *PATCH)).astype(np.float32)
    smart = make_step_masks(views, PretrainSettings(method="smart", teacher_drop_rate=0.5), [8, 8, 8], [2, 2, 2],
                            student.stage_factors, np.random.default_rng(0))
    assert smart.teacher_dropout is not None and 0.35 < smart.teacher_dropout.float().mean() < 0.65
    assert smart.stage is None
    gmim = make_step_masks(views, PretrainSettings(method="gmim"), [8, 8, 8], [2, 2, 2], student.stage_factors,
                           np.random.default_rng(0))
    assert gmim.teacher_dropout is None
    assert [m.shape[1] for m in gmim.stage] == [64, 8]      # deeper stage grids 4^3, 2^3
    feats = student.deepest_features(torch.from_numpy(views), gmim.tokens, stage_masks=gmim.stage)
    assert feats.shape[:4] == (4, 2, 2, 2)
    dropped = student.deepest_features(torch.from_numpy(views), token_dropout=torch.ones(4, 512, dtype=torch.bool))
    blank = student.deepest_features(torch.zeros(4, 1, *PATCH), token_dropout=torch.ones(4, 512, dtype=torch.bool))
    assert torch.allclose(dropped, blank, atol=1e-5)          # every token dropped: the input no longer matters


def test_views_are_deterministic_padded_and_overlapping():
    from smitunet.pretraining.views import ViewSampler, corner_range, crop_at, two_corners

    volume = np.arange(2 * 4 * 6 * 8, dtype=np.float32).reshape(2, 4, 6, 8)
    crop = crop_at(volume, [-2, 1, 0], [8, 4, 8])                  # z hangs over both ends: zero padded
    assert crop.shape == (2, 8, 4, 8) and crop[:, :2].sum() == 0 and crop[:, 6:].sum() == 0
    assert np.array_equal(crop[:, 2:6], volume[:, :, 1:5, :])
    assert corner_range([4, 20, 8], [8, 8, 8]) == [(-2, -2), (0, 12), (0, 0)]
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = two_corners([40, 40, 40], [16, 16, 16], rng)
        assert all(abs(x - y) <= 8 for x, y in zip(a, b))
    volumes = [np.random.default_rng(i).normal(size=(1, 20, 24, 18)).astype(np.float32) for i in range(3)]
    sampler = ViewSampler(volumes, [16, 16, 16], batch_size=2, seed=3)
    first = sampler.batch(7)
    assert first.shape == (4, 1, 16, 16, 16) and first.dtype == np.float32
    assert np.array_equal(first, sampler.batch(7))                 # a pure function of the step
    assert not np.array_equal(first, sampler.batch(8))
    other_rank = ViewSampler(volumes, [16, 16, 16], batch_size=2, seed=3, rank=1)
    assert not np.array_equal(first, other_rank.batch(7))


def test_steps_prepared_by_worker_processes_equal_the_inline_ones():
    from smitunet.pretraining.views import StepBatches, ViewSampler

    rng = np.random.default_rng(0)
    volumes = [rng.normal(size=(1, 20 + i, 18, 22)).astype(np.float32) for i in range(3)]
    settings = PretrainSettings(method="smart")
    steps = StepBatches(ViewSampler(volumes, [16, 16, 16], 2, seed=5), settings, [8, 8, 8], [2, 2, 2],
                        [[1, 1, 1], [2, 2, 2]], seed=5, rank=0, first_step=7, total_steps=11)
    loader = torch.utils.data.DataLoader(steps, batch_size=None, num_workers=2)
    prepared = list(loader)
    assert len(prepared) == len(steps) == 4
    for i, (views, masks) in enumerate(prepared):
        inline_views, inline_masks = steps[i]
        assert views.shape == (4, 1, 16, 16, 16)
        assert torch.equal(views, inline_views) and torch.equal(masks.tokens, inline_masks.tokens)
        assert torch.equal(masks.teacher_dropout, inline_masks.teacher_dropout)
        assert torch.equal(masks.priority, inline_masks.priority)   # SMART's attention-guided mask draws
    assert not torch.equal(prepared[0][0], prepared[1][0])   # each step its own batch
