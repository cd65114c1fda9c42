"""Pretraining settings (paper defaults) kept in the resume state and in ``smit.pt``'s meta."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from smitunet.errors import SmitunetError
from smitunet.pretraining.gmim import GmimSettings

METHODS = ("smit", "smart", "gmim")


@dataclass
class PretrainSettings:
    method: str = "smit"
    mask_ratio: float = 0.7
    block_voxels: list[int] = field(default_factory=lambda: [16, 16, 16])
    teacher_drop_rate: float = 0.2          # SMART: patch dropout of the teacher's input tokens
    # SMART: class attention over the deepest tokens guides the student's mask; the class tokens are co-distilled.
    smart_class_attention: bool = True
    class_tokens: int = 1                   # CaiT uses one class token ...
    class_attention_depth: int = 2          # ... and two class-attention blocks
    attention_mask_share: float = 0.5       # of the masked tokens: the teacher's top-attended ones; the rest random
    weight_class: float = 0.1               # as the global (cross-view) distillation term
    gmim: GmimSettings = field(default_factory=GmimSettings)
    # GMIM: Siamese target branch (same weights, no gradient) on an intensity-augmented unmasked view, pulled to
    # the online branch by a cross-correlation (redundancy-reduction) loss beside an MSE reconstruction.
    gmim_siamese: bool = True
    projection_dim: int = 512
    correlation_lambda: float = 0.005       # weight of the off-diagonal terms inside the loss
    weight_correlation: float = 0.005       # weight of the loss beside the reconstruction (weight 1)
    weight_reconstruction: float = 1.0
    weight_patch: float = 0.1
    weight_global: float = 0.1
    out_dim: int = 1024                     # projection-head prototypes
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    head_batch_norm: bool = True            # DINO's use_bn head: see heads.ProjectionHead
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07
    warmup_teacher_temperature: float = 0.04
    teacher_temperature_warmup_fraction: float = 0.1
    center_momentum: float = 0.9
    momentum_base: float = 0.996
    momentum_final: float = 1.0
    lr: float = 5e-4
    min_lr: float = 1e-6
    lr_warmup_fraction: float = 0.05
    weight_decay: float = 0.04
    grad_clip: float = 3.0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise SmitunetError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise SmitunetError(f"--mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.teacher_drop_rate < 1.0:
            raise SmitunetError(f"--teacher_drop_rate must be in [0, 1), got {self.teacher_drop_rate}")
        if len(self.block_voxels) != 3 or min(self.block_voxels) < 1:
            raise SmitunetError(f"--block_size must be three positive voxel counts, got {self.block_voxels}")
        if not 0.0 <= self.momentum_base <= 1.0:
            raise SmitunetError(f"--teacher_momentum must be in [0, 1], got {self.momentum_base}")
        if self.teacher_temperature <= 0 or self.student_temperature <= 0:
            raise SmitunetError("temperatures must be positive")
        if min(self.weight_reconstruction, self.weight_patch, self.weight_global, self.weight_class,
               self.weight_correlation, self.correlation_lambda) < 0:
            raise SmitunetError("loss weights (and --correlation_lambda) must not be negative")
        if not 0.0 <= self.attention_mask_share <= 1.0:
            raise SmitunetError(f"--attention_mask_share must be in [0, 1], got {self.attention_mask_share}")
        if self.class_tokens < 1 or self.class_attention_depth < 1:
            raise SmitunetError("--class_tokens and --class_attention_depth must be at least 1")
        if self.projection_dim < 1:
            raise SmitunetError(f"--projection_dim must be at least 1, got {self.projection_dim}")

    @property
    def uses_class_attention(self) -> bool:
        return self.method == "smart" and self.smart_class_attention

    @property
    def uses_siamese(self) -> bool:
        return self.method == "gmim" and self.gmim_siamese

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainSettings":
        d = dict(d)
        # SMART / GMIM metas written before these switches had neither half: read them as what those runs did
        # (other methods ignore the switch, so they keep today's default and an old SMIT state still resumes)
        method = d.get("method", cls.method)
        if method == "smart":
            d.setdefault("smart_class_attention", False)
        if method == "gmim":
            d.setdefault("gmim_siamese", False)
        gmim = d.pop("gmim", {})
        gmim = GmimSettings(**{**gmim, "cell_tokens": tuple(gmim.get("cell_tokens", GmimSettings.cell_tokens))})
        return cls(gmim=gmim, **d)
