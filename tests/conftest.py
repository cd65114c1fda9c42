"""Shared test fixtures only (isolated smitunet folders per test, thread limits, the example plug-in on the path);
helpers live in ``support``."""

from __future__ import annotations

import os
import sys

import pytest

from support.paths import PLUGIN_DIR


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


@pytest.fixture
def plugin_path(monkeypatch):
    """Make the example out-of-package trainer plug-in importable, and forget it afterwards."""
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    yield
    for name in [m for m in sys.modules if m.startswith("smitunet_example_trainers")]:
        del sys.modules[name]
