"""Recognise checkpoint layouts and map their keys onto the SMIT encoder's names.

Accepted (all read through ``smitunet.checkpoint_io.load_checkpoint``, weights only):
- official SMIT: a flat state_dict, or wrapped in ``state_dict`` / ``model`` / ``student`` / ``teacher``
  (teacher preferred when both, selectable), with ``module.``, ``backbone.``, ``module.backbone.``,
  ``transformer.`` (official fine-tuning network) prefixes;
- MONAI SwinUNETR: ``model_swinvit.pt`` (``module.layers1.0.blocks...``, ``mlp.fc1/fc2``) and full SwinUNETR
  state_dicts (``swinViT.layers1.0...``, ``mlp.linear1/2``). Their patch merging: the published self-supervised
  ``model_swinvit.pt`` was trained with MONAI's legacy gather (v0.9: two sub-voxels repeated, see
  ``swin_blocks.MONAI_LEGACY_MERGE_ORDER``), which only a network built with ``merge_order="monai_legacy"``
  reproduces, so such files are loaded as they are into such a network; SwinUNETR models of MONAI >= 1.0
  ("merging", "mergingv2") are permutations of SMIT's order and are reordered to it. ``monai_merge_order``
  tells which a file is (legacy for a bare ``layers1`` encoder file, "merging" for a ``swinViT.`` model), and
  callers can say otherwise;
- smitunet training checkpoints (``{"format": "smitunet", "kind": "training", "state_dict"}``, encoder under
  ``encoder.``) and smitunet pretraining output (``{"kind": "pretraining", "encoder": {...}}``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from smitunet.errors import SmitunetError

WRAPPER_KEYS = ("state_dict", "model", "network_weights", "net")
PREFIXES = ("module.", "backbone.", "transformer.", "swinViT.", "swin_vit.", "encoder.")
_MONAI_LAYER = re.compile(r"^layers([1-9])\.0\.")
# MONAI's PatchMerging ("merging", v0.9) concatenates 000,100,010,001,110,101,011,111; SMIT swaps the 6th and
# 7th blocks (011 before 101). "mergingv2" uses itertools.product order 000,001,010,011,100,101,110,111.
_MONAI_MERGE_ORDERS = {
    "merging": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)),
    "mergingv2": ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)),
}
_SMIT_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1))
_DECODER = re.compile(r"^(encoder\d+|decoder\d*|out|input_block|skip_blocks|up_blocks|heads|seg_layers)[.]")
_SSL_HEAD = re.compile(r"^(rotation_head|contrastive_head|convTrans3d|conv|head|heads_ssl|projector|projection|"
                       r"predictor|decoder_pred|pred|mim_head|dino_head)\b")


def unwrap(obj: Any, source: str, prefer: str = "teacher") -> tuple[dict[str, torch.Tensor], str]:
    """Return the flat tensor dict inside a checkpoint and a short description of the wrapping."""
    if prefer not in ("teacher", "student"):
        raise SmitunetError(f"{source}: prefer must be 'teacher' or 'student', got {prefer!r}")
    path = []
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if obj.get("format") == "smitunet":
            key = "encoder" if obj.get("kind") == "pretraining" else "state_dict"
            path.append(f"smitunet {obj.get('kind')}[{key}]")
            obj = obj.get(key)
            continue
        if "teacher" in obj or "student" in obj:
            key = prefer if prefer in obj else ("student" if prefer == "teacher" else "teacher")
            path.append(key)
            obj = obj[key]
            continue
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None:
            break
        path.append(wrapper)
        obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise SmitunetError(f"{source}: no state_dict found (wrapping: {'/'.join(path) or 'none'})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise SmitunetError(f"{source}: no tensors found (wrapping: {'/'.join(path) or 'none'}; "
                            f"keys: {', '.join(list(map(str, obj))[:8])})")
    return tensors, "/".join(path) or "flat"


def strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def is_monai_layout(keys) -> bool:
    return any(_MONAI_LAYER.match(strip_prefixes(k)) for k in keys)


MONAI_MERGE_CHOICES = ("legacy", *_MONAI_MERGE_ORDERS)


def monai_merge_order(keys) -> str:
    """The patch-merging gather a MONAI file was most likely trained with: the bare encoder of the self-supervised
    release (``module.layers1...`` / ``layers1...``) used the legacy one; a ``swinViT.`` SwinUNETR model, MONAI's
    current default ("merging")."""
    return "merging" if any(k.startswith(("swinViT.", "swin_vit.")) or ".swinViT." in k for k in keys) else "legacy"


def normalize(tensors: dict[str, torch.Tensor], monai_merge: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Map keys to SMIT encoder names; returns (tensors by normalized key, detected layout name). A MONAI file's
    merge weights are reordered to SMIT's gather unless ``monai_merge`` (default: ``monai_merge_order``) is
    "legacy", which no reorder can express (they stay as they are)."""
    monai = is_monai_layout(tensors)
    if monai and monai_merge is None:
        monai_merge = monai_merge_order(tensors)
    if monai and monai_merge not in MONAI_MERGE_CHOICES:
        raise SmitunetError(f"MONAI merge order must be one of {', '.join(MONAI_MERGE_CHOICES)}, got {monai_merge!r}")
    out = {}
    for key, value in tensors.items():
        k = strip_prefixes(key)
        if monai:
            k = _MONAI_LAYER.sub(lambda m: f"layers.{int(m.group(1)) - 1}.", k)
            k = k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
            if ".downsample." in k and monai_merge != "legacy":
                value = reorder_merge(value, k, _MONAI_MERGE_ORDERS[monai_merge])
        if k in out:
            raise SmitunetError(f"ambiguous checkpoint: two tensors map to {k} (e.g. {key})")
        out[k] = value
    return out, ("monai-swinunetr" if monai else "smit")


def reorder_merge(value: torch.Tensor, key: str, source_order) -> torch.Tensor:
    """Permute the 8 sub-voxel blocks of a merge norm (8C) or reduction weight (2C x 8C) to SMIT's order."""
    perm = [source_order.index(o) for o in _SMIT_ORDER]
    dim = 1 if key.endswith("reduction.weight") else 0
    chunks = value.chunk(8, dim=dim)
    return torch.cat([chunks[p] for p in perm], dim=dim)


def skip_reason(key: str, model_keys) -> str:
    """Why a normalized source key that the encoder does not have is skipped."""
    if key == "mask_token":
        return "mask token: only used by masked-image pretraining"
    if _DECODER.match(key):
        return "decoder/segmentation head: never loaded"
    if _SSL_HEAD.match(key):
        return "self-supervised head: dropped"
    parts = key.split(".")
    parent = ".".join(parts[:-2]) + "." if len(parts) > 2 else None
    if parent and any(k.startswith(parent) for k in model_keys):
        return "this network's configuration has no such tensor (qkv_bias / patch_norm differ)"
    m = re.match(r"^(?:layers\.(\d+)|norm(\d+))\.", key)
    if m:
        return f"stage {m.group(1) or m.group(2)}: block or stage not used by this network (fewer stages/blocks)"
    return "not an encoder tensor of this network"
