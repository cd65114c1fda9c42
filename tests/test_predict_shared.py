"""Prediction on the real ../shared examples: DICOM series in, NIfTI out; many-class CT; exact geometry."""

import dataclasses

import numpy as np
import pytest

from support.paths import shared_path
from smitunet.imageio import read_image, read_sitk, Geometry
from smitunet.inference.cli import main as predict_main
from support.prediction import save_tiny_model, tiny_plans

pytestmark = pytest.mark.shared


def test_dicom_series_folder_predicts_to_nifti_with_its_geometry(smitunet_dirs, tmp_path):
    study = shared_path("dicom_example", "hippocampus_crop_study1")
    save_tiny_model(smitunet_dirs["results"], tiny_plans(num_channels=1))
    predict_main(["-i", str(study), "-o", str(tmp_path / "out"), "--disable_tta", "-npp", "0"])
    out = tmp_path / "out" / "hippocampus_crop_study1.nii.gz"
    labels, geo = read_image(out)
    expected = Geometry.of(read_sitk(study))
    assert geo.matches(expected, tol=1e-6) is None
    assert labels.shape == expected.shape_zyx and set(np.unique(labels)) <= {0, 1, 2}
    # a folder holding series folders works the same way
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "s1").symlink_to(study, target_is_directory=True)
    predict_main(["-i", str(tmp_path / "studies"), "-o", str(tmp_path / "out2"), "--disable_tta", "-npp", "0"])
    np.testing.assert_array_equal(read_image(tmp_path / "out2" / "s1.nii.gz")[0], labels)


def test_many_class_ct_round_trips_geometry(smitunet_dirs, tmp_path):
    ct = shared_path("ct_example", "example_ct_sm.nii.gz")
    seg, _ = read_image(shared_path("ct_example", "example_seg.nii.gz"))
    values = [int(v) for v in np.unique(seg)]
    plans = tiny_plans(num_classes=len(values), spacing=(3.0, 3.0, 3.0), normalization="CT", patch=[16, 32, 32])
    plans = dataclasses.replace(plans, labels={"background": 0, **{f"organ{v}": v for v in values if v}})
    save_tiny_model(smitunet_dirs["results"], plans)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ct_0000.nii.gz").symlink_to(ct)
    predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--disable_tta", "--save_probabilities",
                  "--step_size", "1.0"])
    labels, geo = read_image(tmp_path / "out" / "ct.nii.gz")
    assert geo.matches(Geometry.of(read_sitk(ct)), tol=1e-6) is None
    assert set(np.unique(labels).tolist()) <= set(values)
    with np.load(tmp_path / "out" / "ct.npz", allow_pickle=False) as npz:
        assert npz["probabilities"].shape == (len(values), *geo.shape_zyx)
