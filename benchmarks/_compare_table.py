"""The table of compare_nnunet.py: one row per figure, smitunet | nnU-Net v2 | ratio | target."""
from __future__ import annotations

from _report import fmt, machine_markdown, markdown_table, ratio

HEADER = ["Task04 Hippocampus, CPU", "smitunet", "nnU-Net v2", "smitunet / nnU-Net", "target"]


def _get(results: dict, *path):
    node = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _pair_row(label: str, ours, theirs, digits: int = 2, target: str = "") -> list:
    return [label, fmt(ours, digits), fmt(theirs, digits), ratio(ours, theirs), target]


def preprocess_rows(r: dict) -> list[list]:
    su = _get(r, "preprocess", "smitunet", "median") or {}
    nn = _get(r, "preprocess", "nnunet", "median") or {}
    return [_pair_row("plan + preprocess, wall (s)", su.get("wall_s"), nn.get("wall_s"), 1, "<= 0.5"),
            _pair_row("plan + preprocess, peak RSS of the process tree (MB)", su.get("peak_rss_mb"),
                      nn.get("peak_rss_mb"), 0, "<= 1"),
            _pair_row("plan + preprocess, peak PSS of the process tree (MB)", su.get("peak_pss_mb"),
                      nn.get("peak_pss_mb"), 0, "")]


def _plan_text(train: dict | None) -> str:
    if not train:
        return "n/a"
    patch = "x".join(str(v) for v in train["patch_size"])
    return f"patch {patch}, batch {train['batch_size']}" + (f", {train['preset']}" if "preset" in train else "")


def training_rows(r: dict) -> list[list]:
    su, nn = r.get("train_smitunet"), r.get("train_nnunet")

    def per_iter(t):
        return t["epoch_s"] / t["iters"] if t else None

    def wait(t):
        return 100 * t["data_wait_fraction"] if t else None

    def schedule(t):
        if not t:
            return "n/a"
        stop = ", stopped by budget" if t["stopped_by_budget"] else ""
        return f"{t['epochs_done']} x {t['iters']} it in {t['train_wall_s']:.0f} s{stop}"

    return [["planned patch / batch", _plan_text(su), _plan_text(nn), "", "each tool's own plans"],
            _pair_row("training, s per iteration (epoch wall / iterations)", per_iter(su), per_iter(nn), 2, ""),
            ["training, data waiting (% of train-step time)", fmt(wait(su), 2, " %"), fmt(wait(nn), 2, " %"), "",
             "<= 5 %"],
            ["training run (epochs x iterations, wall incl. start-up)", schedule(su), schedule(nn), "", ""]]


def _memory_row(label: str, ours: dict | None, theirs: dict | None) -> list:
    def text(m):
        return f"{m['peak_rss_mb']:.0f} ({m['peak_pss_mb']:.0f})" if m else "n/a"

    return [label, text(ours), text(theirs), ratio(ours and ours["peak_rss_mb"], theirs and theirs["peak_rss_mb"]), ""]


def prediction_rows(r: dict) -> list[list]:
    rows = []
    for mode, label in (("tta", "with mirroring"), ("notta", "without mirroring")):
        su, nn = r.get(f"predict_smitunet_{mode}"), r.get(f"predict_nnunet_{mode}")
        rows.append(_pair_row(f"prediction {label}, s per case", su and su["s_per_case"],
                              nn and nn["s_per_case"], 2, ""))
        rows.append(_memory_row(f"prediction {label}, peak RSS (PSS) of the process tree (MB)",
                                su and su["measurement"], nn and nn["measurement"]))
    return rows


def _dice_text(train: dict | None) -> str:
    if not train or "dice" not in train:
        return "n/a"
    d = train["dice"]
    return f"{d['mean']:.3f} ({d.get('1', float('nan')):.3f} / {d.get('2', float('nan')):.3f})"


def accuracy_rows(r: dict) -> list[list]:
    su, nn = r.get("train_smitunet"), r.get("train_nnunet")
    diff = f"{su['dice']['mean'] - nn['dice']['mean']:+.3f}" if su and nn and "dice" in su and "dice" in nn else "n/a"
    what = "after equal tiny schedules (quick)" if r["mode"] == "quick" else \
        f"after {r['settings']['budget_s'] / 60:.0f} min training each"
    rows = [[f"fold-0 validation Dice, mean (anterior / posterior), {what}", _dice_text(su), _dice_text(nn),
             f"difference {diff}", ">= nnU-Net"]]
    pre = r.get("train_smitunet_pretrained")
    if pre:
        rows.append([f"  smitunet --pretrained {r['pretrained']}", _dice_text(pre), "", "", ""])
    rows.append(_pair_row("fold validation wall (s)", su and su.get("validation_wall_s"),
                          nn and nn.get("validation_wall_s"), 0, ""))
    return rows


def _notes(r: dict) -> str:
    s = r["settings"]
    lines = [f"- mode {r['mode']}; whole run {r.get('total_wall_s', 0) / 60:.1f} min; "
             f"fold 0 of one seeded 5-fold split written for both tools"
             + (f" (validation cut to {s['val_cases']} cases)" if s["val_cases"] else ""),
             f"- prediction: {s['predict_cases']} fold-0 validation cases, CLI wall / cases (start-up included), "
             f"step 0.5, CPU, one preprocessing/export worker each"]
    if s.get("precision", "fp32") != "fp32":
        lines.append(f"- smitunet trains and predicts under --precision {s['precision']} (calibration included); "
                     f"nnU-Net in fp32")
    if r["mode"] != "quick":
        lines.append(f"- budget: calibration 2 x {s['calibration_iters']} iterations per tool, then epochs of "
                     f"{s['iters_per_epoch']} iterations sized to the budget (see README)")
    for phase, error in r.get("errors", {}).items():
        lines.append(f"- FAILED {phase}: {error.splitlines()[-1][:300]}")
    return "\n".join(lines)


def build_markdown(r: dict) -> str:
    rows = preprocess_rows(r) + training_rows(r) + prediction_rows(r) + accuracy_rows(r)
    return (f"# smitunet vs nnU-Net v2, Task04 Hippocampus ({r['mode']} run)\n\n{r['date']}\n\n"
            f"{markdown_table(HEADER, rows)}\n\n{_notes(r)}\n{machine_markdown(r['machine'], r.get('versions', {}))}")
