"""Machine description, markdown tables and result files for the benchmarks."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path

from smitunet.utils.files import atomic_path, save_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _git_commit() -> str:
    probe = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent)
    return probe.stdout.strip() or "unknown"


def machine_description() -> dict:
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": round(_memory_gib(), 1),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "smitunet_commit": _git_commit()}


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def ratio(ours, theirs, digits: int = 2) -> str:
    if ours is None or theirs in (None, 0):
        return "n/a"
    return f"{ours / theirs:.{digits}f}"


def machine_markdown(machine: dict, versions: dict) -> str:
    lines = [f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB RAM, "
             f"{machine['os']}, Python {machine['python']}; load average at start "
             f"{machine['load_average_at_start']} (shared machine: speed figures are ratios from one run)"]
    for tool, v in versions.items():
        lines.append(f"- {tool}: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    lines.append(f"- smitunet commit: {machine['smitunet_commit']}")
    return "\n".join(lines)


def write_results(stem: str, markdown: str, data: dict) -> tuple[Path, Path]:
    """Write ``{stem}_{timestamp}.md/.json`` under benchmarks/results/; return both paths."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    md_path, json_path = RESULTS_DIR / f"{stem}_{stamp}.md", RESULTS_DIR / f"{stem}_{stamp}.json"
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown + "\n")
    save_json(json.loads(json.dumps(data, default=str)), json_path)
    return md_path, json_path
