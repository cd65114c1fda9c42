#!/usr/bin/env python
"""Plan + preprocess the 160 Hippocampus cases with smitunet and nnU-Net v2 in one run.

    python benchmarks/preprocess.py [--np 2] [--repeats 1] [--tools smitunet nnunet]

Each tool converts ../shared/data/Task04_Hippocampus with its own converter once (into benchmarks/work/),
then its plan-and-preprocess command runs from an empty preprocessed folder as a child process; the
script prints wall time and peak memory (RSS and PSS summed over the process tree) of both and the
ratio smitunet / nnU-Net. With --repeats N the order alternates and the medians are compared.
nnU-Net lives in its own venv (benchmarks/work/venv-nnunet, created on first use).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet_env as nn  # noqa: E402
import _smitunet_env as su  # noqa: E402
from _measure import run_measured, tail  # noqa: E402
from _report import (fmt, machine_description, machine_markdown, markdown_table, now_utc, ratio,  # noqa: E402
                     write_results)

TOOLS = ("smitunet", "nnunet")
TARGETS = "targets (smitunet / nnU-Net): wall <= 0.5, peak RSS <= 1"


def prepare(tool: str, log=print) -> None:
    if tool == "nnunet":
        nn.ensure_venv(log)
        nn.ensure_converted(log=log)
    else:
        su.ensure_converted(log=log)


def measure_once(tool: str, num_processes: int, preset: str | None = None) -> dict:
    """Run one tool's plan + preprocess from an empty preprocessed folder; return the measurement."""
    if tool == "nnunet":
        shutil.rmtree(nn.preprocessed_dataset_dir(), ignore_errors=True)
        command, env = nn.plan_and_preprocess_command(num_processes), nn.nnunet_env()
    else:
        shutil.rmtree(su.preprocessed_dataset_dir(), ignore_errors=True)
        command, env = su.plan_and_preprocess_command(num_processes, preset), su.smitunet_env()
    log_path = nn.WORK_DIR / f"preprocess_{tool}.log"
    result = run_measured(command, env=env, log_path=log_path).to_dict()
    if result["returncode"] != 0:
        print(f"{tool}: plan + preprocess failed (exit {result['returncode']}); last lines of {log_path}:\n"
              f"{tail(log_path)}", file=sys.stderr)
    return result


def summarize(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if r["returncode"] == 0]
    if not ok:
        return None
    return {key: statistics.median(r[key] for r in ok) for key in ("wall_s", "peak_rss_mb", "peak_pss_mb")}


def measure(tools: list[str], num_processes: int, repeats: int = 1, preset: str | None = None, log=print) -> dict:
    """Both tools, alternating order over repeats; return {tool: {"runs": [...], "median": {...}}}."""
    for tool in tools:
        prepare(tool, log)
    runs: dict[str, list[dict]] = {tool: [] for tool in tools}
    for i in range(repeats):
        for tool in (tools if i % 2 == 0 else list(reversed(tools))):
            log(f"plan + preprocess ({tool}, run {i + 1}/{repeats}) ...")
            runs[tool].append(measure_once(tool, num_processes, preset))
            r = runs[tool][-1]
            log(f"  {tool}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB (exit {r['returncode']})")
    return {tool: {"runs": runs[tool], "median": summarize(runs[tool])} for tool in tools}


def table_rows(results: dict) -> list[list[str]]:
    su_m = (results.get("smitunet") or {}).get("median")
    nn_m = (results.get("nnunet") or {}).get("median")
    rows = []
    for label, key in (("wall time (s)", "wall_s"), ("peak RSS, process tree (MB)", "peak_rss_mb"),
                       ("peak PSS, process tree (MB)", "peak_pss_mb")):
        ours = su_m[key] if su_m else None
        theirs = nn_m[key] if nn_m else None
        rows.append([f"plan + preprocess: {label}", fmt(ours, 1), fmt(theirs, 1), ratio(ours, theirs)])
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--np", type=int, default=os.cpu_count(), help="worker processes for both tools (default: cores)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--preset", default=None, help="smitunet network preset to plan for (default: its own default)")
    p.add_argument("--no-save", action="store_true", help="print only, write nothing to benchmarks/results/")
    args = p.parse_args(argv)

    machine = machine_description()
    results = measure(args.tools, args.np, args.repeats, args.preset)
    versions = {"smitunet": su.smitunet_versions()}
    if "nnunet" in args.tools:
        versions["nnU-Net"] = nn.nnunet_versions()
    table = markdown_table(["160 Hippocampus cases", "smitunet", "nnU-Net v2", "ratio"], table_rows(results))
    markdown = (f"# Plan + preprocess, Task04 Hippocampus (160 cases)\n\n{now_utc()}\n\n{table}\n\n{TARGETS}\n\n"
                f"- commands: " + "; ".join(f"`{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(r['runs'][0]['command']))}`"
                                            for r in results.values() if r["runs"]) +
                f"\n- -np {args.np}, {args.repeats} run(s) each, medians; every run from an empty preprocessed folder\n"
                + machine_markdown(machine, versions))
    print("\n" + markdown)
    if not args.no_save:
        md_path, _ = write_results("preprocess", markdown, {"machine": machine, "versions": versions,
                                                             "np": args.np, "results": results})
        print(f"\nwritten: {md_path}")


if __name__ == "__main__":
    main()
