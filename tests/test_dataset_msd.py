"""smitunet_convert_msd: MSD task folders (3D and 4D multi-modal) -> raw datasets; real Hippocampus subset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from support.paths import shared_path
from smitunet.dataset.msd import main as convert_main
from smitunet.dataset.raw import list_test_cases, list_training_cases, load_dataset_json
from smitunet.imageio import read_image
from smitunet.plans import Plans
from smitunet.preprocessing.cli import main as plan_main


def _write(array, path, spacing=(1.0, 1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(spacing[: image.GetDimension()])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def make_msd_task(root, name="Task07_Toy", modalities=("T1", "T2"), cases=("toy_1", "toy_2"), test=("toy_9",)):
    task = root / name
    rng = np.random.default_rng(0)
    for case in cases:
        if len(modalities) > 1:
            _write(rng.random((len(modalities), 6, 7, 8), dtype=np.float32), task / "imagesTr" / f"{case}.nii.gz",
                   spacing=(0.5, 0.6, 2.0, 1.0))
        else:
            _write(rng.random((6, 7, 8), dtype=np.float32), task / "imagesTr" / f"{case}.nii.gz")
        _write(rng.integers(0, 2, (6, 7, 8)).astype(np.uint8), task / "labelsTr" / f"{case}.nii.gz",
               spacing=(0.5, 0.6, 2.0))
    for case in test:
        _write(rng.random((len(modalities), 6, 7, 8), dtype=np.float32), task / "imagesTs" / f"{case}.nii.gz",
               spacing=(0.5, 0.6, 2.0, 1.0))
    (task / "dataset.json").write_text(json.dumps({
        "name": "Toy", "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {"0": "background", "1": "thing"}, "numTraining": len(cases),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test]}))
    return task


def test_4d_multimodal_task_is_split_into_channels(tmp_path, smitunet_dirs, capsys):
    task = make_msd_task(tmp_path)
    convert_main(["-i", str(task)])
    out = smitunet_dirs["raw"] / "Dataset007_Toy"
    dj = load_dataset_json(out)
    assert dj["channel_names"] == {"0": "T1", "1": "T2"} and dj["labels"] == {"background": 0, "thing": 1}
    cases = list_training_cases(out)
    assert sorted(cases) == ["toy_1", "toy_2"]
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(task / "imagesTr" / "toy_1.nii.gz")))
    for c in range(2):
        channel, geo = read_image(cases["toy_1"]["images"][c])
        np.testing.assert_array_equal(channel, source[c])
        assert np.allclose(geo.spacing, (0.5, 0.6, 2.0))
    test_cases, problems = list_test_cases(out)
    assert sorted(test_cases) == ["toy_9"] and problems == []
    # An existing dataset is kept unless --overwrite; -d picks another id.
    with pytest.raises(SystemExit):
        convert_main(["-i", str(task)])
    assert "--overwrite" in capsys.readouterr().err
    convert_main(["-i", str(task), "-d", "123"])
    assert (smitunet_dirs["raw"] / "Dataset123_Toy" / "dataset.json").is_file()


@pytest.mark.parametrize("change, message", [
    (lambda d: d["training"].append(dict(d["training"][0])), "case toy_1: listed twice"),
    (lambda d: d["training"].append({"image": "../../x/evil.nii.gz", "label": "./labelsTr/toy_1.nii.gz"}),
     "escapes the task folder"),
    (lambda d: d.pop("modality"), "missing MSD field 'modality'"),
])
def test_faulty_msd_task_is_refused_with_one_line(tmp_path, smitunet_dirs, capsys, change, message):
    task = make_msd_task(tmp_path, modalities=("CT",), test=())
    d = json.loads((task / "dataset.json").read_text())
    change(d)
    (task / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(SystemExit) as exc:
        convert_main(["-i", str(task)])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not any(smitunet_dirs["raw"].iterdir())


@pytest.mark.shared
def test_real_hippocampus_subset_converts_and_plans(tmp_path, smitunet_dirs, capsys):
    """10 of the 160 real cases (the full run is in the report): 1 mm, patch ~ median without 64s, batch >= 2."""
    source = shared_path("Task04_Hippocampus")
    msd = json.loads((source / "dataset.json").read_text())
    task = tmp_path / "Task04_Hippocampus"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    subset = msd["training"][:10]
    for entry in subset:
        for key in ("image", "label"):
            (task / entry[key]).symlink_to(source / entry[key])
    (task / "dataset.json").write_text(json.dumps({**msd, "training": subset, "numTraining": 10, "test": []}))
    convert_main(["-i", str(task)])
    plan_main(["-d", "4", "--verify_dataset_integrity", "--preset", "smit_small", "-np", "1"])
    out = smitunet_dirs["preprocessed"] / "Dataset004_Hippocampus"
    c = Plans.load(out / "smitunetPlans.json").configuration("3d_fullres")
    assert c.spacing == [1.0, 1.0, 1.0] and c.batch_size >= 2
    assert all(p >= m for p, m in zip(c.patch_size, c.median_image_shape)) and max(c.patch_size) < 64
    assert len(list((out / c.data_identifier).glob("*_seg.b2nd"))) == 10
    assert "10 preprocessed" in capsys.readouterr().out
