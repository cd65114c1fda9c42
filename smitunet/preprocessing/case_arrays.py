"""Arrays of the preprocessed store: ``{case}.b2nd`` (image) and ``{case}_seg.b2nd`` (labels), blosc2-compressed.

Why blosc2: the store is read patch by patch during training, so it has to be compressed in small independent
blocks that a patch read can decompress on their own (nnU-Net v2 moved to blosc2 for the same reason). The layout
(``chunk_and_block_shape``) follows the plans' patch size: blocks small enough for a core's L1/L2 cache, so a
patch read decompresses little beyond the patch, chunks about one patch. Compression is lossless (ZSTD with byte
shuffle), so a case reads back bit for bit as ``preprocess_case`` returned it.

Stores written before (``{case}.npy`` / ``{case}_seg.npy``) are still read, per case: every reader goes through
``data_file`` / ``seg_file`` and ``open_case_array`` / ``load_case_array``. blosc2 is imported on first use only:
its import costs most of a second that commands which never touch the store should not pay.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from smitunet.errors import SmitunetError
from smitunet.utils.files import atomic_path

SUFFIX = ".b2nd"
LEGACY_SUFFIX = ".npy"
SEG_TAG = "_seg"
# Block budget: blosc2 decompresses whole blocks, so a block that fits a core's L1/L2 cache keeps a patch read's
# waste at the patch border small and the decompression cache-resident.
BLOCK_BYTES = 32 * 1024
# Chunk budget: a chunk is the unit of the file's index; about a patch, bounded so that a large patch (128^3 float32
# is 8 MiB) is not one chunk.
CHUNK_BYTES = 1024 * 1024
CLEVEL = 5  # ZSTD 5: measured on a Left Atrium case, smaller and 10x faster to write than level 8


def _file(folder: Path, case: str, tag: str) -> Path:
    """The case's file, compressed when present, else the legacy .npy, else the compressed name (for messages)."""
    compressed = Path(folder) / f"{case}{tag}{SUFFIX}"
    if compressed.is_file():
        return compressed
    legacy = Path(folder) / f"{case}{tag}{LEGACY_SUFFIX}"
    return legacy if legacy.is_file() else compressed


def data_file(folder: str | Path, case: str) -> Path:
    return _file(Path(folder), case, "")


def seg_file(folder: str | Path, case: str) -> Path:
    return _file(Path(folder), case, SEG_TAG)


def new_files(folder: str | Path, case: str) -> dict[str, Path]:
    """Where a case is written now (always the compressed format)."""
    folder = Path(folder)
    return {"data": folder / f"{case}{SUFFIX}", "seg": folder / f"{case}{SEG_TAG}{SUFFIX}"}


def legacy_files(folder: str | Path, case: str) -> list[Path]:
    folder = Path(folder)
    return [folder / f"{case}{LEGACY_SUFFIX}", folder / f"{case}{SEG_TAG}{LEGACY_SUFFIX}"]


