"""Typed configuration: YAML in, validated dataclasses out, fully resolved YAML back.

Every section is a frozen dataclass. An unknown or misspelled key is a ConfigError naming the key,
where it was found and (when close) the key that was probably meant. A setting that the chosen model
family does not use is an error too, so a config always says what it does.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detgen.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Which columns are conditions and targets, how they are transformed, how the data are split."""

    conditions: list[str]
    targets: list[str]
    #: Train one independent model per value of this column (e.g. ``species``); None: one model.
    group_by: str | None = None
    #: The values of ``group_by`` to keep (default: all values found in the training data).
    groups: list[str] | None = None
    #: Condition columns holding labels (strings); they are one-hot encoded ("species as a condition").
    categorical: list[str] = field(default_factory=list)
    #: Keep only rows whose column value is in the list, e.g. ``{species: [pi+, K+]}``.
    select: dict[str, list[str]] = field(default_factory=dict)
    #: Per-column transform: standard | log | identity | minmax (default standard for numeric columns).
    transforms: dict[str, str] = field(default_factory=dict)
    #: Train/validation/test fractions and the seed of the permutation that splits the rows.
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 0
    #: ROOT tree or HDF5 group to read (None: the only one there / the file root).
    tree: str | None = None
    key: str | None = None
    #: Use at most this many training rows (None: all).
    max_train_rows: int | None = None


@dataclass(frozen=True)
class FlowConfig:
    """Conditional autoregressive flow (zuko): rqs = neural spline (MADE + RQS), affine = MAF."""

    family: str = "flow"
    transform: str = "rqs"
    blocks: int = 6
    hidden: list[int] = field(default_factory=lambda: [64, 64, 64])
    bins: int = 8
    #: Spline domain in standardised units; outside it the transform is the identity and cannot shape the
    #: density, so it must hold the tails (targets standardised over all groups reach beyond 5 sigma: the
    #: slowest protons' dE/dx sits at 4-7 sigma of the pooled distribution). Training reports rows outside it.
    bound: float = 10.0
    randperm: bool = False

    def check(self, data: DataConfig, source: str) -> None:
        if self.transform not in ("rqs", "affine"):
            raise ConfigError(f"{source}: model.transform = {self.transform!r} (expected rqs or affine)")


@dataclass(frozen=True)
class HistogramConfig:
    """Conventional histogram sampling: equal-population bins in each condition, a histogram per cell."""

    family: str = "histogram"
    #: Equal-population bins per encoded condition feature (cells = bins ** n_features).
    condition_bins: int = 10
    target_bins: int = 100
    #: Cells with fewer training rows than this fall back to the 1-D histogram of their first-condition bin.
    min_entries: int = 50
    #: Knots of a smooth mean curve in the first condition (the calibrated beta*gamma curve of the
    #: conventional method); the histograms then hold residuals from it. 0: histograms of the raw target.
    mean_curve_knots: int = 40

    def check(self, data: DataConfig, source: str) -> None:
        if len(data.targets) != 1:
            raise ConfigError(f"{source}: model.family histogram supports exactly one target, got {data.targets}")


# A model family's config is a frozen dataclass with a ``family`` field naming it and an optional
# ``check(data, source)`` for consistency checks with the data section; register it in MODEL_CONFIGS and its
# class in ``detgen.models.FAMILIES``.

# ---- issue 3 (photons) family configs go here

# ---- issue 4 (EMC) family configs go here

# ---- issue 5 (JUNO) family configs go here


MODEL_CONFIGS: dict[str, type] = {
    "flow": FlowConfig,
    "histogram": HistogramConfig,
}


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule. step: multiply by ``factor`` every ``step_epochs``; power: decay from lr to final_lr."""

    kind: str = "step"
    step_epochs: int = 10
    factor: float = 0.5
    final_lr: float = 1e-5


@dataclass(frozen=True)
class TrainingConfig:
    """The trainer: one for every model family."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    #: Best epoch by: mean_wasserstein (mean 1-D W1 on the validation split, standardised units) or val_loss.
    best_metric: str = "mean_wasserstein"
    #: Validation rows used for the sampled metric (None: all).
    metric_rows: int | None = 50_000
    grad_clip: float | None = None
    #: Stop when the best metric has not improved for this many epochs (None: never).
    patience: int | None = None
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class Config:
    """A complete detgen configuration (what ``config.yaml`` in a run dir holds, fully resolved)."""

    name: str
    data: DataConfig
    model: Any
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace_training(self, **changes: Any) -> Config:
        return dataclasses.replace(self, training=dataclasses.replace(self.training, **changes))


