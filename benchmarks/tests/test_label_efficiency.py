"""The label-efficiency benchmark's pieces: job runner, case selection and splits, results file, report.

Runs in CI beside the project's tests (``testpaths`` in pyproject.toml); no training happens here.
"""
import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _le_data as data  # noqa: E402
import _le_report as report  # noqa: E402
from _jobs import Job, run_jobs  # noqa: E402


def _job(name, tmp_path, code, after=()):
    return Job(name, [sys.executable, "-c", code], {}, tmp_path / "logs" / f"{name}.log", after=list(after))


def test_dependent_jobs_wait_and_independent_ones_overlap(tmp_path):
    stamp = "import time; open({path!r}, 'a').write('{name} %f\\n' % time.time()); time.sleep(0.6)"
    order = tmp_path / "order.txt"
    jobs = [_job(n, tmp_path, stamp.format(path=str(order), name=n), after) for n, after in
            (("pretrain", ()), ("scratch", ()), ("pretrained", ("pretrain",)), ("later", ("done_before",)))]
    seen = []
    times = run_jobs(jobs, max_running=3, on_done=lambda job, s: seen.append(job.name))
    assert set(times) == set(seen) == {"pretrain", "scratch", "pretrained", "later"}
    starts = {line.split()[0]: float(line.split()[1]) for line in order.read_text().splitlines()}
    assert abs(starts["scratch"] - starts["pretrain"]) < 0.5           # ran side by side
    assert starts["pretrained"] >= starts["pretrain"] + 0.6              # only after its dependency finished


def test_a_failed_job_stops_the_run_with_its_log_tail(tmp_path):
    jobs = [_job("broken", tmp_path, "import sys; print('bad plans'); sys.exit(3)"),
            _job("slow", tmp_path, "import time; time.sleep(30)")]
    with pytest.raises(SystemExit) as exc:
        run_jobs(jobs, max_running=2)
    assert "broken failed (exit 3)" in str(exc.value) and "bad plans" in str(exc.value)
    assert jobs[1].process.wait(timeout=5) != 0                          # the other job was killed


def test_case_order_file_decides_labelled_and_evaluation_cases(tmp_path):
    cases = [f"c{i:02d}" for i in range(10)]
    listed = list(reversed(cases))
    (tmp_path / "case_order.txt").write_text("\n".join(listed) + "\n")
    order, source = data.case_order(tmp_path, cases, seed=0)
    assert order == listed and source == "case_order.txt"
    evaluation, subsets = data.select(order, [2, 4], num_eval=3)
    assert evaluation == ["c00", "c01", "c02"]                           # the last three of the file
    assert subsets == {2: ["c08", "c09"], 4: ["c06", "c07", "c08", "c09"]}  # the first N
    assert not set(evaluation) & set(subsets[4])
    with pytest.raises(SystemExit, match="only 7 cases"):
        data.select(order, [8], num_eval=3)
    (tmp_path / "case_order.txt").write_text("c00\n")
    with pytest.raises(SystemExit, match="does not list exactly"):
        data.case_order(tmp_path, cases, seed=0)


def test_seeded_order_without_a_case_order_file(tmp_path):
    cases = [f"c{i:02d}" for i in range(10)]
    first, source = data.case_order(tmp_path, cases, seed=3)
    assert sorted(first) == cases and first != cases and "seed 3" in source
    assert data.case_order(tmp_path, list(reversed(cases)), seed=3)[0] == first


def test_folds_are_appended_and_found_again(tmp_path):
    path = tmp_path / "splits_final.json"
    assert data.fold_for(path, ["b", "a"], ["z"]) == 0
    assert data.fold_for(path, ["a", "b", "c"], ["z"]) == 1
    assert data.fold_for(path, ["a", "b"], ["z"]) == 0                   # found, not duplicated
    assert json.loads(path.read_text()) == [{"train": ["a", "b"], "val": ["z"]}, {"train": ["a", "b", "c"], "val": ["z"]}]


