"""Results file, tables and plots of the label-efficiency benchmark.

The results file (``label_efficiency.json`` in the work folder) is the benchmark's memory: every finished run is
recorded there as it ends, keyed ``row|L<labelled>|s<seed>``, and a rerun skips what it holds. The report reads
only that file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

ROW_TITLES = {
    "scratch": "smitunet from scratch",
    "smit": "smitunet, SMIT-pretrained",
    "smart": "smitunet, SMART-pretrained",
    "gmim": "smitunet, GMIM-pretrained",
    "nnunet": "nnU-Net v2 from scratch",
    "upper": "smitunet from scratch, all non-evaluation cases labelled",
    "probe_random": "probe: frozen random encoder",
    "probe_smit": "probe: frozen SMIT-pretrained encoder",
    "smit_uniform_lr": "smitunet, SMIT-pretrained, no layer-wise decay",
    "smit_warmup": "smitunet, SMIT-pretrained, encoder frozen for the first 10 %",
    "semi": "smitunet semi-supervised (mean teacher + copy-paste), from scratch",
    "semi_smit": "smitunet semi-supervised, SMIT-pretrained",
    "semi_gmim": "smitunet semi-supervised, GMIM-pretrained",
    "semi_nowarmup": "smitunet semi-supervised without the labelled-only warm-up (first version), from scratch",
    "semi_nolcc": "smitunet semi-supervised, warm-up, every pseudo-label component kept (second version), from scratch",
    "semi_mixedonly": "smitunet semi-supervised, warm-up, mixed crops only (third version), from scratch",
    "semi_voxelweight": "smitunet semi-supervised, labelled crops whole + mixed, pseudo-label weight per voxel (fourth version), from scratch",
    "semi_nomix": "diagnosis: semi-supervised without copy-paste (mean-teacher pseudo-labels on whole crops), from scratch",
    "semi_nopseudo": "diagnosis: semi-supervised copy-paste without the pseudo-label loss, from scratch",
}
LIGHT = "_light"             # the same row with the light decoder (see label_efficiency.py)
CONVERGENCE_TAIL = 0.2   # the scratch row must gain < 1 point of validation Dice over this last share


def row_title(row: str) -> str:
    if row.endswith(LIGHT):
        return row_title(row[: -len(LIGHT)]) + ", light decoder"
    return ROW_TITLES.get(row, row)


def reference_of(row: str) -> str:
    """The row a row's paired differences are taken against: scratch with the same decoder."""
    return "scratch_light" if row.endswith(LIGHT) else "scratch"


def _order(row: str) -> tuple[int, int]:
    base = row[: -len(LIGHT)] if row.endswith(LIGHT) else row
    return (row.endswith(LIGHT), list(ROW_TITLES).index(base) if base in ROW_TITLES else 99)


def run_key(row: str, labelled: int, seed: int) -> str:
    return f"{row}|L{labelled}|s{seed}"


def parse_key(key: str) -> tuple[str, int, int]:
    row, labelled, seed = key.split("|")
    return row, int(labelled[1:]), int(seed[1:])


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"runs": {}}


def save_results(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)


def curve_gain(curve: list[float], tail: float = CONVERGENCE_TAIL) -> float | None:
    """Gain of a per-epoch validation Dice curve over its last ``tail`` share: the mean of the last ``tail`` of the
    epochs minus the mean of the same number of epochs before them (windows, because one epoch's pseudo-Dice is
    noisy; not the EMA, whose lag would show a gain after the curve has flattened)."""
    n = max(1, int(round(len(curve) * tail)))
    if len(curve) < 2 * n:
        return None
    return float(np.mean(curve[-n:]) - np.mean(curve[-2 * n:-n]))


