"""Planning from a pretrained checkpoint (official SMIT, MONAI SwinUNETR, our own pretraining output) and the
target-spacing override."""

from __future__ import annotations

import json

import pytest
import torch

from smitunet.errors import SmitunetError
from smitunet.networks import create_network
from smitunet.networks.checkpoint_adapter import load_pretrained
from smitunet.networks.checkpoint_architecture import read_architecture
from smitunet.networks.registry import get_preset
from smitunet.plans import Plans
from smitunet.pretraining.export import save_pretrained
from smitunet.preprocessing.planner import plan_experiment
from support.paths import shared_path
from support.planning import DATASET_JSON, fingerprint

LA = fingerprint([88, 142, 192], [0.625, 0.625, 0.625], n=20)   # Left Atrium: median shape, 0.625 mm


def _official_state(kind: str = "smit_small", seed: int = 0) -> dict[str, torch.Tensor]:
    """A flat state_dict in the official SMIT layout (our encoder's names are the official ones)."""
    torch.manual_seed(seed)
    return create_network(kind, 1, 2, [64, 64, 64]).encoder.state_dict()


def _monai_swinvit_state() -> dict[str, torch.Tensor]:
    """MONAI's model_swinvit.pt layout (module.layers{1-4}.0.blocks..., no patch norm, qkv bias, window 7), made
    by MONAI's own SwinTransformer."""
    pytest.importorskip("einops", reason="MONAI SwinUNETR needs einops (test extra)")
    swin = pytest.importorskip("monai.networks.nets.swin_unetr")
    model = swin.SwinTransformer(in_chans=1, embed_dim=48, window_size=(7, 7, 7), patch_size=(2, 2, 2),
                                 depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), qkv_bias=True, patch_norm=False,
                                 downsample="merging", use_v2=False)
    return {f"module.{k}": v for k, v in model.state_dict().items()}


def test_architecture_from_official_layout(tmp_path):
    path = tmp_path / "official.pt"
    torch.save({"state_dict": _official_state()}, path)
    arch = read_architecture(path)
    assert (arch.kind, arch.layout, arch.embed_dim, arch.depths, arch.num_heads, arch.window_size) == \
        ("official", "smit", 48, [2, 2, 4, 2], [4, 4, 4, 4], 4)
    assert not arch.qkv_bias and arch.patch_norm and arch.num_stages == 4 and arch.in_channels == 1


def test_architecture_from_the_official_key_file():
    shapes = json.loads(shared_path("smit_keys", "smit_pretrain_keys.json").read_text())
    arch = read_architecture({k: torch.zeros(v) for k, v in shapes.items()})
    assert (arch.embed_dim, arch.depths, arch.num_heads, arch.window_size, arch.qkv_bias) == (48, [2, 2, 4, 2], [4] * 4, 4, False)


def test_architecture_from_monai_layout():
    arch = read_architecture(_monai_swinvit_state())
    assert (arch.layout, arch.embed_dim, arch.depths, arch.num_heads, arch.window_size) == \
        ("monai-swinunetr", 48, [2, 2, 2, 2], [3, 6, 12, 24], 7)
    assert arch.qkv_bias and not arch.patch_norm


def test_not_a_swin_checkpoint_is_one_line(tmp_path):
    with pytest.raises(SmitunetError, match="no patch_embed.proj.weight"):
        read_architecture({"conv.weight": torch.zeros(2, 1, 3, 3, 3)})


def test_plans_from_official_checkpoint_use_every_stage_the_data_allows():
    arch = read_architecture(_official_state())
    plans = plan_experiment("Dataset010_LA", DATASET_JSON, LA, pretrained=arch, gpu_memory_target_gb=8)
    kw = plans.configuration("3d_fullres").network.kwargs
    assert plans.configuration("3d_fullres").spacing == [0.625] * 3
    assert (kw["embed_dim"], kw["depths"], kw["num_heads"], kw["window_size"], kw["num_stages"]) == \
        (48, [2, 2, 4, 2], [4, 4, 4, 4], 4, 4)
    assert plans.planner["preset"] == "smit_small" and plans.planner["pretrained"]["stages_in_checkpoint"] == 4
    assert plans.planner["notes"] == []
    # A small memory target shrinks the patch but keeps all four stages.
    small = plan_experiment("Dataset010_LA", DATASET_JSON, LA, pretrained=arch, gpu_memory_target_gb=1)
    c = small.configuration("3d_fullres")
    assert c.network.kwargs["num_stages"] == 4 and c.patch_size[0] * c.patch_size[1] * c.patch_size[2] < \
        plans.configuration("3d_fullres").patch_size[0] * 142 * 192
    # The plans build the network and the checkpoint loads into it with every encoder tensor.
    net = create_network(c.network.name, **c.network.kwargs)
    assert load_pretrained(net, _official_state()).matched_fraction == 1.0


