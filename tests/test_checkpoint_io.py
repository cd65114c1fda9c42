import pickle

import pytest
import torch

from smitunet.checkpoint_io import load_checkpoint, save_checkpoint
from smitunet.errors import SmitunetError


def test_round_trip_of_plain_checkpoint(tmp_path):
    obj = {"state_dict": {"w": torch.arange(4.0)}, "epoch": 3, "logs": {"loss": [1.0, 0.5]}, "name": "x"}
    save_checkpoint(obj, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["epoch"] == 3 and torch.equal(back["state_dict"]["w"], obj["state_dict"]["w"])


class _Payload:
    marker = None

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = str(marker)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": payload}, f)
    torch.save({"state_dict": payload}, tmp_path / "evil_zip.pt")
    for name in ("evil.pt", "evil_zip.pt"):
        with pytest.raises(SmitunetError, match=f"{name}: refused to load.*nothing in it was executed"):
            load_checkpoint(tmp_path / name)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    save_checkpoint({"w": torch.ones(1000)}, tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(SmitunetError, match="c.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize("content", [b"junk\n", b"", b"\x80\x02}q\x00.", bytes(range(256)) * 4])
def test_any_unreadable_bytes_are_a_clear_error(tmp_path, content):
    """Not only truncation: text, an empty file, a bare pickle and random bytes (torch's unpickler raised a KeyError
    on a text file) are one line naming the file."""
    (tmp_path / "c.pt").write_bytes(content)
    with pytest.raises(SmitunetError, match="c.pt: not a readable checkpoint|c.pt: refused to load"):
        load_checkpoint(tmp_path / "c.pt")
