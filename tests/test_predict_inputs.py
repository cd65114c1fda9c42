import numpy as np
import pytest

from smitunet.errors import SmitunetError
from smitunet.imageio import Geometry, write_image
from smitunet.inference.inputs import find_input_cases

GEO = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 4, 4))


def _touch(folder, *names):
    for name in names:
        write_image(np.zeros(GEO.shape_zyx, np.float32), GEO, folder / name)


def test_raw_naming_groups_channels(tmp_path):
    _touch(tmp_path, "a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz")
    cases = find_input_cases(tmp_path, 2)
    assert [c.name for c in cases] == ["a", "b"] and [p.name for p in cases[0].channels] == ["a_0000.nii.gz",
                                                                                             "a_0001.nii.gz"]
    with pytest.raises(SmitunetError, match="case a has 2 channel file"):
        find_input_cases(tmp_path, 1)


def test_plain_files_and_ending_mapping(tmp_path):
    _touch(tmp_path, "patient_0007.mha", "scan.mhd", "other.nrrd")  # _0007 without _0000: a plain name
    cases = {c.name: c for c in find_input_cases(tmp_path, 1)}
    assert set(cases) == {"patient_0007", "scan", "other"}
    assert cases["scan"].output_ending == ".mha" and cases["other"].output_ending == ".nrrd"
    assert find_input_cases(tmp_path / "other.nrrd", 1)[0].name == "other"
    with pytest.raises(SmitunetError, match="needs 2 channels"):
        find_input_cases(tmp_path, 2)


def test_empty_or_missing_input(tmp_path):
    with pytest.raises(SmitunetError, match="no input images found"):
        find_input_cases(tmp_path, 1)
    with pytest.raises(SmitunetError, match="input not found"):
        find_input_cases(tmp_path / "nope", 1)