def test_data_that_forces_fewer_stages_says_so_in_one_line():
    arch = read_architecture(_official_state())
    plans = plan_experiment("Dataset010_LA", DATASET_JSON, LA, pretrained=arch, target_spacing_override=[2.0, 2.0, 2.0])
    kw = plans.configuration("3d_fullres").network.kwargs
    assert kw["num_stages"] == 2
    (note,) = plans.planner["notes"]
    assert "uses 2 of the checkpoint's 4 Swin stages" in note and "128 voxels" in note and "\n" not in note


def test_plans_from_monai_checkpoint_take_its_heads_and_window():
    plans = plan_experiment("Dataset010_LA", DATASET_JSON, LA, pretrained=read_architecture(_monai_swinvit_state()))
    c = plans.configuration("3d_fullres")
    kw = c.network.kwargs
    assert plans.planner["preset"] == "swinunetr_ssl"
    assert (kw["num_heads"], kw["window_size"], kw["qkv_bias"], kw["patch_norm"]) == ([3, 6, 12, 24], 7, True, False)
    assert kw["merge_order"] == "monai_legacy"  # a bare MONAI encoder file: the self-supervised release's merging
    net = create_network(c.network.name, **c.network.kwargs)
    report = load_pretrained(net, _monai_swinvit_state())
    # MONAI's stage norms have no parameters: only norm{i} stays at its identity initialisation.
    assert all(k.startswith("norm") for k in report.missing) and len(report.loaded) + len(report.adapted) == 126


def test_plans_from_own_pretraining_take_its_spacing_normalisation_and_patch(tmp_path):
    base = plan_experiment("Dataset010_LA", DATASET_JSON, LA, target_spacing_override=[1.25, 1.25, 1.25],
                           gpu_memory_target_gb=1)
    cfg = base.configuration("3d_fullres")
    torch.manual_seed(0)
    kwargs = {**cfg.network.kwargs, "depths": [1, 1, 1, 1], "num_heads": [2, 2, 4, 4], "embed_dim": 24}
    net = create_network("smit_small", **kwargs)
    path = tmp_path / "smit.pt"
    save_pretrained(path, net.encoder, {"name": "smit_small", "kwargs": net.network_kwargs},
                    {"spacing": [1.25, 1.25, 1.25], "normalization": ["ZScore"], "patch": cfg.patch_size})
    plans = plan_experiment("Dataset010_LA", DATASET_JSON, LA, pretrained=read_architecture(path))
    c = plans.configuration("3d_fullres")
    assert c.spacing == [1.25] * 3 and c.patch_size == cfg.patch_size and c.normalization == ["ZScore"]
    assert c.network.kwargs["strides"] == cfg.network.kwargs["strides"]
    # The checkpoint holds 3 stages (its network used 3), so depths/heads list 3 and all 3 are used.
    assert (c.network.kwargs["embed_dim"], c.network.kwargs["depths"], c.network.kwargs["num_heads"],
            c.network.kwargs["num_stages"]) == (24, [1, 1, 1], [2, 2, 4], 3)
    assert load_pretrained(create_network(c.network.name, **c.network.kwargs), path).matched_fraction == 1.0


