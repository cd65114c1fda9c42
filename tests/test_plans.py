"""Plans: plain JSON round trip and one-line validation errors naming the file and the field."""

from __future__ import annotations

import json

import pytest

from smitunet.errors import SmitunetError
from smitunet.plans import Plans
from support.planning import make_plans


@pytest.fixture
def plans_file(tmp_path):
    path = tmp_path / "plans.json"
    make_plans([1.0, 1.0, 1.0]).save(path)
    return path


def test_round_trip_is_exact(plans_file):
    plans = Plans.load(plans_file)
    assert plans == make_plans([1.0, 1.0, 1.0])
    assert plans.num_classes == 3 and plans.foreground_labels == [1, 2] and plans.num_channels == 1


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(version=99), "plans version 99 is not supported"),
    (lambda d: d.pop("configurations"), "missing field configurations"),
    (lambda d: d["configurations"]["3d_fullres"].update(patch_size=[16, 16]), "3d_fullres.patch_size"),
    (lambda d: d["configurations"]["3d_fullres"].update(batch_size=0), "3d_fullres.batch_size"),
    (lambda d: d["configurations"]["3d_fullres"].update(normalization=["Fancy"]), "unknown scheme 'Fancy'"),
    (lambda d: d["configurations"]["3d_fullres"].update(use_mask_for_norm=[]), "one entry per channel"),
    (lambda d: d["configurations"]["3d_fullres"].pop("network"), "missing field configurations.3d_fullres.network"),
    (lambda d: d.update(labels={"a": 1}), "background"),
])
def test_hand_edits_are_validated_with_one_line(plans_file, edit, message):
    d = json.loads(plans_file.read_text())
    edit(d)
    plans_file.write_text(json.dumps(d))
    with pytest.raises(SmitunetError) as exc:
        Plans.load(plans_file)
    assert message in str(exc.value) and str(plans_file) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(SmitunetError, match="run smitunet_plan_and_preprocess first"):
        Plans.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SmitunetError, match="not valid JSON"):
        Plans.load(tmp_path / "bad.json")


def test_plans_are_frozen_and_network_kwargs_are_validated_on_load(plans_file):
    import dataclasses

    plans = Plans.load(plans_file)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plans.configuration("3d_fullres").spacing = [2.0, 2.0, 2.0]
    d = json.loads(plans_file.read_text())
    d["configurations"]["3d_fullres"]["network"]["kwargs"]["num_heads"] = [5, 5, 5, 5]
    plans_file.write_text(json.dumps(d))
    with pytest.raises(SmitunetError) as exc:
        Plans.load(plans_file)
    assert "3d_fullres.network: network smit_tiny: stage 0 width 12 is not divisible by num_heads 5" in str(exc.value)
    assert str(plans_file) in str(exc.value) and "\n" not in str(exc.value)
