"""Wall time and peak memory of a child command and every process it starts.

The child runs in its own session (``start_new_session``), so every worker it forks or spawns
(multiprocessing pools, data-augmentation workers) shares its session id. A poller sums the memory
of all live processes of that session a few times a second and keeps the maximum:
- RSS summed over the tree (what ``ps``/``top`` show; counts pages shared between forked workers
  once per worker, so it over-states a forking tool a little);
- PSS summed over the tree (``/proc/PID/smaps_rollup``: shared pages split between sharers, the
  honest total for a process tree).
A peak shorter than the poll interval can be missed; at 0.1 s that is below what matters here.
Linux only (reads /proc).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measurement:
    command: list[str]
    wall_s: float
    peak_rss_mb: float
    peak_pss_mb: float
    returncode: int
    timed_out: bool
    stopped_early: bool
    log_path: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name "(...)", which may itself hold spaces or parentheses.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[3])  # state ppid pgrp session ...


def _rss_pss_bytes(pid: int) -> tuple[int, int]:
    try:
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0, 0
    pss_kb = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss_kb = int(line.split()[1])
                break
    except OSError:
        pss_kb = rss_pages * PAGE_BYTES // 1024
    return rss_pages * PAGE_BYTES, pss_kb * 1024


def session_memory_bytes(session_id: int) -> tuple[int, int]:
    """(RSS sum, PSS sum) over all live processes whose session id is ``session_id``."""
    rss_total = pss_total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if _session_of(pid) != session_id:
            continue
        rss, pss = _rss_pss_bytes(pid)
        rss_total += rss
        pss_total += pss
    return rss_total, pss_total


class _PeakPoller(threading.Thread):
    def __init__(self, session_id: int, interval_s: float):
        super().__init__(daemon=True)
        self.session_id = session_id
        self.interval_s = interval_s
        self.peak_rss = self.peak_pss = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss, pss = session_memory_bytes(self.session_id)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _stop_session(proc: subprocess.Popen) -> None:
    """SIGTERM the child's whole process group, SIGKILL it after a grace period."""
    for sig, grace_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait(proc: subprocess.Popen, start: float, timeout_s: float | None,
          stop_when: Callable[[float], bool] | None) -> tuple[bool, bool]:
    """Wait for ``proc``; return (timed_out, stopped_early) after stopping it if either fired."""
    while True:
        try:
            proc.wait(timeout=0.5)
            return False, False
        except subprocess.TimeoutExpired:
            elapsed = time.perf_counter() - start
            if timeout_s is not None and elapsed > timeout_s:
                _stop_session(proc)
                return True, False
            if stop_when is not None and stop_when(elapsed):
                _stop_session(proc)
                return False, True


def run_measured(command: list[str], *, env: dict | None = None, cwd: str | Path | None = None,
                 log_path: str | Path | None = None, timeout_s: float | None = None,
                 stop_when: Callable[[float], bool] | None = None, interval_s: float = 0.1) -> Measurement:
    """Run ``command``; return its wall time and peak tree memory. Output goes to ``log_path``.

    On ``timeout_s`` the whole process group is stopped and ``timed_out`` is True; when
    ``stop_when(elapsed_s)`` returns True (polled twice a second) it is stopped and ``stopped_early`` is True.
    """
    log_file = open(log_path, "w") if log_path else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in command], env=env, cwd=cwd, stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        poller = _PeakPoller(proc.pid, interval_s)
        poller.start()
        try:
            timed_out, stopped_early = _wait(proc, start, timeout_s, stop_when)
        except BaseException:
            _stop_session(proc)
            raise
        wall_s = time.perf_counter() - start
        poller.stop()
    finally:
        if log_path:
            log_file.close()
    return Measurement(command=[str(c) for c in command], wall_s=wall_s,
                       peak_rss_mb=poller.peak_rss / 2**20, peak_pss_mb=poller.peak_pss / 2**20,
                       returncode=proc.returncode, timed_out=timed_out, stopped_early=stopped_early,
                       log_path=str(log_path) if log_path else None)


def tail(path: str | Path | None, lines: int = 15) -> str:
    if not path or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
