"""Raw dataset reader: dataset.json validation, case listing from folders or an explicit ``dataset`` key."""

from __future__ import annotations

import json

import pytest

from smitunet.dataset.raw import list_training_cases, load_dataset_json, scan_training_cases
from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.errors import DatasetIntegrityError, SmitunetError


@pytest.fixture
def ds(tmp_path):
    return generate_synthetic_dataset(tmp_path, num_training=3, num_test=0, shape=(12, 14, 12), num_channels=2)


def test_cases_from_folders_ignore_hidden_files(ds):
    (ds / "imagesTr" / "._case_000_0000.nii.gz").write_bytes(b"macOS resource fork")
    (ds / "imagesTr" / ".case_000_0000.nii.gz.part.nii.gz").write_bytes(b"")
    cases = list_training_cases(ds)
    assert sorted(cases) == ["case_000", "case_001", "case_002"]
    assert [p.name for p in cases["case_001"]["images"]] == ["case_001_0000.nii.gz", "case_001_0001.nii.gz"]
    assert cases["case_001"]["label"].name == "case_001.nii.gz"


def test_explicit_dataset_key_with_other_names(ds):
    (ds / "imagesTr" / "case_000_0001.nii.gz").rename(ds / "second.nii.gz")
    d = json.loads((ds / "dataset.json").read_text())
    d.update(numTraining=1, dataset={"patient7": {"images": ["imagesTr/case_000_0000.nii.gz", "second.nii.gz"],
                                                  "label": "labelsTr/case_000.nii.gz"}})
    (ds / "dataset.json").write_text(json.dumps(d))
    cases = list_training_cases(ds)
    assert list(cases) == ["patient7"] and cases["patient7"]["images"][1] == ds / "second.nii.gz"


def test_all_structural_problems_are_reported_together(ds):
    (ds / "imagesTr" / "case_000_0001.nii.gz").unlink()
    (ds / "labelsTr" / "case_001.nii.gz").unlink()
    (ds / "imagesTr" / "case_002_0002.nii.gz").write_bytes(b"")
    _, problems = scan_training_cases(ds)
    assert len(problems) == 3
    with pytest.raises(DatasetIntegrityError) as exc:
        list_training_cases(ds)
    assert exc.value.problems == problems


def test_msd_dataset_json_gets_a_hint(ds):
    (ds / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background"}}))
    with pytest.raises(SmitunetError, match="smitunet_convert_msd"):
        load_dataset_json(ds)


def test_regions_need_their_class_order(ds):
    d = json.loads((ds / "dataset.json").read_text())
    d["labels"]["whole"] = [1, 2]
    (ds / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(SmitunetError, match="regions_class_order"):
        load_dataset_json(ds)
    d["labels"]["empty"] = []
    d["regions_class_order"] = [1, 2, 2, 3]
    (ds / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(SmitunetError, match="empty.*positive integers"):
        load_dataset_json(ds)
