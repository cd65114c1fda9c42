"""The embedded synthetic dataset: raw format, seeded, learnable (distinct intensities), with a test split."""

from __future__ import annotations

import numpy as np
import pytest

from smitunet.dataset.raw import list_test_cases, list_training_cases, load_dataset_json
from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.errors import SmitunetError
from smitunet.imageio import read_image


def test_layout_labels_and_intensities(tmp_path):
    ds = generate_synthetic_dataset(tmp_path, num_training=4, num_test=2, num_structures=3)
    assert ds.name == "Dataset999_Synthetic"
    dj = load_dataset_json(ds)
    assert dj["labels"] == {"background": 0, "bright": 1, "dark": 2, "medium": 3} and dj["numTraining"] == 4
    cases = list_training_cases(ds)
    test_cases, problems = list_test_cases(ds)
    assert len(cases) == 4 and len(test_cases) == 2 and problems == []
    assert all(c["label"] is not None for c in test_cases.values())
    image, geo = read_image(cases["case_000"]["images"][0])
    seg, seg_geo = read_image(cases["case_000"]["label"])
    assert image.shape == (32, 40, 36) and geo == seg_geo and geo.spacing == (1.0, 1.0, 1.0)
    tissue = image[(seg == 0) & (image > 0)]
    means = [image[seg == k].mean() for k in (1, 2, 3)]
    for k, m in zip((1, 2, 3), means):
        assert (seg == k).sum() > 80, "structures must be big enough to learn"
        assert abs(m - tissue.mean()) > 2.5 * tissue.std(), "structures must stand out from the tissue"
    assert (image == 0).any()  # air around the head: cropping has work to do


def test_seeded_and_reused(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", num_training=2, num_test=1, seed=3)
    b = generate_synthetic_dataset(tmp_path / "b", num_training=2, num_test=1, seed=3)
    c = generate_synthetic_dataset(tmp_path / "c", num_training=2, num_test=1, seed=4)
    img = lambda d: read_image(d / "imagesTr" / "case_001_0000.nii.gz")[0]
    assert np.array_equal(img(a), img(b)) and not np.array_equal(img(a), img(c))
    stamp = (a / "dataset.json").stat().st_mtime_ns
    assert generate_synthetic_dataset(tmp_path / "a", num_training=2, num_test=1, seed=3) == a
    assert (a / "dataset.json").stat().st_mtime_ns == stamp  # same arguments: reused, not rewritten
    with pytest.raises(SmitunetError, match="overwrite"):
        generate_synthetic_dataset(tmp_path / "a", num_training=3, num_test=1, seed=3)
    generate_synthetic_dataset(tmp_path / "a", num_training=3, num_test=0, seed=3, overwrite=True)
    assert len(list_training_cases(a)) == 3 and not (a / "imagesTs").exists()
