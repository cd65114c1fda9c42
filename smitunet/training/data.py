"""Patch sampling from the preprocessed folder, with foreground oversampling.

A 2D patch (the ``2d`` configuration) is one (y, x) slice of a preprocessed 3D case: a (1, y, x) box whose z axis
is dropped, so foreground oversampling picks the slice of a foreground voxel exactly as it centres a 3D patch.

Every batch is a pure function of ``(seed, batch_index)``: sample ``j`` of global batch ``k`` draws its case
and position from ``default_rng([seed, k, j])`` and the augmentation's global numpy RNG is reseeded per
batch. So the data stream does not depend on the number of background workers, a resumed run continues it
exactly, and under torchrun each rank computes its own slice of the same global batch.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from smitunet.errors import SmitunetError
from smitunet.preprocessing.case_arrays import data_file, open_case_array, seg_file
from smitunet.preprocessing.cascade import load_previous_stage, previous_stage_file


class PreprocessedCases:
    """Lazy access to the image and label arrays of each case (blosc2 or legacy .npy; a patch read decompresses only
    the blocks it touches) and cached class locations. Arrays are opened per read, not kept open: opening costs
    well under a millisecond, and nothing opened is inherited by or pickled into the loader processes."""

    def __init__(self, folder: str | Path, cases: Sequence[str]):
        self.folder = Path(folder)
        self.cases = sorted(cases)
        if not self.cases:
            raise SmitunetError(f"{self.folder}: no cases to sample from")
        for case in self.cases:
            for path in (data_file(self.folder, case), seg_file(self.folder, case)):
                if not path.is_file():
                    raise SmitunetError(f"{path}: missing; re-run smitunet_plan_and_preprocess")
        self._locations: dict[str, dict[int, np.ndarray]] = {}

    def data(self, case: str):
        """(C, z, y, x), lazy: slicing returns numpy arrays."""
        return open_case_array(data_file(self.folder, case))

    def seg(self, case: str):
        return open_case_array(seg_file(self.folder, case))

    def previous_stage(self, case: str) -> np.ndarray | None:
        """A cascade's previous-stage labels (1, z, y, x) of ``case``; None for a single-stage configuration."""
        return None

    def locations(self, case: str) -> dict[int, np.ndarray]:
        if case not in self._locations:
            path = self.folder / f"{case}_locations.npz"
            found: dict[int, np.ndarray] = {}
            if path.is_file():
                with np.load(path, allow_pickle=False) as z:
                    for key in z.files:
                        if key.startswith("class_") and len(z[key]):
                            found[int(key[len("class_"):])] = np.asarray(z[key])
            self._locations[case] = found
        return self._locations[case]


class CascadeCases(PreprocessedCases):
    """A cascade's cases: each also has the previous stage's segmentation, ``{previous_folder}/{case}.npy`` int16
    (1, z, y, x) in this configuration's geometry; patches carry it as the label's second channel (so spatial
    augmentation moves it with the label) until ``MovePreviousStageToData`` turns it into input channels."""

    def __init__(self, folder: str | Path, cases: Sequence[str], previous_folder: str | Path):
        super().__init__(folder, cases)
        self.previous_folder = Path(previous_folder)
        missing = missing_previous_stage(self.previous_folder, self.cases)
        if missing:
            raise SmitunetError(f"{previous_stage_file(self.previous_folder, missing[0])}: previous-stage prediction "
                                f"of case {missing[0]} not found ({len(missing)} case(s) missing)")

    def previous_stage(self, case: str) -> np.ndarray:
        return load_previous_stage(self.previous_folder, case)


def missing_previous_stage(previous_folder: Path, cases: Sequence[str]) -> list[str]:
    return [c for c in cases if not previous_stage_file(previous_folder, c).is_file()]


class UnlabelledCases(PreprocessedCases):
    """Images used without labels: ``{case}_seg`` and ``{case}_locations.npz`` are never opened (they may not
    exist); the label of every patch is an all-background stand-in that keeps the transforms' shapes."""

    def __init__(self, folder: str | Path, cases: Sequence[str]):
        self.folder = Path(folder)
        self.cases = sorted(cases)
        if not self.cases:
            raise SmitunetError(f"{self.folder}: no unlabelled cases to sample from")
        for case in self.cases:
            if not (path := data_file(self.folder, case)).is_file():
                raise SmitunetError(f"{path}: missing; re-run smitunet_plan_and_preprocess")
        self._locations = {}

    def seg(self, case: str) -> np.ndarray:
        return np.zeros((1, *self.data(case).shape[1:]), dtype=np.int16)

    def locations(self, case: str) -> dict[int, np.ndarray]:
        return {}