def test_pretraining_image_links_follow_the_cases(tmp_path):
    raw = tmp_path / "raw"
    (raw / "imagesTr").mkdir(parents=True)
    for case in ("a", "b", "c"):
        (raw / "imagesTr" / f"{case}_0000.nii.gz").write_text(case)
    target = data.link_images(raw, ["a", "b"], tmp_path / "links")
    assert sorted(p.name for p in target.iterdir()) == ["a_0000.nii.gz", "b_0000.nii.gz"]
    data.link_images(raw, ["c"], target)                                  # stale links removed
    assert [p.name for p in target.iterdir()] == ["c_0000.nii.gz"]


def test_convergence_gain_over_the_last_fifth():
    curve = [0.1, 0.5, 0.7, 0.8, 0.81, 0.82, 0.83, 0.84, 0.845, 0.85]   # 10 epochs: fifths of 2 epochs
    assert report.curve_gain(curve) == pytest.approx((0.845 + 0.85) / 2 - (0.83 + 0.84) / 2)
    assert report.curve_gain([0.5]) is None


def _run(dice, hd95=5.0):
    return {"dice": dice, "hd95": hd95, "curve": [dice - 0.1, dice], "curve_gain": 0.004, "iters_per_epoch": 25}


def test_report_means_sd_and_paired_differences(tmp_path):
    results = {"runs": {report.run_key("scratch", 8, 0): _run(0.70), report.run_key("scratch", 8, 1): _run(0.80),
                        report.run_key("smit", 8, 0): _run(0.76, 4.0), report.run_key("smit", 8, 1): _run(0.82, 6.0),
                        report.run_key("scratch", 4, 0): _run(0.60)},
               "description": ["dataset X"], "budget": {"budget_minutes": 40}}
    table = report.summarise(results)
    smit = table[8]["smit"]
    assert smit["dice_mean"] == pytest.approx(0.79) and smit["dice_sd"] == pytest.approx(0.0424264, rel=1e-4)
    assert smit["paired_dice_diff"] == pytest.approx({0: 0.06, 1: 0.02}) and smit["mean_diff_points"] == pytest.approx(4.0)
    text = report.markdown(results, "LE")
    assert "| smitunet, SMIT-pretrained | 2 | 79.0 ± 4.2 | 5.0 ± 1.4 | 76.0, 82.0 | +6.0, +2.0 | +4.00 (n=2) |" in text
    assert "| smitunet from scratch | 2 | 75.0 ± 7.1 | 5.0 ± 0.0 | 70.0, 80.0 |  |  |" in text
    assert "## 4 labelled cases" in text and "- scratch|L8|s0: +0.40 points" in text and "- budget_minutes: 40" in text
    # a row with fewer seeds than its reference: the mean difference is over the shared seeds only
    del results["runs"][report.run_key("smit", 8, 1)]
    smit = report.summarise(results)[8]["smit"]
    assert smit["mean_diff_points"] == pytest.approx(6.0)
    assert "| 76.0 | +6.0 | +6.00 (n=1) |" in report.markdown(results, "LE")
    report.plot(results, tmp_path / "p.png", tmp_path / "c.png")
    assert (tmp_path / "p.png").stat().st_size > 1000 and (tmp_path / "c.png").stat().st_size > 1000
    report.save_results(results, tmp_path / "r.json")
    assert report.load_results(tmp_path / "r.json") == json.loads(json.dumps(results))


def test_harness_arguments_take_the_protocol_and_dataset_id(tmp_path):
    import label_efficiency

    source = tmp_path / "Dataset010_LeftAtrium"
    source.mkdir()
    (source / "dataset.json").write_text("{}")
    args = label_efficiency.parse_args(["--source", str(source), "--work", str(tmp_path / "w")])
    assert (args.dataset_id, args.name, args.spacing, args.budget_minutes, args.tta) == \
        (10, "Dataset010_LeftAtrium", [1.25, 1.25, 1.25], 40.0, False)
    args = label_efficiency.parse_args(["--source", str(source), "--protocol", "gpu", "--budget_minutes", "5"])
    assert (args.spacing, args.budget_minutes, args.device) == (None, 5.0, "cuda")
    assert isinstance(args, Namespace)


