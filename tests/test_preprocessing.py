"""preprocess_case / restore_original_geometry: normalization, resampling, exact geometry round trips."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from smitunet.imageio import Geometry, read_image, write_image
from smitunet.preprocessing.preprocessor import preprocess_case, restore_original_geometry
from smitunet.preprocessing.resampling import resample_data, resample_seg, separate_axis
from support.planning import make_plans


def ellipsoid_case(shape=(30, 34, 28), spacing_xyz=(1.0, 1.0, 1.0)):
    """An image with air (0) around a body and two labelled ellipsoids; geometry with rotation and offset."""
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    body = ((z - 15) / 12) ** 2 + ((y - 17) / 14) ** 2 + ((x - 14) / 11) ** 2 <= 1
    seg = np.zeros(shape, np.int16)
    seg[((z - 12) / 5) ** 2 + ((y - 15) / 6) ** 2 + ((x - 12) / 4) ** 2 <= 1] = 1
    seg[((z - 19) / 4) ** 2 + ((y - 21) / 4) ** 2 + ((x - 17) / 5) ** 2 <= 1] = 2
    image = np.where(body, 100 + 50 * seg + np.random.default_rng(0).normal(0, 5, shape), 0).astype(np.float32)
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    return image[None], seg, Geometry(spacing_xyz, (12.5, -3.0, 40.25), direction, tuple(reversed(shape)))


def dice(a, b, k):
    a, b = a == k, b == k
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_properties_follow_the_contract_and_crop_to_nonzero():
    image, seg, geo = ellipsoid_case()
    data, pseg, props = preprocess_case(image, geo, make_plans([1.0, 1.0, 1.0]), "3d_fullres", seg)
    assert data.dtype == np.float32 and pseg.dtype == np.int16 and pseg.shape == (1, *data.shape[1:])
    assert props["shape_before_cropping"] == [30, 34, 28]
    box = props["bbox_used_for_cropping"]
    assert box == [[3, 28], [3, 32], [3, 26]]
    assert props["shape_after_cropping_before_resampling"] == [25, 29, 23] == list(data.shape[1:])
    assert Geometry.from_dict(props["geometry"]) == geo
    assert props["spacing_original"] == [1.0, 1.0, 1.0] and props["spacing_target"] == [1.0, 1.0, 1.0]
    assert abs(float(data.mean())) < 1e-4 and abs(float(data.std()) - 1) < 1e-3  # z-score, whole crop
    np.testing.assert_array_equal(pseg[0], seg[3:28, 3:32, 3:26])


def test_label_round_trip_at_other_spacings_gives_dice_099_and_identical_geometry(tmp_path):
    image, seg, geo = ellipsoid_case()
    write_image(seg, geo, tmp_path / "original.nii.gz")
    # Label at 1 mm; target spacings at or finer than it lose nothing, so the round trip must be near exact.
    for target, minimum in (([1.0, 1.0, 1.0], 1.0), ([0.8, 0.8, 0.8], 0.99), ([0.9, 0.75, 0.8], 0.99),
                            ([1.0, 1.0, 1.25], 0.9)):  # coarser: a 4-voxel radius loses real detail
        plans = make_plans(target)
        data, pseg, props = preprocess_case(image, geo, plans, "3d_fullres", seg)
        assert list(pseg.shape[1:]) == [round(s / t) for s, t in
                                        zip(props["shape_after_cropping_before_resampling"], target)]
        restored = restore_original_geometry(pseg[0], props, plans, "3d_fullres", is_seg=True)
        write_image(restored, Geometry.from_dict(props["geometry"]), tmp_path / "restored.nii.gz")
        back, back_geo = read_image(tmp_path / "restored.nii.gz")
        _, original_geo = read_image(tmp_path / "original.nii.gz")
        assert back_geo == original_geo
        for k in (1, 2):
            assert dice(back, seg, k) >= minimum, (target, k, dice(back, seg, k))


def test_probabilities_restore_to_original_shape_with_background_outside_crop():
    image, seg, geo = ellipsoid_case()
    plans = make_plans([1.25, 1.25, 1.25])
    _, pseg, props = preprocess_case(image, geo, plans, "3d_fullres", seg)
    onehot = np.stack([(pseg[0] == k).astype(np.float32) for k in range(3)])
    probs = restore_original_geometry(onehot, props, plans, "3d_fullres", is_seg=False)
    assert probs.shape == (3, 30, 34, 28) and probs.dtype == np.float32
    assert probs[0, 0, 0, 0] == 1 and probs[1:, 0, 0, 0].sum() == 0
    assert dice(probs.argmax(0), seg, 1) > 0.9


def test_image_without_label_and_ct_normalization():
    image, _, geo = ellipsoid_case()
    image = image - 1000 * (image == 0)  # CT-like: air at -1000, so nothing is cropped
    props = {"mean": 100.0, "std": 20.0, "percentile_00_5": 90.0, "percentile_99_5": 160.0}
    plans = make_plans([1.0, 1.0, 1.0], normalization=("CT",), intensities={"0": props})
    data, seg, p = preprocess_case(image, geo, plans, "3d_fullres")
    assert seg is None and p["bbox_used_for_cropping"] == [[0, 30], [0, 34], [0, 28]]
    assert np.isclose(data.min(), (90 - 100) / 20) and np.isclose(data.max(), (160 - 100) / 20)


def test_zscore_inside_mask_sets_outside_to_zero():
    image, _, geo = ellipsoid_case()
    data, _, _ = preprocess_case(image, geo, make_plans([1.0] * 3, use_mask=(True,)), "3d_fullres")
    inside = data[0] != 0
    assert (data[0][0, 0, 0]) == 0
    assert abs(float(data[0][inside].mean())) < 0.05 and abs(float(data[0][inside].std()) - 1) < 0.05


def test_anisotropic_spacing_resamples_the_coarse_axis_separately():
    assert separate_axis([5.0, 0.8, 0.8], [5.0, 1.0, 1.0]) == 0
    assert separate_axis([1.0, 1.0, 1.0], [1.5, 1.5, 1.5]) is None
    seg = np.zeros((6, 20, 20), np.int16)
    seg[2:4, 5:15, 5:15] = 1
    out = resample_seg(seg, (12, 25, 25), order=1, axis=0)
    # Nearest along z: every output slice is a copy of one input slice, no blending across slices.
    assert set(np.unique(out.sum(axis=(1, 2)))) <= {0, int(out[5].sum())}
    assert out[4:8].any(axis=(1, 2)).all() and not out[:4].any() and not out[8:].any()
    data = np.random.default_rng(0).random((2, 6, 20, 20), dtype=np.float32)
    resampled = resample_data(data, (12, 25, 25), order=3, axis=0)
    assert resampled.shape == (2, 12, 25, 25) and resampled.dtype == np.float32


def test_spacing_change_preprocess_and_restore_are_memory_lean():
    """No float64 or per-class full-volume stacks: peak extra memory stays a few float32 volumes."""
    shape = (40, 96, 96)
    seg = np.zeros(shape, np.int16)
    for k in range(1, 9):  # eight classes
        seg[k * 4:k * 4 + 3, 10:80, 10:80] = k
    image = (seg * 10 + 1).astype(np.float32)[None]
    geo = Geometry((1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), tuple(reversed(shape)))
    plans = make_plans([1.0, 1.3, 1.3], labels=9)
    volume_bytes = int(np.prod(shape)) * 4
    tracemalloc.start()
    _, pseg, props = preprocess_case(image, geo, plans, "3d_fullres", seg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    restored = restore_original_geometry(pseg[0], props, plans, "3d_fullres", is_seg=True)
    _, peak_restore = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 6 * volume_bytes, peak / volume_bytes       # a (9, z, y, x) float32 stack alone would be 9
    assert peak_restore < 5 * volume_bytes, peak_restore / volume_bytes
    assert dice(restored, seg, 3) > 0.95


@pytest.mark.parametrize("bad", ["shape", "channels"])
def test_wrong_input_is_a_clear_error(bad):
    from smitunet.errors import SmitunetError

    image, seg, geo = ellipsoid_case()
    if bad == "shape":
        image = image[:, :-1]
    else:
        image = np.concatenate([image, image])
    with pytest.raises(SmitunetError):
        preprocess_case(image, geo, make_plans([1.0] * 3), "3d_fullres", seg)


def test_boxed_label_resampling_equals_full_volume_one_hot_argmax():
    """Per-class boxes and implicit background give exactly the full one-hot interpolation + argmax."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    seg = np.zeros((30, 40, 36), np.int16)
    for k in range(1, 5):
        c = rng.integers(5, 30, 3)
        seg[c[0] - 4:c[0] + 3, c[1] - 5:c[1] + 4, c[2] - 3:c[2] + 5] = k
    seg[0:3, 0:5, 0:5] = 2  # a class touching the image edge
    for shape in [(45, 52, 30), (20, 33, 50)]:
        factors = [n / o for n, o in zip(shape, seg.shape)]
        scores = [ndimage.zoom((seg == k).astype(np.float32), factors, order=1, mode="nearest", grid_mode=True)
                  for k in range(5)]
        np.testing.assert_array_equal(resample_seg(seg, shape), np.argmax(np.stack(scores), 0))


@pytest.mark.shared
def test_real_hippocampus_label_round_trip(tmp_path):
    from support.paths import shared_path

    folder = shared_path("Task04_Hippocampus")
    image, geo = read_image(folder / "imagesTr" / "hippocampus_003.nii.gz")
    seg, seg_geo = read_image(folder / "labelsTr" / "hippocampus_003.nii.gz")
    for target in ([1.0, 1.0, 1.0], [0.8, 0.8, 0.8], [0.7, 0.9, 0.6]):
        plans = make_plans(target)
        _, pseg, props = preprocess_case(image[None], geo, plans, "3d_fullres", seg)
        restored = restore_original_geometry(pseg[0], props, plans, "3d_fullres", is_seg=True)
        write_image(restored, Geometry.from_dict(props["geometry"]), tmp_path / "back.nii.gz")
        back, back_geo = read_image(tmp_path / "back.nii.gz")
        assert back_geo == seg_geo
        assert min(dice(back, seg, k) for k in (1, 2)) >= (1.0 if target == [1.0, 1.0, 1.0] else 0.99)
