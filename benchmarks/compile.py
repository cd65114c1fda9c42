"""``--compile`` on the CPU: eager vs ``torch.compile`` for smit_small at the Hippocampus plan.

    python benchmarks/compile.py [--threads 1] [--steps 8] [--batch 5] [--budget 600]

The network and geometry of the Hippocampus ``3d_fullres`` plan (smit_small, 2 Swin stages, patch 40x56x40, strides
[[2,2,2]] x 3, batch 5, 3 classes). Training step: forward with deep supervision, a Dice+CE loss, backward, gradient
clipping, AdamW (what ``Trainer.train_step`` does). Inference: one tile forward under ``no_grad`` (batch 1, as the
CPU sliding window). Both go through ``smitunet.utils.compile.CompiledNetwork``, what ``--compile`` uses. The compile
time (the first call) is reported apart; step times are medians after two warm-up steps. Compilation that is not
finished within ``--budget`` seconds is recorded as such. Results: ``benchmarks/results/compile_*.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import RESULTS_DIR, machine_description, now_utc  # noqa: E402
from smitunet.networks.registry import create_network  # noqa: E402
from smitunet.training.losses import DeepSupervisionLoss, DiceCELoss  # noqa: E402
from smitunet.utils.compile import CompiledNetwork  # noqa: E402

PATCH = [40, 56, 40]
STRIDES = [[2, 2, 2]] * 3


def make_network():
    torch.manual_seed(0)
    return create_network("smit_small", 1, 3, PATCH, num_stages=2, strides=STRIDES, deep_supervision=True)


def train_steps(compiled: bool, steps: int, batch: int) -> dict:
    network = make_network()
    model = CompiledNetwork(network) if compiled else network
    loss_fn = DeepSupervisionLoss(DiceCELoss())
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, *PATCH, generator=gen)
    y = torch.randint(0, 3, (batch, 1, *PATCH), generator=gen)
    network.train()
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    ok = not compiled or model.compiled
    return {"first_s": times[0], "step_s": statistics.median(times[2:]), "losses": losses, "compiled": ok}


def inference_steps(compiled: bool, steps: int) -> dict:
    network = make_network().eval()
    network.deep_supervision = False
    model = CompiledNetwork(network) if compiled else network
    x = torch.randn(1, 1, *PATCH, generator=torch.Generator().manual_seed(2))
    times, out = [], None
    with torch.no_grad():
        for _ in range(steps):
            start = time.perf_counter()
            out = model(x)
            times.append(time.perf_counter() - start)
    ok = not compiled or model.compiled
    return {"first_s": times[0], "step_s": statistics.median(times[2:]), "output": out, "compiled": ok}


def within(budget: float, fn, *args):
    """fn(*args) in a daemon thread; None when it is not done within ``budget`` seconds (compilation too slow)."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", fn(*args)), daemon=True)
    thread.start()
    thread.join(budget)
    return box.get("r")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--modes", nargs="+", choices=("inference", "training"), default=["inference", "training"],
                   help="what to measure (training alone gives its compile the whole budget)")
    p.add_argument("--note", default="", help="a line added to the report (e.g. that the compile cache was warm)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds allowed for all compiled runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    do_inf, do_train = "inference" in args.modes, "training" in args.modes
    eager_inf = inference_steps(False, args.steps) if do_inf else None
    eager_train = train_steps(False, args.steps, args.batch) if do_train else None
    budgets = {"inference": args.budget - (time.perf_counter() - started)}
    comp_inf = within(budgets["inference"], inference_steps, True, args.steps) if do_inf else None
    budgets["training"] = max(args.budget - (time.perf_counter() - started), 1.0)
    comp_train = None
    if do_train and (comp_inf or not do_inf):
        comp_train = within(budgets["training"], train_steps, True, args.steps, args.batch)
    rows = []
    for kind, mode, eager, comp in (
            ("inference", "inference (1 tile, no_grad)", eager_inf, comp_inf),
            ("training", f"training step (batch {args.batch}, fwd+bwd+AdamW)", eager_train, comp_train)):
        if eager is None:  # not asked for (--modes)
            continue
        row = {"mode": mode, "eager_s": eager["step_s"], "eager_first_s": eager["first_s"]}
        if comp is None and kind == "training" and do_inf and comp_inf is None:
            row.update(compiled_s=None, compile_s=None, ratio=None, note="not tried: the inference compile used the budget")
        elif comp is None:
            row.update(compiled_s=None, compile_s=None, ratio=None, note=f"compilation plus {args.steps} steps not done within "
                                                                f"{budgets.get(kind, 0):.0f} s")
        elif not comp["compiled"]:
            row.update(compiled_s=None, compile_s=None, ratio=None, note="compile failed; fell back to eager")
        else:
            row.update(compiled_s=comp["step_s"], compile_s=comp["first_s"] - eager["step_s"],
                       ratio=comp["step_s"] / eager["step_s"], note="")
            if "output" in comp:
                row["max_abs_diff"] = float((comp["output"] - eager["output"]).abs().max())
            else:
                row["max_loss_diff"] = max(abs(a - b) for a, b in zip(comp["losses"], eager["losses"]))
        rows.append(row)
    head = (f"# torch.compile vs eager on the CPU ({now_utc()}, {args.threads} thread(s), torch {torch.__version__})\n\n"
            f"smit_small at the Hippocampus plan (patch {'x'.join(map(str, PATCH))}, 2 Swin stages), medians of "
            f"{args.steps - 2} steps after 2 warm-up steps; compile time = first compiled call minus one eager step.\n"
            + (f"\n{args.note}\n" if args.note else ""))
    lines = [head, "| mode | eager (s) | compiled (s) | compiled / eager | compile time (s) | note |",
             "|---|---|---|---|---|---|"]

    def f(v, d=3):
        return "–" if v is None else f"{v:.{d}f}"
    for r in rows:
        diff = r.get("max_abs_diff", r.get("max_loss_diff"))
        note = r["note"] or (f"max abs diff {diff:.1e}" if diff is not None else "")
        lines.append(f"| {r['mode']} | {f(r['eager_s'])} | {f(r['compiled_s'])} | {f(r['ratio'], 2)} | "
                     f"{f(r['compile_s'], 1)} | {note} |")
    text = "\n".join(lines)
    stem = RESULTS_DIR / f"compile_{time.strftime('%Y%m%d-%H%M', time.gmtime())}"
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine_description(), "threads": args.threads,
                                                     "steps": args.steps, "batch": args.batch, "patch": PATCH, "note": args.note,
                                                     "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
