"""Parameter count, CPU forward and forward+backward time per patch for every network preset.

Default geometry: what the planner produces for MSD Hippocampus (patch 40x56x40, 2 Swin stages, strides
[[2,2,2],[2,2,2],[2,2,2]]). Times are medians over ``--repeats`` runs after one warm-up, float32 on CPU with
``--threads`` intra-op threads; fwd+bwd includes a deep-supervision-free loss and backward (no optimizer).

    python benchmarks/network_presets.py [--threads 2] [--repeats 3] [--batches 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm

from smitunet.networks.memory import estimate_training_memory_bytes
from smitunet.networks.registry import available_presets, create_network, resolve_kwargs
from smitunet.plans import NetworkConfig

HIPPOCAMPUS_PATCH = [40, 56, 40]
HIPPOCAMPUS_STRIDES = [[2, 2, 2], [2, 2, 2], [2, 2, 2]]


def _timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds (CPU time is less disturbed by other load)."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def bench(preset: str, patch, strides, batch: int, repeats: int, num_classes: int = 3) -> dict:
    kwargs = resolve_kwargs(preset, 1, num_classes, patch, num_stages=len(strides) - 1, strides=strides)
    model = create_network(preset, **kwargs)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(batch, 1, *patch)

    def forward():
        with torch.no_grad():
            model.eval()(x)

    def forward_backward():
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    fwd, fwd_cpu = _timed(forward, repeats)
    fwd_bwd, fwd_bwd_cpu = _timed(forward_backward, repeats)
    return {"preset": preset, "batch": batch, "params_M": params / 1e6, "fwd_s": fwd, "fwd_cpu_s": fwd_cpu,
            "fwd_bwd_s": fwd_bwd, "fwd_bwd_cpu_s": fwd_bwd_cpu,
            "est_train_mem_MB": estimate_training_memory_bytes(NetworkConfig(preset, kwargs), batch) / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--presets", nargs="+", default=available_presets())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    jobs = [(p, b) for p in args.presets for b in args.batches]
    for preset, batch in tqdm(jobs, desc="presets", disable=None):
        rows.append(bench(preset, HIPPOCAMPUS_PATCH, HIPPOCAMPUS_STRIDES, batch, args.repeats))
    print(f"\npatch {HIPPOCAMPUS_PATCH}, strides {HIPPOCAMPUS_STRIDES}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print("wall = elapsed seconds per batch; cpu = process CPU seconds (all threads) per batch; /patch = per sample")
    print(f"{'preset':<14} {'batch':>5} {'params (M)':>10} {'fwd wall':>8} {'fwd cpu':>8} {'fwd wall/patch':>14} "
          f"{'fwd+bwd wall':>12} {'fwd+bwd cpu':>11} {'fwd+bwd wall/patch':>18} {'est. train MB':>13}")
    for r in rows:
        b = r["batch"]
        print(f"{r['preset']:<14} {b:>5} {r['params_M']:>10.2f} {r['fwd_s']:>8.3f} {r['fwd_cpu_s']:>8.3f} "
              f"{r['fwd_s'] / b:>14.3f} {r['fwd_bwd_s']:>12.3f} {r['fwd_bwd_cpu_s']:>11.3f} "
              f"{r['fwd_bwd_s'] / b:>18.3f} {r['est_train_mem_MB']:>13.0f}")


if __name__ == "__main__":
    main()