# --------------------------------------------------------------------------------------------- loading
def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key_t, val_t = typing.get_args(annotation)
        return isinstance(value, dict) and all(
            _type_ok(k, key_t) and _type_ok(v, val_t) for k, v in value.items()
        )
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _unknown_key(key: str, allowed: list[str], where: str, source: str) -> ConfigError:
    hint = difflib.get_close_matches(key, allowed, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return ConfigError(
        f"{source}: unknown key {where}.{key}{did_you_mean}; allowed keys: {', '.join(allowed)}"
    )


def _build(cls: type, raw: Any, where: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise _unknown_key(str(key), list(fields), where, source)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key {where}.{name}")
            continue
        value = raw[name]
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            value = _build(annotation, value, f"{where}.{name}", source)  # type: ignore[arg-type]
        elif isinstance(value, float) and annotation in (int, int | None) and value.is_integer():
            value = int(value)
        elif isinstance(value, int) and annotation in (float, float | None) and not isinstance(value, bool):
            value = float(value)
        if not dataclasses.is_dataclass(annotation) and not _type_ok(value, annotation):
            expected = getattr(annotation, "__name__", str(annotation))
            raise ConfigError(f"{source}: {where}.{name} = {value!r} has the wrong type (expected {expected})")
        kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any], *, source: str = "<config>") -> Config:
    """Validate a parsed YAML mapping into a Config (ConfigError on any problem)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with keys name, data, model, training")
    allowed = ["name", "data", "model", "training"]
    for key in raw:
        if key not in allowed:
            raise _unknown_key(str(key), allowed, "config", source)
    model_raw = raw.get("model")
    if not isinstance(model_raw, dict) or "family" not in model_raw:
        raise ConfigError(f"{source}: model.family is required (one of {', '.join(MODEL_CONFIGS)})")
    family = model_raw["family"]
    if family not in MODEL_CONFIGS:
        raise ConfigError(
            f"{source}: model.family = {family!r} is unknown (expected one of {', '.join(MODEL_CONFIGS)})"
        )
    config = Config(
        name=str(raw.get("name", "detgen")),
        data=_build(DataConfig, raw.get("data"), "data", source),
        model=_build(MODEL_CONFIGS[family], model_raw, "model", source),
        training=_build(TrainingConfig, raw.get("training"), "training", source),
    )
    check_config(config, source=source)
    return config


def check_config(config: Config, *, source: str = "<config>") -> None:
    """Consistency checks that cross sections."""
    data, training = config.data, config.training
    if not data.targets:
        raise ConfigError(f"{source}: data.targets must name at least one column")
    if len(data.split) != 3 or abs(sum(data.split) - 1.0) > 1e-6 or min(data.split) < 0:
        raise ConfigError(f"{source}: data.split = {data.split} must be three fractions summing to 1")
    for column in data.categorical:
        if column not in data.conditions:
            raise ConfigError(f"{source}: data.categorical names {column!r}, which is not in data.conditions")
    if data.group_by is not None and data.group_by in data.conditions:
        raise ConfigError(f"{source}: data.group_by {data.group_by!r} cannot also be a condition")
    for column, spec in data.transforms.items():
        if spec not in ("standard", "log", "identity", "minmax"):
            raise ConfigError(
                f"{source}: data.transforms.{column} = {spec!r} (expected standard, log, identity or minmax)"
            )
    if training.schedule.kind not in ("step", "power", "constant"):
        raise ConfigError(f"{source}: training.schedule.kind = {training.schedule.kind!r} (expected step, power or constant)")
    if training.best_metric not in ("mean_wasserstein", "val_loss"):
        raise ConfigError(f"{source}: training.best_metric = {training.best_metric!r} (expected mean_wasserstein or val_loss)")
    if training.epochs < 1 or training.batch_size < 1:
        raise ConfigError(f"{source}: training.epochs and training.batch_size must be positive")
    check_model = getattr(config.model, "check", None)
    if check_model is not None:
        check_model(data, source)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    return config_from_dict(raw, source=str(path))


def dump_config(config: Config) -> str:
    """The fully resolved config as YAML text (what a run dir stores)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
