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
