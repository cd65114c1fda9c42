"""The planner's training-memory estimate against a measured CPU peak (±30 %).

Measured: one real forward + backward + SGD step on CPU under torch.profiler(profile_memory=True); the
CPU allocator reports each allocation/free with its running total, and the peak of that total during the
step plus the bytes held before it (weights, input) is the measured peak
(``smitunet.networks.memory.measure_training_peak_bytes``).
"""

from __future__ import annotations

import pytest
import torch

from smitunet.networks.memory import estimate_training_memory_bytes, measure_training_peak_bytes
from smitunet.networks.registry import create_network, resolve_kwargs
from smitunet.plans import NetworkConfig

CASES = [
    ([40, 56, 40], [[2, 2, 2], [2, 2, 2], [2, 2, 2]], 2),
    ([16, 48, 48], [[2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]], 2),
    ([64, 32, 32], [[2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 1, 1]], 1),
]


@pytest.mark.parametrize("patch,strides,batch", CASES)
def test_estimate_within_30_percent_of_measured_peak(patch, strides, batch):
    kwargs = resolve_kwargs("smit_tiny", 1, 3, patch, num_stages=len(strides) - 1, strides=strides,
                            deep_supervision=True)
    estimate = estimate_training_memory_bytes(NetworkConfig("smit_tiny", kwargs), batch)
    torch.manual_seed(0)
    measured = measure_training_peak_bytes(create_network("smit_tiny", **kwargs), torch.randn(batch, 1, *patch))
    assert 0.7 <= estimate / measured <= 1.3, (estimate, measured)


def test_estimate_grows_with_batch_and_patch_and_amp_is_smaller():
    kwargs = resolve_kwargs("smit_small", 1, 3, [64, 64, 64])
    cfg = NetworkConfig("smit_small", kwargs)
    one, two = estimate_training_memory_bytes(cfg, 1), estimate_training_memory_bytes(cfg, 2)
    assert two > one > 0
    bigger = NetworkConfig("smit_small", resolve_kwargs("smit_small", 1, 3, [64, 64, 128]))
    assert estimate_training_memory_bytes(bigger, 1) > one
    assert estimate_training_memory_bytes(cfg, 2, amp=True) < two
    # the conv baseline is estimated from the same plan kwargs
    conv = NetworkConfig("conv_unet", resolve_kwargs("conv_unet", 1, 3, [64, 64, 64]))
    assert estimate_training_memory_bytes(conv, 2) > 0


@pytest.mark.parametrize("preset,patch,strides", [
    ("smit_tiny", [40, 56, 40], [[2, 2, 2], [2, 2, 2], [2, 2, 2]]),
    ("smit_small", [32, 32, 32], [[2, 2, 2], [2, 2, 2], [2, 2, 2]]),
])
def test_adamw_estimate_within_30_percent_of_a_measured_adamw_step(preset, patch, strides):
    """What SMITTrainer runs: AdamW (two state copies). Two presets, measured on the CPU in float32."""
    kwargs = resolve_kwargs(preset, 1, 3, patch, num_stages=len(strides) - 1, strides=strides, deep_supervision=True)
    estimate = estimate_training_memory_bytes(NetworkConfig(preset, kwargs), 2, optimizer="adamw")
    torch.manual_seed(0)
    measured = measure_training_peak_bytes(create_network(preset, **kwargs), torch.randn(2, 1, *patch),
                                           optimizer="adamw")
    assert 0.7 <= estimate / measured <= 1.3, (estimate, measured)


def test_planner_estimates_the_step_that_runs_on_the_gpu(monkeypatch):
    """The memory target is a GPU's: float16 autocast, and AdamW for Swin networks, SGD for the conv baseline."""
    import smitunet.networks.memory as memory
    from smitunet.preprocessing import planner

    calls = []
    real = memory.estimate_training_memory_bytes
    monkeypatch.setattr(memory, "estimate_training_memory_bytes",
                        lambda cfg, batch, optimizer="sgd", amp=False: calls.append((cfg.name, optimizer, amp))
                        or real(cfg, batch, optimizer, amp))
    swin = NetworkConfig("smit_tiny", resolve_kwargs("smit_tiny", 1, 3, [64, 64, 64]))
    conv = NetworkConfig("conv_unet", resolve_kwargs("conv_unet", 1, 3, [64, 64, 64]))
    planner._estimate_memory(swin, 2)
    planner._estimate_memory(conv, 2)
    assert calls == [("smit_tiny", "adamw", True), ("conv_unet", "sgd", True)]
