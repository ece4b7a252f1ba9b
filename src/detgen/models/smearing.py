"""Parametric smearing baseline (DELPHES-like): independent Gaussians with binned means and widths.

This is the approach the photon seed paper (arXiv 2303.10148) argues against: each target (e.g. the ET, eta
and phi responses of each photon) is drawn from its own Gaussian whose mean and width depend on the conditions
only through a lookup table, and the targets of one event are drawn independently. It therefore cannot
represent correlations between targets (the two photons' responses) nor non-Gaussian shapes (asymmetric tails):
in a cell the Gaussian has the cell's mean and standard deviation (the closed-form maximum-likelihood fit),
so a tail widens and shifts the Gaussian instead of being reproduced.

Binning: for target j, the conditions listed in ``model.target_conditions`` (by name; default every condition)
are each cut into ``model.bins`` equal-population bins (quantile edges over the training rows, computed in the
model space of the preprocessing, which is monotonic per column, so the cells are those of the physical
values). For photons the natural choice is the photon's own truth ET and eta and the event's mu, the variables
the resolution depends on (configs/photons_smearing.yaml: 8 x 8 x 8 = 512 cells per target, ~1,500 training
rows per cell for 1M events, so the width of each cell is known to ~2%). Cells with fewer than
``model.min_entries`` rows use the target's overall mean and width; ``fit`` reports how many.

The generator is plain tensor ops (bucketize, gather, multiply-add), so it exports like every sampler.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detgen.config import SmearingConfig
from detgen.errors import ConfigError
from detgen.models.base import ClosedFormGenerator, ModelFamily


class GaussianSmearing(ModelFamily):
    """Per-cell Gaussian mean and width of each target; ``fit`` fills them in closed form."""

    trainable = False
    edges: Tensor
    condition_index: Tensor
    strides: Tensor
    means: Tensor
    widths: Tensor
    fitted: Tensor

    def __init__(self, *, n_targets: int, n_conditions: int, config: SmearingConfig):
        super().__init__()
        if n_conditions < 1:
            raise ConfigError("model.family smearing needs at least one condition to bin in")
        self.config = config
        self.n_targets = n_targets
        self.n_conditions = n_conditions
        self.noise_dim = n_targets
        lengths = {len(v) for v in config.target_conditions.values()}
        self.n_binned = lengths.pop() if lengths else n_conditions
        self.n_cells = config.bins ** self.n_binned
        if self.n_cells > 5_000_000:
            raise ConfigError(f"model.bins = {config.bins} over {self.n_binned} conditions makes {self.n_cells} "
                              "cells per target; use fewer bins or fewer target_conditions")
        self.register_buffer("edges", torch.zeros(n_conditions, max(config.bins - 1, 0)))
        default_index = torch.arange(self.n_binned).repeat(n_targets, 1)
        self.register_buffer("condition_index", default_index)
        strides = [config.bins ** (self.n_binned - 1 - k) for k in range(self.n_binned)]
        self.register_buffer("strides", torch.tensor(strides, dtype=torch.long))
        self.register_buffer("means", torch.zeros(n_targets, self.n_cells))
        self.register_buffer("widths", torch.ones(n_targets, self.n_cells))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def bind_preprocessor(self, preprocessor: Any) -> None:
        """Resolve ``model.target_conditions`` (column names) into condition feature indices."""
        if not self.config.target_conditions:
            return
        conditions = list(preprocessor.condition_columns)
        targets = list(preprocessor.target_columns)
        if preprocessor.n_condition_features != len(conditions) or len(targets) != self.n_targets:
            raise ConfigError("model.family smearing needs one feature per numeric condition and target")
        index = [[conditions.index(c) for c in self.config.target_conditions[t]] for t in targets]
        self.condition_index.copy_(torch.tensor(index, dtype=torch.long))

    def _cells(self, conditions: Tensor, target: int) -> Tensor:
        """Cell of every row for target ``target``."""
        cell = torch.zeros(conditions.shape[0], dtype=torch.long, device=conditions.device)
        for k in range(self.n_binned):
            column = self.condition_index[target, k]
            values = conditions.index_select(1, column.reshape(1)).reshape(-1).contiguous()
            cell = cell + torch.bucketize(values, self.edges[column].contiguous()) * self.strides[k]
        return cell

    def fit(self, targets: Tensor, conditions: Tensor) -> dict[str, Any]:
        """Quantile edges of every condition, then the mean and standard deviation of each target per cell."""
        levels = np.linspace(0, 1, self.config.bins + 1)[1:-1]
        if levels.size:
            # numpy, not torch.quantile: the latter refuses inputs above 2**24 rows
            edges = np.quantile(conditions.detach().double().cpu().numpy(), levels, axis=0).T
            self.edges.copy_(torch.from_numpy(np.ascontiguousarray(edges)).float())
        fallback = 0
        empty = 0
        for j in range(self.n_targets):
            y = targets[:, j].double()
            cell = self._cells(conditions, j)
            counts = torch.bincount(cell, minlength=self.n_cells).double()
            sums = torch.bincount(cell, weights=y, minlength=self.n_cells)
            squares = torch.bincount(cell, weights=y * y, minlength=self.n_cells)
            with torch.no_grad():
                mean = sums / counts.clamp_min(1)
                variance = (squares / counts.clamp_min(1) - mean * mean).clamp_min(0) * counts / (counts - 1).clamp_min(1)
            few = counts < self.config.min_entries
            fallback += int((few & (counts > 0)).sum())
            empty += int((counts == 0).sum())
            mean = torch.where(few, y.mean(), mean)
            width = torch.where(few, y.std(), variance.sqrt())
            self.means[j] = mean.float()
            self.widths[j] = width.float()
        self.fitted.fill_(True)
        return {"smearing_cells_per_target": self.n_cells, "smearing_cells_fallback": fallback,
                "smearing_cells_empty": empty}

    def sample(self, noise: Tensor, conditions: Tensor) -> Tensor:
        columns = []
        for j in range(self.n_targets):
            cell = self._cells(conditions, j)
            columns.append(self.means[j][cell] + self.widths[j][cell] * noise[:, j])
        return torch.stack(columns, dim=1)

    def generator(self) -> nn.Module:
        return ClosedFormGenerator(self)
