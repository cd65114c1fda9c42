"""The compressed preprocessed store (smitunet.preprocessing.case_arrays): exact round trip, lazy patch reads, the
legacy .npy store still read, and less disk than .npy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smitunet.errors import SmitunetError
from smitunet.preprocessing import case_arrays
from smitunet.preprocessing.case_arrays import (chunk_and_block_shape, data_file, image_only_cases, labelled_cases,
                                                load_case_array, open_case_array, save_case_array, seg_file)
from smitunet.training.data import PreprocessedCases, sample_patch


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    smooth = np.exp(-4 * (x ** 2 + y ** 2 + z ** 2))
    return (smooth + 0.05 * rng.standard_normal(shape)).astype(np.float32)[None]


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_round_trip_is_exact(tmp_path, dtype):
    data = _image((23, 41, 37)) * 100
    array = data.astype(dtype) if dtype != np.float32 else data
    array[0, 3, 4, 5] = np.nan if dtype == np.float32 else -7  # odd values survive too
    save_case_array(array, tmp_path / "a.b2nd", patch_size=(16, 24, 20))
    back = load_case_array(tmp_path / "a.b2nd")
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert not list(tmp_path.glob(".*"))  # written under a temporary name, then renamed


def test_patch_reads_are_lazy_and_equal_to_the_array(tmp_path):
    array = np.concatenate([_image((40, 64, 56), 1), _image((40, 64, 56), 2)])
    save_case_array(array, tmp_path / "a.b2nd", patch_size=(24, 32, 32))
    view = open_case_array(tmp_path / "a.b2nd")
    assert not isinstance(view, np.ndarray)  # nothing decompressed by opening
    assert view.shape == array.shape and view.dtype == array.dtype
    rng = np.random.default_rng(0)
    for _ in range(10):
        lo = [int(rng.integers(0, s - p)) for s, p in zip(array.shape[1:], (24, 32, 32))]
        index = (slice(None), *[slice(a, a + p) for a, p in zip(lo, (24, 32, 32))])
        np.testing.assert_array_equal(view[index], array[index])
    # the layout follows the patch: one-channel blocks within the block budget, chunks about one patch
    assert view.blocks[0] == 1 and math.prod(view.blocks) * 4 <= case_arrays.BLOCK_BYTES
    assert view.chunks[0] == 1 and all(c >= b for c, b in zip(view.chunks, view.blocks))


@pytest.mark.parametrize("shape,patch,itemsize", [
    ((1, 20, 24, 22), (20, 24, 22), 4), ((1, 300, 400, 400), (128, 128, 128), 4),
    ((2, 8, 512, 512), (1, 512, 512), 2), ((1, 5, 6, 7), (40, 56, 40), 4), ((1, 30, 64, 48), (64, 48), 4)])
def test_layout_fits_the_budgets(shape, patch, itemsize):
    chunks, blocks = chunk_and_block_shape(shape, patch, itemsize)
    assert chunks[0] == blocks[0] == 1
    assert all(1 <= b <= c <= s for b, c, s in zip(blocks[1:], chunks[1:], shape[1:]))
    assert math.prod(blocks) * itemsize <= case_arrays.BLOCK_BYTES or max(blocks) == 1
    assert math.prod(chunks) * itemsize <= max(case_arrays.CHUNK_BYTES, math.prod(blocks) * itemsize)


def test_legacy_npy_store_is_read(tmp_path):
    """A store written before blosc2 (.npy) trains and validates as it is, patch for patch like the compressed one;
    a case present in both formats reads the compressed one."""
    data, seg = _image((20, 24, 22)), np.zeros((1, 20, 24, 22), np.int16)
    seg[0, 5:10, 6:12, 4:9] = 1
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    np.save(old / "a.npy", data)
    np.save(old / "a_seg.npy", seg)
    np.save(old / "image_only.npy", data)
    save_case_array(data, new / "a.b2nd", (16, 16, 16))
    save_case_array(seg, new / "a_seg.b2nd", (16, 16, 16))
    assert labelled_cases(old) == labelled_cases(new) == ["a"] and image_only_cases(old) == ["image_only"]
    assert data_file(old, "a").suffix == ".npy" and seg_file(new, "a").suffix == ".b2nd"
    np.testing.assert_array_equal(load_case_array(data_file(old, "a")), data)
    for seed in range(5):
        for force in (False, True):
            a = sample_patch(PreprocessedCases(old, ["a"]), np.random.default_rng(seed), (16, 16, 16), force)
            b = sample_patch(PreprocessedCases(new, ["a"]), np.random.default_rng(seed), (16, 16, 16), force)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    # both formats at once: the compressed one wins
    np.save(new / "a.npy", data * 0)
    np.testing.assert_array_equal(load_case_array(data_file(new, "a")), data)


def test_damaged_file_is_one_line(tmp_path):
    (tmp_path / "bad.b2nd").write_bytes(b"not a blosc2 frame" * 10)
    with pytest.raises(SmitunetError, match=r"bad\.b2nd: cannot be read .*re-run smitunet_plan_and_preprocess"):
        load_case_array(tmp_path / "bad.b2nd")
    with pytest.raises(SmitunetError, match=r"missing\.b2nd: missing"):
        open_case_array(tmp_path / "missing.b2nd")


def test_preprocessed_store_takes_less_disk_than_npy(smitunet_dirs, capsys):
    from smitunet.dataset.synthetic import generate_synthetic_dataset
    from smitunet.preprocessing.cli import main

    generate_synthetic_dataset(smitunet_dirs["raw"], num_training=3, num_test=0, shape=(24, 32, 28))
    main(["-d", "999", "--preset", "smit_tiny", "-np", "1"])
    folder = smitunet_dirs["preprocessed"] / "Dataset999_Synthetic" / "smitunetPlans_3d_fullres"
    assert not list(folder.glob("*.npy"))
    compressed = sum(p.stat().st_size for p in folder.glob("*.b2nd"))
    as_npy = 0
    for p in folder.glob("*.b2nd"):
        np.save(folder / "x.npy", load_case_array(p))  # what the previous store wrote for it
        as_npy += (folder / "x.npy").stat().st_size
    (folder / "x.npy").unlink()
    assert compressed < 0.8 * as_npy, (compressed, as_npy)
    print(f"compressed store {compressed / as_npy:.2f}x of .npy")
