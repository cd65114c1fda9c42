import pytest

from smitunet.errors import SmitunetError
from smitunet.paths import resolve_dataset_name


def test_resolve_by_number_padded_and_full_name(smitunet_dirs):
    (smitunet_dirs["raw"] / "Dataset004_Hippocampus").mkdir()
    assert resolve_dataset_name(4) == "Dataset004_Hippocampus"
    assert resolve_dataset_name("004") == "Dataset004_Hippocampus"
    assert resolve_dataset_name("Dataset004_Hippocampus") == "Dataset004_Hippocampus"


def test_unknown_id_lists_what_exists(smitunet_dirs):
    (smitunet_dirs["raw"] / "Dataset004_Hippocampus").mkdir()
    with pytest.raises(SmitunetError, match=r"no dataset with id 007.*available: Dataset004_Hippocampus"):
        resolve_dataset_name(7)


def test_ambiguous_id_is_an_error(smitunet_dirs):
    (smitunet_dirs["raw"] / "Dataset004_Hippocampus").mkdir()
    (smitunet_dirs["preprocessed"] / "Dataset004_Other").mkdir()
    with pytest.raises(SmitunetError, match="ambiguous: Dataset004_Hippocampus, Dataset004_Other"):
        resolve_dataset_name("4")


def test_default_folders_are_announced_once(tmp_path, monkeypatch, capsys):
    import smitunet.paths as paths

    for kind in ("raw", "preprocessed", "results"):
        monkeypatch.delenv(f"smitunet_{kind}", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "_warned", set())
    assert paths.raw_dir() == tmp_path / "smitunet_data" / "raw"
    paths.raw_dir()
    err = capsys.readouterr().err
    assert err.count("$smitunet_raw is not set") == 1
