"""Conditional autoregressive flows built on zuko: neural spline (MADE + RQS) and affine MAF.

Optionally the flow ends in a tanh bijection onto (-1, 1) (``final_tanh``), for targets scaled into [-1, 1]
by fixed factors (the photon CNF); rows outside (-1, 1) have no preimage and are counted and left out of the loss.

References:
    | Neural Spline Flows (Durkan et al., 2019), arXiv:1906.04032
    | Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017), arXiv:1705.07057
    | The seed dE/dx model: 6 MADE blocks (3 x 64 hidden) driving RQS transforms with 8 bins.
    | The photon CNF: Xu, Han, Ju, Wang, arXiv:2303.10148 (10 affine MAF blocks, MADE 2 x 128, final tanh).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import zuko
from torch import Tensor, nn
from zuko.transforms import MonotonicRQSTransform

from detgen.config import FlowConfig
from detgen.models.base import ModelFamily


class TanhBijection:
    """y = tanh(u): the real line onto (-1, 1), with its exact log-Jacobian.

    ``log |dy/du| = ln(1 - tanh(u)^2) = 2 (ln 2 - u - softplus(-2u))``, a form that stays finite for large |u|.
    """

    @staticmethod
    def forward(u: Tensor) -> Tensor:
        return torch.tanh(u)

    @staticmethod
    def inverse(y: Tensor) -> Tensor:
        """atanh(y); +-inf at |y| = 1 and NaN beyond (callers mask rows outside (-1, 1) first)."""
        return torch.atanh(y)

    @staticmethod
    def log_abs_det(u: Tensor) -> Tensor:
        """Per-feature log |dy/du| at u (same shape as u)."""
        return 2 * (math.log(2) - u - F.softplus(-2 * u))


def inside_tanh_domain(targets: Tensor) -> Tensor:
    """Rows (bool, shape (N,)) whose every target lies strictly inside (-1, 1)."""
    return (targets.abs() < 1).all(1)


class FlowGenerator(nn.Module):
    """noise -> targets through the inverse of the flow's transform (deterministic given the noise)."""

    def __init__(self, flow: zuko.flows.Flow, *, final_tanh: bool = False):
        super().__init__()
        self.flow = flow
        self.final_tanh = final_tanh

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        u = self.flow.transform(conditions).inv(noise)
        return torch.tanh(u) if self.final_tanh else u


