"""Shared test fixtures: isolated smitunet folders per test and the optional ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _limit_threads():
    # Two cores are shared by the whole suite: one intra-op thread keeps timings stable and avoids oversubscription.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SMITUNET_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def smitunet_dirs(tmp_path, monkeypatch):
    """Point smitunet_raw / smitunet_preprocessed / smitunet_results at fresh folders under tmp_path."""
    dirs = {}
    for kind in ("raw", "preprocessed", "results"):
        d = tmp_path / kind
        d.mkdir()
        monkeypatch.setenv(f"smitunet_{kind}", str(d))
        dirs[kind] = d
    return dirs


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test cleanly when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"../shared data not available: {p}")
    return p
