"""Image reading and writing through SimpleITK, keeping the full geometry.

Arrays are numpy order (z, y, x) as SimpleITK's GetArrayFromImage returns them; ``Geometry`` keeps
SimpleITK's own (x, y, z) order for spacing/origin/size so that writing restores the input exactly.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from smitunet.errors import SmitunetError
from smitunet.utils.files import atomic_path

# Endings SimpleITK reads that we accept as raw images, longest first so ".nii.gz" wins over ".gz".
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl.gz", ".gipl", ".tif", ".tiff")


@dataclass(frozen=True)
class Geometry:
    """Physical geometry of an image, in SimpleITK (x, y, z) order."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    size: tuple[int, ...]

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing))

    @property
    def shape_zyx(self) -> tuple[int, ...]:
        return tuple(reversed(self.size))

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(float(s) for s in image.GetSpacing()), tuple(float(o) for o in image.GetOrigin()),
                   tuple(float(d) for d in image.GetDirection()), tuple(int(s) for s in image.GetSize()))

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(float(v) for v in d["spacing"]), tuple(float(v) for v in d["origin"]),
                   tuple(float(v) for v in d["direction"]), tuple(int(v) for v in d["size"]))

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def matches(self, other: "Geometry", tol: float = 1e-4) -> str | None:
        """None when equal within ``tol``; else a short description of the first difference."""
        if self.size != other.size:
            return f"size {self.size} != {other.size}"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            scale = max(1.0, float(np.abs(a).max(initial=0)))
            if a.shape != b.shape or not np.allclose(a, b, atol=tol * scale, rtol=0):
                return f"{name} {_plain(a)} != {_plain(b)}"
        return None


def _plain(values: np.ndarray) -> tuple[float, ...]:
    """Python floats (numpy 2 prints its scalars as ``np.float64(0.8)``), rounded for messages."""
    return tuple(round(float(v), 5) for v in np.ravel(values))


def image_ending(path: str | Path) -> str | None:
    name = str(path).lower()
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return ending
    return None


def read_sitk(path: str | Path) -> sitk.Image:
    """Read a file (any SimpleITK format) or a DICOM series folder; errors name the path."""
    path = Path(path)
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise SmitunetError(f"{path}: folder holds no DICOM series")
            if len(series) > 1:
                raise SmitunetError(f"{path}: folder holds {len(series)} DICOM series; put each in its own folder")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except SmitunetError:
        raise
    except RuntimeError as exc:
        raise SmitunetError(f"{path}: cannot be read as an image ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    """The line of an ITK exception that says what went wrong (ITK's messages span several lines)."""
    lines = str(exc).strip().splitlines()
    reason = next((line for line in lines if "ERROR" in line or "rror" in line), lines[0] if lines else "")
    return reason.strip()[:200]


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read one single-channel 3D image as a (z, y, x) array plus its geometry."""
    image = read_sitk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SmitunetError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                            "expected a single-channel image")
    if image.GetDimension() != 3:
        raise SmitunetError(f"{path}: is {image.GetDimension()}D; expected a 3D image")
    return sitk.GetArrayFromImage(image), Geometry.of(image)


def read_channels(paths: Sequence[str | Path]) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case into a float32 (C, z, y, x) array; the first file's geometry wins."""
    arrays, geometry = [], None
    for p in paths:
        arr, geo = read_image(p)
        if geometry is None:
            geometry = geo
        elif (diff := geometry.matches(geo)) is not None:
            raise SmitunetError(f"{p}: geometry differs from {paths[0]}: {diff}")
        arrays.append(arr.astype(np.float32, copy=False))
    return np.stack(arrays), geometry


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a (z, y, x) array with the given geometry, atomically (temp name, then rename)."""
    if tuple(array.shape) != geometry.shape_zyx:
        raise SmitunetError(f"{path}: array shape {array.shape} does not match geometry {geometry.shape_zyx}")
    image = geometry.apply(sitk.GetImageFromArray(array))
    ending = image_ending(path) or Path(path).suffix
    with atomic_path(path, suffix=ending) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), True)
        except RuntimeError as exc:  # ITK reports a full disk or a file-size limit as a RuntimeError
            raise OSError(errno.EIO, f"SimpleITK could not write the file: {_first_line(exc)}") from None
