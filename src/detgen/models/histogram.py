"""The conventional baseline: histogram sampling in bins of the conditions.

BESIII's conventional dE/dx simulation samples from histograms of data in bins of beta*gamma and theta.
Here the cells are equal-population bins of each condition (quantile edges), so binning in theta equals
binning in cos(theta), and, for a model of one species, binning in log(p) equals binning in log(beta*gamma)
(beta*gamma = p/m). Each cell keeps a fixed-width histogram of the (preprocessed) target between the
cell's minimum and maximum; sampling inverts its piecewise-linear CDF (uniform within a bin).

As in the conventional BESIII method, where the mean comes from the calibrated beta*gamma curve and only
the spread from the binned histograms, a smooth mean curve in the first condition (piecewise linear through
the medians of ``mean_curve_knots`` equal-population bins) is subtracted first and the histograms hold the
residuals; sampling adds the curve back at each row's exact condition value.

Cells with fewer than ``min_entries`` training rows use the histogram of their first-condition bin
(all other conditions merged); how many did is reported by ``fit``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from detgen.config import HistogramConfig
from detgen.errors import ConfigError
from detgen.models.base import ClosedFormGenerator, ModelFamily


class HistogramSampling(ModelFamily):
    """Per-cell histograms of one target; ``fit`` fills them, nothing is trained by gradient."""

    trainable = False
    cell_edges: Tensor
    cdf: Tensor
    low: Tensor
    width: Tensor
    strides: Tensor
    fitted: Tensor
    curve_x: Tensor
    curve_y: Tensor

    def __init__(self, *, n_targets: int, n_conditions: int, config: HistogramConfig):
        super().__init__()
        self.n_targets = n_targets
        self.noise_dim = 1
        self.n_conditions = n_conditions
        self.n_bins = config.condition_bins
        self.config = config
        n_cells = max(1, self.n_bins ** n_conditions)
        if n_cells > 2_000_000:
            raise ConfigError(
                f"model.condition_bins = {self.n_bins} with {n_conditions} condition features makes {n_cells} "
                "cells; use fewer bins, or data.group_by instead of label conditions"
            )
        self.register_buffer("cell_edges", torch.zeros(n_conditions, self.n_bins - 1))
        self.register_buffer("cdf", torch.zeros(n_cells, config.target_bins + 1))
        self.register_buffer("low", torch.zeros(n_cells))
        self.register_buffer("width", torch.ones(n_cells))
        strides = [self.n_bins ** (n_conditions - 1 - i) for i in range(n_conditions)]
        self.register_buffer("strides", torch.tensor(strides, dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        knots = max(config.mean_curve_knots, 2)
        self.register_buffer("curve_x", torch.linspace(-1, 1, knots))
        self.register_buffer("curve_y", torch.zeros(knots))

    def mean_curve(self, first_condition: Tensor) -> Tensor:
        """The smooth mean in the first condition (zero when ``mean_curve_knots`` is 0)."""
        x = first_condition.contiguous()
        k = torch.searchsorted(self.curve_x, x).clamp(1, self.curve_x.shape[0] - 1)
        x0, x1 = self.curve_x[k - 1], self.curve_x[k]
        y0, y1 = self.curve_y[k - 1], self.curve_y[k]
        t = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)  # constant beyond the outer knots
        return y0 + t * (y1 - y0)

    def _fit_mean_curve(self, y: Tensor, first_condition: Tensor) -> None:
        if self.config.mean_curve_knots <= 0:
            return
        levels = torch.linspace(0, 1, self.config.mean_curve_knots + 1, dtype=torch.float64)
        edges = torch.quantile(first_condition, levels)
        index = torch.bucketize(first_condition, edges[1:-1].contiguous())
        xs, ys = [], []
        for b in range(self.config.mean_curve_knots):
            rows = index == b
            if rows.any():
                xs.append(first_condition[rows].median())
                ys.append(y[rows].median())
        while len(xs) < self.config.mean_curve_knots:  # empty bins (ties in the condition): repeat the last knot
            xs.append(xs[-1])
            ys.append(ys[-1])
        self.curve_x.copy_(torch.stack(xs).float())
        self.curve_y.copy_(torch.stack(ys).float())

    def _cell_index(self, conditions: Tensor) -> Tensor:
        index = torch.zeros(conditions.shape[0], dtype=torch.long, device=conditions.device)
        for j in range(self.n_conditions):
            b = torch.bucketize(conditions[:, j].contiguous(), self.cell_edges[j].contiguous())
            index = index + b * self.strides[j]
        return index

    def fit(self, targets: Tensor, conditions: Tensor) -> dict[str, Any]:
        c = conditions.double()
        self._fit_mean_curve(targets[:, 0].double().contiguous(), c[:, 0].contiguous())
        y = targets[:, 0].double() - self.mean_curve(conditions[:, 0]).double()
        quantiles = torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64)[1:-1]
        edges = torch.stack([torch.quantile(c[:, j], quantiles) for j in range(self.n_conditions)])
        self.cell_edges.copy_(edges.float())
        cells = self._cell_index(conditions)
        first_bin = torch.bucketize(conditions[:, 0].contiguous(), self.cell_edges[0].contiguous())
        n_cells = self.cdf.shape[0]
        counts = torch.bincount(cells, minlength=n_cells)
        fallback = 0
        for cell in range(n_cells):
            if counts[cell] >= self.config.min_entries:
                values = y[cells == cell]
            else:
                fallback += int(counts[cell] > 0)
                b0 = cell // int(self.strides[0])
                values = y[first_bin == b0]
                if values.numel() == 0:
                    values = y
            self._fill_cell(cell, values)
        self.fitted.fill_(True)
        return {"histogram_cells": n_cells, "histogram_cells_fallback": fallback,
                "histogram_cells_empty": int((counts == 0).sum())}

    def _fill_cell(self, cell: int, values: Tensor) -> None:
        lo, hi = values.min(), values.max()
        width = max(float(hi - lo), 1e-6)
        hist = torch.histc(values, bins=self.config.target_bins, min=float(lo), max=float(lo) + width)
        cdf = torch.cat([hist.new_zeros(1), torch.cumsum(hist, 0)]) / hist.sum()
        self.cdf[cell] = cdf.float()
        self.low[cell] = float(lo)
        self.width[cell] = width

    def sample(self, noise: Tensor, conditions: Tensor) -> Tensor:
        u = torch.special.ndtr(noise[:, :1]).clamp(1e-7, 1 - 1e-7).contiguous()
        cell = self._cell_index(conditions)
        cdf = self.cdf[cell]
        k = torch.searchsorted(cdf, u).clamp(1, cdf.shape[1] - 1)
        c_lo = torch.gather(cdf, 1, k - 1)
        c_hi = torch.gather(cdf, 1, k)
        frac = (u - c_lo) / (c_hi - c_lo).clamp_min(1e-12)
        position = (k - 1).to(u.dtype) + frac
        n_bins = cdf.shape[1] - 1
        residual = self.low[cell].unsqueeze(1) + self.width[cell].unsqueeze(1) * position / n_bins
        return self.mean_curve(conditions[:, 0]).unsqueeze(1) + residual

    def generator(self) -> nn.Module:
        return ClosedFormGenerator(self)
