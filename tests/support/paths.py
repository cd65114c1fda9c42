"""Where things are: the repository, the optional ../shared data, the example plug-in package."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PLUGIN_DIR = REPO_ROOT / "tests" / "plugin_trainer_example"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test cleanly when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"../shared data not available: {p}")
    return p
