"""DICOM radiotherapy output: label map -> RTSTRUCT / DICOM SEG -> label map on a generated CT series and the real
../shared MR series, the UIDs they refer to, and ``smitunet_predict --dicom_output`` end to end."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pydicom
import pytest

from smitunet.dicom_io import (PALETTE, load_series_headers, rtstruct_to_masks, seg_to_masks,
                               write_dicom_outputs)
from smitunet.imageio import Geometry, read_image, read_sitk
from smitunet.inference.cli import main as predict_main
from support.dicom import dice, phantom, write_ct_series
from support.paths import shared_path
from support.prediction import save_tiny_model, tiny_plans

LABELS = {"background": 0, "body": 1, "core": 2}


def _label_map(rois: dict[str, np.ndarray]) -> np.ndarray:
    labels = np.zeros(next(iter(rois.values())).shape, np.uint8)
    for name, mask in rois.items():
        labels[mask] = LABELS[name]
    return labels


def _check_references(path, source_uids: dict, kind: str) -> pydicom.Dataset:
    """Read ``path`` back with pydicom and check every UID it refers to against the source series."""
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == source_uids["study"]
    if kind == "rtstruct":
        assert ds.Modality == "RTSTRUCT"
        (frame,) = ds.ReferencedFrameOfReferenceSequence
        assert frame.FrameOfReferenceUID == source_uids["frame"]
        (series,) = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence
        assert series.SeriesInstanceUID == source_uids["series"]
        assert {r.ReferencedSOPInstanceUID for r in series.ContourImageSequence} == source_uids["sops"]
        assert {r.ReferencedFrameOfReferenceUID for r in ds.StructureSetROISequence} == {source_uids["frame"]}
        for roi_contour in ds.ROIContourSequence:
            for item in roi_contour.ContourSequence:
                assert item.ContourImageSequence[0].ReferencedSOPInstanceUID in source_uids["sops"]
    else:
        assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
        assert ds.FrameOfReferenceUID == source_uids["frame"]
        (series,) = ds.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == source_uids["series"]
        assert {r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence} <= source_uids["sops"]
        for frame in ds.PerFrameFunctionalGroupsSequence:
            source = frame.DerivationImageSequence[0].SourceImageSequence[0]
            assert source.ReferencedSOPInstanceUID in source_uids["sops"]
    assert ds.SeriesInstanceUID != source_uids["series"]  # a new series of its own
    return ds


def _round_trip(folder, labels, tmp_path, source_uids):
    """Write both outputs for ``labels`` on the series in ``folder``; return the masks read back from each."""
    series = load_series_headers(folder, Geometry.of(read_sitk(folder)))
    written = write_dicom_outputs(("rtstruct", "seg"), series, labels, LABELS, tmp_path / "out" / "case")
    assert [p.name for p in written] == ["case_rtstruct.dcm", "case_seg.dcm"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_rtstruct.dcm", "case_seg.dcm"]  # no temps
    rt = _check_references(written[0], source_uids, "rtstruct")
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["body", "core"]
    assert [list(c.ROIDisplayColor) for c in rt.ROIContourSequence] == [list(PALETTE[0]), list(PALETTE[1])]
    seg = _check_references(written[1], source_uids, "seg")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["body", "core"]
    return rtstruct_to_masks(rt, series.geometry), seg_to_masks(written[1], series)


def test_generated_ct_round_trips_through_rtstruct_and_seg(tmp_path):
    volume, rois = phantom((20, 40, 40))
    uids = write_ct_series(tmp_path / "ct", volume)
    image, geometry = read_image(tmp_path / "ct")
    np.testing.assert_array_equal(image, volume)  # the series reads back as generated (slice order included)
    labels = _label_map(rois)
    from_rt, from_seg = _round_trip(tmp_path / "ct", labels, tmp_path, uids)
    voxel_cm3 = float(np.prod(geometry.spacing)) / 1000.0
    for name, value in LABELS.items():
        if value == 0:
            continue
        truth = labels == value
        assert truth.sum() * voxel_cm3 >= 1.0
        assert dice(from_rt[name], truth) >= 0.97, name
        np.testing.assert_array_equal(from_seg[name], truth)


@pytest.mark.shared
def test_real_mr_series_round_trips_through_rtstruct_and_seg(tmp_path):
    study = shared_path("dicom_example", "hippocampus_crop_study1")
    image, geometry = read_image(study)
    assert image.shape == (32, 51, 35)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.iterdir() if p.suffix == ".dcm"]
    uids = {"frame": headers[0].FrameOfReferenceUID, "series": headers[0].SeriesInstanceUID,
            "study": headers[0].StudyInstanceUID, "sops": {h.SOPInstanceUID for h in headers}}
    # structures from the image itself: bright tissue split into two parts, each well over 1 cm^3 at 1 mm
    bright = image > np.percentile(image, 60)
    rois = {"body": bright & (np.indices(image.shape)[2] < 18), "core": bright & (np.indices(image.shape)[2] >= 18)}
    labels = _label_map(rois)
    from_rt, from_seg = _round_trip(study, labels, tmp_path, uids)
    for name, value in LABELS.items():
        if value == 0:
            continue
        truth = labels == value
        assert truth.sum() * np.prod(geometry.spacing) / 1000.0 >= 1.0
        assert dice(from_rt[name], truth) >= 0.97, name
        np.testing.assert_array_equal(from_seg[name], truth)


@pytest.fixture
def ct_model(smitunet_dirs):
    plans = dataclasses.replace(tiny_plans(num_classes=3, spacing=(2.5, 0.8, 0.9), normalization="CT"),
                                labels=dict(LABELS))
    save_tiny_model(smitunet_dirs["results"], plans)
    return plans


def test_predict_writes_rtstruct_and_seg_matching_the_nifti(ct_model, tmp_path):
    volume, _ = phantom((20, 40, 40))
    uids = write_ct_series(tmp_path / "studies" / "ct1", volume)
    predict_main(["-i", str(tmp_path / "studies"), "-o", str(tmp_path / "out"), "--disable_tta",
                  "--dicom_output", "rtstruct", "seg"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ct1.nii.gz", "ct1_rtstruct.dcm", "ct1_seg.dcm", "prediction_settings.json"]
    labels, geometry = read_image(tmp_path / "out" / "ct1.nii.gz")
    series = load_series_headers(tmp_path / "studies" / "ct1", geometry)
    rt = _check_references(tmp_path / "out" / "ct1_rtstruct.dcm", uids, "rtstruct")
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["body", "core"]
    from_rt = rtstruct_to_masks(rt, geometry)
    from_seg = seg_to_masks(tmp_path / "out" / "ct1_seg.dcm", series)
    _check_references(tmp_path / "out" / "ct1_seg.dcm", uids, "seg")
    voxel_cm3 = float(np.prod(geometry.spacing)) / 1000.0
    for name in ("body", "core"):
        truth = labels == LABELS[name]
        np.testing.assert_array_equal(from_seg[name], truth)
        if truth.sum() * voxel_cm3 >= 1.0:  # an untrained network's labels: compare the structures of >= 1 cm^3
            assert dice(from_rt[name], truth) >= 0.97, name


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_dicom_output_of_a_non_dicom_input_is_one_line_and_writes_nothing(ct_model, tmp_path, capsys):
    from smitunet.imageio import write_image

    volume, _ = phantom((20, 40, 40))
    geometry = Geometry((0.9, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (40, 40, 20))
    write_image(volume.astype(np.float32), geometry, tmp_path / "nifti" / "case_0000.nii.gz")
    with pytest.raises(SystemExit) as exc:
        predict_main(["-i", str(tmp_path / "nifti"), "-o", str(tmp_path / "out"), "--dicom_output", "rtstruct"])
    assert exc.value.code == 2
    assert "needs DICOM series input" in _one_line_error(capsys) and not (tmp_path / "out").exists()
    # a mix: a series folder beside an image file
    write_ct_series(tmp_path / "nifti" / "ct1", volume)
    with pytest.raises(SystemExit):
        predict_main(["-i", str(tmp_path / "nifti"), "-o", str(tmp_path / "out"), "--dicom_output", "seg"])
    assert "case_0000.nii.gz is not a DICOM series" in _one_line_error(capsys) and not (tmp_path / "out").exists()


def test_missing_dicom_extra_is_one_line_naming_the_install(ct_model, tmp_path, capsys, monkeypatch):
    volume, _ = phantom((20, 40, 40))
    write_ct_series(tmp_path / "ct1", volume)
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError, as when not installed
    with pytest.raises(SystemExit):
        predict_main(["-i", str(tmp_path / "ct1"), "-o", str(tmp_path / "out"), "--dicom_output", "seg"])
    assert 'pip install -e ".[dicom]"' in _one_line_error(capsys) and not (tmp_path / "out").exists()


def test_contours_keep_holes_islands_diagonals_and_border_voxels(tmp_path):
    from smitunet.dicom_io import build_rtstruct_from_masks, roi_mask

    volume, _ = phantom((4, 24, 24))
    write_ct_series(tmp_path / "ct", volume)
    series = load_series_headers(tmp_path / "ct", Geometry.of(read_sitk(tmp_path / "ct")))
    mask = np.zeros((4, 24, 24), bool)
    mask[1, 2:20, 2:20] = True
    mask[1, 6:16, 6:16] = False          # a hole ...
    mask[1, 9:12, 9:12] = True           # ... with an island in it
    mask[2, 0:5, 0:24] = True            # touching the slice border
    mask[3, 5, 5] = mask[3, 6, 6] = mask[3, 7, 5] = True   # single voxels touching only at corners
    rt = build_rtstruct_from_masks(series, {"shape": (mask, (255, 0, 0))})
    np.testing.assert_array_equal(roi_mask(rt, 1, series.geometry), mask)
