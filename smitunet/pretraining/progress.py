"""Per-epoch loss log of a pretraining run: JSON and CSV rows and a curve PNG, rewritten atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from smitunet.utils.files import atomic_path, save_json

TERMS = ("loss", "reconstruction", "patch", "global")


def terms_for(settings) -> tuple[str, ...]:
    """The logged loss terms of a run: SMIT's four, SMART's plus ``class``, GMIM-Siamese's reconstruction and
    ``correlation``."""
    if settings.uses_siamese:
        return ("loss", "reconstruction", "correlation")
    return TERMS + ("class",) if settings.uses_class_attention else TERMS


def output_paths(output: Path) -> dict[str, Path]:
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return {"state": output.with_name(f"{stem}_state.pt"), "json": output.with_name(f"{stem}_log.json"),
            "csv": output.with_name(f"{stem}_log.csv"), "png": output.with_name(f"{stem}_progress.png")}


def write_logs(rows: list[dict], paths: dict[str, Path]) -> None:
    if not rows:
        return
    save_json(rows, paths["json"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[-1]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(paths["csv"], suffix=".csv") as tmp:
        tmp.write_text(buffer.getvalue())
    plot_curves(rows, paths["png"])


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    terms = [t for t in (*TERMS, "class", "correlation") if t in rows[-1]]
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.5))
    for ax, term in zip(axes, terms):
        ax.plot(epochs, [r[term] for r in rows], marker="o" if len(rows) < 30 else None)
        ax.set_title(term)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
