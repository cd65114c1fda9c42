"""Training visibility: plain-text log, per-epoch metrics.json / metrics.csv and progress.png."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import time
from pathlib import Path

from smitunet.utils.files import atomic_path, make_dirs, save_json
from smitunet.utils.log import logger

# Per-epoch series kept in the checkpoint ("logs") so a resumed run continues the same curves.
# train_time: the training iterations alone (epoch_time adds the pseudo-validation).
LOG_KEYS = ("train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time", "train_time",
            "data_wait_fraction")


def empty_logs() -> dict:
    return {key: [] for key in LOG_KEYS}


class TrainingLogger:
    """Writes only on the main process (``enabled``); every file is rewritten atomically.

    metrics.json/csv are rewritten every epoch; progress.png (about half a second of matplotlib) at most every
    ``plot_interval_s`` and always at the last epoch, so very short epochs are not dominated by plotting.
    """

    plot_interval_s = 30.0

    def __init__(self, output_dir: Path, enabled: bool = True, class_names: list[str] | None = None):
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.class_names = class_names or []
        self.logs = empty_logs()
        self.log_file = self.output_dir / "training_log.txt"
        self._last_plot: float | None = None

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp}: {message}"
        logger.info(line)
        make_dirs(self.output_dir)
        with open(self.log_file, "a") as f:  # append-only text log; a torn last line is harmless
            f.write(line + "\n")

    def record_epoch(self, **values) -> None:
        for key in LOG_KEYS:
            self.logs[key].append(values[key])

    def write_epoch_files(self, last_epoch: bool = False) -> None:
        if not self.enabled:
            return
        rows = self._rows()
        save_json(rows, self.output_dir / "metrics.json")
        self._write_csv(rows)
        now = time.monotonic()
        if last_epoch or self._last_plot is None or now - self._last_plot >= self.plot_interval_s:
            self._plot_progress()
            self._last_plot = now

    def _rows(self) -> list[dict]:
        rows = []
        for i in range(len(self.logs["train_loss"])):
            row = {"epoch": i}
            for key in LOG_KEYS:
                value = self.logs[key][i]
                if key == "pseudo_dice":
                    for name, v in zip(self._names(len(value)), value):
                        row[f"pseudo_dice_{name}"] = v
                else:
                    row[key] = value
            rows.append(row)
        return rows

    def _names(self, n: int) -> list[str]:
        return self.class_names if len(self.class_names) == n else [str(i + 1) for i in range(n)]

    def _write_csv(self, rows: list[dict]) -> None:
        if not rows:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)
        with atomic_path(self.output_dir / "metrics.csv") as tmp:
            tmp.write_text(buffer.getvalue())

    def _plot_progress(self) -> None:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        epochs = list(range(len(self.logs["train_loss"])))
        fig, axes = plt.subplots(3, 1, figsize=(10, 12), sharex=True)
        ax = axes[0]
        ax.plot(epochs, self.logs["train_loss"], label="train loss", color="b")
        ax.plot(epochs, self.logs["val_loss"], label="val loss", color="r")
        ax.set_ylabel("loss")
        dice_ax = ax.twinx()
        per_class = list(zip(*self.logs["pseudo_dice"])) if self.logs["pseudo_dice"] else []
        for name, series in zip(self._names(len(per_class)), per_class):
            dice_ax.plot(epochs, series, linestyle=":", label=f"pseudo Dice {name}")
        dice_ax.plot(epochs, self.logs["ema_pseudo_dice"], color="g", label="pseudo Dice (EMA)")
        dice_ax.set_ylabel("pseudo Dice")
        dice_ax.set_ylim(0, 1)
        ax.legend(loc="upper left")
        dice_ax.legend(loc="upper right")
        axes[1].plot(epochs, self.logs["lr"], color="b")
        axes[1].set_ylabel("learning rate")
        axes[2].plot(epochs, self.logs["epoch_time"], color="b")
        axes[2].set_ylabel("epoch time [s]")
        axes[2].set_xlabel("epoch")
        fig.tight_layout()
        with atomic_path(self.output_dir / "progress.png", suffix=".png") as tmp:
            fig.savefig(tmp)
        plt.close(fig)
