"""Mixed precision as one choice shared by training and prediction (``--precision``)."""

from __future__ import annotations

import torch

from smitunet.errors import SmitunetError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def autocast_dtype(precision: str, device: torch.device,
                   cuda_auto: torch.dtype | None = None) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for fp32.

    On the CPU only an explicit bf16 applies: oneDNN runs bf16 convolutions and matmuls fast where the CPU has
    AVX512-bf16 or AMX, and emulates them slower than fp32 elsewhere, so auto (and fp16) stay fp32 there.
    On CUDA, auto is ``cuda_auto`` when given, else bf16 where the card has it, else fp16.
    """
    if precision not in PRECISIONS:
        raise SmitunetError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cpu" and precision == "bf16":
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise SmitunetError("--precision bf16: this CPU has no bf16 support in oneDNN (it needs AVX512); "
                                "use fp32")
        return torch.bfloat16
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        if cuda_auto is not None:
            return cuda_auto
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
