"""Read a pretrained checkpoint's Swin architecture from its tensors, so the planner can build the network it fits.

Works on every layout ``checkpoint_layouts`` accepts (official SMIT, MONAI SwinUNETR, smitunet training and
pretraining files): the keys are normalised to SMIT names first, then

- ``embed_dim``, ``in_channels``: ``patch_embed.proj.weight`` (C, in, k, k, k);
- ``depths``: the ``layers.{i}.blocks.{j}`` present per stage (a checkpoint holds as many stages as it has layers);
- ``num_heads``, ``window_size``: ``relative_position_bias_table`` ((2w-1)^3, heads) of each stage's first block;
- ``qkv_bias``, ``patch_norm``: whether ``attn.qkv.bias`` / ``patch_embed.norm.weight`` exist;
- ``mlp_ratio``: ``mlp.fc1.weight`` rows over the stage width.

A smitunet pretraining file (``smitunet_pretrain``) also carries what the planner should keep: its spacing,
normalisation and patch (``meta``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from smitunet.checkpoint_io import load_checkpoint
from smitunet.errors import SmitunetError
from smitunet.networks import checkpoint_layouts as layouts

_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
ARCHITECTURE_KEYS = ("embed_dim", "depths", "num_heads", "window_size", "qkv_bias", "patch_norm", "mlp_ratio",
                     "merge_order")


@dataclass
class PretrainedArchitecture:
    source: str
    layout: str                       # "smit" | "monai-swinunetr"
    kind: str                         # "official" | "smitunet-pretraining" | "smitunet-training"
    in_channels: int
    embed_dim: int
    depths: list[int]                 # one entry per stage the checkpoint holds
    num_heads: list[int]
    window_size: int
    qkv_bias: bool
    patch_norm: bool
    mlp_ratio: float
    merge_order: str = "smit"         # "monai_legacy": MONAI's v0.9 patch merging (the self-supervised release)
    meta: dict[str, Any] = field(default_factory=dict)  # smitunet pretraining: spacing, normalization, patch, ...

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def network_kwargs(self) -> dict[str, Any]:
        """The architecture settings of a Swin preset that this checkpoint fixes (``merge_order`` only when it is not
        SMIT's, so plans of ordinary checkpoints keep the preset's keys)."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in asdict(self).items()
                if k in ARCHITECTURE_KEYS and not (k == "merge_order" and v == "smit")}

    def describe(self) -> str:
        return (f"{self.source} ({self.kind}, {self.layout} layout): embed dim {self.embed_dim}, depths {self.depths}, "
                f"heads {self.num_heads}, window {self.window_size}, {self.num_stages} stages")


def _kind(obj: Any) -> str:
    if isinstance(obj, Mapping) and obj.get("format") == "smitunet":
        return f"smitunet-{obj.get('kind')}"
    return "official"


def read_architecture(checkpoint: str | Path | Mapping, prefer: str = "teacher",
                      monai_merge: str | None = None) -> PretrainedArchitecture:
    """The Swin architecture a checkpoint holds (raises ``SmitunetError`` naming the file when it has none)."""
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "<state_dict>"
    obj = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    tensors, _ = layouts.unwrap(obj, source, prefer)
    if layouts.is_monai_layout(tensors) and monai_merge is None:
        monai_merge = layouts.monai_merge_order(tensors)
    normalized, layout = layouts.normalize(tensors, monai_merge)
    if "patch_embed.proj.weight" not in normalized:
        raise SmitunetError(f"{source}: no patch_embed.proj.weight: not a Swin encoder checkpoint")
    embed = normalized["patch_embed.proj.weight"]
    if embed.ndim != 5 or tuple(embed.shape[2:]) != (2, 2, 2):
        raise SmitunetError(f"{source}: patch embedding kernel {tuple(embed.shape[2:])}; the Swin U-Net embeds 2x2x2 "
                            "patches")
    blocks: dict[int, set[int]] = {}
    for key in normalized:
        m = _BLOCK.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(blocks)
    if not stages or stages != list(range(len(stages))):
        raise SmitunetError(f"{source}: Swin stages {stages} are not numbered 0..n-1")
    heads, windows = [], set()
    for i in stages:
        table = normalized.get(f"layers.{i}.blocks.0.attn.relative_position_bias_table")
        if table is None or table.ndim != 2:
            raise SmitunetError(f"{source}: stage {i} has no relative_position_bias_table")
        side = round(table.shape[0] ** (1 / 3))
        if side ** 3 != table.shape[0] or side % 2 == 0:
            raise SmitunetError(f"{source}: stage {i}'s relative-position table has {table.shape[0]} rows, "
                                "not a cubic window's (2w-1)^3")
        windows.add((side + 1) // 2)
        heads.append(int(table.shape[1]))
    if len(windows) != 1:
        raise SmitunetError(f"{source}: stages use different windows {sorted(windows)}; one window is supported")
    fc1 = normalized.get("layers.0.blocks.0.mlp.fc1.weight")
    meta = dict(obj.get("meta") or {}) if isinstance(obj, Mapping) and obj.get("kind") == "pretraining" else {}
    if isinstance(obj, Mapping) and obj.get("kind") == "pretraining" and isinstance(obj.get("network"), Mapping):
        meta["network"] = dict(obj["network"])
    return PretrainedArchitecture(
        source=source, layout=layout, kind=_kind(obj), in_channels=int(embed.shape[1]), embed_dim=int(embed.shape[0]),
        depths=[len(blocks[i]) for i in stages], num_heads=heads, window_size=windows.pop(),
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in normalized,
        patch_norm="patch_embed.norm.weight" in normalized,
        mlp_ratio=float(fc1.shape[0] / embed.shape[0]) if fc1 is not None else 4.0,
        merge_order="monai_legacy" if monai_merge == "legacy" else "smit", meta=meta)