class TanhOutput(nn.Module):
    """Appends the final tanh bijection to a generator ``(noise, conditions) -> u``."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        return torch.tanh(self.generator(noise, conditions))


class ConditionalFlow(ModelFamily):
    """A conditional flow with a standard-normal base.

    Arguments:
        n_targets: number of target features.
        n_conditions: number of (encoded) condition features.
        config: the flow settings (transform rqs|affine, blocks, hidden, bins, bound).

    Example:
        >>> flow = ConditionalFlow(n_targets=1, n_conditions=3, config=FlowConfig())
        >>> flow.loss(torch.randn(8, 1), torch.randn(8, 3)).shape
        torch.Size([])
    """

    def __init__(self, *, n_targets: int, n_conditions: int, config: FlowConfig):
        super().__init__()
        self.n_targets = n_targets
        self.noise_dim = n_targets
        self.config = config
        common = dict(
            features=n_targets,
            context=n_conditions,
            transforms=config.blocks,
            hidden_features=list(config.hidden),
            randperm=config.randperm,
        )
        if config.transform == "rqs":
            self.flow = zuko.flows.MAF(
                univariate=partial(MonotonicRQSTransform, bound=config.bound, slope=1e-3),
                shapes=[(config.bins,), (config.bins,), (config.bins - 1,)],
                **common,  # type: ignore[arg-type]
            )
        else:
            self.flow = zuko.flows.MAF(**common)  # type: ignore[arg-type]
        self.final_tanh = config.final_tanh
        #: model.target_noise times each target's training standard deviation (flow space), set by
        #: prepare_training; None: no noise
        self.noise_scale: Tensor | None = None
        self._stack: SplineStackGenerator | None = None
        if n_targets == 1 and config.transform == "rqs":
            # a view of the flow's own layers (not a copy): excluded from state_dict to keep one set of weights
            object.__setattr__(self, "_stack", SplineStackGenerator(self.flow, bins=config.bins, bound=config.bound))

    def outside_domain(self, targets: Tensor) -> int:
        """Training rows with a target outside the spline domain (where the flow is the identity)."""
        if self.final_tanh:  # the spline acts before the tanh: measure in its own (pre-tanh) space
            targets = TanhBijection.inverse(targets[inside_tanh_domain(targets)])
        return int((targets.abs() > self.config.bound).any(1).sum())

    def prepare_training(self, preprocessor: Any, train_set: tuple[Tensor, ...], val_set: tuple[Tensor, ...],
                         log: Callable[[str], None]) -> dict[str, Any]:
        """Count (and log) the training rows the flow cannot model; the trainer records them in meta.json.

        ``rows_outside_spline_domain``: targets beyond ``model.bound`` (an RQS flow is the identity there);
        ``rows_outside_tanh_domain``: with a final tanh, scaled targets outside (-1, 1), per split and column.
        A grouped model records each member's counts with the group's name appended to the key.
        """
        info: dict[str, Any] = {}
        if self.config.transform == "rqs":
            outside = self.outside_domain(train_set[0])
            if outside:
                log(f"warning: {outside} training row(s) have targets outside the flow's spline domain (model.bound = "
                    f"{self.config.bound}); the flow is the identity there. Consider a larger model.bound.")
            info["rows_outside_spline_domain"] = outside
        if self.final_tanh:
            info["rows_outside_tanh_domain"] = count_outside_tanh(preprocessor, train_set, val_set, log)
        if self.config.target_noise > 0:
            targets = train_set[0]
            if self.final_tanh:  # the noise acts before the tanh: its scale is measured there
                targets = TanhBijection.inverse(targets[inside_tanh_domain(targets)])
            self.noise_scale = self.config.target_noise * targets.std(0)
            info["target_noise_scale"] = [float(x) for x in self.noise_scale]
            log(f"target noise (training only): {self.config.target_noise} x each target's standard deviation = "
                + ", ".join(f"{x:.3g}" for x in self.noise_scale.tolist()) + " in flow units")
        return info

    def _base_log_prob(self, u: Tensor, conditions: Tensor) -> Tensor:
        if self._stack is not None:  # same function, one batched pass over the blocks
            return self._stack.log_prob(u, conditions)
        return self.flow(conditions).log_prob(u)

    def log_prob(self, targets: Tensor, conditions: Tensor) -> Tensor:
        """log density in model space; -inf for rows outside (-1, 1) when the flow ends in a tanh.

        In training mode with ``model.target_noise`` the targets first get their noise (in flow space), so this
        is the log density of the noisy targets; in eval mode (validation, generation) it is exact.
        """
        noise = self.noise_scale if self.training else None
        if not self.final_tanh:
            if noise is not None:
                targets = targets + noise * torch.randn_like(targets)
            return self._base_log_prob(targets, conditions)
        inside = inside_tanh_domain(targets)
        u = TanhBijection.inverse(torch.where(inside.unsqueeze(1), targets, torch.zeros_like(targets)))
        if noise is not None:
            u = u + noise * torch.randn_like(u)
        log_p = self._base_log_prob(u, conditions) - TanhBijection.log_abs_det(u).sum(1)
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))

    def loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        """Mean negative log-likelihood; with a final tanh, over the rows inside (-1, 1) only (see prepare_training)."""
        if not self.final_tanh:
            return -self.log_prob(targets, conditions).mean()
        inside = inside_tanh_domain(targets)
        if not bool(inside.any()):  # a batch of unrepresentable rows only: nothing to learn from it
            return sum((p.sum() for p in self.parameters()), targets.new_zeros(())) * 0.0
        return -self.log_prob(targets[inside], conditions[inside]).mean()

    def generator(self) -> nn.Module:
        """The sampler graph: plain tensor ops for one-target spline flows and multi-target affine MAFs."""
        generator: nn.Module
        if self._stack is not None:
            generator = FrozenSplineSampler(self._stack)
        elif self.config.transform == "affine" and self.n_targets > 1:
            generator = AffineMAFSampler(self.flow)
        else:
            return FlowGenerator(self.flow, final_tanh=self.final_tanh)
        return TanhOutput(generator) if self.final_tanh else generator


def count_outside_tanh(preprocessor: Any, train_set: tuple[Tensor, ...], val_set: tuple[Tensor, ...],
                       log: Callable[[str], None]) -> dict[str, Any]:
    """Rows with a scaled target outside (-1, 1), per split and per target column; logged when any."""
    columns = list(preprocessor.target_columns)
    counts: dict[str, Any] = {}
    for split, (targets, _) in (("train", train_set), ("val", val_set)):
        outside = ~inside_tanh_domain(targets)
        counts[split] = int(outside.sum())
        counts[f"{split}_rows"] = int(targets.shape[0])
        counts[f"{split}_by_column"] = {c: int((targets[:, j].abs() >= 1).sum()) for j, c in enumerate(columns)}
    if counts["train"] or counts["val"]:
        per_column = ", ".join(f"{c} {n}" for c, n in counts["train_by_column"].items() if n)
        log(f"warning: {counts['train']} of {counts['train_rows']} training rows ({per_column}) and {counts['val']} "
            f"validation rows have a scaled target outside (-1, 1), which the final tanh cannot represent; they are "
            f"left out of the loss (counts in meta.json: rows_outside_tanh_domain). A larger scale:S keeps them.")
    return counts


def masked_mlp_weights(hyper: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """(weight * mask, bias) of every masked linear layer of a zuko MaskedMLP, detached copies."""
    layers = [m for m in hyper.modules() if isinstance(m, nn.Linear)]
    return [((m.mask * m.weight).detach().clone(), m.bias.detach().clone()) for m in layers]  # type: ignore[operator]


class FrozenMADEStack(nn.Module):
    """The MADE networks of a stack of affine autoregressive blocks, frozen as buffers (plain tensor ops).

    Each block's network maps ``[x, conditions]`` to an affine ``(shift, log_scale)`` per feature, as zuko's
    ``MaskedAutoregressiveTransform`` with ``MonotonicAffineTransform`` does. The conditions' share of every
    block's first layer is evaluated once for all blocks (one batched matmul).
    """

    def __init__(self, transforms: list[nn.Module], *, features: int, slope: float = 1e-3):
        super().__init__()
        self.features, self.n_blocks = features, len(transforms)
        self.log_slope = abs(math.log(slope))
        per_block = [masked_mlp_weights(t.hyper) for t in transforms]  # type: ignore[attr-defined, arg-type]
        self.n_layers = len(per_block[0])
        first = torch.stack([w for (w, _), *_ in per_block])  # (blocks, hidden, features + conditions)
        self.register_buffer("first_x", first[:, :, :features].transpose(1, 2).contiguous())
        self.register_buffer("first_c", first[:, :, features:].transpose(1, 2).contiguous())
        self.register_buffer("first_b", torch.stack([b for (_, b), *_ in per_block]).unsqueeze(1).contiguous())
        # zuko interleaves the outputs (shift_1, scale_1, shift_2, ...): store shifts first, then scales
        order = torch.cat([torch.arange(0, 2 * features, 2), torch.arange(1, 2 * features, 2)])
        for k, layers in enumerate(per_block):
            for j, (w, b) in enumerate(layers[1:], start=1):
                if j == self.n_layers - 1:
                    w, b = w[order], b[order]
                self.register_buffer(f"w{k}_{j}", w.t().contiguous())
                self.register_buffer(f"b{k}_{j}", b.contiguous())

    def condition_terms(self, conditions: Tensor) -> Tensor:
        """(blocks, N, hidden): the conditions' contribution to each block's first layer, bias included."""
        c = conditions.unsqueeze(0).expand(self.n_blocks, -1, -1)
        return torch.baddbmm(self.first_b, c, self.first_c)  # type: ignore[arg-type]

    def shift_log_scale(self, block: int, x: Tensor, condition_term: Tensor) -> tuple[Tensor, Tensor]:
        """Block ``block``'s affine parameters for input x (N, features); log_scale soft-bounded as in zuko."""
        h = torch.relu(torch.addmm(condition_term, x, self.first_x[block]))  # type: ignore[index]
        for j in range(1, self.n_layers):
            h = torch.addmm(getattr(self, f"b{block}_{j}"), h, getattr(self, f"w{block}_{j}"))
            if j < self.n_layers - 1:
                h = torch.relu(h)
        shift, a = h[:, : self.features], h[:, self.features :]
        return shift, a / (1 + a.abs() / self.log_slope)


