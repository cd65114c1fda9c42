"""create_raw_dataset: loose files -> raw dataset; the CT example as a one-case CT dataset and its plan."""

from __future__ import annotations

import json

import numpy as np

from support.paths import shared_path
from smitunet.dataset.importer import create_raw_dataset
from smitunet.dataset.raw import list_training_cases, load_dataset_json
from smitunet.imageio import Geometry, read_image, write_image
from smitunet.plans import Plans
from smitunet.preprocessing.case_arrays import load_case_array
from smitunet.preprocessing.cli import main as plan_main


def test_label_gaps_are_renumbered_and_recorded(tmp_path):
    geo = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (6, 5, 4))
    seg = np.zeros((4, 5, 6), np.uint8)
    seg[0, 0, :3], seg[1, 1, :2], seg[2, 2, 0] = 5, 117, 1
    write_image(np.ones((4, 5, 6), np.float32), geo, tmp_path / "img.mha")
    write_image(seg, geo, tmp_path / "seg.nrrd")
    ds = create_raw_dataset(tmp_path / "raw", 12, "Gaps", {"c1": {"images": [tmp_path / "img.mha"],
                                                                  "label": tmp_path / "seg.nrrd"}}, {"0": "CT"})
    dj = load_dataset_json(ds)
    assert dj["labels"] == {"background": 0, "label_1": 1, "label_5": 2, "label_117": 3}
    assert dj["original_label_values"] == {"0": 0, "1": 1, "2": 5, "3": 117}
    case = list_training_cases(ds)["c1"]
    out, out_geo = read_image(case["label"])
    assert out_geo == geo and out[0, 0, 0] == 2 and out[1, 1, 0] == 3 and out[2, 2, 0] == 1
    assert read_image(case["images"][0])[1] == geo


def test_ct_example_recipe_gives_a_sensible_ct_plan(tmp_path, smitunet_dirs, capsys):
    """The recipe for ../shared/data/ct_example (122x101x30 at 3 mm, int16 HU, 41 organ ids)."""
    src = shared_path("ct_example")
    create_raw_dataset(smitunet_dirs["raw"], 501, "CTExample",
                       {"ct_001": {"images": [src / "example_ct_sm.nii.gz"], "label": src / "example_seg.nii.gz"}},
                       channel_names={"0": "CT"})
    plan_main(["-d", "501", "--verify_dataset_integrity", "--preset", "smit_small", "-np", "1"])
    out = smitunet_dirs["preprocessed"] / "Dataset501_CTExample"
    plans = Plans.load(out / "smitunetPlans.json")
    c = plans.configuration("3d_fullres")
    assert plans.num_classes == 42 and list(plans.configurations) == ["3d_fullres", "2d"]  # 2d: every dataset
    assert c.spacing == [3.0, 3.0, 3.0] and c.normalization == ["CT"] and c.use_mask_for_norm == [False]
    assert c.patch_size == [32, 112, 128] and c.batch_size == 2  # the whole 30x101x122 scan in one patch
    stats = plans.foreground_intensity_properties["0"]
    assert -1100 < stats["percentile_00_5"] < stats["mean"] < stats["percentile_99_5"] < 3000
    data = load_case_array(out / c.data_identifier / "ct_001.b2nd")
    lo = (stats["percentile_00_5"] - stats["mean"]) / stats["std"]
    hi = (stats["percentile_99_5"] - stats["mean"]) / stats["std"]
    assert np.isclose(data.min(), lo, atol=1e-4) and np.isclose(data.max(), hi, atol=1e-4)
    props = json.loads((out / c.data_identifier / "ct_001.json").read_text())
    assert props["shape_before_cropping"] == [30, 101, 122]
