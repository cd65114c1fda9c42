import json

import numpy as np
import pytest

from smitunet.evaluation.cli import main as evaluate_main
from smitunet.evaluation.evaluate import evaluate_folders
from smitunet.imageio import Geometry, write_image

GEO = Geometry(spacing=(0.5, 1.0, 2.0), origin=(1.0, 2.0, 3.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), size=(12, 10, 8))


def _write_pair(tmp_path, case, ref, pred, geo=GEO, ending=".nii.gz"):
    (tmp_path / "gt").mkdir(exist_ok=True)
    (tmp_path / "pred").mkdir(exist_ok=True)
    write_image(ref, GEO, tmp_path / "gt" / f"{case}{ending}")
    write_image(pred, geo, tmp_path / "pred" / f"{case}{ending}")


def _known_cases(tmp_path):
    shape = GEO.shape_zyx  # (8, 10, 12), spacing zyx (2.0, 1.0, 0.5)
    ref = np.zeros(shape, np.uint8)
    ref[2:5, 2:6, 2:6] = 1           # 48 voxels
    pred = np.zeros(shape, np.uint8)
    pred[2:5, 2:6, 4:8] = 1          # shifted 2 voxels in x = 1.0 mm; overlap 24
    ref[6, 8, 9] = 2
    pred[6, 8, 5] = 2                # single voxels 4 voxels apart in x = 2.0 mm
    _write_pair(tmp_path, "a", ref, pred)
    _write_pair(tmp_path, "b", ref, ref)  # perfect
    return ref, pred


def test_summary_matches_hand_computed_values(tmp_path):
    _known_cases(tmp_path)
    evaluate_main([str(tmp_path / "gt"), str(tmp_path / "pred"), "-l", "1", "2", "1,2", "--nsd_tolerance", "1.0"])
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    per_case = {c["case"]: c["metrics"] for c in summary["metric_per_case"]}
    a = per_case["a"]
    assert abs(a["1"]["dice"] - 2 * 24 / 96) < 1e-6
    assert abs(a["1"]["iou"] - 24 / 72) < 1e-6
    assert abs(a["1"]["hd95"] - 1.0) < 1e-6     # every surface voxel is at most 2 voxels (1 mm) from the other
    assert abs(a["2"]["dice"] - 0.0) < 1e-6 and abs(a["2"]["hd95"] - 2.0) < 1e-6
    assert a["2"]["nsd"] == 0.0 and a["1"]["nsd"] == 1.0
    assert abs(a["1,2"]["dice"] - 2 * 24 / 98) < 1e-6
    assert per_case["b"]["1"]["dice"] == 1.0 and per_case["b"]["2"]["hd95"] == 0.0
    assert abs(summary["mean"]["1"]["dice"] - (0.5 + 1.0) / 2) < 1e-6
    assert summary["num_cases"] == 2 and summary["labels"] == ["1", "2", "1,2"]


def test_default_labels_and_empty_classes_are_null(tmp_path):
    ref = np.zeros(GEO.shape_zyx, np.uint8)
    ref[1:3, 1:3, 1:3] = 3
    _write_pair(tmp_path, "x", ref, ref)
    _write_pair(tmp_path, "y", np.zeros_like(ref), np.zeros_like(ref))
    summary = evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    assert summary["labels"] == ["3"]
    on_disk = json.loads((tmp_path / "pred" / "summary.json").read_text())
    y = next(c for c in on_disk["metric_per_case"] if c["case"] == "y")
    assert y["metrics"]["3"]["dice"] is None  # empty vs empty: NaN, written as null
    assert on_disk["mean"]["3"]["dice"] == 1.0


def test_missing_cases_are_named(tmp_path, capsys):
    ref = np.zeros(GEO.shape_zyx, np.uint8)
    _write_pair(tmp_path, "c1", ref, ref)
    write_image(ref, GEO, tmp_path / "gt" / "c2.nii.gz")
    with pytest.raises(SystemExit) as exc:
        evaluate_main([str(tmp_path / "gt"), str(tmp_path / "pred")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing predictions for 1 case(s): c2" in err and "\n" not in err
    summary = evaluate_folders(tmp_path / "gt", tmp_path / "pred", allow_subset=True)
    assert summary["num_cases"] == 1
    write_image(ref, GEO, tmp_path / "pred" / "zz.nii.gz")
    with pytest.raises(Exception, match="no reference for 1 predicted case.*zz"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", allow_subset=True)


def test_geometry_mismatch_is_one_line(tmp_path, capsys):
    ref = np.zeros(GEO.shape_zyx, np.uint8)
    other = Geometry(spacing=(0.5, 1.0, 2.5), origin=GEO.origin, direction=GEO.direction, size=GEO.size)
    _write_pair(tmp_path, "g", ref, ref, geo=other)
    with pytest.raises(SystemExit):
        evaluate_main([str(tmp_path / "gt"), str(tmp_path / "pred")])
    err = capsys.readouterr().err.strip()
    assert "g.nii.gz: geometry differs from reference g.nii.gz: spacing" in err and "\n" not in err
