"""The example trainer plug-in package, installed as pip would."""

from __future__ import annotations

from pathlib import Path

def install_example_plugin(site: Path) -> Path:
    """Make the example package importable and register its entry points, as `pip install` would
    (a dist-info folder with entry_points.txt on sys.path)."""
    dist = site / "smitunet_example_trainers-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: smitunet-example-trainers\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[smitunet.trainers]\n"
        "ExampleTrainer = smitunet_example_trainers.trainers:ExampleTrainer\n"
        "BrokenTrainer = smitunet_example_trainers.broken:BrokenTrainer\n")
    return dist