def test_a_new_work_folder_adopts_the_committed_pretraining(tmp_path, monkeypatch):
    import label_efficiency as le

    source = tmp_path / "Dataset010_LeftAtrium"
    source.mkdir()
    (source / "dataset.json").write_text("{}")
    args = le.parse_args(["--source", str(source), "--work", str(tmp_path / "w")])
    monkeypatch.setattr(le, "RESULTS_DIR", tmp_path / "results")
    assert le.pretrain_job(args, "smit", tmp_path / "images") is not None  # nothing committed: pretrain
    kept = le.committed_pretraining(args, "smit")
    assert kept == tmp_path / "results" / "pretrained" / "Dataset010_LeftAtrium_cpu_smit.pt"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"weights")
    kept.with_name(kept.stem + "_log.json").write_text(json.dumps([{"epoch": e} for e in range(args.pretrain_epochs)]))
    assert le.pretrain_job(args, "smit", tmp_path / "images") is None
    assert (args.work / "smit_smit.pt").read_bytes() == b"weights"
    assert le.pretrain_job(args, "gmim", tmp_path / "images") is not None  # another method is not adopted


def test_a_variant_reuses_nnunet_rows_only_when_it_leaves_their_settings(tmp_path, monkeypatch):
    import label_efficiency as le

    source = tmp_path / "Dataset010_LeftAtrium"
    source.mkdir()
    (source / "dataset.json").write_text("{}")
    monkeypatch.setattr(le, "RESULTS_DIR", tmp_path / "results")
    base = {"runs": {report.run_key("nnunet", 8, 1): _run(0.75), report.run_key("scratch", 8, 1): _run(0.70)},
            "budget": {"nnunet": {"train_s_per_iter": 9.0}, "nnunet_epochs": 11}}
    (tmp_path / "results").mkdir()
    report.save_results(base, tmp_path / "results" / "label_efficiency_Dataset010_LeftAtrium_cpu.json")

    def variant(*extra):
        return le.parse_args(["--source", str(source), "--work", str(tmp_path / "work" / "le_010_cpu_mem1"),
                              "--tag", "mem1", *extra])

    results = {"runs": {report.run_key("scratch", 8, 1): _run(0.76)}}
    assert le.adopt_nnunet_rows(variant("--gpu_memory_target", "1.0"), results) == 1
    assert results["runs"][report.run_key("nnunet", 8, 1)]["adopted_from"] == "cpu"
    assert results["runs"][report.run_key("scratch", 8, 1)]["dice"] == 0.76  # smitunet rows are never taken
    assert results["budget"]["nnunet_epochs"] == 11
    results = {"runs": {}}
    assert le.adopt_nnunet_rows(variant("--budget_minutes", "20"), results) == 0  # nnU-Net's budget changed
    assert le.adopt_nnunet_rows(le.parse_args(["--source", str(source), "--work", str(tmp_path / "w")]),
                                results) == 0  # no variant
    assert results == {"runs": {}}


def test_light_rows_compare_with_scratch_of_the_same_decoder():
    results = {"runs": {report.run_key("scratch", 8, 0): _run(0.70), report.run_key("scratch_light", 8, 0): _run(0.60),
                        report.run_key("smit_light", 8, 0): _run(0.66)}}
    table = report.summarise(results)
    assert table[8]["smit_light"]["paired_dice_diff"] == pytest.approx({0: 0.06})
    assert "paired_dice_diff" not in table[8]["scratch_light"]
    assert "| smitunet, SMIT-pretrained, light decoder | 1 |" in report.markdown(results, "LE")


