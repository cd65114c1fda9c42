import numpy as np

from smitunet.evaluation.postprocessing import determine_postprocessing
from smitunet.postprocessing import apply_postprocessing, keep_largest_component, load_postprocessing, save_postprocessing
from smitunet.imageio import Geometry, write_image

GEO = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (12, 12, 12))


def test_keep_largest_component_only_touches_its_label():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:5, 1:5, 1:5] = 1      # big component
    labels[8, 8, 8] = 1            # stray voxel
    labels[9:11, 1:3, 1:3] = 2
    labels[1, 10, 10] = 2
    out = keep_largest_component(labels.copy(), 1)
    assert out[8, 8, 8] == 0 and out[1:5, 1:5, 1:5].all()
    assert (out == 2).sum() == (labels == 2).sum()
    both = apply_postprocessing(labels.copy(), {"keep_largest_component": [1, 2]})
    assert both[1, 10, 10] == 0 and (both == 2).sum() == 8
    assert apply_postprocessing(labels.copy(), None).tolist() == labels.tolist()


def test_determine_keeps_lcc_only_where_dice_improves(tmp_path):
    pairs = []
    for i in range(3):
        ref = np.zeros((12, 12, 12), np.uint8)
        ref[1:5, 1:5, 1:5] = 1
        ref[7:10, 7:10, 1:3] = 2
        ref[7:10, 1:3, 7:11] = 2       # label 2 truly has two parts: LCC would hurt
        pred = ref.copy()
        pred[10, 10, 10 - i] = 1       # a stray false-positive voxel of label 1: LCC helps
        write_image(ref, GEO, tmp_path / f"ref{i}.nii.gz")
        write_image(pred, GEO, tmp_path / f"pred{i}.nii.gz")
        pairs.append((tmp_path / f"ref{i}.nii.gz", tmp_path / f"pred{i}.nii.gz"))
    config = determine_postprocessing(pairs, [1, 2])
    assert config["keep_largest_component"] == [1]
    assert config["per_label"]["1"]["dice_after"] == 1.0 > config["per_label"]["1"]["dice_before"]
    assert config["per_label"]["2"]["dice_after"] < config["per_label"]["2"]["dice_before"] == 1.0
    save_postprocessing(config, tmp_path)
    assert load_postprocessing(tmp_path)["keep_largest_component"] == [1]
    assert load_postprocessing(tmp_path / "nowhere") is None
