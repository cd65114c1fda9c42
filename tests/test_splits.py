"""splits_final.json: 5 shuffled folds with a fixed seed, reused when present, user files respected."""

import pytest

from smitunet.errors import SmitunetError
from smitunet.training.splits import cases_for_fold, load_or_create_splits, make_splits
from smitunet.utils.files import load_json, save_json

CASES = [f"case_{i:03d}" for i in range(23)]


def test_five_folds_partition_all_cases():
    splits = make_splits(CASES)
    assert len(splits) == 5
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == CASES  # every case validated exactly once
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
        assert sorted(s["train"] + s["val"]) == CASES
        assert len(s["val"]) in (4, 5)
    assert splits[0]["val"] != CASES[:5]  # shuffled, not the sorted order


def test_fixed_seed_independent_of_input_order():
    assert make_splits(CASES) == make_splits(list(reversed(CASES)))


def test_created_once_then_reused(tmp_path):
    first = load_or_create_splits(tmp_path, CASES)
    assert load_json(tmp_path / "splits_final.json") == first
    custom = [{"train": CASES[2:], "val": CASES[:2]}]
    save_json(custom, tmp_path / "splits_final.json")
    assert load_or_create_splits(tmp_path, CASES) == custom  # user-supplied file respected
    assert cases_for_fold(custom, 0, CASES) == (CASES[2:], CASES[:2])


def test_fold_all_and_bad_folds(tmp_path):
    splits = make_splits(CASES)
    train, val = cases_for_fold(splits, "all", CASES)
    assert train == CASES and val == CASES
    with pytest.raises(SmitunetError, match="fold 5 does not exist"):
        cases_for_fold(splits, 5, CASES)
    save_json([{"train": ["ghost"], "val": CASES}], tmp_path / "splits_final.json")
    with pytest.raises(SmitunetError, match="splits_final.json: fold 0 names cases that are not preprocessed: ghost"):
        load_or_create_splits(tmp_path, CASES)


def test_few_cases_fewer_folds():
    splits = make_splits(["a", "b", "c"])
    assert len(splits) == 3 and sorted(c for s in splits for c in s["val"]) == ["a", "b", "c"]
