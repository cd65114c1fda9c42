"""Find the cases in a prediction input: raw-named files, plain single-channel files or DICOM series folders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from smitunet.errors import SmitunetError
from smitunet.imageio import image_ending

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
DICOM_OUTPUT_ENDING = ".nii.gz"
# header + data-file formats cannot be renamed atomically as one file: write their single-file sibling
_SINGLE_FILE_ENDING = {".mhd": ".mha", ".nhdr": ".nrrd"}


def _writable_ending(input_ending: str) -> str:
    return _SINGLE_FILE_ENDING.get(input_ending, input_ending)


@dataclass(frozen=True)
class InputCase:
    name: str
    channels: tuple[Path, ...]   # files, or one DICOM series folder per channel
    output_ending: str           # the input's format; NIfTI for DICOM input


def _is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() and not p.name.startswith(".") and image_ending(p) is None
                                 for p in path.iterdir())


def find_input_cases(input_path: str | Path, num_channels: int) -> list[InputCase]:
    """Cases sorted by name.

    - a folder of ``{case}_{XXXX}{ending}`` files (nnU-Net raw naming; required for several channels);
    - a folder of plain single-channel files: ``{case}{ending}``;
    - a folder of DICOM series folders (case = folder name), or one DICOM series folder (one case);
    - one image file.
    """
    path = Path(input_path)
    if path.is_file():
        return [_single_file_case(path, num_channels)]
    if not path.is_dir():
        raise SmitunetError(f"{path}: input not found")
    files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".") and image_ending(p)]
    dirs = [p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if files:
        cases = _file_cases(path, files, num_channels)
    elif dirs:
        cases = [InputCase(d.name, (d,), DICOM_OUTPUT_ENDING) for d in dirs if _is_dicom_dir(d)]
    elif _is_dicom_dir(path):
        cases = [InputCase(path.name, (path,), DICOM_OUTPUT_ENDING)]
    else:
        cases = []
    if not cases:
        raise SmitunetError(f"{path}: no input images found (expected {{case}}_0000.nii.gz files, plain image files "
                            "or DICOM series folders)")
    if num_channels > 1 and any(len(c.channels) != num_channels for c in cases):
        raise SmitunetError(f"{path}: the model needs {num_channels} channels per case; name the files "
                            f"{{case}}_0000 ... {{case}}_{num_channels - 1:04d}")
    return cases


def _single_file_case(path: Path, num_channels: int) -> InputCase:
    ending = image_ending(path)
    if ending is None:
        raise SmitunetError(f"{path}: not an image file SimpleITK reads")
    if num_channels != 1:
        raise SmitunetError(f"{path}: the model needs {num_channels} channels; pass a folder of raw-named files")
    stem = path.name[: -len(ending)]
    m = _CHANNEL_RE.match(stem)
    return InputCase(m.group("case") if m else stem, (path,), _writable_ending(ending))


def _file_cases(folder: Path, files: list[Path], num_channels: int) -> list[InputCase]:
    """Raw naming when every file ends in _XXXX and each case has channels 0000..C-1; else plain files."""
    groups: dict[str, dict[int, Path]] = {}
    for f in files:
        m = _CHANNEL_RE.match(f.name[: -len(image_ending(f))])
        if m is None:
            groups = {}
            break
        groups.setdefault(m.group("case"), {})[int(m.group("channel"))] = f
    raw_named = bool(groups) and all(sorted(ch) == list(range(len(ch))) for ch in groups.values())
    if raw_named:
        for case, ch in groups.items():
            if len(ch) != num_channels:
                raise SmitunetError(f"{folder}: case {case} has {len(ch)} channel file(s), the model needs "
                                    f"{num_channels} ({case}_0000 ... {case}_{num_channels - 1:04d})")
        return [InputCase(case, tuple(ch[i] for i in range(num_channels)),
                          _writable_ending(image_ending(ch[0])))
                for case, ch in sorted(groups.items())]
    if num_channels != 1:
        raise SmitunetError(f"{folder}: the model needs {num_channels} channels per case; name the files "
                            f"{{case}}_0000 ... {{case}}_{num_channels - 1:04d}")
    return [InputCase(f.name[: -len(image_ending(f))], (f,), _writable_ending(image_ending(f))) for f in files]
