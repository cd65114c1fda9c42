"""Atomic file output: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import errno
import fcntl
import secrets
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from smitunet.errors import SmitunetError


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p``; a folder that cannot be created is one line naming it (a SmitunetError)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SmitunetError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from None
    return folder


def _create_temporary(path: Path, suffix: str) -> tuple[Path, int]:
    """A new empty file beside ``path`` and an open descriptor holding an exclusive lock on it while it is written
    (so ``remove_stale_temporary`` of another process leaves it alone). Created with mode 0o666 so the umask applies
    as for any other program's file (``mkstemp`` would leave 0o600 on every output after the rename)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.part{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        return tmp, fd
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def remove_stale_temporary(tmp: Path) -> bool:
    """Delete an ``atomic_path`` temporary left by a killed process; one still being written (its writer holds
    the lock; the kernel drops the lock of a killed process) is kept. True when it was removed."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    try:
        tmp.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure delete it (the
    previous ``path``, if any, stays intact).

    ``suffix`` keeps the file ending for writers that choose a format by extension (SimpleITK, numpy). A folder
    that cannot be created or written, a full disk or a file-size limit is a SmitunetError naming ``path``.
    """
    path = Path(path)
    make_dirs(path.parent)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    try:
        tmp_path, lock = _create_temporary(path, suffix)
    except OSError as exc:
        raise SmitunetError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError):
            # numpy reports a short write without an errno: say what usually causes it
            reason = exc.strerror or f"{exc}: a short write, the disk is full or a file-size limit was reached"
            raise SmitunetError(f"{path}: cannot write ({reason}); the previous file, if any, is unchanged") from None
        raise
    finally:
        os.close(lock)


def _json_default(obj: Any):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_safe(obj: Any) -> Any:
    """NaN and infinities -> None (JSON null), so that a file is strict JSON that every reader accepts."""
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def save_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, default=_json_default)
            f.write("\n")


def load_json(path: str | os.PathLike) -> Any:
    """Parsed JSON; a missing, unreadable or non-JSON file is one line naming it (a SmitunetError)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SmitunetError(f"{path}: not found") from None
    except OSError as exc:
        raise SmitunetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise SmitunetError(f"{path}: not valid JSON ({exc})") from None


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def save_npz(path: str | os.PathLike, compressed: bool = False, **arrays: np.ndarray) -> None:
    """``compressed``: deflate (``np.savez_compressed``); ``np.load`` reads both alike."""
    with atomic_path(path, suffix=".npz") as tmp:
        (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
