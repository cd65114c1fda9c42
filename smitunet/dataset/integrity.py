"""Per-case integrity checks of a raw dataset.

``read_checked_case`` reads one case and returns its arrays together with every fault found (one line each,
naming the case): unreadable or truncated files, non-3D or multi-component images, NaN/Inf voxels, channels
or label whose size/spacing/origin/direction differ, label values that are not integers or not declared in
dataset.json. The fingerprint pass calls it on every case, so the checks cost no extra read.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smitunet.errors import BadInputError, SmitunetError
from smitunet.imageio import Geometry, read_image

_CHUNK = 1 << 22  # voxels per chunk for whole-volume scans, keeps temporaries small on large CTs


@dataclass
class CheckedCase:
    case: str
    data: np.ndarray | None = None          # (C, z, y, x) in the files' own dtype (numpy promotes mixed ones)
    geometry: Geometry | None = None
    seg: np.ndarray | None = None           # (z, y, x) integer labels
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def gzip_truncated(path: Path) -> bool:
    """True when a .gz file's stream ends early. ITK reads such a file without complaint and zero-fills the
    missing voxels, so this is checked separately (one extra decompression, discarded chunk by chunk)."""
    stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            while chunk and not stream.eof:
                stream.decompress(chunk, 1 << 24)
                chunk = stream.unconsumed_tail
            if stream.eof:
                return False
    return not stream.eof


def _read(case: str, path: Path, out: CheckedCase):
    if str(path).endswith(".gz") and Path(path).is_file():
        try:
            truncated = gzip_truncated(Path(path))
        except zlib.error as exc:
            out.problems.append(f"case {case}: {path}: cannot be read as an image (corrupt gzip: {exc})")
            return None, None
        if truncated:
            out.problems.append(f"case {case}: {path}: cannot be read as an image (truncated: the gzip stream "
                                "ends early)")
            return None, None
    try:
        return read_image(path)
    except SmitunetError as exc:
        out.problems.append(f"case {case}: {exc}")
        return None, None


def _chunks(arr: np.ndarray):
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        yield flat[start:start + _CHUNK]


def all_finite(arr: np.ndarray) -> bool:
    if not np.issubdtype(arr.dtype, np.floating):
        return True
    return all(bool(np.isfinite(c).all()) for c in _chunks(arr))


def label_values(arr: np.ndarray) -> tuple[set[int], bool]:
    """The distinct values of a label image and whether they are all integers (chunked: lean on big CTs)."""
    values: set[int] = set()
    integral = True
    for chunk in _chunks(arr):
        if np.issubdtype(chunk.dtype, np.floating):
            if not np.isfinite(chunk).all() or not np.array_equal(chunk, np.floor(chunk)):
                integral = False
                values.update(float(v) for v in np.unique(chunk)[:5])
                break
            chunk = chunk.astype(np.int64)
        lo = int(chunk.min())
        if lo >= 0 and int(chunk.max()) < 65536:
            counts = np.bincount(chunk.astype(np.intp, copy=False))
            values.update(int(v) for v in np.flatnonzero(counts))
        else:
            values.update(int(v) for v in np.unique(chunk))
    return values, integral


def read_checked_case(case: str, images: list[Path], label: Path | None,
                      allowed_labels: set[int] | None) -> CheckedCase:
    """Read a case's channels (and label) and check them; faults go to ``.problems``, one line each."""
    out = CheckedCase(case)
    arrays = []
    for path in images:
        arr, geo = _read(case, path, out)
        if arr is None:
            continue
        if out.geometry is None:
            out.geometry = geo
        elif (diff := out.geometry.matches(geo)) is not None:
            out.problems.append(f"case {case}: channel {Path(path).name} differs from {Path(images[0]).name}: {diff}")
        if not all_finite(arr):
            out.problems.append(f"case {case}: {Path(path).name} contains NaN or Inf voxels")
        arrays.append(arr)
    if out.problems:
        return out
    out.data = np.stack(arrays) if len(arrays) > 1 else arrays[0][None]
    if label is not None:
        _check_label(case, label, allowed_labels, out)
    return out


def _check_label(case: str, label: Path, allowed: set[int] | None, out: CheckedCase) -> None:
    seg, geo = _read(case, label, out)
    if seg is None:
        return
    if (diff := out.geometry.matches(geo)) is not None:
        out.problems.append(f"case {case}: label {Path(label).name} differs from the image: {diff}")
        return
    values, integral = label_values(seg)
    if not integral:
        shown = ", ".join(f"{float(v):g}" for v in sorted(values)[:3])  # numpy scalars would print np.float64(..)
        out.problems.append(f"case {case}: label {Path(label).name} has non-integer values (e.g. {shown})")
        return
    if allowed is not None and (unknown := sorted(int(v) for v in values - allowed)):
        out.problems.append(f"case {case}: label {Path(label).name} has value(s) {unknown} not in dataset.json "
                            f"labels {sorted(int(v) for v in allowed)}")
        return
    if values <= {0}:
        out.warnings.append(f"case {case}: label is all background")
    out.seg = seg if np.issubdtype(seg.dtype, np.integer) else seg.astype(np.int16)


def check_case_files(case: str, images: list[Path], label: Path | None,
                     allowed_labels: set[int] | None) -> tuple[list[str], list[str]]:
    """Only the faults of one case (used for test images, whose arrays are not kept)."""
    checked = read_checked_case(case, images, label, allowed_labels)
    return checked.problems, checked.warnings


def thin_axes_problem(case: str, geometry: Geometry, first_file: Path | str) -> str | None:
    """A single slice (or line) given to a 3D model: its patches would be all padding, the output meaningless."""
    if min(geometry.size) < 2:
        return (f"case {case}: {Path(first_file).name} is a single slice (size {geometry.size}); a 3D model needs "
                "a volume")
    return None


def read_checked_volume(case: str, images: list[Path]) -> tuple[np.ndarray, Geometry]:
    """The channels of one unlabelled case as float32 (C, z, y, x) for a 3D model (prediction, pretraining), after
    the checks of ``read_checked_case`` plus a single-slice check; ``BadInputError`` holds the faults, one line."""
    checked = read_checked_case(case, images, None, None)
    problems = list(checked.problems)
    if not problems and (thin := thin_axes_problem(case, checked.geometry, images[0])):
        problems.append(thin)
    if problems:
        raise BadInputError(case, problems)
    return checked.data.astype(np.float32, copy=False), checked.geometry
