"""Typed, versioned records between stages: the fingerprint and the case properties."""

from __future__ import annotations

import json

import pytest

from smitunet.contracts import CaseProperties, Fingerprint
from smitunet.errors import SmitunetError
from support.planning import fingerprint


def test_fingerprint_round_trip_and_one_line_errors(tmp_path):
    fp = Fingerprint.from_dict(fingerprint([36, 50, 35], [1, 1, 1], n=3))
    assert Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict()))) == fp and fp.num_unlabelled_cases == 0
    path = tmp_path / "dataset_fingerprint.json"
    for edit, message in ((lambda d: d.update(version=0), "version 0 is not supported"),
                          (lambda d: d.pop("spacings"), r"missing field\(s\) spacings"),
                          (lambda d: d.update(spacings=[[1, 1]] * 3), r"\(z, y, x\) triples")):
        d = fp.to_dict()
        edit(d)
        path.write_text(json.dumps(d))
        with pytest.raises(SmitunetError, match=message) as exc:
            Fingerprint.load(path)
        assert "\n" not in str(exc.value)
    path.write_text("{not json")
    with pytest.raises(SmitunetError, match="not a readable fingerprint"):
        Fingerprint.load(path)


def test_case_properties_are_checked_when_read(tmp_path):
    good = {"geometry": {}, "shape_before_cropping": [4, 4, 4], "bbox_used_for_cropping": [[0, 4]] * 3,
            "shape_after_cropping_before_resampling": [4, 4, 4], "spacing_original": [1.0] * 3,
            "spacing_target": [1.0] * 3, "preprocessing_hash": "abc"}
    assert CaseProperties.from_dict(good).to_dict() == good
    (tmp_path / "c.json").write_text(json.dumps({**good, "bbox_used_for_cropping": [[0, 4]]}))
    with pytest.raises(SmitunetError, match="c.json: bbox_used_for_cropping must be three"):
        CaseProperties.load(tmp_path / "c.json")
