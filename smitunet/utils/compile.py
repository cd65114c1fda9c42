"""``--compile``: the network's forward through ``torch.compile``, with eager PyTorch as the fallback.

``CompiledNetwork`` wraps a network (or its DDP wrapper) without changing it: the compiled callable is kept outside
the module tree, so ``network.state_dict()`` keeps its keys (``torch.compile(module)`` would add ``_orig_mod.``
to every key if it were stored as the network) and checkpoints written with and without ``--compile`` are
interchangeable. A compile failure, when ``torch.compile`` is called or on the first call (Dynamo and the backend
compile lazily, at the first forward), switches to the eager network for good after one warning line; the step
that failed is rerun eagerly, so training and prediction go on with the same results. Not covered: a failure of
the backward graph, which AOTAutograd compiles at the first ``backward()``, outside this wrapper; it surfaces as
that step's error (rerun without ``--compile``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from smitunet.utils.log import logger


def compile_mode(device: torch.device, static_shapes: bool = True, distributed: bool = False) -> str | None:
    """``reduce-overhead`` (CUDA graphs: one launch per step instead of one per kernel) on CUDA when every call has
    the same shapes; CUDA graphs do not hold across DDP's gradient hooks, so not under DDP. None (the default mode)
    otherwise: on the CPU there are no launches to save."""
    if device.type == "cuda" and static_shapes and not distributed:
        return "reduce-overhead"
    return None


class CompiledNetwork(nn.Module):
    """Calls ``network`` through ``torch.compile`` (eager after a compile failure). A submodule, so ``train()`` and
    ``eval()`` reach the network; save ``network``, never this wrapper."""

    def __init__(self, network: nn.Module, mode: str | None = None, what: str = "network"):
        super().__init__()
        self.network = network
        self.what = what
        self.mode = mode
        self.failure: str | None = None      # why compilation was given up (None: compiled, or never tried)
        self._calls = 0
        try:
            # kept out of the module tree (torch.compile returns a Module around ``network``): state_dict,
            # named_parameters and .to() then see the network once, under its own names
            self.__dict__["_compiled"] = torch.compile(network, mode=mode)
        except Exception as exc:  # noqa: BLE001 - any failure to compile means eager, not a failed run
            self._compiled = None
            self._fall_back(exc)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _fall_back(self, exc: BaseException) -> None:
        self._compiled = None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        self.failure = f"{type(exc).__name__}: {first}"
        message = f"--compile: torch.compile of the {self.what} failed ({self.failure}); continuing in eager mode"
        logger.warning(message)  # the project's one channel for warnings: one line on stderr

    def forward(self, *args, **kwargs):
        if self._compiled is None:
            return self.network(*args, **kwargs)
        self._calls += 1
        try:
            return self._compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as exc:  # a later recompilation (new shapes or mode) failed
            self._fall_back(exc)
        except Exception as exc:  # noqa: BLE001
            if self._calls > 1:  # compiled calls have worked: this is the input's or the model's own error
                raise
            self._fall_back(exc)  # the first call compiles: any error there may be the compiler's
        # eager rerun of the failed call: a genuine error of the input or network is raised from here
        return self.network(*args, **kwargs)


def maybe_compile(network: nn.Module, enabled: bool, device: torch.device, *, static_shapes: bool = True,
                  distributed: bool = False, what: str = "network") -> nn.Module:
    """``network`` itself without ``--compile``; else a ``CompiledNetwork`` around it."""
    if not enabled:
        return network
    # The Swin blocks cache window indices and masks with functools.lru_cache on shapes only; Dynamo traces through
    # the cache and warns, several lines per function, about a risk that pure functions of shapes do not carry.
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    return CompiledNetwork(network, compile_mode(device, static_shapes, distributed), what)
