import numpy as np
import pytest
import SimpleITK as sitk

from smitunet.errors import SmitunetError
from smitunet.imageio import Geometry, read_channels, read_image, write_image


def _geometry():
    return Geometry(spacing=(0.8, 0.9, 2.5), origin=(-10.0, 5.5, 3.25),
                    direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0), size=(7, 6, 5))


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_write_read_round_trip_keeps_geometry(tmp_path, ending):
    geo = _geometry()
    arr = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    out = tmp_path / f"img{ending}"
    write_image(arr, geo, out)
    back, geo2 = read_image(out)
    np.testing.assert_array_equal(back, arr)
    assert geo.matches(geo2) is None
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_read_channels_rejects_mismatched_geometry(tmp_path):
    geo = _geometry()
    arr = np.zeros((5, 6, 7), np.float32)
    write_image(arr, geo, tmp_path / "a_0000.nii.gz")
    other = Geometry(spacing=(1.0, 0.9, 2.5), origin=geo.origin, direction=geo.direction, size=geo.size)
    write_image(arr, other, tmp_path / "a_0001.nii.gz")
    with pytest.raises(SmitunetError, match=r"a_0001.nii.gz: geometry differs .*spacing"):
        read_channels([tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz"])


def test_truncated_file_is_one_clear_error(tmp_path):
    geo = _geometry()
    write_image(np.ones((5, 6, 7), np.float32), geo, tmp_path / "x.nii.gz")
    data = (tmp_path / "x.nii.gz").read_bytes()
    (tmp_path / "x.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SmitunetError, match=r"x.nii.gz: cannot be read as an image"):
        read_image(tmp_path / "x.nii.gz")


def test_2d_image_is_rejected(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4), np.float32)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(SmitunetError, match=r"flat.nii.gz: is 2D; expected a 3D image"):
        read_image(tmp_path / "flat.nii.gz")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(SmitunetError):
        write_image(np.zeros((2, 2, 2), np.float32), _geometry(), tmp_path / "bad.nii.gz")
    assert list(tmp_path.iterdir()) == []
