"""Noise-input MLP trained with a two-sample (distribution-matching) loss: the JUNO seed's NN_npe and NN_time.

A generator ``G(noise, conditions) -> targets`` is a plain MLP fed with the (encoded) conditions and
``noise_dim`` standard-normal numbers. It has no tractable density, so it is trained by comparing, batch by
batch, the joint sample ``{(c_i, y_i)}`` of the data with the joint sample ``{(c_i, G(z_i, c_i))}`` made on
the same conditions, with one of three two-sample statistics (``model.loss``):

* ``energy``  energy distance  2 E|X - Y| - E|X - X'| - E|Y - Y'|   (Szekely & Rizzo; arXiv:1306.5390 for MMD links)
* ``mmd``     squared maximum mean discrepancy with a sum of Gaussian kernels of several widths
              (Gretton et al., JMLR 13 (2012) 723; multi-scale as in Li et al., arXiv:1502.02761)
* ``sliced``  sliced 2-Wasserstein distance: random 1-D projections of the joint sample, sorted and compared
              (a "sorted" statistic; Deshpande et al., arXiv:1803.11188)

All three are computed as V-statistics of the two empirical distributions, so each is exactly zero for
identical samples, symmetric and non-negative (the tests check these properties and that each detects a shift).

Loss units: the conditions enter as encoded (standardised) features times ``condition_weight``; the targets
as ``target / output_scale`` (the network's own output scale), so one set of kernel widths fits every target.

Integer targets (``discrete: true``, e.g. photo-electron counts): training compares the generator's
continuous output with ``target + U(0, 1)`` (uniform dequantisation); the generator used for sampling returns
``floor(output)``, so generated counts are non-negative integers whose distribution is the learned one
(``floor(target + U) = target`` exactly).

A ``split`` routes rows to a second network where a condition is at or above a threshold given in physical
units (the seed's NN_time: 2 x 201 ReLU for R < 15 m, 3 x 983 ReLU for R >= 15 m). The threshold is turned
into encoded units when the run's preprocessing is bound (``bind_preprocessor``, called when a run's model is
built).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detgen.config import DataConfig, NoiseMLPConfig
from detgen.errors import ConfigError
from detgen.models.base import ModelFamily

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU, "gelu": nn.GELU}
OUTPUT_ACTIVATIONS = ("identity", "relu", "elu1", "softplus")
POSITIVE_OUTPUTS = ("relu", "elu1", "softplus")
LOSSES = ("energy", "mmd", "sliced", "poisson")
#: Largest count the Poisson generator's inverse CDF can return (probability above it is assigned to it).
POISSON_MAX_COUNT = 64


# ------------------------------------------------------------------------------------- two-sample statistics
def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) squared Euclidean distances between the rows of ``a`` and ``b``."""
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2.0 * a @ b.t()
    return d2.clamp_min(0.0)


def energy_distance(x: Tensor, y: Tensor, *, eps: float = 1e-12) -> Tensor:
    """Energy distance of two samples (rows): 2 E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic, >= 0).

    ``|d| = sqrt(d^2 + eps)`` keeps the gradient finite at zero distance (a multiquadric, still conditionally
    negative definite, so the statistic stays non-negative).
    """
    xy = (_squared_distances(x, y) + eps).sqrt().mean()
    xx = (_squared_distances(x, x) + eps).sqrt().mean()
    yy = (_squared_distances(y, y) + eps).sqrt().mean()
    return 2.0 * xy - xx - yy


def mmd(x: Tensor, y: Tensor, *, bandwidths: list[float] | tuple[float, ...]) -> Tensor:
    """Squared MMD with the kernel sum_s exp(-|x-y|^2 / (2 s^2)) (V-statistic, >= 0)."""

    def kernel_mean(a: Tensor, b: Tensor) -> Tensor:
        d2 = _squared_distances(a, b)
        return sum(torch.exp(-d2 / (2.0 * s * s)).mean() for s in bandwidths)  # type: ignore[return-value]

    return kernel_mean(x, x) + kernel_mean(y, y) - 2.0 * kernel_mean(x, y)


def sliced_wasserstein(x: Tensor, y: Tensor, *, projections: int = 64, generator: torch.Generator | None = None
                       ) -> Tensor:
    """Mean over random unit directions of the squared 1-D Wasserstein-2 distance (equal-size samples)."""
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    directions = torch.randn(x.shape[1], projections, generator=generator, dtype=x.dtype)
    directions = (directions / directions.norm(dim=0, keepdim=True)).to(x.device)
    px, _ = torch.sort(x @ directions, dim=0)
    py, _ = torch.sort(y @ directions, dim=0)
    return (px - py).pow(2).mean()


