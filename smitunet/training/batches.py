"""Batch streams: in-process (``--num_workers 0``) or batchgenerators background worker processes."""

from __future__ import annotations

import time

from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter


class BatchStream:
    """Iterates augmented batches and accounts the time the caller spent waiting for them."""

    def __init__(self, loader, transform, num_workers: int):
        if num_workers > 0:
            # Seeds are irrelevant: the loader reseeds numpy per batch from (seed, batch index).
            self._augmenter = MultiThreadedAugmenter(loader, transform, num_workers, num_cached_per_queue=3,
                                                     seeds=[0] * num_workers, pin_memory=False)
        else:
            self._augmenter = SingleThreadedAugmenter(loader, transform)
        self.wait_seconds = 0.0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        start = time.perf_counter()
        batch = next(self._augmenter)
        self.wait_seconds += time.perf_counter() - start
        return batch

    def close(self) -> None:
        finish = getattr(self._augmenter, "_finish", None)
        if finish is not None:
            finish()
