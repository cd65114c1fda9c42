"""Adapt a pretrained checkpoint to a SMIT Swin encoder: exact where possible, adapted where needed, reported.

``adapt_checkpoint(state_dict_or_file, model)`` is pure: it returns the tensors to load (model-level keys,
i.e. ``encoder.*`` for a U-Net, bare keys for a bare encoder) and an ``AdaptReport``; ``load_pretrained``
applies them with a strict ``load_state_dict`` of the full state (so nothing unexpected can slip in).

Adaptations: different input channels (patch-embedding weights repeated over channels and rescaled by
``in_source / in_target`` so duplicated inputs give the same response); different window (the
relative-position table keeps the source's bias exactly at every shared offset, offsets beyond the source
window take the nearest stored offset's bias; the index is always rebuilt); fewer stages or blocks (unused
tensors skipped); decoder and segmentation head never loaded. Head-count or width mismatches raise an error
naming the tensors.

Into a 2D network (``spatial_dims=2``, the ``2d`` configuration) a 3D checkpoint loads as if each slice were a
volume constant along depth: the patch-embedding kernel is summed over depth, each relative-position table keeps
its zero-depth-offset plane (then resized in-plane like any table); the merges keep their 3D shape (see
``PatchMerging``) and load as they are. A 3D tensor with no 2D rule is skipped and reported (its target counts
as missing). Loading fewer than ``min_fraction`` (90 %) of the encoder's tensors is an error unless
``accept_partial``. See ``checkpoint_layouts`` for the accepted layouts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from smitunet.checkpoint_io import load_checkpoint
from smitunet.errors import SmitunetError
from smitunet.networks import checkpoint_layouts as layouts
from smitunet.networks.swin_encoder import SmitSwinEncoder

MIN_FRACTION = 0.9


@dataclass
class AdaptReport:
    source: str
    wrapping: str = ""
    layout: str = ""
    merge_order: str = ""                                      # patch-merging gather the weights were trained with
    loaded: list[str] = field(default_factory=list)
    adapted: list[list[str]] = field(default_factory=list)     # [encoder key, how]
    skipped: list[list[str]] = field(default_factory=list)     # [source key, reason]
    missing: list[str] = field(default_factory=list)           # encoder keys left at their initial value
    encoder_tensors: int = 0                                   # tensors the encoder needs (mask_token excluded)

    @property
    def matched_fraction(self) -> float:
        return (len(self.loaded) + len(self.adapted)) / max(self.encoder_tensors, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matched_fraction"] = round(self.matched_fraction, 4)
        return d

    def summary(self, max_lines: int = 12) -> str:
        lines = [f"pretrained weights: {self.source} (layout {self.layout}, wrapping {self.wrapping})",
                 f"  encoder tensors matched: {len(self.loaded) + len(self.adapted)}/{self.encoder_tensors} "
                 f"({100 * self.matched_fraction:.1f} %): {len(self.loaded)} loaded as-is, "
                 f"{len(self.adapted)} adapted; {len(self.missing)} missing; {len(self.skipped)} skipped"]
        for key, how in self.adapted[:max_lines]:
            lines.append(f"  adapted  {key}: {how}")
        for key in self.missing[:max_lines]:
            lines.append(f"  missing  {key} (kept at initialisation)")
        reasons: dict[str, list[str]] = {}
        for key, reason in self.skipped:
            reasons.setdefault(reason, []).append(key)
        for reason, keys in reasons.items():
            lines.append(f"  skipped  {len(keys)} tensor(s): {reason} (e.g. {keys[0]})")
        return "\n".join(lines)


def find_encoder(model: nn.Module) -> tuple[SmitSwinEncoder, str]:
    if isinstance(model, SmitSwinEncoder):
        return model, ""
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, SmitSwinEncoder):
        return encoder, "encoder."
    raise SmitunetError(f"{type(model).__name__} has no SMIT Swin encoder; pretrained SMIT weights need a Swin preset")


def adapt_checkpoint(state_dict_or_file: Mapping | str | Path, model: nn.Module, prefer: str = "teacher",
                     accept_partial: bool = False, load_mask_token: bool = False, monai_merge: str | None = None,
                     min_fraction: float = MIN_FRACTION) -> tuple[dict[str, torch.Tensor], AdaptReport]:
    source = str(state_dict_or_file) if isinstance(state_dict_or_file, (str, Path)) else "<state_dict>"
    obj = load_checkpoint(state_dict_or_file) if isinstance(state_dict_or_file, (str, Path)) else state_dict_or_file
    encoder, prefix = find_encoder(model)
    tensors, wrapping = layouts.unwrap(obj, source, prefer)
    if layouts.is_monai_layout(tensors) and monai_merge is None:
        monai_merge = layouts.monai_merge_order(tensors)
    normalized, layout = layouts.normalize(tensors, monai_merge)
    source_order = "monai_legacy" if monai_merge == "legacy" else "smit"   # after any reorder
    target_order = _merge_order(encoder)
    if source_order != target_order:
        if source_order == "monai_legacy":
            raise SmitunetError(f"{source}: MONAI self-supervised weights trained with MONAI's legacy patch merging; "
                                "plan the network from this file (smitunet_plan_and_preprocess --pretrained, which sets "
                                "merge_order monai_legacy), or pass --monai_merge_order merging if it was trained with "
                                "MONAI >= 1.0")
        raise SmitunetError(f"{source}: this network uses MONAI's legacy patch merging; its weights are in another "
                            "order (a SMIT or MONAI >= 1.0 file): plan the network from this checkpoint instead")
    report = AdaptReport(source=source, wrapping=wrapping, layout=layout, merge_order=source_order)
    targets = encoder.state_dict()
    needed = [k for k in targets if k != "mask_token" or load_mask_token]
    report.encoder_tensors = len(needed)
    out: dict[str, torch.Tensor] = {}
    conflicts: list[str] = []
    for key in needed:
        if key not in normalized:
            if key.endswith("relative_position_index"):
                out[prefix + key] = targets[key].clone()
                report.adapted.append([key, "index rebuilt (not stored in the checkpoint)"])
            else:
                report.missing.append(key)
            continue
        value, how = _adapt_tensor(key, normalized[key], targets[key], encoder, conflicts)
        if value is None:
            if how:  # no 2D counterpart: skipped, not a conflict
                report.skipped.append([key, how])
                report.missing.append(key)
            continue
        out[prefix + key] = value.to(targets[key].dtype)
        (report.adapted.append([key, how]) if how else report.loaded.append(key))
    for key in normalized:
        if key not in needed:
            report.skipped.append([key, layouts.skip_reason(key, targets)])
    if conflicts:
        raise SmitunetError(f"{source}: does not fit this network (head count or embedding width differ): "
                            + "; ".join(conflicts[:6]) + (f"; ... {len(conflicts) - 6} more" if len(conflicts) > 6 else ""))
    if report.matched_fraction < min_fraction and not accept_partial:
        raise SmitunetError(f"{source}: only {len(report.loaded) + len(report.adapted)}/{report.encoder_tensors} "
                            f"encoder tensors ({100 * report.matched_fraction:.0f} %) match (layout {layout}); "
                            f"missing e.g. {', '.join(report.missing[:3])}; pass --accept_partial_pretrained "
                            "(accept_partial=True) to load anyway")
    return out, report


def _merge_order(encoder: SmitSwinEncoder) -> str:
    from smitunet.networks.swin_blocks import MERGE_ORDERS

    order = encoder.layers[0].downsample.order if len(encoder.layers) else MERGE_ORDERS["smit"]
    return next(name for name, value in MERGE_ORDERS.items() if value == order)


def load_pretrained(model: nn.Module, path: str | Path | Mapping, **options) -> AdaptReport:
    """Adapt and load into ``model`` (strict over the full state: only known tensors can change)."""
    adapted, report = adapt_checkpoint(path, model, **options)
    state = model.state_dict()
    state.update(adapted)
    model.load_state_dict(state, strict=True)
    return report


def _adapt_tensor(key: str, value: torch.Tensor, target: torch.Tensor, encoder: SmitSwinEncoder,
                  conflicts: list[str]) -> tuple[torch.Tensor | None, str]:
    if key.endswith("relative_position_index"):
        # Always this network's own index (the stored one is derived data); a different shape means a
        # different window, whose table is resized separately.
        return target.clone(), ("" if value.shape == target.shape else "index rebuilt for this network's window")
    if value.shape == target.shape:
        return value, ""
    if encoder.spatial_dims == 2 and value.ndim == target.ndim + 1 and key == "patch_embed.proj.weight":
        return _adapt_tensor_2d(key, value, target, encoder, conflicts)
    if encoder.spatial_dims == 2 and key.endswith("relative_position_bias_table") and value.shape[1] == target.shape[1]:
        return _adapt_tensor_2d(key, value, target, encoder, conflicts)
    if key == "patch_embed.proj.weight" and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
        return adapt_in_channels(value, target.shape[1]), f"input channels {value.shape[1]} -> {target.shape[1]}"
    if key.endswith("relative_position_bias_table") and value.shape[1] == target.shape[1]:
        window = _attention_window(encoder, key)
        return resize_bias_table(value, window), f"relative-position table resized to window {window}"
    conflicts.append(f"{key} {tuple(value.shape)} vs network {tuple(target.shape)}")
    return None, ""


def _adapt_tensor_2d(key: str, value: torch.Tensor, target: torch.Tensor, encoder: SmitSwinEncoder,
                     conflicts: list[str]) -> tuple[torch.Tensor | None, str]:
    """A 3D checkpoint's tensor for a 2D encoder (None and a reason: skipped)."""
    if key == "patch_embed.proj.weight":
        if value.shape[0] != target.shape[0]:
            conflicts.append(f"{key} {tuple(value.shape)} vs network {tuple(target.shape)}")
            return None, ""
        # A slice is a volume constant along depth, on which the 3D kernel responds with its depth sum.
        summed, how = value.sum(dim=2), "3D kernel summed over depth"
        if summed.shape[2:] != target.shape[2:]:
            return None, f"no 2D counterpart for a kernel of shape {tuple(value.shape)}"
        if summed.shape[1] != target.shape[1]:
            summed = adapt_in_channels(summed, target.shape[1])
            how += f", input channels {value.shape[1]} -> {target.shape[1]}"
        return summed, how
    rows, heads = value.shape
    side = round(rows ** (1 / 3))
    if side ** 3 != rows or side % 2 == 0:
        if round(rows ** 0.5) ** 2 == rows:  # already a 2D table (a 2d training checkpoint): resize in-plane
            window = _attention_window(encoder, key)
            return resize_bias_table(value, window), f"relative-position table resized to window {window}"
        return None, f"no 2D counterpart for a relative-position table of {rows} rows (not a cubic 3D window)"
    # In-plane attention is attention at zero depth offset: that plane of the 3D table.
    plane = value.T.reshape(heads, side, side, side)[:, side // 2].reshape(heads, -1).T.contiguous()
    how = "zero-depth-offset plane of the 3D table"
    window = _attention_window(encoder, key)
    if plane.shape != target.shape:
        plane = resize_bias_table(plane, window)
        how += f", resized to window {window}"
    return plane, how


def _attention_window(encoder: SmitSwinEncoder, key: str) -> tuple[int, ...]:
    module = encoder.get_submodule(key.rsplit(".", 1)[0])
    return module.window


def adapt_in_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Repeat the source channels cyclically and rescale so duplicated inputs keep the same response."""
    source = weight.shape[1]
    index = torch.arange(in_channels) % source
    return weight[:, index] * (source / in_channels)


def resize_bias_table(table: torch.Tensor, window) -> torch.Tensor:
    """Map a ``((2w_s-1)^n, heads)`` table (n = ``len(window)``: 3, or 2 in 2D) to window ``window``, offset by offset.

    Every relative offset both windows share keeps its bias exactly; offsets beyond the source window take
    the bias of the nearest stored offset (clamped per axis).
    """
    rows, heads = table.shape
    n = len(window)
    side = round(rows ** (1 / n))
    if side ** n != rows or side % 2 == 0:
        raise SmitunetError(f"relative-position table with {rows} rows is not a {'cubic' if n == 3 else 'square'} "
                            "window table")
    source_window = (side + 1) // 2
    resized = table.T.reshape(heads, *[side] * n)
    for axis, w in enumerate(window):
        idx = torch.clamp(torch.arange(-(w - 1), w) + source_window - 1, 0, side - 1)
        resized = resized.index_select(axis + 1, idx)
    return resized.reshape(heads, -1).T.contiguous()
