"""smitunet_plan_and_preprocess end to end on the synthetic dataset: store format, re-runs, options."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.plans import Plans
from smitunet.preprocessing.case_arrays import load_case_array
from smitunet.preprocessing.cli import main

NAME = "Dataset999_Synthetic"


@pytest.fixture
def planned(smitunet_dirs, capsys):
    generate_synthetic_dataset(smitunet_dirs["raw"], num_training=4, num_test=1, shape=(20, 24, 22))
    main(["-d", "999", "--preset", "smit_tiny", "-np", "2"])
    capsys.readouterr()
    return smitunet_dirs["preprocessed"] / NAME


def test_store_follows_the_contract(planned):
    assert {p.name for p in planned.iterdir()} >= {"dataset.json", "dataset_fingerprint.json", "smitunetPlans.json",
                                                   "smitunetPlans_3d_fullres"}
    plans = Plans.load(planned / "smitunetPlans.json")
    folder = planned / plans.configuration("3d_fullres").data_identifier
    for i in range(4):
        case = f"case_{i:03d}"
        data = load_case_array(folder / f"{case}.b2nd")
        seg = load_case_array(folder / f"{case}_seg.b2nd")
        assert data.dtype == np.float32 and data.ndim == 4 and data.shape[0] == 1
        assert seg.dtype == np.int16 and seg.shape == (1, *data.shape[1:]) and set(np.unique(seg)) <= {0, 1, 2}
        props = json.loads((folder / f"{case}.json").read_text())
        for key in ("geometry", "shape_before_cropping", "bbox_used_for_cropping",
                    "shape_after_cropping_before_resampling", "spacing_original", "spacing_target"):
            assert key in props
        with np.load(folder / f"{case}_locations.npz", allow_pickle=False) as loc:
            assert sorted(loc.files) == ["class_1", "class_2"]
            for k in (1, 2):
                coords = loc[f"class_{k}"]
                assert coords.dtype == np.int32 and coords.shape[1] == 3 and len(coords) > 0
                assert (seg[0][tuple(coords.T)] == k).all()
    assert not list(folder.glob(".*"))  # no temporary files left behind


def test_rerun_skips_finished_cases_and_redoes_broken_ones(planned, capsys):
    folder = planned / "smitunetPlans_3d_fullres"
    stamp = os.stat(folder / "case_001.b2nd").st_mtime_ns
    (folder / "case_002_seg.b2nd").unlink()
    main(["-d", "Dataset999_Synthetic", "--preset", "smit_tiny", "-np", "1"])
    assert "1 preprocessed, 3 already done" in capsys.readouterr().out
    assert os.stat(folder / "case_001.b2nd").st_mtime_ns == stamp
    assert (folder / "case_002_seg.b2nd").is_file()


def test_plans_name_use_existing_plans_and_plan_only(planned, capsys):
    main(["-d", "999", "--preset", "smit_tiny", "-pl", "otherPlans", "--no_pp", "-np", "1"])
    assert (planned / "otherPlans.json").is_file() and not (planned / "otherPlans_3d_fullres").exists()
    # A hand-edited plan (coarser spacing) is used as is.
    plans = json.loads((planned / "otherPlans.json").read_text())
    plans["configurations"]["3d_fullres"]["spacing"] = [2.0, 2.0, 2.0]
    (planned / "otherPlans.json").write_text(json.dumps(plans))
    main(["-d", "999", "-pl", "otherPlans", "--use_existing_plans", "-np", "1"])
    props = json.loads((planned / "otherPlans_3d_fullres" / "case_000.json").read_text())
    assert props["spacing_target"] == [2.0, 2.0, 2.0]


def test_unknown_dataset_lists_what_exists(planned, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["-d", "5"])
    assert exc.value.code == 2
    assert "Dataset999_Synthetic" in capsys.readouterr().err
