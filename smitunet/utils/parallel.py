"""A worker pool for per-case work: ``-np 1`` runs inline, more forks lean workers with a progress bar."""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Callable, Iterable, Iterator

from tqdm import tqdm


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _init_worker() -> None:
    # One thread per worker: the pool itself is the parallelism; ITK's own threads would oversubscribe.
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


class CasePool:
    """Map a function over cases with ``num_processes`` workers, in completion order, with a progress bar.

    Created early (before torch is imported by the planner) so that forked workers stay small.
    """

    def __init__(self, num_processes: int):
        self.num_processes = max(1, int(num_processes))
        self._pool = None
        if self.num_processes > 1:
            self._pool = mp.get_context("fork").Pool(self.num_processes, initializer=_init_worker)

    def imap(self, func: Callable, items: Iterable, total: int, desc: str) -> Iterator:
        items = list(items)
        if self._pool is None:
            results = map(func, items)
        else:
            chunk = max(1, min(8, len(items) // (4 * self.num_processes)))
            results = self._pool.imap_unordered(func, items, chunksize=chunk)
        yield from tqdm(results, total=total, desc=desc, disable=None, leave=False)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def terminate(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "CasePool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()
