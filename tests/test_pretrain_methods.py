"""SMART's class attention, attention-guided masking and co-distillation; GMIM's Siamese branch and
cross-correlation loss: by value on tiny tensors, then short runs of both methods."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smitunet.checkpoint_io import load_checkpoint
from smitunet.imageio import Geometry, write_image
from smitunet.networks import create_network
from smitunet.networks.checkpoint_adapter import load_pretrained
from smitunet.pretraining.cli import build_parser, main, settings_from_args
from smitunet.pretraining.config import PretrainSettings
from smitunet.pretraining.ema import make_teacher
from smitunet.pretraining.gmim import target_views
from smitunet.pretraining.heads import ClassAttentionHead
from smitunet.pretraining.losses import cross_correlation_loss
from smitunet.pretraining.masking import attention_guided_mask, scores_to_grid
from smitunet.pretraining.model import PretrainNetwork
from smitunet.pretraining.objective import make_step_masks, pretraining_losses
from smitunet.pretraining.trainer import PretrainingRun, RunOptions

PATCH = [16, 16, 16]
GRID = [8, 8, 8]          # token stride 2


def tiny_student(class_tokens: int = 0, projection_dim: int = 0, stage_mask_tokens: bool = False) -> PretrainNetwork:
    torch.manual_seed(0)
    net = create_network("smit_tiny", 1, 2, PATCH, num_stages=3)  # total stride 16: deepest grid 2^3
    return PretrainNetwork(net.encoder, 1, net.network_kwargs["strides"], out_dim=32, hidden_dim=16,
                           bottleneck_dim=8, stage_mask_tokens=stage_mask_tokens, class_tokens=class_tokens,
                           projection_dim=projection_dim)


# -- SMART ---------------------------------------------------------------------------------------------------------
def test_class_attention_shapes_and_attention_is_a_distribution_over_tokens():
    torch.manual_seed(0)
    head = ClassAttentionHead(24, num_tokens=3, depth=2)
    tokens = torch.randn(2, 10, 24)
    cls, attention = head(tokens)
    assert cls.shape == (2, 3, 24)
    assert attention.shape == (2, head.blocks[0].num_heads, 3, 10) and head.blocks[0].num_heads == 8
    assert torch.allclose(attention.sum(dim=-1), torch.ones(2, 8, 3), atol=1e-6)
    assert (attention >= 0).all()
    # the attention follows the tokens: changing one token changes every class token
    changed = tokens.clone()
    changed[:, 4] += 5.0
    assert not torch.allclose(head(changed)[0], cls)


def test_attention_guided_mask_takes_the_top_share_then_random_tokens():
    torch.manual_seed(0)
    b, n, ratio, share = 3, 40, 0.5, 0.4
    scores = torch.rand(b, n)
    priority = torch.rand(b, n)
    mask = attention_guided_mask(scores, priority, ratio, share)
    total, top = 20, 8
    assert mask.sum(dim=1).tolist() == [total] * b
    for row in range(b):
        best = torch.argsort(scores[row], descending=True)[:top]
        assert mask[row, best].all()                                    # the 8 most attended tokens
        rest = mask[row].clone()
        rest[best] = False
        others = torch.ones(n, dtype=torch.bool)
        others[best] = False
        # the other 12: the lowest priorities among the tokens not taken by attention
        expected = torch.argsort(priority[row].masked_fill(~others, float("inf")))[:total - top]
        assert set(torch.nonzero(rest).flatten().tolist()) == set(expected.tolist())
    # share 1: exactly the top-ranked tokens; share 0: attention plays no part
    only_top = attention_guided_mask(scores, priority, ratio, 1.0)
    assert torch.equal(only_top[0], torch.zeros(n, dtype=torch.bool).index_fill(0, scores[0].topk(total).indices,
                                                                                 True))
    assert torch.equal(attention_guided_mask(torch.zeros(b, n), priority, ratio, 0.0),
                       attention_guided_mask(scores, priority, ratio, 0.0))


def test_deepest_scores_reach_the_token_grid_by_nearest_upsampling():
    scores = torch.arange(8.0).view(1, 8)                   # deepest grid 2^3
    up = scores_to_grid(scores, GRID, [4, 4, 4]).view(8, 8, 8)
    assert up[0, 0, 0] == 0 and up[3, 3, 3] == 0 and up[0, 0, 4] == 1 and up[4, 4, 4] == 7
    assert torch.equal(up.unique(), torch.arange(8.0))
    assert int((up == 5).sum()) == 64                       # each deepest token covers a 4^3 box of tokens


def test_smart_step_masks_by_teacher_attention_and_the_teacher_gets_no_gradient():
    settings = PretrainSettings(method="smart", out_dim=32, mask_ratio=0.5, attention_mask_share=0.5)
    student = tiny_student(class_tokens=2)
    teacher = make_teacher(student)
    views = np.random.default_rng(0).normal(size=(4, 1, *PATCH)).astype(np.float32)
    masks = make_step_masks(views, settings, GRID, [2, 2, 2], student.stage_factors, np.random.default_rng(0))
    assert masks.priority.shape == (4, 512) and not masks.tokens.any()    # the step builds the mask
    centers = {k: torch.zeros(1, 32) for k in ("patch", "global", "class")}
    total, terms, teacher_logits = pretraining_losses(student, teacher, torch.from_numpy(views), masks, centers, 0.04,
                                                      settings, GRID, [2, 2, 2], student.stage_factors)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(t.requires_grad for t in teacher_logits.values()) and teacher_logits["class"].shape == (4, 2, 32)
    assert student.class_attention.class_tokens.grad.abs().sum() > 0      # co-distillation trains the head
    assert set(terms) == {"loss", "reconstruction", "patch", "global", "class"}
    expected = terms["reconstruction"] + 0.1 * (terms["patch"] + terms["global"] + terms["class"])
    assert terms["loss"] == pytest.approx(expected, rel=1e-5)


def test_smart_student_mask_is_the_guided_mask_of_the_teacher_attention(monkeypatch):
    import smitunet.pretraining.objective as objective

    settings = PretrainSettings(method="smart", out_dim=32, mask_ratio=0.5, attention_mask_share=1.0,
                                teacher_drop_rate=0.0)
    student = tiny_student(class_tokens=1)
    teacher = make_teacher(student)
    views = torch.randn(2, 1, *PATCH)
    masks = make_step_masks(views.numpy(), settings, GRID, [2, 2, 2], student.stage_factors, np.random.default_rng(1))
    seen = {}
    real = student.forward

    def spy(x, mask=None, **kw):
        seen["mask"] = mask
        return real(x, mask=mask, **kw)

    monkeypatch.setattr(student, "forward", spy)
    centers = {k: torch.zeros(1, 32) for k in ("patch", "global", "class")}
    objective.pretraining_losses(student, teacher, views, masks, centers, 0.04, settings, GRID, [2, 2, 2],
                                 student.stage_factors)
    with torch.no_grad():
        attention = teacher(views, reconstruct=False)["class_attention"].mean(dim=(1, 2))     # (2, 8)
    mask = seen["mask"]
    assert mask.sum(dim=1).tolist() == [256, 256]
    for row in range(2):   # share 1 and ratio 0.5: exactly the 4 most attended deepest tokens, as 4^3 boxes
        top = set(attention[row].topk(4).indices.tolist())
        deepest = mask[row].view(8, 8, 8)[::4, ::4, ::4].flatten()
        assert set(torch.nonzero(deepest).flatten().tolist()) == top


# -- GMIM ----------------------------------------------------------------------------------------------------------
def test_cross_correlation_loss_by_hand():
    z_a = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [2.0, 0.0, 1.0]])
    z_b = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    # C = z_a^T z_b / 4, by hand:
    c = [[4 / 4, 3 / 4, 3 / 4],       # column 0 of z_a . columns of z_b: (1+0+1+2, 1+0+0+2, 0+0+1+2)
         [1 / 4, 2 / 4, 2 / 4],       # column 1: (0+0+1+0, 0+2+0+0, 0+1+0+1)
         [3 / 4, 5 / 4, 2 / 4]]       # column 2: (2+0+0+1, 2+2+0+1, 0+1+0+1)
    on = (c[0][0] - 1) ** 2 + (c[1][1] - 1) ** 2 + (c[2][2] - 1) ** 2
    off = sum(c[i][j] ** 2 for i in range(3) for j in range(3) if i != j)
    for lambd in (0.005, 0.25):
        got = cross_correlation_loss(z_a, z_b, lambd, normalise=False)
        assert float(got) == pytest.approx(on + lambd * off, rel=1e-6)
    # batched (B, n, d): the mean of the per-sample losses
    both = cross_correlation_loss(torch.stack([z_a, z_b]), torch.stack([z_b, z_a]), 0.25, normalise=False)
    swapped = cross_correlation_loss(z_b, z_a, 0.25, normalise=False)
    assert float(both) == pytest.approx((on + 0.25 * off + float(swapped)) / 2, rel=1e-6)


def test_cross_correlation_is_zero_for_identical_decorrelated_features():
    # zero-mean orthogonal columns of unit (biased) variance: C = identity with or without standardising
    z = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    assert torch.allclose(z.T @ z / 4, torch.eye(3))
    assert float(cross_correlation_loss(z, z, 0.005, normalise=False)) == pytest.approx(0.0, abs=1e-12)
    assert float(cross_correlation_loss(z, z, 0.005)) == pytest.approx(0.0, abs=1e-6)
    # standardising: a scaled, shifted copy of the features is the same view
    assert float(cross_correlation_loss(3 * z + 2, z, 0.005)) == pytest.approx(0.0, abs=1e-6)
    # correlated dimensions cost through lambda only
    tied = torch.stack([z[:, 0], z[:, 0], z[:, 2]], dim=1)
    assert float(cross_correlation_loss(tied, tied, 0.5)) == pytest.approx(0.5 * 2, abs=1e-4)   # eps of the std


def test_target_views_are_intensity_augmented_copies():
    views = np.random.default_rng(0).normal(size=(6, 1, 4, 4, 4)).astype(np.float32)
    original = views.copy()
    out = target_views(views, np.random.default_rng(3))
    again = target_views(views, np.random.default_rng(3))
    assert out.shape == views.shape and out.dtype == np.float32 and np.array_equal(out, again)
    assert not np.array_equal(out, views) and np.array_equal(views, original)     # the online views are untouched
    # intensity only: the voxel order (geometry) survives, so the views stay strongly rank-correlated
    for a, b in zip(views, out):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8


def test_gmim_target_gets_no_gradient_and_equals_the_online_network_after_every_step():
    rng = np.random.default_rng(0)
    volumes = [rng.normal(size=(1, 20, 20, 20)).astype(np.float32) for _ in range(2)]
    options = RunOptions(output=Path("unused.pt"), preset="smit_tiny", patch=list(PATCH),
                         network_overrides={"num_stages": 3}, epochs=1, iters_per_epoch=3, batch_size=1,
                         num_workers=0)
    run = PretrainingRun(options, PretrainSettings(method="gmim", projection_dim=16), volumes, 1)
    assert run.student.projector.out_features == 16 and run.student.class_attention is None
    stream = run.batch_stream()
    before = {k: v.clone() for k, v in run.student.state_dict().items()}
    for step in range(3):
        batch = next(stream)
        assert batch[1].target_views.shape == batch[0].shape
        terms = run.train_step(step, batch)
        assert set(terms) >= {"loss", "reconstruction", "correlation"} and "patch" not in terms
        assert terms["momentum"] == 0.0
        assert all(p.grad is None and not p.requires_grad for p in run.teacher.parameters())
        online, target = run.student.state_dict(), run.teacher.state_dict()
        assert all(torch.equal(online[k], target[k]) for k in online)
    assert not torch.equal(before["encoder.patch_embed.proj.weight"], run.student.state_dict()[
        "encoder.patch_embed.proj.weight"])                                          # the online network learned


def test_gmim_siamese_off_is_the_masking_only_variant():
    settings = PretrainSettings(method="gmim", gmim_siamese=False)
    assert not settings.uses_siamese
    views = np.random.default_rng(0).normal(size=(2, 1, *PATCH)).astype(np.float32)
    masks = make_step_masks(views, settings, GRID, [2, 2, 2], tiny_student().stage_factors, np.random.default_rng(0))
    assert masks.target_views is None and masks.stage is not None and masks.tokens.any()


# -- settings --------------------------------------------------------------------------------------------------------
def test_flags_are_floats_and_older_metas_read_without_the_new_keys():
    args = build_parser().parse_args(["-o", "x.pt", "--method", "gmim", "--lambd", "0.0051", "--correlation_weight",
                                      "0.02", "--gmim_siamese", "off", "--attention_mask_share", "0.25",
                                      "--class_tokens", "4", "--class_weight", "0.3"])
    s = settings_from_args(args)
    assert s.correlation_lambda == 0.0051 and s.weight_correlation == 0.02 and s.gmim_siamese is False
    assert s.attention_mask_share == 0.25 and s.class_tokens == 4 and s.weight_class == 0.3
    assert PretrainSettings.from_dict(s.to_dict()) == s
    d = PretrainSettings().to_dict()
    assert d["gmim_siamese"] is True and d["smart_class_attention"] is True and d["projection_dim"] == 512
    assert d["correlation_lambda"] == 0.005 and d["weight_correlation"] == 0.005
    old_keys = ("method", "mask_ratio", "teacher_drop_rate", "gmim", "lr")   # a meta from before these halves
    old = {k: v for k, v in d.items() if k in old_keys}
    assert PretrainSettings.from_dict(old) == PretrainSettings()              # SMIT: an old state still resumes
    assert PretrainSettings.from_dict({**old, "method": "gmim"}).gmim_siamese is False
    smart = PretrainSettings.from_dict({**old, "method": "smart"})
    assert smart.smart_class_attention is False and smart.weight_correlation == 0.005
    with pytest.raises(Exception, match="attention_mask_share"):
        PretrainSettings(attention_mask_share=1.5).validate()


# -- short runs ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(4):
        shape = (28, 32, 30)
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
        blob = ((z - 0.1 * i) ** 2 + y ** 2 + x ** 2 < 0.4).astype(np.float32) * 300
        image = (blob + rng.normal(100, 20, size=shape)).astype(np.float32)
        write_image(image, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), shape[::-1]),
                    folder / f"img_{i}.nii.gz")
    return folder


@pytest.mark.parametrize("method,extra,terms", [
    ("smart", [], ["reconstruction", "patch", "global", "class"]),
    ("gmim", [], ["reconstruction", "correlation"]),
    ("gmim", ["--gmim_siamese", "off"], ["reconstruction", "patch", "global"])])
def test_methods_log_their_terms_record_settings_and_export_a_full_encoder(method, extra, terms, image_folder,
                                                                           tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "smit.pt"
    main(["-o", str(out), "-i", str(image_folder), "--method", method, "--preset", "smit_tiny", "--patch", "32",
          "32", "32", "--batch_size", "1", "--iters_per_epoch", "2", "--epochs", "2", "--device", "cpu",
          "--num_workers", "0", "--lambd", "0.004", *extra])
    rows = json.loads(out.with_name("smit_log.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(np.isfinite(r[t]) for r in rows for t in ["loss", *terms])
    assert set(rows[0]) & {"reconstruction", "patch", "global", "class", "correlation"} == set(terms)
    ckpt = load_checkpoint(out)
    settings = PretrainSettings.from_dict(ckpt["meta"]["settings"])
    assert settings.method == method and settings.correlation_lambda == 0.004
    assert (settings.uses_class_attention, settings.uses_siamese) == (method == "smart", terms[-1] == "correlation")
    reference = create_network("smit_tiny", 1, 2, [32, 32, 32]).encoder.state_dict()
    assert set(ckpt["encoder"]) == set(reference)          # class attention / projector stay private
    net = create_network("smit_tiny", 1, 3, [32, 32, 32])
    report = load_pretrained(net, out)
    assert report.matched_fraction == 1.0 and not report.missing
    # resuming checks the stored settings, the new keys included
    main(["-o", str(out), "-i", str(image_folder), "--method", method, "--preset", "smit_tiny", "--patch", "32",
          "32", "32", "--batch_size", "1", "--iters_per_epoch", "2", "--epochs", "3", "--device", "cpu",
          "--num_workers", "0", "--lambd", "0.004", *extra, "--c"])
    assert load_checkpoint(out)["meta"]["steps"] == 6


def test_a_smit_state_from_before_the_new_settings_still_resumes(image_folder, tmp_path):
    from smitunet.checkpoint_io import save_checkpoint

    torch.set_num_threads(1)
    out = tmp_path / "smit.pt"
    args = ["-o", str(out), "-i", str(image_folder), "--preset", "smit_tiny", "--patch", "32", "32", "32",
            "--batch_size", "1", "--iters_per_epoch", "1", "--device", "cpu", "--num_workers", "0"]
    main([*args, "--epochs", "1"])
    state_path = out.with_name("smit_state.pt")
    state = load_checkpoint(state_path)
    new_keys = {"smart_class_attention", "class_tokens", "class_attention_depth", "attention_mask_share",
                "weight_class", "gmim_siamese", "projection_dim", "correlation_lambda", "weight_correlation"}
    assert new_keys <= set(state["settings"])
    state["settings"] = {k: v for k, v in state["settings"].items() if k not in new_keys}
    save_checkpoint(state, state_path)
    main([*args, "--epochs", "2", "--c"])
    assert load_checkpoint(out)["meta"]["steps"] == 2


def test_gmim_target_views_prepared_by_workers_equal_the_inline_ones():
    from smitunet.pretraining.views import StepBatches, ViewSampler

    rng = np.random.default_rng(0)
    volumes = [rng.normal(size=(1, 20, 18, 22)).astype(np.float32) for _ in range(2)]
    steps = StepBatches(ViewSampler(volumes, PATCH, 1, seed=5), PretrainSettings(method="gmim"), GRID, [2, 2, 2],
                        [[1, 1, 1], [2, 2, 2], [4, 4, 4]], seed=5, rank=0, first_step=3, total_steps=5)
    prepared = list(torch.utils.data.DataLoader(steps, batch_size=None, num_workers=2))
    for i, (views, masks) in enumerate(prepared):
        inline = steps[i][1]
        assert torch.equal(masks.target_views, inline.target_views) and torch.equal(masks.tokens, inline.tokens)
        assert not torch.equal(masks.target_views, views)


@pytest.mark.parametrize("method,falling", [("gmim", ["loss", "reconstruction", "correlation"]),
                                            ("smart", ["loss", "reconstruction"])])
def test_a_short_run_lowers_its_losses(method, falling, image_folder, tmp_path):
    # 20 steps: enough for the reconstruction and GMIM's correlation; SMART's distillation terms sit near
    # ln(out_dim) that early (the Left Atrium run of the README/report shows them falling over 300 steps)
    torch.set_num_threads(1)
    out = tmp_path / "smit.pt"
    main(["-o", str(out), "-i", str(image_folder), "--method", method, "--preset", "smit_tiny", "--patch", "32",
          "32", "32", "--batch_size", "2", "--iters_per_epoch", "5", "--epochs", "4", "--device", "cpu",
          "--num_workers", "0"])
    rows = json.loads(out.with_name("smit_log.json").read_text())
    first, last = rows[0], rows[-1]
    for term in falling:
        assert last[term] < first[term], (term, first[term], last[term])