def two_sample_loss(x: Tensor, y: Tensor, config: NoiseMLPConfig) -> Tensor:
    """The configured statistic between the joint samples ``x`` and ``y``."""
    if config.loss == "energy":
        return energy_distance(x, y)
    if config.loss == "mmd":
        return mmd(x, y, bandwidths=config.mmd_bandwidths)
    if config.loss == "poisson":
        raise ValueError("loss poisson is a likelihood, not a two-sample statistic (use poisson_nll)")
    return sliced_wasserstein(x, y, projections=config.projections)


def poisson_nll(log_mean: Tensor, counts: Tensor) -> Tensor:
    """Mean Poisson negative log-likelihood -log P(n | lambda) = lambda - n log(lambda) + log(n!), lambda = exp(log_mean).

    Its gradient in ``log_mean`` is lambda - n, so its minimum over a free ``log_mean`` is log(mean count).
    """
    return (torch.exp(log_mean) - counts * log_mean + torch.lgamma(counts + 1.0)).mean()


def poisson_inverse_cdf(mean: Tensor, u: Tensor, max_count: int = POISSON_MAX_COUNT) -> Tensor:
    """The Poisson(``mean``) count whose CDF first reaches ``u`` (u in (0, 1)): plain tensor ops, no sampling calls.

    count = sum over k = 0 .. max_count - 1 of [CDF(k) < u], CDF(k) = sum_{j<=k} exp(-mean) mean^j / j!
    (a fixed-length recursion, so the graph exports); counts above ``max_count`` are returned as ``max_count``.
    """
    pmf = torch.exp(-mean)
    cdf = pmf
    count = torch.zeros_like(mean)
    for k in range(1, max_count + 1):
        count = count + (cdf < u).to(mean.dtype)
        pmf = pmf * mean / k
        cdf = cdf + pmf
    return count


# ------------------------------------------------------------------------------------- networks
def make_mlp(n_in: int, hidden: list[int], activation: str, n_out: int) -> nn.Sequential:
    """Dense layers ``n_in -> hidden... -> n_out`` with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    width = n_in
    for size in hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def output_activation(h: Tensor, kind: str) -> Tensor:
    if kind == "relu":
        return torch.relu(h)
    if kind == "elu1":
        return F.elu(h) + 1.0
    if kind == "softplus":
        return F.softplus(h)
    return h


class NoiseMLPGenerator(nn.Module):
    """``(noise, conditions) -> targets`` in model space; one or two (split) networks.

    ``discrete=True`` floors the output (counts); :meth:`continuous` is the differentiable output used in training.
    ``poisson=True`` (``loss: poisson``): the networks see the conditions only and output log lambda;
    :meth:`mean` is lambda (times ``output_scale``), and :meth:`forward` a Poisson count drawn by inverse CDF at
    u = Phi(noise[:, 0]) (the first noise column, standard normal; any further columns are ignored).
    """

    split_index: Tensor
    split_threshold: Tensor

    def __init__(self, *, n_targets: int, n_conditions: int, config: NoiseMLPConfig):
        super().__init__()
        self.poisson = config.loss == "poisson"
        n_in = n_conditions if self.poisson else n_conditions + config.noise_dim
        self.low = make_mlp(n_in, list(config.hidden), config.activation, n_targets)
        self.high: nn.Sequential | None = None
        if config.split.column is not None:
            self.high = make_mlp(n_in, list(config.split.hidden or config.hidden),
                                 config.split.activation or config.activation, n_targets)
        self.register_buffer("split_index", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("split_threshold", torch.tensor(0.0))
        self.n_targets = n_targets
        self.out_kind = config.output_activation
        self.output_scale = config.output_scale
        self.discrete = config.discrete

    def _hidden_output(self, x: Tensor, conditions: Tensor) -> Tensor:
        if self.high is None:
            h = self.low(x)
        else:
            if int(self.split_index) < 0:
                raise RuntimeError("noise_mlp split threshold not bound to the preprocessing (bind_preprocessor)")
            upper = conditions[:, int(self.split_index)] >= self.split_threshold
            if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
                h = torch.where(upper.unsqueeze(1), self.high(x), self.low(x))  # static graph
            else:
                h = x.new_empty(x.shape[0], self.n_targets)
                rows_high, rows_low = torch.nonzero(upper).squeeze(1), torch.nonzero(~upper).squeeze(1)
                h = h.index_put((rows_low,), self.low(x[rows_low])).index_put((rows_high,), self.high(x[rows_high]))
        return h

    def log_mean(self, conditions: Tensor) -> Tensor:
        """Poisson networks: log lambda of the network's own output (without ``output_scale``)."""
        return self._hidden_output(conditions, conditions)

    def mean(self, conditions: Tensor) -> Tensor:
        """Poisson networks: the mean count lambda(conditions) in physical units."""
        return torch.exp(self.log_mean(conditions)) * self.output_scale

    def continuous(self, noise: Tensor, conditions: Tensor) -> Tensor:
        if self.poisson:
            return self.mean(conditions)
        h = self._hidden_output(torch.cat([conditions, noise], dim=1), conditions)
        return output_activation(h, self.out_kind) * self.output_scale

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        if self.poisson:
            u = 0.5 * (1.0 + torch.erf(noise[:, :1] / 2.0**0.5))
            return poisson_inverse_cdf(self.mean(conditions), u.expand(-1, self.n_targets))
        y = self.continuous(noise, conditions)
        return torch.floor(y) if self.discrete else y