def _crop_box(shape, patch, rng: np.random.Generator, centre=None) -> np.ndarray:
    """Lower corner of a patch; the patch may hang over the border by at most what padding needs."""
    shape, patch = np.asarray(shape), np.asarray(patch)
    need = np.maximum(patch - shape, 0)
    low = -(need // 2)
    high = shape + need // 2 + need % 2 - patch
    if centre is None:
        return np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])
    return np.clip(np.asarray(centre) - patch // 2, low, high)


def crop_with_padding(array: np.ndarray, lower: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """(C, *spatial) crop at ``lower`` of size ``patch``; outside the image is filled with zeros."""
    spatial = np.asarray(array.shape[1:])
    upper = lower + np.asarray(patch)
    src_lo, src_hi = np.maximum(lower, 0), np.minimum(upper, spatial)
    out = np.zeros((array.shape[0], *patch), dtype=array.dtype)
    dst_lo = src_lo - lower
    dst_hi = dst_lo + (src_hi - src_lo)
    out[(slice(None), *[slice(a, b) for a, b in zip(dst_lo, dst_hi)])] = \
        array[(slice(None), *[slice(a, b) for a, b in zip(src_lo, src_hi)])]
    return out


def label_index_map(label_values: Sequence[int]) -> np.ndarray | None:
    """Lookup label value -> network channel (sorted values); None when the values are already 0..K-1."""
    values = sorted(int(v) for v in label_values)
    if values == list(range(len(values))):
        return None
    lookup = np.zeros(max(values) + 1, dtype=np.int16)
    lookup[values] = np.arange(len(values), dtype=np.int16)
    return lookup


def sample_patch(cases: PreprocessedCases, rng: np.random.Generator, patch: Sequence[int],
                 force_foreground: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """``(C, *patch)`` data and ``(1, *patch)`` labels; a 2D ``patch`` is cut from one slice."""
    if len(patch) == 2:
        data, seg, case = sample_patch(cases, rng, [1, *patch], force_foreground)
        return data[:, 0], seg[:, 0], case
    case = cases.cases[rng.integers(len(cases.cases))]
    data, seg = cases.data(case), cases.seg(case)
    centre = None
    if force_foreground:
        locations = cases.locations(case)
        if locations:
            cls = sorted(locations)[rng.integers(len(locations))]
            centre = locations[cls][rng.integers(len(locations[cls]))]
    lower = _crop_box(data.shape[1:], patch, rng, centre)
    seg_patch = crop_with_padding(seg, lower, patch).astype(np.int16, copy=False)
    previous = cases.previous_stage(case)
    if previous is not None:  # the cascade's input segmentation, cut at the same place (label channel 1)
        seg_patch = np.concatenate([seg_patch, crop_with_padding(previous, lower, patch).astype(np.int16, copy=False)])
    return crop_with_padding(data, lower, patch).astype(np.float32, copy=False), seg_patch, case


def exit_with_parent(parent_pid: int) -> None:
    """In a worker process: get SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


class PatchLoader(SlimDataLoaderBase):
    """Endless batches for one rank: ``sample_indices`` selects its share of each global batch.

    The last ``round(global_batch * oversample_foreground)`` samples of every global batch are centred on a
    random foreground voxel (from ``{case}_locations.npz``); the others are placed uniformly.
    """

    def __init__(self, cases: PreprocessedCases, patch_size: Sequence[int], global_batch_size: int,
                 sample_indices: Sequence[int], seed: int, start_batch: int = 0,
                 oversample_foreground: float = 1 / 3, num_workers: int = 1, label_map: np.ndarray | None = None):
        super().__init__(cases, len(sample_indices), number_of_threads_in_multithreaded=max(1, num_workers))
        self.cases = cases
        self.patch_size = [int(p) for p in patch_size]
        self.global_batch_size = int(global_batch_size)
        self.sample_indices = [int(i) for i in sample_indices]
        self.seed, self.start_batch = int(seed), int(start_batch)
        self.num_forced = int(round(self.global_batch_size * oversample_foreground))
        self.label_map = label_map
        self._owner_pid = os.getpid()
        self._produced = 0

    def set_thread_id(self, thread_id: int) -> None:
        # Called by batchgenerators inside each freshly started worker process: tie the worker's life to the
        # training process, so a SIGKILLed training run leaves no orphaned workers behind.
        super().set_thread_id(thread_id)
        if os.getpid() != self._owner_pid:
            exit_with_parent(self._owner_pid)

    def batch_index(self) -> int:
        # MultiThreadedAugmenter hands batches out round-robin over its workers, so worker t produces
        # batches t, t + n, t + 2n, ... of the stream.
        return self.start_batch + self.thread_id + self.number_of_threads_in_multithreaded * self._produced

    def generate_train_batch(self) -> dict:
        k = self.batch_index()
        self._produced += 1
        # Seed the global RNGs the batchgenerators transforms draw from (numpy, and Python's for the noise
        # transform): augmentation is then a function of the batch index too.
        batch_seed = int(np.random.SeedSequence([self.seed, k, 1 + min(self.sample_indices)]).generate_state(1)[0])
        np.random.seed(batch_seed)
        random.seed(batch_seed)
        datas, segs, names = [], [], []
        for j in self.sample_indices:
            rng = np.random.default_rng([self.seed, k, j])
            force = j >= self.global_batch_size - self.num_forced
            d, s, case = sample_patch(self.cases, rng, self.patch_size, force)
            datas.append(d)
            if self.label_map is not None:  # the label only: a cascade's channel 1 keeps label values
                s[:1] = self.label_map[s[:1]]
            segs.append(s)
            names.append(case)
        return {"data": np.stack(datas), "seg": np.stack(segs), "keys": names, "batch_index": k}
