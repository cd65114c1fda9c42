import math

import numpy as np
import pytest
import torch

from smitunet.evaluation.metrics import (case_metrics, class_metrics, dice, hd95, image_diagonal_mm, iou,
                                         mean_metrics, normalized_surface_dice)


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_dice_and_iou_of_hand_made_boxes():
    ref = _box((10, 10, 10), (2, 2, 2), (6, 6, 6))      # 64 voxels
    pred = _box((10, 10, 10), (2, 2, 4), (6, 6, 8))     # 64 voxels, 32 shared
    assert dice(pred, ref) == pytest.approx(2 * 32 / 128, abs=1e-12)
    assert iou(pred, ref) == pytest.approx(32 / 96, abs=1e-12)


def test_shifted_box_hd95_is_the_shift_in_mm():
    ref = _box((12, 12, 12), (3, 3, 3), (8, 8, 8))
    pred = _box((12, 12, 12), (3, 3, 5), (8, 8, 10))     # shifted by 2 voxels along x
    # x spacing 0.7 mm: each face of the shifted box is 2 voxels = 1.4 mm from the other surface at most
    assert hd95(pred, ref, (2.0, 1.5, 0.7)) <= 1.4 + 1e-9
    assert hd95(pred, pred, (2.0, 1.5, 0.7)) == 0.0
    assert normalized_surface_dice(pred, pred, (1, 1, 1), 0.0) == 1.0


def test_single_voxel_distance_is_exact():
    ref = _box((9, 9, 9), (4, 4, 1), (5, 5, 2))
    pred = _box((9, 9, 9), (4, 4, 6), (5, 5, 7))
    assert hd95(pred, ref, (1.0, 1.0, 0.5)) == pytest.approx(2.5, abs=1e-9)
    assert normalized_surface_dice(pred, ref, (1.0, 1.0, 0.5), 2.4) == 0.0
    assert normalized_surface_dice(pred, ref, (1.0, 1.0, 0.5), 2.5) == 1.0


def test_empty_conventions():
    empty = np.zeros((5, 6, 7), bool)
    some = _box((5, 6, 7), (1, 1, 1), (3, 3, 3))
    m = class_metrics(empty, empty, (1, 1, 1))
    assert all(math.isnan(m[k]) for k in ("dice", "iou", "hd95", "nsd"))
    m = class_metrics(empty, some, (2, 1, 1))
    assert m["dice"] == 0 and m["iou"] == 0 and m["nsd"] == 0
    assert m["hd95"] == pytest.approx(image_diagonal_mm((5, 6, 7), (2, 1, 1))) == pytest.approx(math.sqrt(64 + 25 + 36))


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_monai_on_random_blobs(seed):
    monai_metrics = pytest.importorskip("monai.metrics")
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape, spacing = (20, 24, 22), (2.0, 0.8, 1.1)
    field = ndimage.gaussian_filter(rng.standard_normal((2, *shape)), 2.5)
    pred = np.zeros(shape, bool)
    ref = np.zeros(shape, bool)
    inner = tuple(slice(1, n - 1) for n in shape)  # keep away from the image border, where edge rules may differ
    pred[inner] = field[0][inner] > 0.05
    ref[inner] = (0.7 * field[0] + 0.3 * field[1])[inner] > 0.05
    ours = class_metrics(pred, ref, spacing, nsd_tolerance_mm=1.5)
    p = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
    r = torch.from_numpy(np.stack([~ref, ref])[None].astype(np.float32))
    hd = monai_metrics.compute_hausdorff_distance(p, r, percentile=95, spacing=spacing)
    nsd = monai_metrics.compute_surface_dice(p, r, class_thresholds=[1.5], spacing=spacing)
    dsc = monai_metrics.compute_dice(p, r)
    assert ours["hd95"] == pytest.approx(float(hd[0, 0]), abs=1e-6)
    assert ours["nsd"] == pytest.approx(float(nsd[0, 0]), abs=1e-6)
    assert ours["dice"] == pytest.approx(float(dsc[0, 0]), abs=1e-6)


def test_case_metrics_regions_and_mean():
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    ref[3:5, 3:5, 3:5] = 2
    pred = ref.copy()
    pred[3:5, 3:5, 3:5] = 1
    per_label = case_metrics(pred, ref, [1, 2, [1, 2]], (1, 1, 1))
    assert per_label["1"]["dice"] == pytest.approx(2 * 8 / 24)
    assert per_label["2"]["dice"] == 0
    assert per_label["1,2"]["dice"] == 1
    empty = case_metrics(np.zeros_like(ref), np.zeros_like(ref), [1, 2, [1, 2]], (1, 1, 1))
    means = mean_metrics([per_label, empty])
    assert means["1,2"]["dice"] == 1 and means["1"]["tp"] == 8
    with pytest.raises(ValueError, match="shape"):
        case_metrics(pred[:-1], ref, [1], (1, 1, 1))
