"""A small job runner for the benchmarks: child processes with dependencies, a concurrency limit and logs."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Job:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    after: list[str] = field(default_factory=list)   # jobs that must have finished first
    process: subprocess.Popen | None = None
    started: float = 0.0


def run_jobs(jobs: list[Job], max_running: int, on_done: Callable[[Job, float], None] | None = None) -> dict[str, float]:
    """Run the jobs, at most ``max_running`` at once, each after its dependencies (a name in ``after`` that is no
    job of this list was done before). ``on_done(job, seconds)`` runs as each one ends, so
    a caller can record results as they come. The first failure stops everything (its log's tail is printed).
    Returns each job's wall time."""
    pending, running, finished = list(jobs), [], {}
    waiting_on = {j.name for j in jobs}
    while pending or running:
        for job in [j for j in pending if all(a in finished or a not in waiting_on for a in j.after)]:
            if len(running) >= max_running:
                break
            print(f"[{time.strftime('%H:%M:%S')}] start {job.name}: {' '.join(map(str, job.cmd))}", flush=True)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log, "a") as f:
                f.write(f"$ {' '.join(map(str, job.cmd))}\n")
                job.process = subprocess.Popen([str(c) for c in job.cmd], env=job.env, stdout=f,
                                               stderr=subprocess.STDOUT)
            job.started = time.time()
            pending.remove(job)
            running.append(job)
        time.sleep(0.5)
        for job in list(running):
            code = job.process.poll()
            if code is None:
                continue
            running.remove(job)
            if code != 0:
                for other in running:
                    other.process.kill()
                tail = job.log.read_text().splitlines()[-15:]
                sys.exit(f"{job.name} failed (exit {code}); last lines of {job.log}:\n" + "\n".join(tail))
            finished[job.name] = time.time() - job.started
            print(f"[{time.strftime('%H:%M:%S')}] done {job.name} in {finished[job.name]:.0f} s", flush=True)
            if on_done is not None:
                on_done(job, finished[job.name])
    return finished