def test_semi_rows_with_the_warmup_get_the_blended_budget():
    import label_efficiency as le

    rows = ("scratch", "smit_light", "semi", "semi_smit_light", "semi_nowarmup", "semi_nolcc", "semi_mixedonly_light")
    assert [le.budget_key(r) for r in rows] == [
        "smitunet_epochs", "smitunet_light_epochs", "semi_warmup_epochs", "semi_light_warmup_epochs",
        "semi_mixedonly_epochs", "semi_mixedonly_warmup_epochs", "semi_mixedonly_light_warmup_epochs"]
    # each row's trainer has the step its budget was calibrated with
    import label_efficiency_trainers as trainers
    from smitunet.training.semi_supervised import SMITSemiSupervisedTrainer

    for row in ("semi", "semi_smit", "semi_nowarmup", "semi_nolcc", "semi_mixedonly"):
        name = le.SMITUNET_ROWS[row][1]
        cls = getattr(trainers, name, SMITSemiSupervisedTrainer)
        assert cls.labelled_step == (le.SEMI_STEP[row] == "semi"), row


def test_semi_epochs_follow_the_step_ratio_when_smitunet_epochs_are_given(tmp_path, monkeypatch):
    import label_efficiency as le

    source = tmp_path / "Dataset010_LeftAtrium"
    source.mkdir()
    (source / "dataset.json").write_text("{}")
    args = le.parse_args(["--source", str(source), "--work", str(tmp_path / "w"), "--tag", "mem1",
                          "--smitunet_epochs", "8", "--rows", "scratch", "semi"])
    steps = {"smitunet_here": 2.0, "semi": 6.0}  # s per iteration measured here: a semi step costs 3 plain ones
    calibrated = []

    def fake_calibration(args, name, extra, fold, budget_s, iters_cal):
        calibrated.append(name)
        return {"train_s_per_iter": steps[name], "epoch_overhead_s": 0.0, "startup_s": 0.0}, 99

    monkeypatch.setattr(le, "_calibrate_smitunet", fake_calibration)
    budget = le.calibrate(args, {"runs": {}}, 0, None, semi=(3, tmp_path / "labelled.txt"))
    assert calibrated == ["semi", "smitunet_here"]  # the plain step measured here, not the flag's budget
    # half the run labelled-only (2 s), half semi-supervised (6 s): a blended epoch costs twice a plain one
    assert (budget["smitunet_epochs"], budget["semi_warmup_epochs"]) == (8, 4)


def _write_labels(path: Path, array) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def test_largest_component_dice_drops_the_stray_blob_and_the_report_shows_it(tmp_path):
    import numpy as np

    ref = np.zeros((8, 8, 8), np.uint8)
    ref[1:4, 1:4, 1:4] = 1                      # 27 voxels
    pred = ref.copy()
    pred[6:8, 6:8, 6:8] = 1                     # a stray 8-voxel blob: Dice 54 / 62 before, 1 after
    _write_labels(tmp_path / "ref" / "a.nii.gz", ref)
    _write_labels(tmp_path / "pred" / "a.nii.gz", pred)
    scores = data.largest_component_dice(tmp_path / "ref", tmp_path / "pred", [1])
    assert scores == {"a": pytest.approx(1.0)}
    assert data.largest_component_dice(tmp_path / "ref", tmp_path / "gone", [1]) is None
    results = {"runs": {report.run_key("scratch", 8, 0): dict(_run(0.70), dice_lcc=0.74),
                        report.run_key("scratch", 8, 1): _run(0.80)}}
    assert "| 70.0, 80.0 |  |  | 74.0 ± 0.0 (1 of 2) |" in report.markdown(results, "LE")


def test_sparse_labels_keep_evenly_spread_slabs_and_ignore_the_rest():
    import numpy as np

    import sparse_labels

    labels = np.ones((20, 2, 2), np.uint8)
    sparse = sparse_labels.sparse_label(labels, ignore=2, keep=0.2, slab=2)
    kept = [z for z in range(20) if (sparse[z] != 2).all()]
    assert kept == [0, 1, 10, 11] and (sparse[[z for z in range(20) if z not in kept]] == 2).all()
    assert (sparse[kept] == 1).all()
