"""Plans: the single contract between planning, preprocessing, training and prediction.

A typed, versioned, frozen object saved as plain JSON that a user may edit; ``Plans.load`` validates it (the
network's kwargs included, by the network registry's own rules) and reports problems in one line naming the file
and the field. A plans file of another version fails with one line saying what to re-run. To change a loaded plan,
make a new one (``dataclasses.replace``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smitunet.errors import SmitunetError
from smitunet.utils.files import load_json, save_json

# 2: a configuration's patch may be 2D (the ``2d`` configuration: network kwarg ``spatial_dims: 2``). Version 1
# plans (before 2d) hold only 3D configurations and load unchanged.
PLANS_VERSION = 2
SUPPORTED_PLANS_VERSIONS = (1, 2)
DEFAULT_PLANS_NAME = "smitunetPlans"
IGNORE_LABEL_NAME = "ignore"  # nnU-Net v2's name for the label whose voxels carry no loss and no metric


def ignore_label_of(labels: dict[str, Any]) -> int | None:
    """The value of the label named ``ignore`` (nnU-Net v2's sparse-annotation label), or None."""
    value = labels.get(IGNORE_LABEL_NAME)
    return None if value is None else int(value)


def segmentation_labels_of(labels: dict[str, Any]) -> dict[str, Any]:
    """``labels`` without the ignore label: what the network predicts and the exports may contain (values are
    integers, or lists of integers for regions)."""
    return {name: ([int(v) for v in value] if isinstance(value, (list, tuple)) else int(value))
            for name, value in labels.items() if name != IGNORE_LABEL_NAME}


def has_regions_of(labels: dict[str, Any]) -> bool:
    """nnU-Net v2 region-based labels: some value is a list of label values (e.g. ``"whole": [1, 2, 3]``)."""
    return any(isinstance(v, (list, tuple)) for v in labels.values())


def foreground_regions_of(labels: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Region name -> label values, in the order of ``labels`` (background and ignore left out); an integer
    entry is the region of that one value. One sigmoid output each when training with regions."""
    return {name: tuple(value) if isinstance(value, list) else (value,)
            for name, value in segmentation_labels_of(labels).items() if value != 0}


def label_values_of(labels: dict[str, Any]) -> list[int]:
    """Every integer a label file may hold (the ignore value included), sorted."""
    values: set[int] = set()
    for value in labels.values():
        values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return sorted(values)


def foreground_labels_of(labels: dict[str, Any]) -> list[int]:
    """Foreground label values (with regions: every value some region holds), sorted; never the ignore label."""
    return [v for v in label_values_of(segmentation_labels_of(labels)) if v != 0]


def num_outputs_of(labels: dict[str, Any]) -> int:
    """Network output channels: one per region (sigmoid), else one per label but ``ignore`` (softmax)."""
    if has_regions_of(labels):
        return len(foreground_regions_of(labels))
    return len(segmentation_labels_of(labels))


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to build the network: ``create_network(name, **kwargs)``.

    ``kwargs`` holds in_channels, num_classes, patch_size and every architecture setting (embed_dim, depths,
    num_heads, window_size, strides, ...), so a network is fully described by the plans.
    """

    name: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class ConfigurationPlan:
    data_identifier: str                    # folder under the dataset's preprocessed folder (2d shares 3d_fullres')
    spacing: list[float]                    # target spacing, (z, y, x) in mm (2d: that of its 3D data)
    patch_size: list[int]                   # (z, y, x) voxels; 2d: (y, x), a slice
    batch_size: int
    median_image_shape: list[int]           # after resampling to ``spacing``, (z, y, x)
    normalization: list[str]                # per channel: "CT", "ZScore", "NoNorm", "RescaleTo01"
    use_mask_for_norm: list[bool]           # per channel: z-score only inside the nonzero mask
    network: NetworkConfig
    resampling_order_data: int = 3
    resampling_order_seg: int = 1
    anisotropy_threshold: float = 3.0       # above: resample the low-resolution axis separately (order 0)
    estimated_memory_gb: float | None = None
    # A cascade stage (nnU-Net's 3d_cascade_fullres): the configuration whose predictions, one-hot over
    # ``Plans.foreground_labels``, are appended to the image channels (the network's in_channels count both).
    previous_stage: str | None = None

    @property
    def spatial_dims(self) -> int:
        """3, or 2 for the ``2d`` configuration (slices of the 3D preprocessed cases)."""
        return len(self.patch_size)


@dataclass(frozen=True)
class Plans:
    dataset_name: str
    plans_name: str
    channel_names: dict[str, str]           # "0" -> "CT" / "MRI" / ...
    labels: dict[str, Any]                  # name -> value, "background": 0; "ignore": the highest, if any;
                                            # a region's value is a list of label values (nnU-Net v2)
    file_ending: str
    original_median_spacing: list[float]    # (z, y, x)
    original_median_shape: list[int]        # after cropping, (z, y, x)
    foreground_intensity_properties: dict[str, dict[str, float]]  # per channel index (str)
    configurations: dict[str, ConfigurationPlan]
    version: int = PLANS_VERSION
    planner: dict[str, Any] = field(default_factory=dict)  # how it was planned (preset, memory target, ...)
    # Regions only (nnU-Net v2): the value each region paints when exported, region by region in this order.
    regions_class_order: list[int] | None = None

    # -- convenience -------------------------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def ignore_label(self) -> int | None:
        """Value of the ``ignore`` label (no loss, no metric, never predicted), or None."""
        return ignore_label_of(self.labels)

    @property
    def segmentation_labels(self) -> dict[str, Any]:
        """The labels the network predicts: all but ``ignore``."""
        return segmentation_labels_of(self.labels)

    @property
    def has_regions(self) -> bool:
        return has_regions_of(self.labels)

    @property
    def foreground_regions(self) -> dict[str, tuple[int, ...]]:
        return foreground_regions_of(self.labels)

    @property
    def num_classes(self) -> int:
        """Output channels of the network: background plus every foreground label (not the ignore label); with
        regions, one (sigmoid) channel per region and none for background."""
        return num_outputs_of(self.labels)

    @property
    def foreground_labels(self) -> list[int]:
        """Foreground label values (with regions: every value some region holds); oversampling centres on them."""
        return foreground_labels_of(self.labels)

    @property
    def evaluated_labels(self) -> list[int | tuple[int, ...]]:
        """What the metrics score: the foreground labels, or the regions (tuples) in the order of ``labels``."""
        return list(self.foreground_regions.values()) if self.has_regions else self.foreground_labels

    @property
    def evaluated_names(self) -> list[str]:
        """Names of ``evaluated_labels``, in their order."""
        if self.has_regions:
            return list(self.foreground_regions)
        by_value = {v: k for k, v in self.segmentation_labels.items()}
        return [by_value[v] for v in self.foreground_labels]

    @property
    def export_labels(self) -> dict[str, int]:
        """Name -> value of what an exported label map holds (with regions: the value each region paints)."""
        if self.has_regions:
            return {"background": 0, **dict(zip(self.foreground_regions, self.regions_class_order or []))}
        return dict(self.segmentation_labels)

    def next_stages(self, name: str) -> list[str]:
        """Configurations that take ``name``'s predictions as input (nnU-Net's ``next_stage_names``)."""
        return [n for n, c in self.configurations.items() if c.previous_stage == name]

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise SmitunetError(f"plans {self.plans_name}: no configuration {name!r}; "
                                f"available: {', '.join(self.configurations)}")
        conflict = self.shared_data_conflict(name)
        if conflict:
            raise SmitunetError(f"plans {self.plans_name}: {conflict}")
        return self.configurations[name]

    def data_owner(self, name: str) -> str:
        """The configuration whose preprocessed folder ``name`` reads: the one the folder is named after (2d reads
        3d_fullres'), else the first configuration with that data_identifier."""
        identifier = self.configurations[name].data_identifier
        sharing = [n for n, c in self.configurations.items() if c.data_identifier == identifier]
        return next((n for n in sharing if identifier == f"{self.plans_name}_{n}"), sharing[0])

    def shared_data_conflict(self, name: str) -> str | None:
        """Why ``name`` cannot read the folder it shares (its preprocessing differs from the owner's, e.g. after
        a hand edit of one of them), or None. Only the borrowing configuration is unusable, not the owner."""
        owner = self.data_owner(name)
        if owner == name:
            return None
        mine, theirs = self.configurations[name], self.configurations[owner]
        differ = [f for f in _PREPROCESSING_FIELDS if getattr(mine, f) != getattr(theirs, f)]
        if not differ:
            return None
        return (f"{name} reads the preprocessed cases of {owner} ({mine.data_identifier}) but differs from it in "
                f"{', '.join(differ)}; make them equal, or give {name} its own data_identifier")

    # -- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "plans") -> "Plans":
        def need(obj: dict, key: str, where: str):
            if not isinstance(obj, dict) or key not in obj:
                raise SmitunetError(f"{source}: missing field {where}{key}")
            return obj[key]

        version = d.get("version")
        if version not in SUPPORTED_PLANS_VERSIONS:
            raise SmitunetError(f"{source}: plans version {version!r} is not supported (expected {PLANS_VERSION}); "
                                "re-run smitunet_plan_and_preprocess")
        configs = {}
        for cname, c in need(d, "configurations", "").items():
            where = f"configurations.{cname}."
            net = need(c, "network", where)
            kwargs = dict(c)
            kwargs["network"] = NetworkConfig(name=need(net, "name", where + "network."),
                                              kwargs=dict(need(net, "kwargs", where + "network.")))
            try:
                cp = ConfigurationPlan(**kwargs)
            except TypeError as exc:
                raise SmitunetError(f"{source}: {where[:-1]}: {exc}") from None
            _validate_configuration(cp, len(need(d, "channel_names", "")), f"{source}: {where[:-1]}")
            _validate_network(cp, f"{source}: {where[:-1]}")
            configs[cname] = cp
        fields = {k: v for k, v in d.items() if k != "configurations"}
        try:
            plans = cls(configurations=configs, **fields)
        except TypeError as exc:
            raise SmitunetError(f"{source}: {exc}") from None
        if "background" not in plans.labels or plans.labels["background"] != 0:
            raise SmitunetError(f"{source}: labels must map 'background' to 0")
        ignore = plans.ignore_label
        if ignore is not None and ignore != max(label_values_of(plans.labels)):
            raise SmitunetError(f"{source}: labels: 'ignore' must be the highest label value, got {ignore}")
        for cname, c in plans.configurations.items():
            _validate_previous_stage(plans, cname, c, source)
        if plans.has_regions:
            order = plans.regions_class_order
            if not isinstance(order, list) or len(order) != len(plans.foreground_regions):
                raise SmitunetError(f"{source}: regions_class_order must list one label value per region "
                                    f"({len(plans.foreground_regions)}), got {order!r}")
        return plans

    def save(self, path: str | Path) -> None:
        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "Plans":
        path = Path(path)
        if not path.is_file():
            raise SmitunetError(f"{path}: plans file not found; run smitunet_plan_and_preprocess first")
        return cls.from_dict(load_json(path), source=str(path))  # load_json: unreadable or non-JSON is one line


def _validate_network(config: ConfigurationPlan, where: str) -> None:
    """The registry's checks (known preset and settings, strides, divisibility, heads) on the stored kwargs (the
    configuration's patch where the kwargs have none)."""
    from smitunet.networks.registry import resolve_kwargs  # lazy: torch only when plans are loaded

    network = config.network
    kwargs = dict(network.kwargs)
    try:
        resolve_kwargs(network.name, kwargs.pop("in_channels", 1), kwargs.pop("num_classes", 2),
                       kwargs.pop("patch_size", config.patch_size), **kwargs)
    except SmitunetError as exc:
        raise SmitunetError(f"{where}.network: {exc}") from None
    except TypeError as exc:
        raise SmitunetError(f"{where}.network: {exc}") from None


def _validate_previous_stage(plans: "Plans", name: str, c: ConfigurationPlan, source: str) -> None:
    """A cascade names an existing, non-cascaded configuration, and its network reads the image channels plus one
    one-hot channel per foreground label."""
    if c.previous_stage is None:
        return
    where = f"{source}: configurations.{name}.previous_stage"
    previous = plans.configurations.get(c.previous_stage)
    if previous is None:
        raise SmitunetError(f"{where}: no configuration {c.previous_stage!r} in the plans")
    if previous.previous_stage is not None or c.previous_stage == name:
        raise SmitunetError(f"{where}: {c.previous_stage!r} must be a single-stage configuration")
    expected = plans.num_channels + len(plans.foreground_labels)
    found = c.network.kwargs.get("in_channels")
    if found != expected:
        raise SmitunetError(f"{source}: configurations.{name}.network.kwargs.in_channels must be {expected} "
                            f"({plans.num_channels} image + {len(plans.foreground_labels)} previous-stage one-hot "
                            f"channels), got {found!r}")


# What makes two configurations' preprocessed arrays equal, so that they may share one data folder (2d reads
# 3d_fullres'); a configuration that differs from its folder's owner is refused when used (Plans.configuration).
_PREPROCESSING_FIELDS = ("spacing", "normalization", "use_mask_for_norm", "resampling_order_data",
                         "resampling_order_seg", "anisotropy_threshold")


def _validate_configuration(c: ConfigurationPlan, num_channels: int, where: str) -> None:
    for name in ("spacing", "patch_size", "median_image_shape"):
        value = getattr(c, name)
        sizes = (2, 3) if name == "patch_size" else (3,)  # a 2d patch is a slice, (y, x)
        if not (isinstance(value, list) and len(value) in sizes
                and all(isinstance(v, (int, float)) and v > 0 for v in value)):
            what = "two or three" if name == "patch_size" else "three"
            raise SmitunetError(f"{where}.{name} must be {what} positive numbers, got {value!r}")
    dims = c.network.kwargs.get("spatial_dims", 3)
    if dims != c.spatial_dims:
        raise SmitunetError(f"{where}.patch_size {c.patch_size} is {c.spatial_dims}D but the network's spatial_dims is "
                            f"{dims}")
    if not isinstance(c.batch_size, int) or c.batch_size < 1:
        raise SmitunetError(f"{where}.batch_size must be a positive integer, got {c.batch_size!r}")
    if len(c.normalization) != num_channels or len(c.use_mask_for_norm) != num_channels:
        raise SmitunetError(f"{where}: normalization/use_mask_for_norm need one entry per channel ({num_channels})")
    known = {"CT", "ZScore", "NoNorm", "RescaleTo01"}
    for n in c.normalization:
        if n not in known:
            raise SmitunetError(f"{where}.normalization: unknown scheme {n!r}; known: {', '.join(sorted(known))}")