class NoiseMLP(ModelFamily):
    """The noise-input MLP family.

    Arguments:
        n_targets: number of target features.
        n_conditions: number of encoded condition features.
        config: :class:`detgen.config.NoiseMLPConfig`.

    Example:
        >>> model = NoiseMLP(n_targets=1, n_conditions=2, config=NoiseMLPConfig(hidden=[8, 8]))
        >>> float(model.loss(torch.randn(16, 1), torch.randn(16, 2))) >= 0
        True
    """

    def __init__(self, *, n_targets: int, n_conditions: int, config: NoiseMLPConfig):
        super().__init__()
        self.config = config
        self.n_targets = n_targets
        self.noise_dim = config.noise_dim
        self.net = NoiseMLPGenerator(n_targets=n_targets, n_conditions=n_conditions, config=config)

    def bind_preprocessor(self, preprocessor: Any) -> None:
        """Turn the split threshold (physical units) into the encoded feature index and value."""
        column = self.config.split.column
        if column is None:
            return
        index = 0
        for spec in preprocessor.condition_specs:
            if spec["column"] == column:
                break
            index += len(spec["categories"]) if spec["kind"] == "onehot" else 1
        else:
            raise ConfigError(f"model.split.column {column!r} is not a condition of this run")
        if spec["kind"] == "onehot":
            raise ConfigError(f"model.split.column {column!r} is a label column; expected a numeric condition")
        at = torch.tensor(self.config.split.at, dtype=torch.float64)
        if spec["kind"] == "log":
            if self.config.split.at <= 0:
                raise ConfigError(f"model.split.at = {self.config.split.at} must be > 0 for log-transformed {column!r}")
            at = torch.log(at)
        self.net.split_index.fill_(index)
        self.net.split_threshold.fill_(float((at - spec["shift"]) / spec["scale"]))

    def _joint(self, values: Tensor, conditions: Tensor) -> Tensor:
        return torch.cat([conditions * self.config.condition_weight, values / self.config.output_scale], dim=1)

    def loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        if self.config.loss == "poisson":  # lambda = exp(log_mean) * output_scale; targets are counts
            return poisson_nll(self.net.log_mean(conditions) + math.log(self.config.output_scale), targets)
        noise = torch.randn(targets.shape[0], self.noise_dim, device=targets.device, dtype=targets.dtype)
        generated = self.net.continuous(noise, conditions)
        if self.config.discrete:
            targets = targets + torch.rand_like(targets)  # dequantise: floor(target + U) = target
        return two_sample_loss(self._joint(targets, conditions), self._joint(generated, conditions), self.config)

    @torch.no_grad()
    def finish_training(self, train_set: tuple[Tensor, ...], log: Callable[[str], None]) -> dict[str, Any]:
        """``loss: poisson``: refit the overall scale of lambda exactly, per network (the split's two).

        With log lambda = f(x) + b, b the last layer's bias, the likelihood's derivative in b is
        sum(lambda - n), so its maximum over b is b + log(sum n / sum lambda): Adam's small last steps stop short
        of it (a common +0.5 % in NN_npe's total p.e.; docs/bench_juno_fast.md). Idempotent. Other losses: no-op.
        """
        if self.config.loss != "poisson":
            return {}
        counts, conditions = train_set
        net = self.net
        if net.high is None:
            upper = torch.zeros(conditions.shape[0], dtype=torch.bool, device=conditions.device)
        else:
            upper = conditions[:, int(net.split_index)] >= net.split_threshold
        info: dict[str, Any] = {}
        for name, layers, rows in (("low", net.low, ~upper), ("high", net.high, upper)):
            if layers is None or not bool(rows.any()):
                continue
            x, n = conditions[rows], counts[rows]
            lam = self.config.output_scale * sum(torch.exp(layers(x[i : i + 65536]).double()).sum()
                                                 for i in range(0, x.shape[0], 65536))
            ratio = float(n.double().sum() / lam) if float(lam) > 0 else 1.0
            if ratio > 0:
                last: nn.Linear = layers[-1]  # type: ignore[assignment]
                last.bias.add_(math.log(ratio))
            key = "poisson_scale_refit" if net.high is None else f"poisson_scale_refit_{name}"
            info[key] = round(ratio, 6)
            log(f"Poisson scale refit ({name} network): sum n / sum lambda = {ratio:.5f} on {int(rows.sum())} "
                "training rows; last-layer bias shifted by its log (the exact maximum likelihood in it)")
        return info

    def validation_loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        """Mean of the loss over blocks of ``validation_block`` rows (pairwise statistics are O(rows^2) in memory)."""
        block = self.config.validation_block
        total = targets.new_zeros(())
        for start in range(0, targets.shape[0], block):
            rows = slice(start, start + block)
            total = total + self.loss(targets[rows], conditions[rows]) * targets[rows].shape[0]
        return total / targets.shape[0]

    def generator(self) -> nn.Module:
        return self.net


