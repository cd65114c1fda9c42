"""Typed, versioned records passed between stages besides the plans (``smitunet.plans``).

``Fingerprint`` (``dataset_fingerprint.json``: what planning reads) and ``CaseProperties`` (``{case}.json`` in the
preprocessed folder: what restoring a prediction to the original geometry reads). Each loads from its JSON with
every field checked, and a file of another version is one line saying what to re-run. Stored as plain JSON
(``to_dict``), so the files stay readable and editable.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from smitunet.errors import SmitunetError
from smitunet.utils.files import load_json

FINGERPRINT_VERSION = 1


def _read(path: str | Path, what: str) -> Any:
    try:
        return load_json(path)
    except SmitunetError as exc:
        raise SmitunetError(f"{path}: not {what} ({str(exc).removeprefix(f'{path}: ')})") from None


def _checked(cls, d: Any, source: str, version: int | None = None, rerun: str = ""):
    if not isinstance(d, dict):
        raise SmitunetError(f"{source}: expected a JSON object")
    if version is not None and d.get("version") != version:
        raise SmitunetError(f"{source}: version {d.get('version')!r} is not supported (expected {version}); {rerun}")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(d))
    if missing:
        raise SmitunetError(f"{source}: missing field(s) {', '.join(missing)}; {rerun}")
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Fingerprint:
    """Per training case (sorted by identifier): spacing and shapes (z, y, x); dataset-wide foreground intensities."""

    case_identifiers: list[str]
    spacings: list[list[float]]
    shapes_before_crop: list[list[int]]
    shapes_after_crop: list[list[int]]
    median_relative_size_after_cropping: float
    foreground_intensity_properties_per_channel: dict[str, dict[str, float]]
    raw_signature: str = ""
    num_unlabelled_cases: int = 0
    version: int = FINGERPRINT_VERSION

    def __post_init__(self):
        n = len(self.case_identifiers)
        if not (len(self.spacings) == len(self.shapes_after_crop) == len(self.shapes_before_crop) == n) or n == 0:
            raise SmitunetError(f"fingerprint: {n} case(s) but {len(self.spacings)} spacings and "
                                f"{len(self.shapes_after_crop)} shapes")
        if any(len(s) != 3 for s in self.spacings + self.shapes_after_crop):
            raise SmitunetError("fingerprint: spacings and shapes must be (z, y, x) triples")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "fingerprint") -> "Fingerprint":
        return _checked(cls, d, source, FINGERPRINT_VERSION, "re-run smitunet_plan_and_preprocess --clean")

    @classmethod
    def coerce(cls, value: "Fingerprint | dict") -> "Fingerprint":
        return value if isinstance(value, cls) else cls.from_dict(value)

    @classmethod
    def load(cls, path: str | Path) -> "Fingerprint":
        return cls.from_dict(_read(path, "a readable fingerprint"), str(path))


@dataclass(frozen=True)
class CaseProperties:
    """How a case was preprocessed: its original geometry, the crop and the spacings (all (z, y, x))."""

    geometry: dict[str, Any]
    shape_before_cropping: list[int]
    bbox_used_for_cropping: list[list[int]]
    shape_after_cropping_before_resampling: list[int]
    spacing_original: list[float]
    spacing_target: list[float]
    preprocessing_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["preprocessing_hash"] is None:
            del d["preprocessing_hash"]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "case properties") -> "CaseProperties":
        props = _checked(cls, d, source, rerun="re-run smitunet_plan_and_preprocess")
        if len(props.bbox_used_for_cropping) != 3 or any(len(b) != 2 for b in props.bbox_used_for_cropping):
            raise SmitunetError(f"{source}: bbox_used_for_cropping must be three [start, stop] pairs")
        return props

    @classmethod
    def load(cls, path: str | Path) -> "CaseProperties":
        return cls.from_dict(_read(path, "readable case properties"), str(path))
