"""Pretrained loading is weights-only: a checkpoint carrying a pickled code payload is refused, never run."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from smitunet.errors import SmitunetError
from smitunet.networks import create_network
from smitunet.networks.checkpoint_adapter import adapt_checkpoint, load_pretrained

PATCH = [32, 32, 32]


class _CreatesMarker:
    """Unpickling this object would create ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _evil_checkpoints(tmp_path: Path, marker: Path) -> list[Path]:
    model = create_network("smit_tiny", 1, 2, PATCH)
    real = {f"module.backbone.{k}": v for k, v in model.encoder.state_dict().items()}
    payload = {"teacher": real, "student": real, "args": _CreatesMarker(marker)}
    zip_file, legacy_file = tmp_path / "smit_zip.pt", tmp_path / "smit_legacy.pth"
    torch.save(payload, zip_file)
    with open(legacy_file, "wb") as f:
        pickle.dump(payload, f, protocol=2)
    return [zip_file, legacy_file]


def test_code_payload_refused_by_adapter_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    model = create_network("smit_tiny", 1, 2, PATCH)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for path in _evil_checkpoints(tmp_path, marker):
        with pytest.raises(SmitunetError, match=rf"{path.name}: refused to load"):
            adapt_checkpoint(path, model)
        with pytest.raises(SmitunetError, match=rf"{path.name}: refused to load"):
            load_pretrained(model, path)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_networks_package_never_calls_torch_load_directly():
    package = Path(__file__).resolve().parents[1] / "smitunet" / "networks"
    offenders = [p.name for p in package.glob("*.py") if re.search(r"torch\.load\(|pickle\.load", p.read_text())]
    assert offenders == []