def _stored_names(folder: Path) -> set[str]:
    return {p.name for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")} \
        if Path(folder).is_dir() else set()


def labelled_cases(folder: str | Path) -> list[str]:
    """Cases with a label array, in either format."""
    cases = set()
    for name in _stored_names(Path(folder)):
        for suffix in (SUFFIX, LEGACY_SUFFIX):
            if name.endswith(SEG_TAG + suffix):
                cases.add(name[: -len(SEG_TAG + suffix)])
    return sorted(cases)


def image_only_cases(folder: str | Path) -> list[str]:
    """Cases with an image array and no label array (the dataset's ``imagesUnlabelled``)."""
    names = _stored_names(Path(folder))
    labelled = set(labelled_cases(folder))
    cases = set()
    for name in names:
        for suffix in (SUFFIX, LEGACY_SUFFIX):
            if name.endswith(suffix) and not name.endswith(SEG_TAG + suffix):
                cases.add(name[: -len(suffix)])
    return sorted(cases - labelled)


def chunk_and_block_shape(shape: Sequence[int], patch_size: Sequence[int], itemsize: int
                          ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunks, blocks) for an array (C, z, y, x) read in patches of ``patch_size`` (z, y, x).

    Blocks hold one channel (a channel compresses better alone) and start as the power of two covering the patch
    per axis; the axis largest relative to the patch is halved until a block fits ``BLOCK_BYTES``. Chunks are whole
    blocks covering about one patch, shrunk the same way until they fit ``CHUNK_BYTES``. Both are clipped to the
    array, which blosc2 requires of neither but which keeps a small case a single chunk.
    """
    spatial = [int(s) for s in shape[1:]]
    patch = [max(1, int(p)) for p in patch_size]
    if len(patch) == 2:  # a 2D configuration's patch is one (y, x) slice of the 3D case
        patch = [1, *patch]
    block = [min(2 ** math.ceil(math.log2(p)), s) for p, s in zip(patch, spatial)]
    while itemsize * math.prod(block) > BLOCK_BYTES and max(block) > 1:
        axis = max(range(3), key=lambda a: (block[a] / patch[a], block[a]) if block[a] > 1 else (-1, 0))
        block[axis] = max(1, block[axis] // 2)
    chunk = [min(-(-p // b) * b, s) for p, b, s in zip(patch, block, spatial)]
    while itemsize * math.prod(chunk) > CHUNK_BYTES and any(c > b for c, b in zip(chunk, block)):
        axis = max((a for a in range(3) if chunk[a] > block[a]), key=lambda a: chunk[a] / patch[a])
        chunk[axis] = max(block[axis], (chunk[axis] // 2) // block[axis] * block[axis])
    return (1, *chunk), (1, *block)


def save_case_array(array: np.ndarray, path: str | Path, patch_size: Sequence[int]) -> None:
    """Write ``array`` (C, z, y, x) compressed to ``path`` (atomically: temporary name, then rename)."""
    import blosc2

    array = np.ascontiguousarray(array)
    if array.ndim != 4:
        raise ValueError(f"expected a (C, z, y, x) array, got shape {array.shape}")
    chunks, blocks = chunk_and_block_shape(array.shape, patch_size, array.itemsize)
    # One thread: the store is written by a pool of case processes already.
    cparams = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=CLEVEL, filters=[blosc2.Filter.SHUFFLE],
                             filters_meta=[0], nthreads=1)
    # Compressed in memory and written as one contiguous frame (the .b2nd file format): the atomic rename then
    # covers the whole file, which blosc2 writing into a path of its own would not.
    frame = blosc2.asarray(array, chunks=chunks, blocks=blocks, cparams=cparams).to_cframe()
    with atomic_path(path, suffix=SUFFIX) as tmp:
        with open(tmp, "wb") as f:
            f.write(frame)


def _unreadable(path: Path, exc: BaseException) -> SmitunetError:
    return SmitunetError(f"{path}: cannot be read ({exc.__class__.__name__}: {exc}); re-run "
                         "smitunet_plan_and_preprocess (--clean rewrites the store)")


def open_case_array(path: str | Path):
    """A lazy read-only view (C, z, y, x): indexing with slices reads and decompresses only what it touches and
    returns a numpy array; ``.shape`` / ``.dtype`` cost nothing. A legacy ``.npy`` opens memory-mapped."""
    path = Path(path)
    if not path.is_file():
        raise SmitunetError(f"{path}: missing; re-run smitunet_plan_and_preprocess")
    if path.suffix == LEGACY_SUFFIX:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _unreadable(path, exc) from None
    import blosc2

    try:
        # mmap: pages come from the page cache, shared between the loader processes reading the same case.
        return blosc2.open(str(path), mode="r", mmap_mode="r", dparams=blosc2.DParams(nthreads=1))
    except Exception as exc:  # blosc2 reports a damaged frame as RuntimeError, ValueError or its own errors
        raise _unreadable(path, exc) from None


def load_case_array(path: str | Path) -> np.ndarray:
    """The whole array (C, z, y, x) in memory, from either format."""
    path = Path(path)
    array = open_case_array(path)
    try:
        return np.array(array[...])
    except Exception as exc:
        raise _unreadable(path, exc) from None