class AffineMAFSampler(nn.Module):
    """Sampler of a multi-target affine MAF: zuko's inverse (one pass per block and feature), plain tensor ops.

    Block k maps data-side x to latent-side y = x exp(s(x)) + m(x) autoregressively; its inverse needs
    ``features`` sequential passes (zuko's fixed-point scheme, exact after that many). The same function as
    ``flow.transform(c).inv(noise)`` (tested), without zuko's per-call Python objects, and exportable.
    """

    def __init__(self, flow: zuko.flows.Flow, *, slope: float = 1e-3):
        super().__init__()
        transforms = list(flow.transform.transforms)
        self.features = int(transforms[0].order.numel())
        self.made = FrozenMADEStack(transforms, features=self.features, slope=slope)

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        terms = self.made.condition_terms(conditions)
        y = noise
        for block in range(self.made.n_blocks - 1, -1, -1):
            x = torch.zeros_like(y)
            for _ in range(self.features):
                shift, log_scale = self.made.shift_log_scale(block, x, terms[block])
                x = (y - shift) * torch.exp(-log_scale)
            y = x
        return y


def rqs_inverse(y: Tensor, knots_x: Tensor, knots_y: Tensor, slopes: Tensor, bins: int) -> Tensor:
    """Inverse of one monotonic rational-quadratic spline; identity outside [-bound, bound]."""
    k = (knots_y < y).sum(1, keepdim=True) - 1
    inside = (k >= 0) & (k < bins)
    k = k.clamp(0, bins - 1)
    x0, x1 = knots_x.gather(1, k), knots_x.gather(1, k + 1)
    y0, y1 = knots_y.gather(1, k), knots_y.gather(1, k + 1)
    d0, d1 = slopes.gather(1, k), slopes.gather(1, k + 1)
    height = y1 - y0
    s = height / (x1 - x0)
    dy = torch.where(inside, y - y0, torch.zeros_like(y))
    curvature = d0 + d1 - 2 * s
    a = height * (s - d0) + dy * curvature
    b = height * d0 - dy * curvature
    c = -s * dy
    z = 2 * c / (-b - (b * b - 4 * a * c).sqrt())
    return torch.where(inside, x0 + z * (x1 - x0), y)



