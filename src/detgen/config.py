"""Typed configuration: YAML in, validated dataclasses out, fully resolved YAML back.

Every section is a frozen dataclass. An unknown or misspelled key is a ConfigError naming the key,
where it was found and (when close) the key that was probably meant. A setting that the chosen model
family does not use is an error too, so a config always says what it does.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detgen.errors import ConfigError


@dataclass(frozen=True)
class ImageConfig:
    """Preprocessing of image targets (array columns, e.g. the 11 x 11 EMC map in MeV); see
    ``detgen.image_preprocessing``. normalise: none (x / scale) | condition (x / (scale * condition), e.g. the
    momentum in GeV/c with scale 1000) | total (x / sum, ln sum as one more feature); transform: none | log |
    logit, with ``epsilon`` keeping empty pixels finite."""

    normalise: str = "none"
    condition: str | None = None
    scale: float = 1.0
    transform: str = "none"
    epsilon: float = 1e-6


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
    #: Use at most this many training rows, a random subset in file order (None: all).
    max_train_rows: int | None = None
    #: How array-column targets (images) are preprocessed.
    image: ImageConfig = field(default_factory=ImageConfig)


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
    #: A final tanh bijection onto (-1, 1) (the photon CNF's targets are scaled into [-1, 1] by fixed
    #: ``scale:S`` transforms); training rows with a target outside (-1, 1) are counted, reported and
    #: left out of the loss.
    final_tanh: bool = False
    #: Noise regularisation: during training only, each target column gets Gaussian noise of ``target_noise``
    #: times its training standard deviation (in the flow's own space: before the final tanh when there is one).
    #: The flow then learns the data convolved with that noise, a density that stays finite where the data lie
    #: on a lower-dimensional surface (photons with rho = 1: both photons' responses one draw), and its samples
    #: carry the noise: a response of width sigma comes out sqrt(sigma^2 + eps^2) wide. 0 switches it off.
    target_noise: float = 0.0

    def check(self, data: DataConfig, source: str) -> None:
        if self.transform not in ("rqs", "affine"):
            raise ConfigError(f"{source}: model.transform = {self.transform!r} (expected rqs or affine)")
        if not (math.isfinite(self.target_noise) and 0 <= self.target_noise < 1):
            raise ConfigError(f"{source}: model.target_noise = {self.target_noise} (expected a fraction of each target's "
                              f"standard deviation, 0 <= target_noise < 1; 0 = off)")
        if self.final_tanh:
            _check_bounded_targets(data, source)


def _check_bounded_targets(data: DataConfig, source: str) -> None:
    """A final tanh needs targets scaled into [-1, 1]: a fixed ``scale:S`` or ``minmax`` transform each."""
    for column in data.targets:
        spec = data.transforms.get(column, "standard")
        if spec != "minmax" and not _is_fixed_scale(spec):
            raise ConfigError(
                f"{source}: model.final_tanh needs targets scaled into [-1, 1], but data.transforms.{column} = "
                f"{spec!r} (expected scale:S, e.g. scale:20, or minmax)"
            )


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
@dataclass(frozen=True)
class SmearingConfig:
    """Parametric (DELPHES-like) smearing baseline: every target an independent Gaussian whose mean and width
    are fitted in closed form per cell of equal-population bins of its conditions (``detgen.models.smearing``).
    """

    family: str = "smearing"
    #: Equal-population bins per binned condition (cells per target = bins ** conditions binned).
    bins: int = 8
    #: Per target, the condition columns it is binned in (each list the same length), e.g. for photons
    #: ``{d_et1: [et1, eta1, mu], ..., d_et2: [et2, eta2, mu]}``; empty: every target in every condition.
    target_conditions: dict[str, list[str]] = field(default_factory=dict)
    #: Cells with fewer training rows use the target's overall mean and width (counted at fit time).
    min_entries: int = 30

    def check(self, data: DataConfig, source: str) -> None:
        if self.bins < 1 or self.min_entries < 2:
            raise ConfigError(f"{source}: model.bins must be >= 1 and model.min_entries >= 2")
        if data.categorical:
            raise ConfigError(f"{source}: model.family smearing bins numeric conditions only; "
                              f"data.categorical = {data.categorical} (use data.group_by instead)")
        if not self.target_conditions:
            return
        if sorted(self.target_conditions) != sorted(data.targets):
            raise ConfigError(f"{source}: model.target_conditions must have one entry per target "
                              f"{data.targets}, got {sorted(self.target_conditions)}")
        lengths = {len(v) for v in self.target_conditions.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise ConfigError(f"{source}: model.target_conditions lists must all have the same, non-zero length")
        for target, columns in self.target_conditions.items():
            for column in columns:
                if column not in data.conditions:
                    raise ConfigError(f"{source}: model.target_conditions.{target} names {column!r}, which is not "
                                      f"in data.conditions {data.conditions}")


@dataclass(frozen=True)
class FlowStudentConfig:
    """A fast-sampling inverse-autoregressive student distilled from a trained affine-MAF teacher run.

    The student has one IAF block per teacher block (same feature orders), each learning the inverse of its
    teacher block, so sampling needs one MLP pass per block instead of one per block and feature.
    """

    family: str = "flow_student"
    #: Run dir of the trained teacher (``model.family: flow``, ``transform: affine``); read only for training.
    teacher: str = ""
    blocks: int = 10
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    final_tanh: bool = False
    #: Weights of the two distillation terms: teacher latents of data pushed back through the student
    #: (data space), and student samples pushed through the teacher (latent space, same noise).
    data_weight: float = 1.0
    latent_weight: float = 1.0

    def check(self, data: DataConfig, source: str) -> None:
        if not self.teacher:
            raise ConfigError(f"{source}: model.teacher must name the teacher's run dir")
        if self.blocks < 1 or not self.hidden:
            raise ConfigError(f"{source}: model.blocks must be positive and model.hidden non-empty")
        if self.final_tanh:
            _check_bounded_targets(data, source)


# ---- issue 4 (EMC) family configs go here
@dataclass(frozen=True)
class GANConfig:
    """Conditional WGAN-GP for images (the seed's BESIII EMC GAN; ``detgen.models.gan``).

    Generator: [noise, conditions] -> Dense(dense_shape) -> upsample -> convolutions ``generator_channels``
    (the last one a valid convolution that maps the upsampled size onto ``image_shape``) -> ReLU.
    Critic: convolutions ``critic_channels`` -> Dense(critic_features) -> [features, minibatch discrimination,
    conditions, total energy, sparsity] -> score. Each ``train_step`` makes ``n_critic`` critic updates (on
    ``n_critic`` slices of the batch) and one generator update; the generator loss adds
    ``regressor_weight * |y - regressor(G(z, y))|_1`` when ``regressor_run`` names a trained regressor run.
    """

    family: str = "gan"
    image_shape: list[int] = field(default_factory=lambda: [11, 11])
    noise_dim: int = 128
    dense_shape: list[int] = field(default_factory=lambda: [16, 4, 4])
    upsample: int = 3
    generator_channels: list[int] = field(default_factory=lambda: [16, 16, 16, 8, 1])
    #: Convolutions at the dense layer's resolution (e.g. 4 x 4) before the upsampling: a cheaper generator
    #: when ``generator_channels`` (at the upsampled size) is shortened; empty: none (the seed's layout).
    coarse_channels: list[int] = field(default_factory=list)
    kernel_size: int = 3
    critic_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    critic_features: int = 64
    #: Minibatch discrimination (Salimans et al. 2016): kernels x dimension of each.
    minibatch_kernels: int = 16
    minibatch_kernel_dim: int = 8
    #: Sparsity feature: mean over pixels of 1 - exp(-x / sparsity_scale) (model units of the image).
    sparsity_scale: float = 1e-4
    #: The critic also sees ln(x + log_epsilon) as a second channel (the low-energy crystals); 0: off.
    log_epsilon: float = 1e-3
    #: Training only: the output ReLU passes this slope of the gradient below zero (forward unchanged, so the
    #: sampler and export are plain ReLU), letting the critic switch on crystals the generator left at zero; 0: off.
    output_leak: float = 0.0
    #: Generator output layer. ``relu``: ReLU (empty crystals exactly 0, no gradient below zero).
    #: ``threshold``: the readout's zero suppression: E = t exp(u) where u >= 0, else exactly 0, with t the
    #: ``zero_suppression`` threshold (physical units, MeV) converted per row into model units; in training the
    #: cut passes the gradient of t exp(u) also below it (straight-through), or, with ``gate_temperature`` > 0,
    #: is the smooth gate t exp(u) sigmoid(u / gate_temperature). Needs ``data.image.transform: none``.
    output: str = "relu"
    zero_suppression: float = 0.0
    gate_temperature: float = 0.0
    #: output threshold: E = t exp(phi(u)) with phi a learned monotone piecewise-linear map, identity at the
    #: start, with ``output_knots`` equal segments on u in [0, ``output_knot_range``] (the last slope continues
    #: beyond, the first below 0; phi(0) = 0, so the cut stays at t). A steep segment makes a gap in the
    #: spectrum of crystal energies (e.g. between noise-only crystals just above the cut and single energy
    #: deposits of a few MeV) that the convolutions' smooth output alone fills in. 0: off (phi = identity).
    output_knots: int = 0
    output_knot_range: float = 4.0
    #: output threshold: the readout's noise hits. Crystals the generator leaves empty get Gaussian noise of
    #: this width (physical units, e.g. 0.2 MeV) and are kept where it passes the cut (with 0.2 and a 0.5 MeV
    #: cut: 0.6 % of the empty crystals, at 0.5-0.8 MeV); the generator's own crystals carry their noise already
    #: (learnt from the data). Its standard normals are the last image-size columns of the generator's noise
    #: input (noise_dim + pixels in all), so samples stay reproducible and the exported graph deterministic. 0: off.
    readout_noise: float = 0.0
    #: output threshold: u = log_gain * (last convolution), so E = t exp(log_gain * h); a shower spans
    #: ln(E_max / t) ~ 8 (0.5 MeV to ~1.5 GeV), which a gain near that puts within reach of small weights.
    log_gain: float = 1.0
    #: What the critic sees (and where the gradient penalty is taken): ``linear`` (model units) or ``log``
    #: (ln(1 + x / t), t the per-row threshold; needs ``output: threshold``; use ``log_epsilon: 0`` and a
    #: ``sparsity_scale`` ~0.3 there, both then act on ln(1 + x / t)).
    critic_input: str = "linear"
    #: With ``critic_input: log``: the critic's "total" feature is the sum of its input (``log``) or the
    #: energy sum in model units decoded from it (``energy``, the deposited fraction).
    critic_total: str = "log"
    #: With ``critic_input: log``: the critic also sees the hit spectrum, as the fraction of crystals with
    #: E / t above each of these levels (soft steps of width ``critic_hit_softness`` in ln(1 + E / t)); e.g.
    #: [0.5, 2, 4, 16] counts the kept crystals and those above 2, 4 and 16 times the threshold. Empty: off.
    critic_hit_levels: list[float] = field(default_factory=list)
    critic_hit_softness: float = 0.1
    #: What ``val_loss`` is: ``critic`` (the critic's Wasserstein estimate) or ``showers`` (mean separation
    #: power of image-level observables of generated vs validation images: hit count, hit spectrum, total,
    #: brightest-pixel fraction, radius; physical units), so ``best_metric: val_loss`` picks epochs by showers.
    validation: str = "critic"
    n_critic: int = 5
    gp_weight: float = 10.0
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    critic_lr_scale: float = 1.0
    #: Run dir of a trained ``family: regressor`` model (same columns) and the weight of its L1 term.
    regressor_run: str | None = None
    regressor_weight: float = 0.0
    #: Training images with a pixel below this (physical units, MeV for the EMC: beyond the 0.2 MeV noise) are
    #: a DataError: the generator's ReLU makes no negative energies.
    min_pixel: float = -1.0
    #: Total energy of the image. ``free``: whatever the convolutions make. ``head``: a separate network
    #: (``energy_hidden`` widths, the first ``energy_noise`` noise inputs and the conditions) draws the total,
    #: trained by the energy score (CRPS) on the training totals with weight ``energy_weight``; the map is
    #: rescaled (in u, before the cut) to that total. Needs ``output: threshold``.
    total_energy: str = "free"
    energy_hidden: list[int] = field(default_factory=lambda: [64, 64])
    energy_noise: int = 8
    energy_weight: float = 1.0

    def check(self, data: DataConfig, source: str) -> None:
        from detgen.models.gan import check_gan_config

        check_gan_config(self, data, source)


@dataclass(frozen=True)
class RegressorConfig:
    """CNN that reads conditions back from an image (the seed's pre-trained EMC regressor, ``detgen.models.gan``).

    Conv2D ``conv_channels`` -> Dense ``hidden`` -> one output per ``predict`` column (encoded units); trained
    by the same ``detgen train`` with best_metric val_loss (the validation L1 or MSE).
    """

    family: str = "regressor"
    image_shape: list[int] = field(default_factory=lambda: [11, 11])
    predict: list[str] = field(default_factory=lambda: ["mom", "dtheta_mom", "dphi_mom"])
    conv_channels: list[int] = field(default_factory=lambda: [64, 128])
    hidden: list[int] = field(default_factory=lambda: [100, 10])
    #: l1 | mse
    loss: str = "l1"

    def check(self, data: DataConfig, source: str) -> None:
        from detgen.models.gan import check_regressor_config

        check_regressor_config(self, data, source)


# ---- issue 5 (JUNO) family configs go here
@dataclass(frozen=True)
class NoiseMLPSplit:
    """Route rows to a second network where condition ``column`` >= ``at`` (physical units); None: one network."""

    column: str | None = None
    at: float = 0.0
    #: Hidden sizes and activation of the second network (default: the first network's).
    hidden: list[int] = field(default_factory=list)
    activation: str | None = None


@dataclass(frozen=True)
class NoiseMLPConfig:
    """Noise-input MLP (conditions + N(0,1) noise -> targets) trained with a two-sample loss (models/noise_mlp.py)."""

    family: str = "noise_mlp"
    hidden: list[int] = field(default_factory=lambda: [249, 249, 249, 249])
    activation: str = "tanh"
    #: identity | relu | elu1 (elu + 1) | softplus; relu/elu1/softplus make targets positive in physical units.
    output_activation: str = "identity"
    #: The network output is multiplied by this (physical units), so it works at O(1) for targets like ns.
    output_scale: float = 1.0
    noise_dim: int = 1
    #: Two-sample statistic on the joint (condition, target) batch: energy | mmd | sliced; or poisson: the network
    #: (conditions only) predicts log(mean count), trained by the Poisson NLL; its draws are Poisson counts.
    loss: str = "energy"
    #: Gaussian kernel widths of the multi-scale MMD (in loss units: encoded conditions, targets / output_scale).
    mmd_bandwidths: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
    #: Random projections of the sliced (sorted) Wasserstein loss.
    projections: int = 64
    #: Weight of the conditions in the joint vector (larger: the loss resolves the conditions more finely).
    condition_weight: float = 1.0
    #: Integer targets (counts): trained on target + U(0,1) (dequantised), sampled as floor(output) >= 0.
    discrete: bool = False
    #: Rows per block when the validation loss is evaluated (pairwise statistics are O(rows^2) in memory).
    validation_block: int = 2048
    split: NoiseMLPSplit = field(default_factory=NoiseMLPSplit)

    def check(self, data: DataConfig, source: str) -> None:
        from detgen.models.noise_mlp import check_noise_mlp_config

        check_noise_mlp_config(self, data, source)


@dataclass(frozen=True)
class JunoMuonConfig:
    """JUNO fast muon simulation from trained NN_npe / NN_time runs, tabulated on an (R, theta) grid."""

    family: str = "juno_muon"
    #: Run dirs of the trained noise-MLP (or flow) models of per-PMT npe and single-p.e. hit time.
    npe_run: str = ""
    time_run: str = ""
    #: Grid nodes in R (0 .. liquid-scintillator radius) and in theta (0 .. pi).
    r_nodes: int = 60
    theta_nodes: int = 91
    #: Network draws per grid node for the tabulated npe mean and hit-time quantiles.
    noise_draws: int = 256
    #: Tabulated hit-time quantiles per node (at Phi(z), z uniform in [-4.5, 4.5]).
    quantile_nodes: int = 64
    #: Energy (MeV) of the point deposits NN_npe was trained on (npe scales with deposit energy).
    point_energy_mev: float = 1.0
    #: Voxel step along a muon track (m); each deposit carries dE/dx * step_m.
    step_m: float = 0.1
    #: (deposit, PMT) pairs per PMT sampled individually before the exact pruning check of
    #: FastMuonSimulator.response_pairwise (the default sampler, response, does not use it).
    first_candidates: int = 12
    #: Hits of the time run's training split used to recalibrate the tabulated hit-time quantiles
    #: (juno_fast.calibrate_time_quantiles; 0: off), the calibration's passes, and the hits per grid cell at
    #: which a cell's correction is shrunk to half (sparse cells stay close to the network).
    time_calibration_rows: int = 30_000_000
    time_calibration_passes: int = 2
    time_calibration_prior_hits: float = 1000.0

    def check(self, data: DataConfig, source: str) -> None:
        from detgen.simulators.juno_fast import check_juno_muon_config

        check_juno_muon_config(self, data, source)



MODEL_CONFIGS: dict[str, type] = {
    "flow": FlowConfig,
    "histogram": HistogramConfig,
    "flow_student": FlowStudentConfig,
    "smearing": SmearingConfig,
    "noise_mlp": NoiseMLPConfig,
    "juno_muon": JunoMuonConfig,
    "gan": GANConfig,
    "regressor": RegressorConfig,
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
    #: Validation rows (a fixed random subset) used for val_loss and the sampled metric (None: all).
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


def _is_fixed_scale(spec: str) -> bool:
    """True for a ``scale:S`` transform spec with a positive finite S (targets divided by a fixed S)."""
    if not spec.startswith("scale:"):
        return False
    try:
        value = float(spec[len("scale:"):])
    except ValueError:
        return False
    return 0 < value < float("inf")


def _check_image_config(image: ImageConfig, data: DataConfig, source: str) -> None:
    if image.normalise not in ("none", "condition", "total"):
        raise ConfigError(f"{source}: data.image.normalise = {image.normalise!r} (expected none, condition or total)")
    if image.transform not in ("none", "log", "logit"):
        raise ConfigError(f"{source}: data.image.transform = {image.transform!r} (expected none, log or logit)")
    if (image.normalise == "condition") != (image.condition is not None):
        raise ConfigError(f"{source}: data.image.condition names the column of data.image.normalise: condition "
                          f"(and is only used by it); got normalise {image.normalise!r}, condition {image.condition!r}")
    if image.condition is not None and (image.condition not in data.conditions or image.condition in data.categorical):
        raise ConfigError(f"{source}: data.image.condition = {image.condition!r} is not a numeric condition "
                          f"(data.conditions: {', '.join(data.conditions)})")
    if image.normalise == "total" and image.scale != 1.0:
        raise ConfigError(f"{source}: data.image.scale is not used with normalise: total (remove it)")
    if not (image.scale > 0 and 0 < image.epsilon < 0.5):
        raise ConfigError(f"{source}: data.image.scale must be > 0 and data.image.epsilon in (0, 0.5)")


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
    _check_image_config(data.image, data, source)
    if data.group_by is not None and data.group_by in data.conditions:
        raise ConfigError(f"{source}: data.group_by {data.group_by!r} cannot also be a condition")
    for column, spec in data.transforms.items():
        if spec not in ("standard", "log", "identity", "minmax") and not _is_fixed_scale(spec):
            raise ConfigError(
                f"{source}: data.transforms.{column} = {spec!r} (expected standard, log, identity, minmax or "
                "scale:S with a positive number S, e.g. scale:20)"
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
