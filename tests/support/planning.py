"""Plans and fingerprints written by hand: planner and preprocessing inputs without a dataset run."""

from __future__ import annotations

from smitunet.plans import ConfigurationPlan, NetworkConfig, Plans

DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                "numTraining": 10, "file_ending": ".nii.gz"}


def fingerprint(shape, spacing, n=10, relative=1.0):
    stats = {"mean": 1.0, "median": 1.0, "std": 1.0, "min": 0.0, "max": 2.0, "percentile_00_5": 0.0,
             "percentile_99_5": 2.0}
    return {"version": 1, "case_identifiers": [f"c{i:03d}" for i in range(n)], "spacings": [list(spacing)] * n,
            "shapes_before_crop": [list(shape)] * n, "shapes_after_crop": [list(shape)] * n,
            "median_relative_size_after_cropping": relative,
            "foreground_intensity_properties_per_channel": {"0": stats}}


def make_plans(spacing, normalization=("ZScore",), use_mask=(False,), intensities=None, labels=3) -> Plans:
    cfg = ConfigurationPlan(data_identifier="p_3d_fullres", spacing=list(spacing), patch_size=[16, 16, 16],
                            batch_size=2, median_image_shape=[20, 20, 20], normalization=list(normalization),
                            use_mask_for_norm=list(use_mask), network=NetworkConfig("smit_tiny", {"num_stages": 3}))
    return Plans(dataset_name="Dataset001_T", plans_name="p",
                 channel_names={str(i): "MRI" for i in range(len(normalization))},
                 labels={"background": 0, **{f"c{k}": k for k in range(1, labels)}}, file_ending=".nii.gz",
                 original_median_spacing=list(spacing), original_median_shape=[20, 20, 20],
                 foreground_intensity_properties=intensities or {}, configurations={"3d_fullres": cfg})