class SplineStackGenerator(nn.Module):
    """A specialised sampler for a one-target RQS flow: the same function as :class:`FlowGenerator`, faster.

    With one target, every block's spline parameters depend on the conditions only, so the blocks' MLPs
    are evaluated together as one batched matmul chain, and each spline is inverted with a few fused tensor
    ops (no Python objects per block). The weights are views of the flow's parameters, so it always matches
    the trained model; tests check it against zuko's inverse.
    """

    def __init__(self, flow: zuko.flows.Flow, *, bins: int, bound: float, slope: float = 1e-3):
        super().__init__()
        # registered as submodules so that export sees them as weights (they are the flow's own layers)
        self.hypers = nn.ModuleList([t.hyper for t in flow.transform.transforms])
        self.blocks = [[m for m in hyper if hasattr(m, "weight")] for hyper in self.hypers]  # type: ignore[attr-defined]
        self.n_blocks = len(self.blocks)
        self.bins, self.bound, self.log_slope = bins, bound, math.log(slope)

    def _spline_parameters(self, conditions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n_layers = len(self.blocks[0])
        first_w = torch.cat([b[0].weight for b in self.blocks], 0)  # (blocks*hidden, n_conditions)
        first_b = torch.cat([b[0].bias for b in self.blocks], 0)
        h = torch.relu(torch.addmm(first_b, conditions, first_w.t()))  # (N, blocks*hidden)
        h = h.view(h.shape[0], self.n_blocks, -1).transpose(0, 1)  # (blocks, N, hidden)
        for layer in range(1, n_layers):
            w = torch.stack([b[layer].weight for b in self.blocks]).transpose(1, 2)
            bias = torch.stack([b[layer].bias for b in self.blocks]).unsqueeze(1)
            h = torch.baddbmm(bias, h, w)
            if layer < n_layers - 1:
                h = torch.relu(h)
        k = self.bins
        widths, heights, slopes = h[..., :k], h[..., k : 2 * k], h[..., 2 * k :]
        # zuko's parametrisation: soft-bounded logits, softmax bins, exp derivatives, boundary slope 1
        widths = torch.softmax(widths / (1 + (2 * widths / self.log_slope).abs()), -1)
        heights = torch.softmax(heights / (1 + (2 * heights / self.log_slope).abs()), -1)
        slopes = torch.exp(slopes / (1 + (slopes / self.log_slope).abs()))
        knots_x = self.bound * (2 * F.pad(torch.cumsum(widths, -1), (1, 0)) - 1)
        knots_y = self.bound * (2 * F.pad(torch.cumsum(heights, -1), (1, 0)) - 1)
        return knots_x, knots_y, F.pad(slopes, (1, 1), value=1.0)

    def _forward(self, x: Tensor, knots_x: Tensor, knots_y: Tensor, slopes: Tensor) -> tuple[Tensor, Tensor]:
        """One monotonic rational-quadratic spline and log |dy/dx|; identity outside [-bound, bound]."""
        k = (knots_x < x).sum(1, keepdim=True) - 1
        inside = (k >= 0) & (k < self.bins)
        k = k.clamp(0, self.bins - 1)
        x0, x1 = knots_x.gather(1, k), knots_x.gather(1, k + 1)
        y0, y1 = knots_y.gather(1, k), knots_y.gather(1, k + 1)
        d0, d1 = slopes.gather(1, k), slopes.gather(1, k + 1)
        s = (y1 - y0) / (x1 - x0)
        z = torch.where(inside, (x - x0) / (x1 - x0), torch.zeros_like(x))
        zz = z * (1 - z)
        denominator = s + (d0 + d1 - 2 * s) * zz
        y = y0 + (y1 - y0) * (s * z * z + d0 * zz) / denominator
        jacobian = s * s * (2 * s * zz + d0 * (1 - z) ** 2 + d1 * z * z) / denominator**2
        log_det = torch.where(inside, jacobian.log(), torch.zeros_like(x))
        return torch.where(inside, y, x), log_det

    def log_prob(self, targets: Tensor, conditions: Tensor) -> Tensor:
        """log density of the flow with a standard-normal base (equals zuko's, tested)."""
        knots_x, knots_y, slopes = self._spline_parameters(conditions)
        z = targets[:, :1]
        total = torch.zeros_like(z)
        for block in range(self.n_blocks):
            z, log_det = self._forward(z, knots_x[block], knots_y[block], slopes[block])
            total = total + log_det
        return (total - 0.5 * z * z - 0.5 * math.log(2 * math.pi)).squeeze(1)

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        knots_x, knots_y, slopes = self._spline_parameters(conditions)
        y = noise[:, :1]
        for block in range(self.n_blocks - 1, -1, -1):  # the inverse runs the blocks backwards
            y = rqs_inverse(y, knots_x[block], knots_y[block], slopes[block], self.bins)
        return y


class FrozenSplineSampler(nn.Module):
    """Inference copy of a :class:`SplineStackGenerator`: the same function, weights pre-stacked as buffers.

    Built by ``ConditionalFlow.generator()`` for sampling and export (nothing here is trained): the blocks'
    weights are stacked once instead of on every call, the bin logits are normalised on contiguous data, and
    activations are applied in place. Tests check it against zuko's inverse.
    """

    def __init__(self, stack: SplineStackGenerator):
        super().__init__()
        self.bins, self.bound, self.log_slope, self.n_blocks = stack.bins, stack.bound, stack.log_slope, stack.n_blocks
        n_layers = len(stack.blocks[0])
        with torch.no_grad():
            for layer in range(n_layers):
                weight = torch.stack([b[layer].weight for b in stack.blocks]).transpose(1, 2).contiguous()
                bias = torch.stack([b[layer].bias for b in stack.blocks]).unsqueeze(1).contiguous()
                self.register_buffer(f"weight{layer}", weight.detach().clone())
                self.register_buffer(f"bias{layer}", bias.detach().clone())
        self.n_layers = n_layers

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        h = conditions.unsqueeze(0).expand(self.n_blocks, -1, -1)
        for layer in range(self.n_layers):
            h = torch.baddbmm(getattr(self, f"bias{layer}"), h, getattr(self, f"weight{layer}"))
            if layer < self.n_layers - 1:
                h = torch.relu(h) if torch.is_grad_enabled() else h.clamp_min_(0)
        k = self.bins
        logits = h[..., : 2 * k]
        logits = logits / (1 + (2 / abs(self.log_slope)) * logits.abs())
        # soft-bounded logits are below |ln slope| / 2 ~ 3.5, so exp cannot overflow: no max subtraction
        weights = torch.exp(logits).view(self.n_blocks, -1, 2, k)
        weights = weights / weights.sum(-1, keepdim=True)
        knots = self.bound * (2 * F.pad(torch.cumsum(weights, -1), (1, 0)) - 1)
        slopes = h[..., 2 * k :]
        slopes = F.pad(torch.exp(slopes / (1 + slopes.abs() / abs(self.log_slope))), (1, 1), value=1.0)
        y = noise[:, :1]
        for block in range(self.n_blocks - 1, -1, -1):
            y = rqs_inverse(y, knots[block, :, 0], knots[block, :, 1], slopes[block], self.bins)
        return y