def check_noise_mlp_config(config: NoiseMLPConfig, data: DataConfig, source: str) -> None:
    """Consistency of a noise_mlp model section with the data section (ConfigError naming the key)."""
    if config.loss not in LOSSES:
        raise ConfigError(f"{source}: model.loss = {config.loss!r} (expected one of {', '.join(LOSSES)})")
    for key, value in (("activation", config.activation), ("split.activation", config.split.activation)):
        if value is not None and value not in ACTIVATIONS:
            raise ConfigError(f"{source}: model.{key} = {value!r} (expected one of {', '.join(ACTIVATIONS)})")
    if config.output_activation not in OUTPUT_ACTIVATIONS:
        raise ConfigError(f"{source}: model.output_activation = {config.output_activation!r} "
                          f"(expected one of {', '.join(OUTPUT_ACTIVATIONS)})")
    if not config.hidden or min(config.hidden) < 1 or (config.split.hidden and min(config.split.hidden) < 1):
        raise ConfigError(f"{source}: model.hidden must list positive layer sizes, got {config.hidden}")
    if config.noise_dim < 1 or config.output_scale <= 0 or config.projections < 1 or config.validation_block < 2:
        raise ConfigError(f"{source}: model.noise_dim, output_scale, projections must be positive "
                          "(validation_block >= 2)")
    if config.loss == "mmd" and (not config.mmd_bandwidths or min(config.mmd_bandwidths) <= 0):
        raise ConfigError(f"{source}: model.mmd_bandwidths must be positive widths, got {config.mmd_bandwidths}")
    if config.discrete and config.output_activation not in POSITIVE_OUTPUTS:
        raise ConfigError(f"{source}: model.discrete needs a non-negative output_activation "
                          f"({', '.join(POSITIVE_OUTPUTS)}), got {config.output_activation!r}")
    if config.output_activation in POSITIVE_OUTPUTS or config.discrete:
        for target in data.targets:
            kind = data.transforms.get(target, "standard")
            if kind != "identity":
                raise ConfigError(
                    f"{source}: data.transforms.{target} = {kind!r}; model.output_activation "
                    f"{config.output_activation!r}{' / discrete' if config.discrete else ''} acts in physical units, "
                    "so the target transform must be identity (use model.output_scale for the scale)"
                )
    if config.loss == "poisson":
        if config.discrete or config.output_activation != "identity":
            raise ConfigError(f"{source}: model.loss poisson predicts log(mean count) with an exp link; it needs "
                              f"output_activation identity and discrete false (its draws are already counts), got "
                              f"{config.output_activation!r} / discrete {config.discrete}")
        for target in data.targets:
            kind = data.transforms.get(target, "standard")
            if kind != "identity":
                raise ConfigError(f"{source}: data.transforms.{target} = {kind!r}; model.loss poisson needs the "
                                  "counts in physical units (transform identity)")
    column = config.split.column
    if column is not None and (column not in data.conditions or column in data.categorical):
        raise ConfigError(f"{source}: model.split.column = {column!r} must be a numeric condition "
                          f"(data.conditions: {', '.join(data.conditions)})")
