"""Fingerprint: per-case spacing and cropped shape, seeded foreground intensity statistics."""

from __future__ import annotations

import numpy as np

from smitunet.dataset.raw import list_training_cases, load_dataset_json
from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.imageio import read_image
from smitunet.preprocessing.fingerprint import extract_fingerprint
from smitunet.utils.parallel import CasePool


def test_fingerprint_values_match_the_images_and_are_reproducible(tmp_path):
    ds = generate_synthetic_dataset(tmp_path, num_training=4, num_test=0, shape=(20, 24, 22),
                                    spacing=(1.5, 1.0, 0.8))
    dj, cases = load_dataset_json(ds), list_training_cases(ds)
    fp, problems, warnings = extract_fingerprint(ds, dj, cases, CasePool(1))
    assert problems == [] and warnings == []
    assert fp["case_identifiers"] == sorted(cases)
    assert all(np.allclose(s, [1.5, 1.0, 0.8]) for s in fp["spacings"])
    assert fp["shapes_before_crop"] == [[20, 24, 22]] * 4
    image, _ = read_image(cases["case_000"]["images"][0])
    nz = np.argwhere(image != 0)
    assert fp["shapes_after_crop"][0] == list(nz.max(0) - nz.min(0) + 1)
    assert 0 < fp["median_relative_size_after_cropping"] < 1
    # Foreground statistics from the labelled voxels of all cases (few enough here to take them all).
    fg = np.concatenate([read_image(c["images"][0])[0][read_image(c["label"])[0] > 0] for c in cases.values()])
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    assert np.isclose(stats["mean"], fg.mean(), rtol=1e-5) and np.isclose(stats["std"], fg.std(), rtol=1e-4)
    assert stats["min"] == fg.min() and stats["max"] == fg.max()
    assert np.isclose(stats["percentile_99_5"], np.percentile(fg, 99.5), rtol=1e-5)
    with CasePool(2) as pool:  # same numbers with workers, in any completion order
        again, _, _ = extract_fingerprint(ds, dj, cases, pool)
    assert again == fp


def test_large_foreground_is_sampled_with_a_fixed_seed(tmp_path):
    from smitunet.preprocessing.fingerprint import SAMPLES_PER_CASE, _foreground_samples

    data = np.random.default_rng(1).normal(size=(2, 40, 40, 40)).astype(np.float32)
    seg = np.ones((40, 40, 40), np.uint8)
    a, is_fg = _foreground_samples("case_x", data, seg, [[0, 40]] * 3)
    b, _ = _foreground_samples("case_x", data, seg, [[0, 40]] * 3)
    assert is_fg and a.shape == (2, SAMPLES_PER_CASE) and np.array_equal(a, b)
    assert not np.array_equal(a, _foreground_samples("case_y", data, seg, [[0, 40]] * 3)[0])


def test_cases_without_foreground_do_not_dilute_the_statistics(tmp_path):
    from smitunet.imageio import write_image

    ds = generate_synthetic_dataset(tmp_path, num_training=3, num_test=0, shape=(16, 18, 16))
    dj, cases = load_dataset_json(ds), list_training_cases(ds)
    before, _, _ = extract_fingerprint(ds, dj, cases, CasePool(1))
    seg, geo = read_image(cases["case_001"]["label"])
    write_image(np.zeros_like(seg), geo, cases["case_001"]["label"])
    after, _, warnings = extract_fingerprint(ds, dj, cases, CasePool(1))
    assert warnings == ["case case_001: label is all background"]
    fg = np.concatenate([read_image(cases[c]["images"][0])[0][read_image(cases[c]["label"])[0] > 0]
                         for c in ("case_000", "case_002")])
    assert np.isclose(after["foreground_intensity_properties_per_channel"]["0"]["mean"], fg.mean(), rtol=1e-5)
    assert after != before
