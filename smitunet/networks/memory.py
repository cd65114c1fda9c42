"""Training-step memory estimate for the planner, and a CPU measurement to check it against.

Estimate (``estimate_training_memory_bytes``), float32, one step of forward + backward + optimizer step:

    weights + input batch
  + max( activations saved for backward                             counted exactly, see below
         + transient backward workspace                             TRANSIENT_FACTOR x the largest saved tensor
                                                                    (CPU, batch 1: at least the largest
                                                                    im2col buffer of a 3D convolution),
         gradients + optimizer state copies )                       SGD-momentum: 1 copy, AdamW: 2

(gradients are allocated while backward frees the activations, the optimizer state after it).

The saved activations are counted without running any arithmetic: the network is built on PyTorch's
``meta`` device (shapes only, no storage) and one forward pass runs under
``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor autograd keeps for the backward pass;
each distinct storage is counted once and parameters are excluded (they are in the first term). This is
the analytic activation count for the exact architecture and patch, including window padding and
attention matrices, at a cost of ~0.1-0.3 s per call (results are cached).

CUDA with automatic mixed precision keeps most saved activations in float16: multiply the activation
terms by ``AMP_ACTIVATION_FACTOR`` (0.6: half precision for convolution/linear/attention inputs, float32
for normalisation statistics and softmax outputs) - see ``estimate_training_memory_bytes(amp=True)``.

Measurement (``measure_training_peak_bytes``): runs a real CPU step under ``torch.profiler`` with
``profile_memory=True``; the CPU allocator reports every allocation and free with the running total of
bytes allocated. Peak = max running total (relative to its value when the step starts) + bytes already
allocated before the step (parameters, input; gradients are reset to None first). That is what the test compares the estimate with.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from typing import Any

import torch

TRANSIENT_FACTOR = 2.0
AMP_ACTIVATION_FACTOR = 0.6
OPTIMIZER_STATE_COPIES = {"sgd": 1, "adamw": 2, "adam": 2}
BYTES_FP32 = 4
IM2COL_LIMIT = 20480


def estimate_training_memory_bytes(network_config, batch_size: int, optimizer: str = "sgd",
                                   amp: bool = False) -> int:
    """Bytes one training step needs (see module doc). ``network_config``: ``smitunet.plans.NetworkConfig``."""
    kwargs_json = json.dumps(network_config.kwargs, sort_keys=True)
    params, saved, largest, columns = _trace(network_config.name, kwargs_json, int(batch_size))
    kwargs = network_config.kwargs
    input_bytes = BYTES_FP32 * batch_size * int(kwargs["in_channels"]) * math.prod(kwargs["patch_size"])
    transient = TRANSIENT_FACTOR * largest
    if batch_size == 1 and not amp:
        # On CPU a batch of one runs small 3D convolutions through im2col (slow_conv3d), whose column
        # buffer (kernel volume x input channels x output voxels) can dominate the transient memory.
        transient = max(transient, columns)
    activations = saved + transient
    if amp:
        activations *= AMP_ACTIVATION_FACTOR
    # Gradients appear while backward frees the saved activations and the optimizer state after it, so
    # the peak is the larger of the two phases, not their sum (measured: the sum overestimates conv nets).
    grad_and_state = BYTES_FP32 * params * (1 + OPTIMIZER_STATE_COPIES.get(optimizer.lower(), 2))
    return int(BYTES_FP32 * params + input_bytes + max(activations, grad_and_state))


@functools.lru_cache(maxsize=256)
def _trace(name: str, kwargs_json: str, batch_size: int) -> tuple[int, int, int, int]:
    """Parameter count, saved-activation bytes, largest saved tensor bytes and largest per-sample im2col
    buffer bytes of a 3D convolution, from one meta-device forward."""
    from smitunet.networks.registry import create_network  # local: registry imports this package's modules

    kwargs: dict[str, Any] = json.loads(kwargs_json)
    with torch.device("meta"):
        model = create_network(name, **kwargs)
        x = torch.empty(batch_size, int(kwargs["in_channels"]), *kwargs["patch_size"])
    model.train()
    param_storages = {p.untyped_storage()._cdata for p in model.parameters()}
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in param_storages:
            sizes[storage._cdata] = max(sizes.get(storage._cdata, 0), storage.nbytes())
        return t

    columns = [0]

    def conv_hook(module: torch.nn.Conv3d, inputs, output: torch.Tensor) -> None:
        # PyTorch's CPU dispatch (ConvUtils use_mkldnn) sends a batch-1 float conv with a small kernel to
        # slow_conv3d when B*C*D*H <= 20480; that path materialises an im2col buffer.
        b, c, d, h = inputs[0].shape[:4]
        kernel = math.prod(module.kernel_size)
        if kernel > 1 and b * c * d * h <= IM2COL_LIMIT:
            columns[0] = max(columns[0], BYTES_FP32 * kernel * c * math.prod(output.shape[2:]))

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    for h in hooks:
        h.remove()
    params = sum(p.numel() for p in model.parameters())
    return params, sum(sizes.values()), max(sizes.values(), default=0), columns[0]


def measure_training_peak_bytes(model: torch.nn.Module, x: torch.Tensor, optimizer: str = "sgd") -> int:
    """Peak CPU bytes of one real training step (forward, backward, optimizer step), see module doc."""
    from torch.profiler import ProfilerActivity, profile

    params = list(model.parameters())
    model.zero_grad(set_to_none=True)
    opt = (torch.optim.SGD(params, lr=1e-3, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(params, lr=1e-3))
    before = sum(p.numel() * p.element_size() for p in params) + x.numel() * x.element_size()
    model.train()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        out.float().square().mean().backward()
        opt.step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    records = sorted((e["ts"], e["args"]["Total Allocated"], e["args"]["Bytes"]) for e in events
                     if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0)
    if not records:
        return before
    # The allocator's running total is process-wide: subtract its value just before the first event.
    baseline = records[0][1] - records[0][2]
    return before + max(total for _, total, _ in records) - baseline
