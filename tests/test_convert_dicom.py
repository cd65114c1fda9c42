"""smitunet_convert_dicom: studies of a CT series + an RTSTRUCT -> a raw dataset that plans, trains and predicts
(with DICOM output); malformed studies are one line naming the study, with nothing left behind."""

from __future__ import annotations

import json
import logging

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from smitunet.dataset.dicom_rt import main as convert_main
from smitunet.dicom_io import load_series_headers, rtstruct_to_masks, seg_to_masks
from smitunet.imageio import read_image
from smitunet.inference.cli import main as predict_main
from smitunet.preprocessing.cli import main as plan_main
from smitunet.training.cli import main as train_main
from support.dicom import phantom, write_ct_series, write_rtstruct_for

SHAPE = (12, 28, 28)
MAPPING = {"body": ["Body", "External"], "core": ["core", "GTV"]}   # core later: it wins where it lies in body
ROI_NAMES = [("BODY", "Core"), ("External", "gtv"), ("body", "CORE"), ("External", "GTV")]


def make_studies(root, count=4, **series_kwargs) -> dict[str, dict]:
    """``count`` studies ``sN/ct/*.dcm`` + ``sN/rs.dcm`` with varied ROI spellings; returns their truths."""
    truths = {}
    for i in range(count):
        volume, rois = phantom(SHAPE, seed=i)
        study = root / f"s{i}"
        write_ct_series(study / "ct", volume, **series_kwargs)
        body_name, core_name = ROI_NAMES[i % len(ROI_NAMES)]
        write_rtstruct_for(study / "ct", {body_name: rois["body"], core_name: rois["core"]}, study / "rs.dcm")
        truth = np.zeros(SHAPE, np.uint8)
        truth[rois["body"]] = 1
        truth[rois["core"]] = 2
        truths[f"s{i}"] = {"labels": truth, "volume": volume}
    (root.parent / "mapping.json").write_text(json.dumps(MAPPING))
    return truths


def _convert(root, *extra):
    convert_main(["-i", str(root), "-m", str(root.parent / "mapping.json"), "-d", "321", "-n", "RTToy", *extra])


def test_converted_dataset_plans_trains_and_predicts_to_dicom(smitunet_dirs, tmp_path, capsys):
    truths = make_studies(tmp_path / "studies")
    _convert(tmp_path / "studies")
    out = smitunet_dirs["raw"] / "Dataset321_RTToy"
    assert [p.name for p in smitunet_dirs["raw"].iterdir()] == ["Dataset321_RTToy"]  # no staging folder left
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "body": 1, "core": 2} and dj["channel_names"] == {"0": "CT"}
    assert dj["numTraining"] == 4 and dj["file_ending"] == ".nii.gz"
    for case, truth in truths.items():
        image, geometry = read_image(out / "imagesTr" / f"{case}_0000.nii.gz")
        np.testing.assert_array_equal(image, truth["volume"])
        labels, label_geometry = read_image(out / "labelsTr" / f"{case}.nii.gz")
        assert label_geometry.matches(geometry) is None
        np.testing.assert_array_equal(labels, truth["labels"])  # contours rasterise back exactly; core over body

    plan_main(["-d", "321", "--preset", "smit_tiny", "-np", "1", "-c", "3d_fullres", "--verify_dataset_integrity"])
    train_main(["321", "3d_fullres", "0", "--epochs", "1", "--iters_per_epoch", "2", "--num_workers", "0",
                "--device", "cpu", "--disable_tta"])
    assert (smitunet_dirs["results"] / "Dataset321_RTToy").is_dir()

    # the trained model predicts a study's series straight back into RTSTRUCT and SEG on that series
    series_dir = tmp_path / "studies" / "s0" / "ct"
    predict_main(["-i", str(series_dir), "-o", str(tmp_path / "pred"), "-d", "321", "--disable_tta",
                  "--dicom_output", "rtstruct", "seg"])
    labels, geometry = read_image(tmp_path / "pred" / "ct.nii.gz")
    series = load_series_headers(series_dir, geometry)
    rt = pydicom.dcmread(tmp_path / "pred" / "ct_rtstruct.dcm")
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["body", "core"]
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == series.frame_of_reference_uid
    assert set(rtstruct_to_masks(rt, geometry)) == {"body", "core"}
    seg_masks = seg_to_masks(tmp_path / "pred" / "ct_seg.dcm", series)
    for name, value in (("body", 1), ("core", 2)):
        np.testing.assert_array_equal(seg_masks[name], labels == value)


