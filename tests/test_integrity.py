"""Every malformed-dataset fault is one line naming the case, the command exits 2, nothing is preprocessed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.preprocessing.cli import main

DATASET = "Dataset007_Faulty"


@pytest.fixture
def dataset(smitunet_dirs):
    return generate_synthetic_dataset(smitunet_dirs["raw"], dataset_id=7, name="Faulty", num_training=3,
                                      num_test=1, shape=(16, 18, 16))


def _image(dataset, case="case_001", channel=0, folder="imagesTr"):
    return dataset / folder / f"{case}_{channel:04d}.nii.gz"


def _label(dataset, case="case_001", folder="labelsTr"):
    return dataset / folder / f"{case}.nii.gz"


def _rewrite(path, change):
    """Read an image, let ``change(array, image) -> sitk.Image`` alter it, write it back."""
    image = sitk.ReadImage(str(path))
    sitk.WriteImage(change(sitk.GetArrayFromImage(image), image), str(path), True)


def _with_array(array, like):
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(like)
    return out


def _edit_json(dataset, change):
    path = dataset / "dataset.json"
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def _run_fails(capsys, smitunet_dirs, *extra) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["-d", "7", "--preset", "smit_tiny", "-np", "1", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert not (smitunet_dirs["preprocessed"] / DATASET).exists(), "nothing may be written for a faulty dataset"
    return err


def _problem_lines(err: str) -> list[str]:
    return [line for line in err.splitlines()[1:] if line.strip()]


def _assert_one_line(err: str, *fragments: str) -> None:
    lines = _problem_lines(err) or [err.strip()]
    hits = [line for line in lines if all(f in line for f in fragments)]
    assert len(hits) == 1, f"expected one line with {fragments}, got:\n{err}"


def test_valid_dataset_passes_and_all_background_label_only_warns(dataset, smitunet_dirs, capsys):
    _rewrite(_label(dataset), lambda a, img: _with_array(np.zeros_like(a), img))
    main(["-d", "7", "--preset", "smit_tiny", "-np", "1", "--verify_dataset_integrity"])
    err = capsys.readouterr().err
    assert "warning: case case_001: label is all background" in err
    assert len(list((smitunet_dirs["preprocessed"] / DATASET / "smitunetPlans_3d_fullres").glob("*_seg.b2nd"))) == 3


def test_size_mismatch(dataset, smitunet_dirs, capsys):
    _rewrite(_label(dataset), lambda a, img: sitk.GetImageFromArray(a[:-1]))
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_001", "label", "size")


def test_spacing_mismatch(dataset, smitunet_dirs, capsys):
    def change(a, img):
        img.SetSpacing((1.0, 1.0, 1.3))
        return img
    _rewrite(_label(dataset), change)
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_001", "label", "spacing")


def test_origin_mismatch(dataset, smitunet_dirs, capsys):
    def change(a, img):
        img.SetOrigin(tuple(o + 5 for o in img.GetOrigin()))
        return img
    _rewrite(_label(dataset), change)
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_001", "origin")


def test_missing_channel(smitunet_dirs, capsys):
    ds = generate_synthetic_dataset(smitunet_dirs["raw"], dataset_id=7, name="Faulty", num_training=3,
                                    num_test=0, shape=(16, 18, 16), num_channels=2)
    _image(ds, "case_002", 1).unlink()
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_002", "missing channel", "0001")


def test_image_without_label(dataset, smitunet_dirs, capsys):
    _label(dataset, "case_000").unlink()
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_000", "image without label")


def test_label_value_not_in_dataset_json(dataset, smitunet_dirs, capsys):
    _rewrite(_label(dataset), lambda a, img: _with_array(np.where(a == 2, 5, a).astype(a.dtype), img))
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_001", "[5]", "not in dataset.json")


def test_non_integer_labels(dataset, smitunet_dirs, capsys):
    _rewrite(_label(dataset), lambda a, img: _with_array(a.astype(np.float32) * 0.5, img))
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_001", "non-integer")


def _convert_to(dataset, ending):
    for path in sorted(dataset.glob("*Tr/*.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path).replace(".nii.gz", ending), True)
        path.unlink()
    _edit_json(dataset, lambda d: d.update(file_ending=ending))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_voxels(dataset, smitunet_dirs, capsys, bad):
    # ITK's NIfTI reader silently turns NaN/Inf into 0, so the fault can only reach us from other formats.
    _convert_to(dataset, ".mha")

    def change(a, img):
        a = a.astype(np.float32)
        a[3, 4, 5] = bad
        return _with_array(a, img)
    _rewrite(dataset / "imagesTr" / "case_002_0000.mha", change)
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_002", "NaN or Inf")


def test_2d_image(dataset, smitunet_dirs, capsys):
    sitk.WriteImage(sitk.Image(16, 18, sitk.sitkFloat32), str(_image(dataset, "case_000")), True)
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_000", "is 2D")


def test_4d_image(dataset, smitunet_dirs, capsys):
    sitk.WriteImage(sitk.Image([16, 18, 16, 2], sitk.sitkFloat32), str(_image(dataset, "case_000")), True)
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_000", "is 4D")


def test_truncated_nii_gz(dataset, smitunet_dirs, capsys):
    path = _image(dataset, "case_001")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_001", "cannot be read", "truncated")


def test_invalid_dataset_json(dataset, smitunet_dirs, capsys):
    (dataset / "dataset.json").write_text('{"channel_names": {"0": "MRI"},')
    err = _run_fails(capsys, smitunet_dirs)
    assert "dataset.json: invalid JSON" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("labels"), "missing field 'labels'"),
    (lambda d: d.pop("file_ending"), "missing field 'file_ending'"),
    (lambda d: d.update(labels={"background": 0, "a": 2}), "consecutive"),
    (lambda d: d.update(numTraining=5), "numTraining is 5 but 3"),
    (lambda d: d.update(channel_names={}), "channel_names"),
])
def test_incomplete_dataset_json(dataset, smitunet_dirs, capsys, change, message):
    _edit_json(dataset, change)
    err = _run_fails(capsys, smitunet_dirs)
    assert message in err and "dataset.json" in err


def test_duplicate_case_names_in_dataset_key(dataset, smitunet_dirs, capsys):
    entry = '{"images": ["imagesTr/case_000_0000.nii.gz"], "label": "labelsTr/case_000.nii.gz"}'
    d = json.loads((dataset / "dataset.json").read_text())
    head = json.dumps(d)[:-1]
    (dataset / "dataset.json").write_text(f'{head}, "dataset": {{"case_000": {entry}, "case_000": {entry}}}}}')
    err = _run_fails(capsys, smitunet_dirs)
    assert "duplicate key 'case_000'" in err


def test_duplicate_case_names_differing_in_letter_case(dataset, smitunet_dirs, capsys):
    for src, dst in ((_image(dataset, "case_001"), _image(dataset, "CASE_001")),
                     (_label(dataset, "case_001"), _label(dataset, "CASE_001"))):
        dst.write_bytes(src.read_bytes())
    _edit_json(dataset, lambda d: d.update(numTraining=4))
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_001", "duplicate case name", "CASE_001")


def test_path_escaping_case_paths(dataset, smitunet_dirs, capsys):
    _edit_json(dataset, lambda d: d.update(numTraining=1, dataset={
        "case_000": {"images": ["../../outside_0000.nii.gz"], "label": "labelsTr/case_000.nii.gz"}}))
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "case case_000", "escapes the dataset folder")


def test_path_escaping_case_name(dataset, smitunet_dirs, capsys):
    _edit_json(dataset, lambda d: d.update(numTraining=1, dataset={
        "../evil": {"images": ["imagesTr/case_000_0000.nii.gz"], "label": "labelsTr/case_000.nii.gz"}}))
    _assert_one_line(_run_fails(capsys, smitunet_dirs), "'../evil'", "invalid case name")


def test_label_without_image_and_bad_file_name(dataset, smitunet_dirs, capsys):
    _label(dataset, "case_000").rename(_label(dataset, "orphan"))
    (dataset / "imagesTr" / "noindex.nii.gz").write_bytes(b"")
    err = _run_fails(capsys, smitunet_dirs)
    _assert_one_line(err, "case orphan", "has no image")
    _assert_one_line(err, "imagesTr/noindex.nii.gz", "_{channel:04d}")
    _assert_one_line(err, "case case_000", "image without label")


def test_test_images_checked_with_flag_only(dataset, smitunet_dirs, capsys):
    path = _image(dataset, "test_000", folder="imagesTs")
    path.write_bytes(path.read_bytes()[:-100])
    _assert_one_line(_run_fails(capsys, smitunet_dirs, "--verify_dataset_integrity"), "case test_000", "cannot be read")
    main(["-d", "7", "--preset", "smit_tiny", "-np", "1", "--no_pp"])  # training data alone is fine
    assert (smitunet_dirs["preprocessed"] / DATASET / "smitunetPlans.json").is_file()
