"""Masks for pretraining, by value: SMIT block masking, SMART token dropout, GMIM entropy-adaptive masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smitunet.pretraining.gmim import (GmimSettings, cell_ratios_from_entropy, choose_cell_tokens, gmim_view_mask,
                                       hierarchical_remasks, normalised_entropy)
from smitunet.pretraining.masking import (block_mask, block_tokens_for, masked_fraction_at, token_dropout_mask,
                                          tokens_to_voxels)


def test_block_mask_hits_ratio_exactly_with_whole_blocks():
    grid, block = [8, 8, 8], [2, 2, 2]
    mask = block_mask(3, grid, 0.5, block, np.random.default_rng(0))
    assert mask.shape == (3, 512) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [256, 256, 256]
    blocks = mask.view(3, 4, 2, 4, 2, 4, 2).permute(0, 1, 3, 5, 2, 4, 6).reshape(3, 64, 8)
    per_block = blocks.sum(dim=-1)
    assert set(per_block.unique().tolist()) == {0, 8}      # each block wholly masked or wholly visible
    assert (per_block == 8).sum(dim=1).tolist() == [32, 32, 32]
    assert not torch.equal(mask[0], mask[1])                 # independent per sample


def test_block_mask_paper_default_ratio_and_uneven_blocks():
    grid = [48, 48, 48]                                      # 96^3 patch, token stride 2
    block = block_tokens_for([16, 16, 16], [2, 2, 2], grid)
    assert block == [8, 8, 8]                                # 16^3 voxels = 8^3 tokens
    mask = block_mask(2, grid, 0.7, block, np.random.default_rng(1))
    ratio = mask.float().mean(dim=1)
    assert torch.all((ratio >= 0.7) & (ratio <= 0.7 + 512 / 48 ** 3 + 1e-6))  # at most one block over
    # grid 10 with blocks of 4: border blocks are smaller and still masked whole
    small = block_mask(1, [10, 10, 10], 0.3, [4, 4, 4], np.random.default_rng(2))
    assert small.float().mean() >= 0.3


def test_block_size_adapts_to_small_patches():
    assert block_tokens_for([16, 16, 16], [2, 2, 2], [16, 8, 3]) == [4, 2, 1]
    assert block_tokens_for([16, 16, 16], [1, 2, 2], [48, 48, 48]) == [12, 8, 8]


def test_zero_ratio_masks_nothing_and_bad_ratio_is_refused():
    assert not block_mask(2, [4, 4, 4], 0.0, [2, 2, 2], np.random.default_rng(0)).any()
    with pytest.raises(ValueError):
        block_mask(1, [4, 4, 4], 1.0, [2, 2, 2], np.random.default_rng(0))


def test_tokens_to_voxels_and_pooling():
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 0] = True                                        # token (0, 0, 0) of a 2x2x2 grid
    vox = tokens_to_voxels(mask, [2, 2, 2], [2, 1, 3])
    assert vox.shape == (1, 1, 4, 2, 6)
    assert vox.sum() == 2 * 1 * 3 and vox[0, 0, :2, :1, :3].all()
    grid = [4, 4, 4]
    m = torch.zeros(1, 64, dtype=torch.bool)
    m.view(1, 4, 4, 4)[0, :2, :2, :1] = True                 # half of the first 2x2x2 cell
    frac = masked_fraction_at(m, grid, [2, 2, 2])
    assert frac.shape == (1, 8) and frac[0, 0] == pytest.approx(0.5) and frac[0, 1:].sum() == 0


def test_token_dropout_rate():
    drop = token_dropout_mask(4, 10_000, 0.2, np.random.default_rng(0))
    assert drop.shape == (4, 10_000)
    assert abs(drop.float().mean().item() - 0.2) < 0.01


def test_gmim_grid_follows_global_entropy():
    assert normalised_entropy(np.array([10, 0, 0, 0])) == pytest.approx(0.0)
    assert normalised_entropy(np.array([5, 5, 5, 5])) == pytest.approx(1.0)
    assert choose_cell_tokens(0.0, (8, 4, 2), [16, 16, 16]) == [8, 8, 8]   # flat view: coarse cells
    assert choose_cell_tokens(0.99, (8, 4, 2), [16, 16, 16]) == [2, 2, 2]  # busy view: fine cells
    assert choose_cell_tokens(0.0, (8, 4, 2), [16, 16, 3]) == [8, 8, 3]


def test_gmim_cell_ratio_rises_with_entropy_and_keeps_mean():
    ratios = cell_ratios_from_entropy(np.array([0.9, 0.1, 0.5, 0.5]), 0.6, 0.2)
    assert ratios[1] == pytest.approx(0.4) and ratios[0] == pytest.approx(0.8)
    assert ratios[2] == ratios[3] and ratios.mean() == pytest.approx(0.6)


def test_gmim_masks_busy_region_more():
    rng = np.random.default_rng(0)
    view = np.zeros((1, 32, 32, 32), dtype=np.float32)
    view[:, :, :, 16:] = rng.normal(size=(1, 32, 32, 16))   # right half textured, left half flat
    grid = [16, 16, 16]
    mask, cell, ratios = gmim_view_mask(view, grid, [2, 2, 2], GmimSettings(ratio=0.6, spread=0.3,
                                                                              cell_tokens=(4, 2)), rng)
    assert mask.shape == (16 ** 3,)
    volume = mask.reshape(grid)
    assert volume[:, :, 8:].mean() > volume[:, :, :8].mean() + 0.2
    assert abs(mask.mean() - 0.6) < 0.05


def test_hierarchical_remask_only_hides_visible_stage_tokens():
    grid = [8, 8, 8]
    mask = torch.zeros(1, 512, dtype=torch.bool)
    mask.view(1, 8, 8, 8)[0, :4] = True                      # the first half along z is hidden
    (stage1,) = hierarchical_remasks(mask, grid, [[2, 2, 2]], 0.5, np.random.default_rng(0))
    coarse = stage1.view(4, 4, 4)
    assert not coarse[:2].any()                              # already masked there: nothing re-masked
    assert coarse[2:].sum() == 16                            # half of the 32 visible stage tokens