def _fails_naming(capsys, smitunet_dirs, study: str, words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert f"study {study}" in err and words in err, err
    assert list(smitunet_dirs["raw"].iterdir()) == []  # nothing left behind, staging included


def test_rtstruct_on_another_frame_of_reference_is_one_line(smitunet_dirs, tmp_path, capsys):
    make_studies(tmp_path / "studies", count=2)
    write_rtstruct_for(tmp_path / "studies" / "s1" / "ct", {"Body": phantom(SHAPE)[1]["body"]},
                       tmp_path / "studies" / "s1" / "rs.dcm", frame_uid=generate_uid())
    with pytest.raises(SystemExit) as exc:
        _convert(tmp_path / "studies")
    assert exc.value.code == 2
    _fails_naming(capsys, smitunet_dirs, "s1", "Frame of Reference")


def test_missing_structure_fails_or_is_skipped_and_reported(smitunet_dirs, tmp_path, capsys):
    make_studies(tmp_path / "studies", count=3)
    write_rtstruct_for(tmp_path / "studies" / "s2" / "ct", {"Body": phantom(SHAPE, seed=2)[1]["body"]},
                       tmp_path / "studies" / "s2" / "rs.dcm")
    with pytest.raises(SystemExit):
        _convert(tmp_path / "studies")
    _fails_naming(capsys, smitunet_dirs, "s2", "missing structure(s) core")
    # the API mirror, with the mapping as a dict; studies without every structure are left out and reported
    from smitunet import api
    from smitunet.utils.log import logger

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    seen, handler = [], Collect()
    logger.addHandler(handler)
    try:
        out = api.convert_dicom(tmp_path / "studies", MAPPING, 321, "RTToy", skip_missing=True)
    finally:
        logger.removeHandler(handler)
    assert out == smitunet_dirs["raw"] / "Dataset321_RTToy"
    assert any(m.startswith("skipping study s2: missing structure(s) core") for m in seen), seen
    dj = json.loads((smitunet_dirs["raw"] / "Dataset321_RTToy" / "dataset.json").read_text())
    assert dj["numTraining"] == 2 and dj["skipped_studies"] == {"s2": ["core"]}
    assert sorted(p.name for p in (smitunet_dirs["raw"] / "Dataset321_RTToy" / "labelsTr").iterdir()) == [
        "s0.nii.gz", "s1.nii.gz"]


def test_uneven_slice_spacing_is_one_line_naming_the_study(smitunet_dirs, tmp_path, capsys):
    make_studies(tmp_path / "studies", count=2)
    # move the top slice of s0 1 mm further up: its last gap is 3.5 mm, the others 2.5 mm
    files = sorted((tmp_path / "studies" / "s0" / "ct").iterdir())
    headers = [pydicom.dcmread(f) for f in files]
    top = max(range(len(files)), key=lambda i: float(headers[i].ImagePositionPatient[2]))
    headers[top].ImagePositionPatient[2] = float(headers[top].ImagePositionPatient[2]) + 1.0
    headers[top].save_as(files[top])
    with pytest.raises(SystemExit):
        _convert(tmp_path / "studies")
    _fails_naming(capsys, smitunet_dirs, "s0", "uneven slice spacing")


def test_missing_dicom_extra_is_one_line_naming_the_install(smitunet_dirs, tmp_path, capsys, monkeypatch):
    import sys

    make_studies(tmp_path / "studies", count=1)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError, as when not installed
    with pytest.raises(SystemExit):
        _convert(tmp_path / "studies")
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and 'pip install -e ".[dicom]"' in err, err
    assert list(smitunet_dirs["raw"].iterdir()) == []