def test_spacing_override_is_recorded_and_validated(tmp_path):
    plans = plan_experiment("Dataset010_LA", DATASET_JSON, LA, target_spacing_override=[1.25, 1.5, 1.5])
    assert plans.configuration("3d_fullres").spacing == [1.25, 1.5, 1.5]
    assert plans.planner["target_spacing_override"] == [1.25, 1.5, 1.5]
    plans.save(tmp_path / "p.json")
    assert Plans.load(tmp_path / "p.json").planner["target_spacing_override"] == [1.25, 1.5, 1.5]
    assert plan_experiment("Dataset010_LA", DATASET_JSON, LA).planner["target_spacing_override"] is None
    with pytest.raises(SmitunetError, match="--spacing must be three positive"):
        plan_experiment("Dataset010_LA", DATASET_JSON, LA, target_spacing_override=[1.0, 0.0, 1.0])


def test_plan_and_preprocess_cli_with_spacing_and_pretrained(smitunet_dirs, tmp_path, capsys):
    from smitunet.dataset.synthetic import generate_synthetic_dataset
    from smitunet.preprocessing.cli import main

    generate_synthetic_dataset(smitunet_dirs["raw"], num_training=4, num_test=0, shape=(20, 24, 22))
    ckpt = tmp_path / "official.pt"
    torch.save(_official_state("smit_tiny"), ckpt)
    main(["-d", "999", "--spacing", "0.5", "0.5", "0.5", "--pretrained", str(ckpt), "--no_pp", "-np", "1"])
    err = capsys.readouterr().err
    plans = Plans.load(smitunet_dirs["preprocessed"] / "Dataset999_Synthetic" / "smitunetPlans.json")
    c = plans.configuration("3d_fullres")
    assert c.spacing == [0.5] * 3 and plans.planner["target_spacing_override"] == [0.5] * 3
    assert plans.planner["preset"] == "smit_tiny" and "pretrained network:" in err
    assert c.network.kwargs["embed_dim"] == get_preset("smit_tiny")["embed_dim"]
    with pytest.raises(SystemExit) as exc:
        main(["-d", "999", "--pretrained", str(tmp_path / "missing.pt"), "--no_pp", "-np", "1"])
    assert exc.value.code == 2 and "missing.pt: checkpoint file not found" in capsys.readouterr().err


def test_pretraining_with_plans_and_planning_from_its_output_agree(smitunet_dirs, tmp_path, capsys):
    """plans -> smitunet_pretrain --plans -> smitunet_plan_and_preprocess --pretrained: the same network, spacing,
    normalisation and patch, so the fine-tune loads every encoder tensor."""
    from smitunet.dataset.synthetic import generate_synthetic_dataset
    from smitunet.preprocessing.cli import main as plan_main
    from smitunet.pretraining.cli import main as pretrain_main

    generate_synthetic_dataset(smitunet_dirs["raw"], num_training=4, num_test=0, shape=(20, 24, 22))
    folder = smitunet_dirs["preprocessed"] / "Dataset999_Synthetic"
    plan_main(["-d", "999", "--preset", "smit_tiny", "--spacing", "0.8", "0.8", "0.8", "--no_pp", "-np", "1"])
    first = Plans.load(folder / "smitunetPlans.json").configuration("3d_fullres")
    ckpt = tmp_path / "smit.pt"
    pretrain_main(["-o", str(ckpt), "-d", "999", "--plans", str(folder / "smitunetPlans.json"), "--epochs", "1",
                   "--iters_per_epoch", "1", "--batch_size", "2", "--device", "cpu", "--num_workers", "0"])
    plan_main(["-d", "999", "--pretrained", str(ckpt), "--no_pp", "-np", "1", "-pl", "fromPretrained"])
    capsys.readouterr()
    second = Plans.load(folder / "fromPretrained.json").configuration("3d_fullres")
    assert (second.spacing, second.patch_size, second.normalization) == (first.spacing, first.patch_size,
                                                                         first.normalization)
    for key in ("embed_dim", "depths", "num_heads", "window_size", "num_stages", "strides", "qkv_bias"):
        want = first.network.kwargs[key]
        if key in ("depths", "num_heads"):
            want = want[:first.network.kwargs["num_stages"]]  # the checkpoint holds the stages the plans used
        assert second.network.kwargs[key] == want, key
    net = create_network(second.network.name, **second.network.kwargs)
    assert load_pretrained(net, ckpt).matched_fraction == 1.0
