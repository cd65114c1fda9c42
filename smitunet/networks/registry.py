"""One registry of network presets and one factory.

``get_preset(name)`` returns the preset's default architecture kwargs (what the planner copies into the
plans); ``create_network(name, in_channels, num_classes, patch_size, **overrides)`` builds the network from
those defaults updated by ``overrides`` (the plans' kwargs). Unknown names and kwargs are user errors.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Sequence

from torch import nn

from smitunet.errors import SmitunetError
from smitunet.networks.blocks import NORMS, SPATIAL_DIMS, cumulative_strides
from smitunet.networks.conv_unet import ConvUNet
from smitunet.networks.smit_unet import SmitUNet

_SWIN_COMMON = {"num_stages": 4, "norm": "instance", "deep_supervision": False, "patch_norm": True,
                "mlp_ratio": 4.0, "drop_path_rate": 0.0}

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train on 2 CPU cores in tests.
    "smit_tiny": {**_SWIN_COMMON, "embed_dim": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                  "window_size": 4, "qkv_bias": False, "feature_size": 8},
    # The official SMIT configuration (Jiang et al.): loads the published pretraining checkpoint 1:1.
    "smit_small": {**_SWIN_COMMON, "embed_dim": 48, "depths": [2, 2, 4, 2], "num_heads": [4, 4, 4, 4],
                   "window_size": 4, "qkv_bias": False, "feature_size": 16},
    # The later, larger SMIT configuration.
    "smit_base": {**_SWIN_COMMON, "embed_dim": 48, "depths": [2, 2, 8, 2], "num_heads": [4, 4, 8, 16],
                  "window_size": 4, "qkv_bias": True, "feature_size": 24},
    # MONAI's SwinUNETR self-supervised model (model_swinvit.pt): no patch-embedding norm; the stage norms
    # norm{i} stay at identity affine (= MONAI's parameter-free LayerNorm of the hidden states).
    "swinunetr_ssl": {**_SWIN_COMMON, "embed_dim": 48, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24],
                      "window_size": 7, "qkv_bias": True, "feature_size": 24, "patch_norm": False},
    # Plain convolutional baseline (nnU-Net-like), same plan kwargs.
    "conv_unet": {"num_stages": 4, "norm": "instance", "deep_supervision": False, "base_features": 32,
                  "max_features": 320, "n_conv_per_stage": 2},
}

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "smit_tiny": SmitUNet, "smit_small": SmitUNet, "smit_base": SmitUNet, "swinunetr_ssl": SmitUNet,
    "conv_unet": ConvUNet,
}


def available_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise SmitunetError(f"unknown network preset {name!r}; available: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def is_swin(name: str) -> bool:
    return _BUILDERS.get(name) is SmitUNet


def default_strides(num_stages: int, spatial_dims: int = 3) -> list[list[int]]:
    return [[2] * spatial_dims for _ in range(num_stages + 1)]


def resolve_kwargs(name: str, in_channels: int, num_classes: int, patch_size: Sequence[int],
                   **overrides) -> dict[str, Any]:
    """Full, validated constructor kwargs: preset defaults, then overrides, then derived defaults."""
    kwargs = get_preset(name)
    kwargs.update(overrides)
    kwargs.update(in_channels=int(in_channels), num_classes=int(num_classes),
                  patch_size=[int(p) for p in patch_size])
    if kwargs.get("strides") is None:
        kwargs["strides"] = default_strides(kwargs["num_stages"], int(kwargs.get("spatial_dims", 3)))
    _validate(name, kwargs)
    return kwargs


def create_network(name: str, in_channels: int, num_classes: int, patch_size: Sequence[int],
                   **overrides) -> nn.Module:
    kwargs = resolve_kwargs(name, in_channels, num_classes, patch_size, **overrides)
    builder = _BUILDERS[name]
    accepted = set(inspect.signature(builder).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise SmitunetError(f"network {name}: unknown setting(s) {', '.join(unknown)}")
    model = builder(**kwargs)
    model.network_name = name
    model.network_kwargs = kwargs
    return model


DEFAULT_BUILDER = "smitunet.networks:create_network"


def build_from_config(name: str, kwargs: dict[str, Any], builder: str | None = None) -> nn.Module:
    """The network a checkpoint or plans describe: ``create_network(name, **kwargs)``, or for a plug-in
    architecture its recorded builder (``"package.module:function"``, called the same way)."""
    if builder is None or builder == DEFAULT_BUILDER:
        return create_network(name, **kwargs)
    function = import_builder(builder)
    network = function(name, **kwargs)
    if not isinstance(network, nn.Module):
        raise SmitunetError(f"network builder {builder}: returned {type(network).__name__}, not a torch module")
    return network


def import_builder(builder: str) -> Callable[..., nn.Module]:
    """Import a ``"package.module:function"`` builder; a missing package is one line naming it."""
    import importlib

    module_name, _, attr = str(builder).partition(":")
    if not module_name or not attr:
        raise SmitunetError(f"network builder {builder!r}: expected 'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SmitunetError(f"network builder {builder} cannot be imported ({type(exc).__name__}: {exc}); install "
                            "the package that defines it to use this model") from None
    if not callable(obj):
        raise SmitunetError(f"network builder {builder} is not callable")
    return obj


def _validate(name: str, kw: dict[str, Any]) -> None:
    where = f"network {name}"
    patch, strides, stages = kw["patch_size"], kw["strides"], kw["num_stages"]
    dims = kw.get("spatial_dims", 3)  # absent: 3D (every network before the 2d configuration)
    if dims not in SPATIAL_DIMS:
        raise SmitunetError(f"{where}: spatial_dims must be 2 or 3, got {dims!r}")
    count = {2: "two", 3: "three"}[dims]
    if len(patch) != dims or min(patch) < 1:
        raise SmitunetError(f"{where}: patch_size must be {count} positive integers (spatial_dims {dims}), got {patch}")
    if len(strides) != stages + 1 or any(len(s) != dims or any(v not in (1, 2) for v in s) for s in strides):
        raise SmitunetError(f"{where}: strides must be num_stages+1 = {stages + 1} per-axis "
                            f"{'pairs' if dims == 2 else 'triples'} of 1 or 2, got {strides}")
    total = cumulative_strides(strides)[-1]
    if any(p % t for p, t in zip(patch, total)):
        raise SmitunetError(f"{where}: patch_size {patch} is not divisible per axis by the total stride {total}")
    if kw.get("norm") not in NORMS:
        raise SmitunetError(f"{where}: norm must be one of {', '.join(NORMS)}, got {kw.get('norm')!r}")
    if is_swin(name):
        _validate_swin(where, kw)


def _validate_swin(where: str, kw: dict[str, Any]) -> None:
    stages, depths, heads = kw["num_stages"], kw["depths"], kw["num_heads"]
    if not 1 <= stages <= len(depths) or len(heads) != len(depths):
        raise SmitunetError(f"{where}: num_stages {stages} must be 1..{len(depths)} and num_heads match depths")
    if kw.get("decoder", "res") not in ("res", "light"):
        raise SmitunetError(f"{where}: decoder must be 'res' or 'light', got {kw['decoder']!r}")
    if kw.get("merge_order", "smit") not in ("smit", "monai_legacy"):
        raise SmitunetError(f"{where}: merge_order must be 'smit' or 'monai_legacy', got {kw['merge_order']!r}")
    for i in range(stages):
        dim = kw["embed_dim"] * 2 ** i
        if dim % heads[i]:
            raise SmitunetError(f"{where}: stage {i} width {dim} is not divisible by num_heads {heads[i]}")
