"""Window attention on the CPU: PyTorch's fused kernel against the explicit product, interleaved in one process.

    python benchmarks/attention.py [--threads 1] [--repeats 12]

Both paths of ``WindowAttention`` (``fused = True / False``) on the windows of the presets (4x4x4 for smit_*,
7x7x7 for swinunetr_ssl), shifted-window mask on, batch 3 images; training (forward + backward) and inference
(forward under no_grad). The runs alternate, so load from other processes falls on both alike. The ratio decides
``WindowAttention.fused``'s CPU default. Results: ``benchmarks/results/attention_*.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import RESULTS_DIR, machine_description, now_utc  # noqa: E402
from smitunet.networks.swin_blocks import WindowAttention, shifted_window_mask  # noqa: E402

CASES = (("smit_* (window 4)", (4, 4, 4), 48, 4, (12, 12, 16)), ("swinunetr_ssl (window 7)", (7, 7, 7), 48, 3, (14, 14, 14)))


def time_paths(window, dim, heads, padded, train: bool, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    attn = WindowAttention(dim, heads, window, qkv_bias=False)
    mask = shifted_window_mask(padded, window, tuple(w // 2 for w in window))
    x = torch.randn(3 * mask.shape[0], int(torch.tensor(window).prod()), dim, requires_grad=train)
    times = {"fused": [], "explicit": []}
    for _ in range(repeats):
        for name in times:
            attn.fused = name == "fused"
            start = time.perf_counter()
            if train:
                attn(x, window, mask).sum().backward()
            else:
                with torch.no_grad():
                    attn(x, window, mask)
            times[name].append(time.perf_counter() - start)
    return {k: sorted(v[2:])[len(v[2:]) // 2] for k, v in times.items()}  # median after two warm-up rounds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=12)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for label, window, dim, heads, padded in CASES:
        for train in (True, False):
            t = time_paths(window, dim, heads, padded, train, args.repeats)
            rows.append({"windows": label, "mode": "training" if train else "inference", "fused_s": t["fused"],
                         "explicit_s": t["explicit"], "ratio": t["fused"] / t["explicit"]})
    lines = [f"# Window attention on the CPU, fused vs explicit ({now_utc()}, {args.threads} thread(s), torch "
             f"{torch.__version__})", "", "| windows | mode | fused (ms) | explicit (ms) | fused / explicit |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['windows']} | {r['mode']} | {1e3 * r['fused_s']:.1f} | {1e3 * r['explicit_s']:.1f} | "
              f"{r['ratio']:.2f} |" for r in rows]
    text = "\n".join(lines)
    stem = RESULTS_DIR / f"attention_{time.strftime('%Y%m%d-%H%M', time.gmtime())}"
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine_description(), "threads": args.threads,
                                                     "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