def _stats(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(results: dict) -> dict:
    """{labelled: {row: {dice: [..per seed], hd95, seeds, mean/sd, paired differences to its reference row
    (``reference_of``: scratch with the same decoder)}}}."""
    table: dict[int, dict[str, dict]] = {}
    for key, run in results["runs"].items():
        row, labelled, seed = parse_key(key)
        entry = table.setdefault(labelled, {}).setdefault(row, {"seeds": [], "dice": [], "hd95": [], "dice_lcc": []})
        entry["seeds"].append(seed)
        entry["dice_lcc"].append(run.get("dice_lcc"))
        entry["dice"].append(run["dice"])
        entry["hd95"].append(run["hd95"])
    for labelled, rows in table.items():
        for row, entry in rows.items():
            order = np.argsort(entry["seeds"])
            for k in ("seeds", "dice", "hd95", "dice_lcc"):
                entry[k] = [entry[k][i] for i in order]
            entry["dice_lcc_mean"], entry["dice_lcc_sd"] = _stats(entry["dice_lcc"])
            entry["dice_mean"], entry["dice_sd"] = _stats(entry["dice"])
            entry["hd95_mean"], entry["hd95_sd"] = _stats(entry["hd95"])
        for row, entry in rows.items():
            ref = rows.get(reference_of(row))
            if ref is None or row == reference_of(row):
                continue
            paired = {s: d - ref["dice"][ref["seeds"].index(s)] for s, d in zip(entry["seeds"], entry["dice"])
                      if s in ref["seeds"]}
            entry["paired_dice_diff"] = paired
            # the mean of the paired differences (seeds run by both rows), not of the two rows' means over
            # different seed sets
            entry["mean_diff_points"] = 100 * float(np.mean(list(paired.values()))) if paired else float("nan")
    return table


def _fmt(mean: float, sd: float, scale: float = 1.0, digits: int = 1) -> str:
    if math.isnan(mean):
        return "–"
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def markdown(results: dict, title: str) -> str:
    table = summarise(results)
    lines = [f"# {title}", ""]
    for item in results.get("description", []):
        lines.append(f"- {item}")
    lines.append("")
    lines += ["Dice in points (mean ± sd over seeds) on the evaluation cases, HD95 in mm; "
              "Δ = paired difference to `scratch` (with the same decoder) of the same seed, in Dice points. "
              "Dice + LCC: the same predictions after each label keeps its largest connected component, the "
              "post-processing the Left Atrium literature scores with (fixed in advance, not tuned on these cases); "
              "over the seeds whose predictions this machine still had (k of n).", ""]
    for labelled in sorted(table):
        rows = table[labelled]
        lines += [f"## {labelled} labelled cases", "",
                  "| row | seeds | Dice | HD95 (mm) | Dice per seed | Δ per seed | mean Δ | Dice + LCC |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in sorted(rows, key=_order):
            e = rows[row]
            per_seed = ", ".join(f"{100 * d:.1f}" for d in e["dice"])
            paired = e.get("paired_dice_diff")
            deltas = ", ".join(f"{100 * v:+.1f}" for v in paired.values()) if paired else ""
            mean_delta = f"{e['mean_diff_points']:+.2f} (n={len(paired)})" if paired else ""
            have = sum(v is not None for v in e["dice_lcc"])
            lcc = f"{_fmt(e['dice_lcc_mean'], e['dice_lcc_sd'], 100)} ({have} of {len(e['seeds'])})" if have else "–"
            lines.append(f"| {row_title(row)} | {len(e['seeds'])} | {_fmt(e['dice_mean'], e['dice_sd'], 100)} | "
                         f"{_fmt(e['hd95_mean'], e['hd95_sd'])} | {per_seed} | {deltas} | {mean_delta} | {lcc} |")
        lines.append("")
    convergence = [(key, run["curve_gain"]) for key, run in sorted(results["runs"].items())
                   if parse_key(key)[0] in ("scratch", "scratch_light") and run.get("curve_gain") is not None]
    if convergence:
        lines += ["## Convergence of the scratch row", "",
                  f"Gain of the per-epoch validation pseudo-Dice over the last {int(100 * CONVERGENCE_TAIL)} % of the "
                  "iterations (mean of the last fifth of the epochs minus the mean of the fifth before; the rule: "
                  "under 1 point):", ""]
        lines += [f"- {key}: {100 * gain:+.2f} points" for key, gain in convergence]
        lines.append("")
    budget = results.get("budget")
    if budget:
        lines += ["## Budget", ""] + [f"- {k}: {v}" for k, v in budget.items()] + [""]
    return "\n".join(lines)


def plot(results: dict, path: Path, curves_path: Path | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarise(results)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    rows = sorted({row for rows in table.values() for row in rows})
    colours = plt.get_cmap("tab20").colors  # more rows than tab10's 10 colours; each row its own
    for i, row in enumerate(rows):
        points = sorted((n, table[n][row]) for n in table if row in table[n])
        if not points:
            continue
        xs = [n for n, _ in points]
        means = [100 * e["dice_mean"] for _, e in points]
        lows = [100 * min(e["dice"]) for _, e in points]
        highs = [100 * max(e["dice"]) for _, e in points]
        colour = colours[(2 * i) % 20 + (2 * i) // 20 % 2]  # the dark tones first, then the light ones
        ax.plot(xs, means, marker="o", label=row_title(row), color=colour)
        ax.fill_between(xs, lows, highs, alpha=0.15, color=colour)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled cases")
    ax.set_ylabel("Dice (points), mean; band: min-max over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: many rows, long titles
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    if curves_path is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, run in sorted(results["runs"].items()):
        curve = run.get("curve")
        if curve and parse_key(key)[0] in ("scratch", "smit", "scratch_light", "smit_light"):
            iters = run.get("iters_per_epoch", 1)
            ax.plot([iters * (i + 1) for i in range(len(curve))], [100 * c for c in curve], label=key, lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation pseudo-Dice per epoch, points")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(curves_path, dpi=110)
    plt.close(fig)
