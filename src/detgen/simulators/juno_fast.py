"""JUNO fast muon simulation: per-PMT photo-electrons and first-hit times from the trained NN_npe and NN_time.

The seed's idea (spherical symmetry + voxels): a deposit at radius R gives a PMT at angle theta (between the
deposit direction and the PMT direction) a photo-electron count drawn from NN_npe(R, theta, noise) and each
photo-electron a hit time drawn from NN_time(R, theta, noise); a muon is the sum of its track deposits.

Evaluating the networks per (deposit, PMT) pair is ~350 deposits x 17,612 PMTs x a 4 x 249 MLP per muon
(~1.5 TFLOP), far too slow. Both networks depend only on (R, theta) and the noise, so their output
distributions are **tabulated once** on an (R, theta) grid (``tabulate_response``) and sampled from the
tables. What is approximated, exactly:

1. **The tables.** Per grid node, the networks are evaluated on a grid of ``noise_draws`` noise values
   z_k (uniform in [-5.5, 5.5], each weighted by its standard-normal probability mass; for a network with more
   than one noise input, random draws with equal weights). NN_npe's table keeps the mean count per MeV of
   deposit: for a Poisson-mean network (``noise_mlp`` with ``loss: poisson``) its lambda(R, theta) itself
   (``poisson_mean_sampler``, no noise draws); for a network of dequantised counts (npe + U(0,1): a flow on
   ``npe_dequantized`` or a discrete noise-MLP's continuous output) the mean of the draws minus 1/2, not the mean of floor(draw), which the
   smoothing of the density step at 1 biases upwards (see ``npe_moments``); other draws count as
   floor(max(0, draw)). NN_time's table keeps the quantile function at ``quantile_nodes`` probabilities Phi(z_j),
   z_j uniform in [-4.5, 4.5] (dense in both tails: the first hit of many p.e. lives in the early tail), as the
   node values whose linear interpolant is the least-squares fit of the network's quantile function in z
   (``quantile_projection``: no systematic bias where it is convex), then recalibrated on the time run's
   training hits (``calibrate_time_quantiles``: a per-cell monotone map in z that makes the hits' table z
   standard normal at |z| <= 2.5; the flow's large-R medians scatter by ~0.3 ns between trainings).
   Between nodes, values are interpolated (bilinear in (s(R), theta), linear in z), where
   s(R) = (x + x^2) / 2, x = R / R_LS, spaces the R nodes 3x more finely at the LS edge than at the centre.
   Outside [Phi(-4.5), Phi(4.5)] the time quantile is clamped (a truncation of 3.4e-6 per tail).
2. **Counts are Poisson.** Photons are emitted and detected independently, so the reference's count of a
   PMT from one deposit is Poisson with a mean proportional to the deposit energy, and counts of several
   deposits add as Poisson with the summed mean. The fast simulation uses only NN_npe's mean (the
   network's full distribution would add its own mis-modelling of the Poisson shape); ``benchmarks/juno.py``
   reports NN_npe's dispersion index (variance / mean, 1 for Poisson) on the grid.
3. **Hit times are independent draws.** The p.e. of a (deposit, PMT) pair arrive as a Poisson process with
   the pair's mean count and NN_time(R, theta)'s time density, shifted by the deposit's time (the muon moves
   at the speed of light from its LS entry; time 0 of a point event is the deposit). The pair's first p.e.
   sits at the quantile E / mean with E ~ Exp(1) (no p.e. when E >= mean) and its further p.e. number
   Poisson(mean - E): one exponential per pair and one Poisson per PMT give the exact joint law of the
   PMT's count and first-hit time.
4. **Voxels.** A muon deposits dE/dx x ``step_m`` at the centre of each step of ``step_m`` along its chord
   (the reference emits uniformly along each step): the voxel step is the one free approximation.
5. **Exact early/late split** (``FastMuonSimulator.response``). A PMT's p.e. are a Poisson process over
   (deposit, quantile level u). The p.e. with u below a per-PMT level u* (chosen so that ~``early_pe`` of
   them are expected) are all sampled one by one (their deposit by inverse CDF over the pairs' means); a
   pair's later p.e. cannot arrive before its time at u*, so only pairs whose time at u* is before the
   earliest sampled p.e. get their first later p.e. sampled (as in 3.); all other p.e. only join the PMT's
   Poisson count. This is exactly the law of sampling every p.e. (tests compare with brute force), with a
   few p.e. and pairs sampled per PMT instead of ~half of all pairs. ``response_pairwise`` keeps the
   earlier pair-by-pair algorithm (the ``first_candidates`` earliest-possible pairs per PMT first, then every
   pair that could still be earlier): same law, ~2x slower on real muons, because the table's earliest
   quantile is ~30 ns before a typical first hit and prunes little.
   The table lookups of the hot path interpolate per deposit in s(R) once, then per pair in theta with one
   gather (``ResponseTables.deposit_rows``; equal to :meth:`ResponseTables.lookup`'s grid_sample to float
   rounding).

The ``juno_muon`` model family wraps this so that ``detgen train`` builds the tables from two trained runs
(and checks them against held-out point data) and ``detgen generate`` simulates a file of muon tracks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from detgen.config import DataConfig, JunoMuonConfig
from detgen.errors import ConfigError, DataError
from detgen.models.base import ModelFamily
from detgen.simulators.juno import (
    DEFAULT_DETECTOR,
    NO_HIT_TIME_NS,
    JunoDetector,
    deposit_times_ns,
    muon_deposits,
    pmt_positions,
    pmt_theta,
    radius_from_s,
    radius_s,
    track_chord,
)

Log = Callable[[str], None]

#: Noise range of the network draws that build the tables, and of the tabulated time quantiles.
DRAW_Z_MAX = 5.5
QUANTILE_Z_MAX = 4.5
#: Columns of a conditions file of muon tracks (LS entry point in m, unit direction).
TRACK_COLUMNS = ("x0", "y0", "z0", "dx", "dy", "dz")
#: Target column of a flow on dequantised counts (npe + U(0, 1); ``add_dequantized_counts``).
DEQUANTIZED_NPE_COLUMN = "npe_dequantized"


# ------------------------------------------------------------------------------------------------- grids


def grid_nodes(r_nodes: int, theta_nodes: int, r_max_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Radius nodes (m; uniform in s(R)) and theta nodes (rad; uniform on [0, pi])."""
    return radius_from_s(np.linspace(0.0, 1.0, r_nodes), r_max_m), np.linspace(0.0, math.pi, theta_nodes)


def _noise_grid(draws: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise values z_k uniform on [-DRAW_Z_MAX, DRAW_Z_MAX] and their standard-normal probability masses."""
    from scipy.special import ndtr

    z = np.linspace(-DRAW_Z_MAX, DRAW_Z_MAX, draws)
    edges = np.concatenate([[-np.inf], 0.5 * (z[1:] + z[:-1]), [np.inf]])
    return z, np.diff(ndtr(edges))


# ------------------------------------------------------------------------------------------------- tabulation
def _condition_matrix(run: Any, r_m: np.ndarray, theta: np.ndarray, what: str) -> np.ndarray:
    columns = run.preprocessor.input_columns
    if sorted(columns) != ["r_m", "theta"]:
        raise ConfigError(f"{run.path}: the {what} run has conditions {columns}; expected exactly r_m and theta")
    return np.stack([r_m if c == "r_m" else theta for c in columns], axis=1)


class _ContinuousOutput(nn.Module):
    """A discrete noise_mlp generator's continuous (dequantised, not floored) output as a generator module."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.inner = generator

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        return self.inner.continuous(noise, conditions)  # type: ignore[operator]


def npe_draw_sampler(run: Any) -> tuple[Any, bool]:
    """The sampler whose draws tabulate NN_npe, and whether its draws are dequantised counts (npe + U(0,1)).

    Dequantised: a flow on the column ``npe_dequantized`` (``add_dequantized_counts``) or a ``noise_mlp`` with
    ``discrete: true`` (its continuous output, before the floor, is what was trained on npe + U(0,1)).
    """
    from detgen.models.base import Sampler

    generator = run.model.generator() if hasattr(run, "model") else None
    if generator is not None and getattr(generator, "discrete", False) and hasattr(generator, "continuous"):
        return Sampler(_ContinuousOutput(generator), run.preprocessor, run.model.noise_dim).eval(), True
    return run.sampler(), list(run.preprocessor.target_columns) == [DEQUANTIZED_NPE_COLUMN]


class _PoissonMean(nn.Module):
    """A Poisson noise_mlp generator's mean count lambda(conditions) as a generator module (noise ignored)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.inner = generator

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        return self.inner.mean(conditions)  # type: ignore[operator]


def poisson_mean_sampler(run: Any) -> Any:
    """For an NN_npe run that predicts the Poisson mean (``noise_mlp`` with ``loss: poisson``): a sampler whose
    output is lambda(R, theta) in p.e. per PMT; None for any other run."""
    from detgen.models.base import Sampler

    generator = run.model.generator() if hasattr(run, "model") else None
    if generator is None or not getattr(generator, "poisson", False):
        return None
    return Sampler(_PoissonMean(generator), run.preprocessor, run.model.noise_dim).eval()


def npe_moments(draws: np.ndarray, weights: np.ndarray, *, dequantized: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the count per cell from network draws (cells, draws) with weights (draws,).

    Dequantised draws x (a model of npe + U(0,1)): mean E[x] - 1/2 and variance Var[x] - 1/12, which are exact
    for the dequantised distribution and unbiased under any smoothing of its density that keeps the mean.
    E[floor(x)] is not: a model cannot reproduce the density's step at x = 1 (from P(npe = 0) ~ 0.93 on [0, 1)
    to P(npe = 1) ~ 0.07 on [1, 2)), and every bit of the zero-count mass it smears across 1 adds a whole
    count; with the ~0.07 p.e. mean of a PMT per MeV that doubled the tabulated mean of every trained model.
    Other draws are taken as counts: floor(max(0, x)).
    """
    if dequantized:
        # a cell whose draws average below 1/2 (a model's small negative excursion where the mean is ~0) gets mean
        # 0; ``tabulate_response`` counts such cells and the run records the count (fit_info in meta.json)
        mean = draws @ weights
        var = (draws - mean[:, None]) ** 2 @ weights
        return np.clip(mean - 0.5, 0.0, None), np.clip(var - 1.0 / 12.0, 0.0, None)
    counts = np.floor(np.clip(draws, 0.0, None))
    mean = counts @ weights
    return mean, (counts - mean[:, None]) ** 2 @ weights


@torch.no_grad()
def _draw_outputs(run: Any, r_m: np.ndarray, theta: np.ndarray, draws: int, what: str, chunk: int = 65536,
                  seed: int = 0, sampler: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Network outputs (cells, draws) at every (r_m, theta) cell and the weight of each draw."""
    sampler = run.sampler() if sampler is None else sampler
    if len(run.preprocessor.target_columns) != 1:
        raise ConfigError(f"{run.path}: the {what} run has targets {run.preprocessor.target_columns}; expected one")
    if sampler.noise_dim == 1:
        z, weights = _noise_grid(draws)
        noise = torch.from_numpy(np.tile(z, len(r_m))).float().unsqueeze(1)
    else:
        weights = np.full(draws, 1.0 / draws)
        noise = torch.randn(len(r_m) * draws, sampler.noise_dim, generator=torch.Generator().manual_seed(seed))
    conditions = torch.from_numpy(np.repeat(_condition_matrix(run, r_m, theta, what), draws, axis=0)).float()
    device = next(iter(sampler.buffers()), torch.zeros(0)).device
    out = torch.cat([sampler(noise[i : i + chunk].to(device), conditions[i : i + chunk].to(device)).cpu()
                     for i in range(0, len(noise), chunk)])
    return out.numpy().astype(np.float64).reshape(len(r_m), draws), weights


FINE_PER_NODE = 16  # quantile function samples per quantile-node interval for the least-squares node values


def quantile_projection(quantile_nodes: int) -> np.ndarray:
    """(F, Q) matrix taking a quantile function sampled at F = FINE_PER_NODE (Q - 1) + 1 points uniform in z
    to the Q node values whose piecewise-linear interpolant is its least-squares fit (uniform weight in z).

    Node values equal to the function itself (plain interpolation) put the whole interpolant above a convex
    quantile function: the hit-time spectra have a sharp rise and a long tail, so the table's times came out
    ~0.1 ns late at the median with 64 nodes. The least-squares nodes make that error change sign within
    every interval (zero mean), at no cost in the lookups; a linear function is kept exactly.
    """
    if quantile_nodes < 2:
        raise ConfigError(f"quantile_nodes = {quantile_nodes}; expected >= 2")
    position = np.linspace(0.0, quantile_nodes - 1.0, FINE_PER_NODE * (quantile_nodes - 1) + 1)
    hats = np.clip(1.0 - np.abs(position[:, None] - np.arange(quantile_nodes)[None, :]), 0.0, None)  # (F, Q)
    return hats @ np.linalg.inv(hats.T @ hats)


def tabulate_response(npe_run: Any, time_run: Any, *, r_nodes: int, theta_nodes: int, noise_draws: int,
                      quantile_nodes: int, point_energy_mev: float, r_max_m: float) -> dict[str, Tensor]:
    """The (R, theta) tables of NN_npe's mean (and variance) per MeV and NN_time's quantile function."""
    r_grid, theta_grid = grid_nodes(r_nodes, theta_nodes, r_max_m)
    rr, tt = (a.ravel() for a in np.meshgrid(r_grid, theta_grid, indexing="ij"))
    mean_sampler = poisson_mean_sampler(npe_run)
    if mean_sampler is not None:  # the network's lambda itself; Poisson variance = mean
        lam, w = _draw_outputs(npe_run, rr, tt, 2, "npe", sampler=mean_sampler)  # two equal columns, weights sum 1
        mean, clipped = lam @ w, 0
        var = mean.copy()
    else:
        npe_sampler, dequantized = npe_draw_sampler(npe_run)
        npe, w = _draw_outputs(npe_run, rr, tt, noise_draws, "npe", sampler=npe_sampler)
        mean, var = npe_moments(npe, w, dequantized=dequantized)
        clipped = int(np.count_nonzero(npe @ w < 0.5)) if dequantized else 0
    times, w = _draw_outputs(time_run, rr, tt, noise_draws, "time")
    order = np.argsort(times, axis=1)
    sorted_times = np.take_along_axis(times, order, axis=1)
    cumulative = np.cumsum(w[order], axis=1) - 0.5 * w[order]  # mid-point plotting positions
    from scipy.special import ndtr

    z_fine = np.linspace(-QUANTILE_Z_MAX, QUANTILE_Z_MAX, FINE_PER_NODE * (quantile_nodes - 1) + 1)
    fine = np.stack([np.interp(ndtr(z_fine), cumulative[i], sorted_times[i]) for i in range(len(rr))])
    quantiles = fine @ quantile_projection(quantile_nodes)
    np.maximum.accumulate(quantiles, axis=1, out=quantiles)  # keep the quantile function non-decreasing
    shape = (r_nodes, theta_nodes)
    return {
        "npe_per_mev": torch.from_numpy(mean.reshape(shape) / point_energy_mev).float(),
        "npe_variance": torch.from_numpy(var.reshape(shape)).float(),
        "time_quantiles": torch.from_numpy(quantiles.reshape(*shape, quantile_nodes)).float(),
        "npe_cells_clipped_to_zero": torch.tensor(clipped),
    }


#: Standard-normal quantile levels at which ``calibrate_time_quantiles`` matches the table to the hits
#: (|z| <= 2.5: with ~5,000 hits per grid cell the levels beyond are too noisy to move the table).
CALIBRATION_Z = np.linspace(-2.5, 2.5, 11)
_PIT_BINS = np.linspace(-5.0, 5.0, 401)  # histogram of the hits' table z per grid cell


def _table_z(quantiles: np.ndarray, cells: tuple[np.ndarray, ...], time_ns: np.ndarray, chunk: int = 262144
             ) -> np.ndarray:
    """Each hit's position z in its (bilinearly interpolated) tabulated quantile function: t = Q(R, theta, z).

    Hits before the first (after the last) node get z = -(+) (QUANTILE_Z_MAX + 0.25)."""
    i0, j0, wr, wt = cells
    n_nodes = quantiles.shape[2]
    z_nodes = np.linspace(-QUANTILE_Z_MAX, QUANTILE_Z_MAX, n_nodes)
    out = np.empty(len(time_ns))
    for start in range(0, len(time_ns), chunk):
        rows = slice(start, start + chunk)
        a, b, x, y = i0[rows], j0[rows], wr[rows, None], wt[rows, None]
        q = ((1 - x) * ((1 - y) * quantiles[a, b] + y * quantiles[a, b + 1])
             + x * ((1 - y) * quantiles[a + 1, b] + y * quantiles[a + 1, b + 1]))
        t = time_ns[rows]
        above = (q <= t[:, None]).sum(1)  # nodes at or before each hit
        k = np.clip(above, 1, n_nodes - 1)
        low = np.take_along_axis(q, (k - 1)[:, None], 1)[:, 0]
        high = np.take_along_axis(q, k[:, None], 1)[:, 0]
        frac = np.clip((t - low) / np.maximum(high - low, 1e-9), 0.0, 1.0)
        z = z_nodes[k - 1] + frac * (z_nodes[1] - z_nodes[0])
        z[above == 0] = -QUANTILE_Z_MAX - 0.25
        z[above == n_nodes] = QUANTILE_Z_MAX + 0.25
        out[rows] = z
    return out


def calibrate_time_quantiles(quantiles: np.ndarray, r_m: np.ndarray, theta: np.ndarray, time_ns: np.ndarray, *,
                             r_max_m: float, passes: int = 2, prior_hits: float = 1000.0, source: str = "hits"
                             ) -> tuple[np.ndarray, dict[str, Any]]:
    """Recalibrate NN_time's tabulated quantile functions (R, T, Q) against single-p.e. hits (r_m, theta, time_ns).

    The flow's hit-time quantiles at R >= 10 m move by up to ~0.3 ns from one training to the next (the 1 MeV
    gammas' median is a mixture over theta, so this is ~0.2-0.3 ns there; docs/juno_fast.md). This is the
    time analogue of NN_npe's exact Poisson scale refit: a probability-integral-transform (PIT) calibration.
    Each hit's z in its interpolated table is histogrammed per grid cell (bilinear weights); where the table
    is right these z are N(0, 1). Per cell, the z-quantiles zt_k of the hits at levels Phi(z_k), z_k in
    ``CALIBRATION_Z``, define a monotone map m(z) = z + d(z), d piecewise linear through
    (z_k, (zt_k - z_k) n / (n + prior_hits)) and constant beyond (n: the cell's hits; the prior shrinks the map
    of sparse cells towards the identity), and the cell's quantile function becomes Q(m(z)). ``passes``
    repeats this (neighbouring cells share hits through the interpolation). The network keeps the shape between
    the levels and in the tails (the first hit of a muon's PMT lives at z ~ -3.5); the hits move the
    quantiles at |z| <= 2.5 by the small amounts the network missed.
    """
    r_grid_s = radius_s(np.asarray(r_m, dtype=np.float64), r_max_m)
    theta = np.asarray(theta, dtype=np.float64)
    outside = (r_grid_s < 0) | (r_grid_s > 1.0 + 1e-6) | (theta < 0) | (theta > math.pi + 1e-6)
    if np.any(outside):
        raise DataError(f"{source}: {int(np.count_nonzero(outside))} hit(s) outside R in [0, {r_max_m}] m or theta in "
                        "[0, pi]; the time calibration needs hits inside the tabulated grid")
    n_r, n_t, n_q = quantiles.shape
    fr, ft = r_grid_s * (n_r - 1), theta / math.pi * (n_t - 1)
    i0 = np.clip(np.floor(fr).astype(np.int64), 0, n_r - 2)
    j0 = np.clip(np.floor(ft).astype(np.int64), 0, n_t - 2)
    cells = (i0, j0, fr - i0, ft - j0)
    time_ns = np.asarray(time_ns, dtype=np.float64)
    z_nodes = np.linspace(-QUANTILE_Z_MAX, QUANTILE_Z_MAX, n_q)
    from scipy.special import ndtr

    n_bins = len(_PIT_BINS) - 1
    probabilities = ndtr(CALIBRATION_Z)
    table = np.asarray(quantiles, dtype=np.float64).copy()
    info: dict[str, Any] = {"time_calibration_hits": len(time_ns), "time_calibration_passes": passes}
    for step in range(passes):
        z = _table_z(table, cells, time_ns)
        z_bin = np.clip(np.searchsorted(_PIT_BINS, z) - 1, 0, n_bins - 1)
        histogram = np.zeros(n_r * n_t * n_bins)
        for dr, dt, weight in ((0, 0, (1 - cells[2]) * (1 - cells[3])), (0, 1, (1 - cells[2]) * cells[3]),
                               (1, 0, cells[2] * (1 - cells[3])), (1, 1, cells[2] * cells[3])):
            cell = (i0 + dr) * n_t + (j0 + dt)
            histogram += np.bincount(cell * n_bins + z_bin, weights=weight, minlength=len(histogram))
        histogram = histogram.reshape(n_r, n_t, n_bins)
        hits = histogram.sum(2)
        cdf = np.cumsum(histogram, 2) / np.maximum(hits, 1e-12)[..., None]
        moved = []
        for i, j in zip(*np.nonzero(hits > 0)):
            measured = np.interp(probabilities, cdf[i, j], _PIT_BINS[1:])
            shift = (measured - CALIBRATION_Z) * hits[i, j] / (hits[i, j] + prior_hits)
            table[i, j] = np.interp(z_nodes + np.interp(z_nodes, CALIBRATION_Z, shift), z_nodes, table[i, j])
            moved.append(float(np.abs(shift).max()))
        info[f"time_calibration_pass{step}_pit_z_mean"] = round(float(z.mean()), 5)
        info[f"time_calibration_pass{step}_pit_z_std"] = round(float(z.std()), 5)
        info[f"time_calibration_pass{step}_max_z_shift_median"] = round(float(np.median(moved)), 5) if moved else 0.0
    info["time_calibration_sparse_cells"] = int(np.count_nonzero(hits < prior_hits))
    return table, info


class ResponseTables(nn.Module):
    """Tabulated NN_npe mean per MeV and NN_time quantile function on the (s(R), theta) grid; torch lookups."""

    npe_per_mev: Tensor
    npe_variance: Tensor
    time_quantiles: Tensor

    def __init__(self, *, r_nodes: int, theta_nodes: int, quantile_nodes: int, r_max_m: float):
        super().__init__()
        self.r_max_m = r_max_m
        self.register_buffer("npe_per_mev", torch.zeros(r_nodes, theta_nodes))
        self.register_buffer("npe_variance", torch.zeros(r_nodes, theta_nodes))
        self.register_buffer("time_quantiles", torch.zeros(r_nodes, theta_nodes, quantile_nodes))

    def _rt_grid(self, r_m: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return 2.0 * radius_s(r_m, self.r_max_m) - 1.0, theta * (2.0 / math.pi) - 1.0

    def lookup(self, r_m: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Mean npe per MeV and the earliest tabulated hit time (ns) at (r_m, theta) of any shape."""
        y, x = self._rt_grid(r_m, theta)
        grid = torch.stack([x, y], dim=-1).reshape(1, -1, 1, 2)
        table = torch.stack([self.npe_per_mev, self.time_quantiles[..., 0]]).unsqueeze(0)
        out = F.grid_sample(table, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out[0, 0, :, 0].reshape(r_m.shape), out[0, 1, :, 0].reshape(r_m.shape)

    def time_quantile(self, r_m: Tensor, theta: Tensor, z: Tensor) -> Tensor:
        """NN_time's hit time (ns) at standard-normal quantile z, at (r_m, theta) (same shapes)."""
        y, x = self._rt_grid(r_m, theta)
        zq = z / QUANTILE_Z_MAX
        grid = torch.stack([zq, x, y], dim=-1).reshape(1, -1, 1, 1, 3)
        out = F.grid_sample(self.time_quantiles[None, None], grid, mode="bilinear", padding_mode="border",
                            align_corners=True)
        return out.reshape(r_m.shape)

    # ---- the muon hot path: the same (bi/tri)linear interpolation, factorised per deposit
    def packed(self) -> PackedTables:
        """A snapshot of the tables with neighbouring theta nodes packed together (for :class:`DepositRows`)."""
        return PackedTables(self.npe_per_mev, self.time_quantiles, self.r_max_m)

    def deposit_rows(self, r_m: Tensor, energies: Tensor | None = None, times: Tensor | None = None
                     ) -> DepositRows:
        """``self.packed().deposit_rows(...)``: the tables interpolated in s(R) at each deposit radius."""
        return self.packed().deposit_rows(r_m, energies, times)


class PackedTables:
    """The npe (R, T) and time-quantile (R, T, Q) tables with theta nodes (j, j + 1) side by side:
    (R, T - 1, 2) and (R, T - 1, Q, 2), so that one gather fetches both ends of a theta bin."""

    def __init__(self, npe_per_mev: Tensor, time_quantiles: Tensor, r_max_m: float):
        self.r_max_m = r_max_m
        self.npe = torch.stack([npe_per_mev[:, :-1], npe_per_mev[:, 1:]], dim=-1).contiguous()
        self.time = torch.stack([time_quantiles[:, :-1], time_quantiles[:, 1:]], dim=-1).contiguous()

    def deposit_rows(self, r_m: Tensor, energies: Tensor | None = None, times: Tensor | None = None
                     ) -> DepositRows:
        """The tables interpolated in s(R) at each deposit radius r_m (M,), for theta lookups per pair.

        Bilinear interpolation is separable: interpolating first in s(R) (once per deposit) and then in theta
        (once per pair) gives :meth:`ResponseTables.lookup`'s and :meth:`ResponseTables.time_quantile`'s values
        (up to float rounding) with one gather per pair instead of a grid_sample. With ``energies`` (M,) MeV
        the npe rows are mean p.e. of each deposit (npe per MeV x energy; energies must be >= 0), with
        ``times`` (M,) ns the time rows include each deposit's time.
        """
        n_r = self.npe.shape[0]
        y = (radius_s(r_m, self.r_max_m) * (n_r - 1)).clamp(0.0, n_r - 1.0)
        i0 = y.floor().clamp_max(n_r - 2).long()
        rho = y - i0
        npe = self.npe.index_select(0, i0).lerp_(self.npe.index_select(0, i0 + 1), rho[:, None, None])
        time = self.time.index_select(0, i0).lerp_(self.time.index_select(0, i0 + 1), rho[:, None, None, None])
        if energies is not None:
            npe.mul_(energies[:, None, None])
        if times is not None:
            time.add_(times[:, None, None, None])
        return DepositRows(npe, time)


class DepositRows:
    """Per-deposit tables (from :meth:`PackedTables.deposit_rows`) and the hot path's lookups in them.

    Node pairs (j, j + 1) sit side by side, so that a theta bin is one gather of two floats (8 bytes, through a
    float64 view).

    Attributes:
        npe_pairs: (M * (T - 1), 2): npe at theta nodes (j, j + 1) of deposit m in row m * (T-1) + j.
        time_pairs: (M * (T - 1) * Q, 2): hit-time quantiles (ns) at theta nodes (j, j + 1), quantile node k,
            in row (m * (T-1) + j) * Q + k.
    """

    def __init__(self, npe: Tensor, time: Tensor):
        self.n_deposits, self.theta_bins = npe.shape[:2]
        self.quantile_nodes = time.shape[2]
        self.npe_pairs = npe.reshape(-1, 2)
        self.time_pairs = time.reshape(-1, 2)

    def theta_bin(self, cos_theta: Tensor) -> tuple[Tensor, Tensor]:
        """Per pair (M, P) from cos(theta) (deposits along dim 0): flat (deposit, theta-bin) index (int32) and
        the weight w in [0, 1] of node j + 1 (theta = (j + w) pi / (T - 1))."""
        x = cos_theta.clamp(-1.0, 1.0).acos_().mul_(self.theta_bins / math.pi)
        j = x.floor().clamp_(max=self.theta_bins - 1)
        offsets = torch.arange(cos_theta.shape[0], dtype=torch.int32, device=cos_theta.device) * self.theta_bins
        return j.to(torch.int32).add_(offsets[:, None]), x.sub_(j)

    def npe_per_mev(self, index: Tensor, weight: Tensor) -> Tensor:
        """npe per MeV at flat (deposit, theta-bin) ``index`` (int32) with theta weight ``weight``."""
        return _pair_lerp(self.npe_pairs, index, weight)

    def time_at_node(self, index: Tensor, weight: Tensor, node: Tensor) -> Tensor:
        """Hit time (ns) at quantile node ``node`` (int32, broadcast against ``index``) of each pair."""
        return _pair_lerp(self.time_pairs, (index * self.quantile_nodes).add_(node), weight)

    def time_at(self, index: Tensor, weight: Tensor, z: Tensor, *, node_min: Tensor | None = None,
                node_max: Tensor | None = None) -> Tensor:
        """Hit time (ns) at standard-normal quantile z of pairs (flat index, theta weight); the position in the
        quantile grid is clamped to [-QUANTILE_Z_MAX, QUANTILE_Z_MAX] and to [node_min, node_max] if given."""
        n_q = self.quantile_nodes
        kz = (z + QUANTILE_Z_MAX).mul_((n_q - 1) / (2.0 * QUANTILE_Z_MAX)).clamp_(0.0, n_q - 1.0)
        if node_min is not None:
            kz = torch.maximum(kz, node_min.to(kz.dtype))
        if node_max is not None:
            kz = torch.minimum(kz, node_max.to(kz.dtype))
        k0 = kz.floor().clamp_(max=n_q - 2)
        v = kz.sub_(k0).to(weight.dtype)
        row = (index.long() * n_q).add_(k0.long())
        low = _pair_lerp(self.time_pairs, row, weight)
        return low.lerp_(_pair_lerp(self.time_pairs, row.add_(1), weight), v)

    # ---- the steps of FastMuonSimulator.response
    def pair_means(self, unit: Tensor, pmt_unit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every (deposit, PMT) pair, laid out (M, P): flat (deposit, theta bin) index, theta weight, mean p.e."""
        index, weight = self.theta_bin(unit @ pmt_unit.t())
        return index, weight, self.npe_per_mev(index, weight).clamp_min_(0)

    def early_times(self, index: Tensor, weight: Tensor, pair: Tensor, u: Tensor, node_max: Tensor) -> Tensor:
        """Hit times of early p.e. in flat pairs ``pair`` at quantile levels u (float64) below node ``node_max``."""
        return self.time_at(index.index_select(0, pair), weight.index_select(0, pair), normal_quantile(u),
                            node_max=node_max)

    def late_times(self, index: Tensor, weight: Tensor, lam: Tensor, u_split: Tensor, node: Tensor, pair: Tensor,
                   gap: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The first late p.e. of flat pairs ``pair`` (PMT = pair % P) from exponential gaps: (PMT, hit time or
        inf, whether there is one, the late mean it used up)."""
        pmt = pair % u_split.shape[0]
        lam_pair = lam.index_select(0, pair).to(gap.dtype)
        u_pair = u_split.index_select(0, pmt)
        late_mean = lam_pair * (1.0 - u_pair)
        hit = gap < late_mean
        u = (gap / lam_pair.clamp_min(1e-300)).add_(u_pair).clamp_max_(1.0)
        t = self.time_at(index.index_select(0, pair), weight.index_select(0, pair), normal_quantile(u),
                         node_min=node.index_select(0, pmt))
        return pmt, t.masked_fill_(~hit, math.inf), hit, torch.minimum(gap, late_mean)


def _pair_lerp(pairs: Tensor, row: Tensor, weight: Tensor) -> Tensor:
    """(a, b) in ``pairs[row]`` -> a + w (b - a): linear interpolation between packed neighbouring nodes."""
    ends = pairs.view(torch.float64).reshape(-1).index_select(0, row.reshape(-1)).view(pairs.dtype).reshape(-1, 2)
    return torch.lerp(ends[:, 0], ends[:, 1], weight.reshape(-1)).reshape(row.shape)


def neighbour_order(unit: np.ndarray) -> np.ndarray:
    """A permutation of unit vectors (N, 3) that visits neighbours one after another: ~sqrt(N / 5) bands in z,
    each walked in azimuth, alternately one way and back (speed only: it makes table reads local)."""
    bands = max(1, round(math.sqrt(len(unit) / 5)))
    band = np.minimum(((1.0 - unit[:, 2]) / 2.0 * bands).astype(np.int64), bands - 1)
    phi = np.arctan2(unit[:, 1], unit[:, 0])
    return np.lexsort((np.where(band % 2 == 0, phi, -phi), band))


def auto_early_pe(n_deposits: int) -> float:
    """Default mean number of early p.e. per PMT for a muon of ``n_deposits`` deposits (speed only): the early
    p.e. cost ~early_pe per PMT, the late pairs ~0.7 n_deposits / early_pe per PMT (measured), so
    sqrt(0.7 n_deposits), kept in [2, 16]."""
    return min(16.0, max(2.0, math.sqrt(0.7 * n_deposits)))


def normal_quantile(u: Tensor) -> Tensor:
    """Standard-normal quantile Phi^-1(u) of float64 u: sqrt(2) erfinv(2u - 1) (twice as fast as ndtri on CPU;
    in float64 the absolute rounding of 2u - 1, 1e-16, moves u by < 1e-10 relative down to u = 1e-6)."""
    return torch.erfinv(u.mul(2.0).sub_(1.0)).mul_(math.sqrt(2.0))


def _exponential(shape: tuple[int, ...] | torch.Size, generator: torch.Generator, device: torch.device) -> Tensor:
    """Exp(1) draws in float64 as -log(1 - U), U ~ U[0, 1) (several times faster than exponential_ on CPU)."""
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device).neg_().log1p_().neg_()


def _inverse_cdf(cumulative: Tensor, column: Tensor, value: Tensor, n_rows: int | None = None) -> Tensor:
    """Per query: the flat index m * n_columns + column of the smallest row m < n_rows with
    cumulative[m, column] > value (bisection).

    Columns are non-decreasing over their first n_rows rows (all rows by default); rows from n_rows on
    may hold anything (padding). With value uniform in [0, cumulative[n_rows - 1, column]) this draws row m
    with probability proportional to its increment; rows with zero increment are never drawn.
    """
    n_rows = cumulative.shape[0] if n_rows is None else n_rows
    n_cols = cumulative.shape[1]
    flat = cumulative.reshape(-1)
    position = column.clone()  # flat index of row `count` in the column, count = rows known to be <= value
    step = 1 << max(0, (n_rows - 1).bit_length() - 1)
    end = column + (n_rows - 1) * n_cols  # the column's last row
    while step:
        probe = torch.minimum(position + (step - 1) * n_cols, end)  # stay in the column's rows
        position += (flat.index_select(0, probe) <= value) * (step * n_cols)
        step >>= 1
    return torch.minimum(position, end)  # only a value >= the column's total (rounding) gets past the end


# ------------------------------------------------------------------------------------------------- sampling
def check_point_inputs(r_m: Tensor, theta: Tensor, r_max_m: float, source: str) -> None:
    """DataError for radii outside [0, R_LS] or angles outside [0, pi]."""
    bad_r = ~torch.isfinite(r_m) | (r_m < 0) | (r_m > r_max_m * (1 + 1e-6))
    if bool(bad_r.any()):
        raise DataError(f"{source}: {int(bad_r.sum())} value(s) of r_m outside [0, {r_max_m}] m "
                        f"(first {float(r_m[bad_r][0])}); a deposit must lie inside the LS sphere")
    bad_t = ~torch.isfinite(theta) | (theta < 0) | (theta > math.pi * (1 + 1e-6))
    if bool(bad_t.any()):
        raise DataError(f"{source}: {int(bad_t.sum())} value(s) of theta outside [0, pi] rad "
                        f"(first {float(theta[bad_t][0])})")


class FastMuonSimulator:
    """Per-PMT npe and first-hit times of muons (and point deposits) from :class:`ResponseTables`.

    Arguments:
        tables: the tabulated networks.
        detector: geometry (PMT positions, LS radius, muon dE/dx).
        step_m: voxel step along a muon track (m).
        first_candidates: pairs per PMT sampled individually before the exact pruning check
            (:meth:`response_pairwise` only).
        early_pe: mean number of early p.e. sampled one by one per PMT in :meth:`response` (speed only, not
            the law); None: :func:`auto_early_pe` of the muon's deposit count.
        device: torch device of the tables.

    The simulator keeps a packed snapshot of ``tables`` (:meth:`ResponseTables.packed`): fill the tables
    before building it.
    """

    def __init__(self, tables: ResponseTables, *, detector: JunoDetector = DEFAULT_DETECTOR, step_m: float = 0.1,
                 first_candidates: int = 12, early_pe: float | None = None, device: torch.device | str = "cpu"):
        if not step_m > 0:
            raise DataError(f"step_m = {step_m}; expected a positive voxel step in m")
        if early_pe is not None and not early_pe > 0:
            raise DataError(f"early_pe = {early_pe}; expected a positive mean number of early p.e. per PMT")
        self.tables = tables
        self.detector = detector
        self.step_m = step_m
        self.first_candidates = first_candidates
        self.early_pe = early_pe
        self.device = torch.device(device)
        self.pmt_unit = torch.from_numpy(pmt_positions(detector) / detector.pmt_radius_m).float().to(self.device)
        # the hot path visits the PMTs in an order of spatial neighbours, so that neighbouring pairs read
        # neighbouring table rows (the detector's numbering, a Fibonacci spiral, jumps ~30 m from one PMT to
        # the next); outputs are returned in the detector's numbering
        order = torch.from_numpy(neighbour_order(self.pmt_unit.cpu().numpy())).to(self.device)
        self._pmt_local = self.pmt_unit.index_select(0, order)
        self._local_to_pmt = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=self.device))
        from scipy.special import ndtr

        n_q = tables.time_quantiles.shape[-1]
        #: quantile levels u_k = Phi(z_k) of the tabulated time nodes (float64)
        self.u_nodes = torch.from_numpy(ndtr(np.linspace(-QUANTILE_Z_MAX, QUANTILE_Z_MAX, n_q))).to(self.device)
        self.packed = tables.packed()  # a snapshot: build the simulator after filling the tables
        steps = torch.diff(tables.time_quantiles, dim=-1)
        if steps.numel() and float(steps.min()) < 0:
            raise DataError(f"the time-quantile table decreases along the quantile axis (by up to "
                            f"{-float(steps.min()):.3g} ns); a quantile function must be non-decreasing")

    # ---- one muon
    def deposits(self, entry_m: np.ndarray, direction: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """Voxel centres (M, 3) m, energies (M,) MeV and times (M,) ns of one track (DataError if it misses)."""
        centres, energies = muon_deposits(entry_m, direction, detector=self.detector, step_m=self.step_m)
        times = deposit_times_ns(entry_m, direction, centres, detector=self.detector)
        as_tensor = lambda a: torch.from_numpy(np.asarray(a)).float().to(self.device)  # noqa: E731
        return as_tensor(centres), as_tensor(energies), as_tensor(times)

    def _pair_geometry(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Deposit radius (1, M) and PMT-deposit angle (P, M)."""
        r = positions.norm(dim=1)
        unit = torch.where(r[:, None] > 0, positions / r.clamp_min(1e-9)[:, None],
                           torch.tensor([0.0, 0.0, 1.0], device=r.device))
        theta = torch.acos((self.pmt_unit @ unit.t()).clamp(-1.0, 1.0))
        return r.unsqueeze(0), theta

    def response(self, positions: Tensor, energies: Tensor, times: Tensor, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor]:
        """npe (P,) and first-hit time (P,) of deposits at ``positions`` (M, 3) m with ``energies`` (M,) MeV at
        ``times`` (M,) ns; PMTs without p.e. get first-hit time NO_HIT_TIME_NS.

        The p.e. of PMT p form a Poisson process over (deposit m, quantile level u in [0, 1]) with intensity
        lam_pm du (lam_pm = npe per MeV x E_m from the table; the p.e.'s hit time is t_m + q_pm(u), q_pm the
        tabulated quantile function). Split at a per-PMT level u*_p (the quantile node with
        u*_p x sum_m lam_pm closest below ``early_pe``):

        1. *early* p.e. (u < u*_p): their number is Poisson(u*_p sum_m lam_pm), each one's deposit is drawn
           with probability lam_pm / sum_m lam_pm and its u uniformly in [0, u*_p); all are sampled, and T_e is
           the earliest of their times;
        2. *late* p.e. (u >= u*_p) of deposit m cannot arrive before B_pm = t_m + q_pm(u*_p) (q is
           non-decreasing in u); only pairs with B_pm < T_e can hold a late p.e. earlier than T_e, and for them
           the first late p.e. is sampled as in :meth:`response_pairwise` (u = u*_p + E / lam_pm, E ~ Exp(1),
           a p.e. only if E < lam_pm (1 - u*_p)); the late p.e. of all other pairs only add to the count.

        The PMT's count is early + sampled late + Poisson(the rest of the late mean): the exact joint law of
        (npe, first hit) of sampling every p.e., while sampling only ~``early_pe`` p.e. and a few pairs per PMT.
        """
        if bool((energies < 0).any()) or not bool(torch.isfinite(energies).all()):
            raise DataError(f"deposit energies must be finite and >= 0 MeV (got min {float(energies.min())})")
        r = positions.norm(dim=1)
        check_point_inputs(r, torch.zeros(1, device=r.device), self.tables.r_max_m, "deposits")
        unit = torch.where(r[:, None] > 0, positions / r.clamp_min(1e-9)[:, None],
                           torch.tensor([0.0, 0.0, 1.0], device=r.device))
        rows = self.packed.deposit_rows(r, energies, times)  # npe rows x energy, time rows + deposit time
        n_pmt, n_dep = self.pmt_unit.shape[0], len(r)
        device, f64 = r.device, torch.float64
        # every pair, laid out (M, P): deposits along dim 0; flat (deposit, theta bin), weight, mean p.e.
        index, weight, lam = rows.pair_means(unit, self._pmt_local)
        cumulative = lam.to(f64)  # float64 running sum over deposits (row by row: torch.cumsum is slow here)
        for m in range(1, n_dep):
            cumulative[m] += cumulative[m - 1]
        lam_sum = cumulative[-1]
        # per-PMT split level: the largest quantile node with u_k * lam_sum <= early_pe
        early_pe = self.early_pe if self.early_pe is not None else auto_early_pe(n_dep)
        node = (torch.searchsorted(self.u_nodes, early_pe / lam_sum, right=True) - 1).clamp_(
            0, len(self.u_nodes) - 1)
        u_split = self.u_nodes.index_select(0, node)
        flat_index, flat_weight = index.reshape(-1), weight.reshape(-1)
        # 1. the early p.e.
        n_early = torch.poisson(u_split * lam_sum, generator)
        owner = torch.repeat_interleave(torch.arange(n_pmt, device=device), n_early.long())
        target = torch.rand(owner.shape, generator=generator, dtype=f64, device=device) * lam_sum.index_select(0, owner)
        pair = _inverse_cdf(cumulative, owner, target)  # flat (deposit, PMT) index of each early p.e.
        u = torch.rand(owner.shape, generator=generator, dtype=f64, device=device) * u_split.index_select(0, owner)
        t_early = rows.early_times(flat_index, flat_weight, pair, u, node.index_select(0, owner))
        first = torch.full((n_pmt,), math.inf, device=device).scatter_reduce_(0, owner, t_early, reduce="amin")
        # 2. late p.e.: only pairs whose earliest late time is before the earliest early p.e.
        bound = rows.time_at_node(index, weight, node.to(torch.int32))
        pair = torch.nonzero((bound < first).reshape(-1)).squeeze(1)
        gap = _exponential(pair.shape, generator, device)
        pmt, t_late, hit, used = rows.late_times(flat_index, flat_weight, lam.reshape(-1), u_split, node, pair, gap)
        first = first.scatter_reduce_(0, pmt, t_late, reduce="amin")
        rest = (lam_sum * (1.0 - u_split)).index_add_(0, pmt, -used)
        counts = (n_early.index_add_(0, pmt, hit.to(f64)) + torch.poisson(rest.clamp_min_(0), generator)).float()
        first = torch.where(counts > 0, first, torch.full_like(first, NO_HIT_TIME_NS))
        return counts.index_select(0, self._local_to_pmt), first.index_select(0, self._local_to_pmt)

    def response_pairwise(self, positions: Tensor, energies: Tensor, times: Tensor, generator: torch.Generator
                          ) -> tuple[Tensor, Tensor]:
        """:meth:`response` by the pair-by-pair algorithm (the earlier default; same law, slower): each
        (PMT, deposit) pair is a Poisson process of p.e. with mean ``lam`` and time density from the
        table. Its first p.e. comes at the quantile u = E / lam of its time distribution, E ~ Exp(1), when
        E < lam (else the pair has no p.e.), and the pair's further p.e. are Poisson(lam - E): so one
        exponential per sampled pair and one Poisson per PMT give the exact joint law of (npe, first hit).
        Pairs that cannot beat the earliest sampled hit are not sampled (their p.e. join the Poisson).
        """
        if bool((energies < 0).any()) or not bool(torch.isfinite(energies).all()):
            raise DataError(f"deposit energies must be finite and >= 0 MeV (got min {float(energies.min())})")
        r, theta = self._pair_geometry(positions)  # (1, M), (P, M)
        check_point_inputs(r[0], theta[:, 0], self.tables.r_max_m, "deposits")
        r_full = r.expand_as(theta)
        per_mev, earliest = self.tables.lookup(r_full, theta)
        lam = per_mev.clamp_min(0) * energies  # (P, M)
        earliest = earliest + times
        k = min(self.first_candidates, lam.shape[1])
        _, index = torch.topk(earliest, k, dim=1, largest=False)  # the k pairs per PMT that can be earliest
        t, rest = self._sample_pairs(lam.gather(1, index), r_full.gather(1, index), theta.gather(1, index),
                                     times[index], generator)
        first, counts = t.min(1).values, torch.isfinite(t).sum(1).to(lam.dtype)
        poisson_mean = rest.sum(1) + lam.sum(1) - lam.gather(1, index).sum(1)
        # every other pair that could still hold an earlier hit is sampled as well (exact pruning)
        could_be_earlier = (earliest < first.unsqueeze(1)).scatter_(1, index, False)
        pmt, deposit = torch.nonzero(could_be_earlier, as_tuple=True)
        if pmt.numel():
            pair_lam = lam[pmt, deposit]
            t, rest = self._sample_pairs(pair_lam, r[0, deposit], theta[pmt, deposit], times[deposit], generator)
            first = first.scatter_reduce(0, pmt, t, reduce="amin")
            counts = counts.index_add(0, pmt, torch.isfinite(t).to(lam.dtype))
            poisson_mean = poisson_mean.index_add(0, pmt, rest - pair_lam)
        counts = counts + torch.poisson(poisson_mean.clamp_min(0), generator)
        return counts, torch.where(counts > 0, first, torch.full_like(first, NO_HIT_TIME_NS))

    def _sample_pairs(self, lam: Tensor, r: Tensor, theta: Tensor, times: Tensor, generator: torch.Generator
                      ) -> tuple[Tensor, Tensor]:
        """Per pair: the first p.e. time (inf without p.e.) and the mean of its further p.e. (lam - E, or 0)."""
        gap = torch.empty_like(lam).exponential_(generator=generator)
        hit = gap < lam
        u = (gap / lam.clamp_min(1e-30)).clamp(1e-12, 1.0 - 1e-7)
        t = self.tables.time_quantile(r, theta, torch.special.ndtri(u)) + times
        return torch.where(hit, t, torch.full_like(t, math.inf)), torch.where(hit, lam - gap, torch.zeros_like(lam))

    def muon(self, entry_m: np.ndarray, direction: np.ndarray, generator: torch.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
        """npe (P,) int32 and first-hit times (P,) float32 (ns from the LS entry; -1 without p.e.) of one muon."""
        positions, energies, times = self.deposits(entry_m, direction)
        npe, first = self.response(positions, energies, times, generator)
        return npe.cpu().numpy().astype(np.int32), first.cpu().numpy().astype(np.float32)

    # ---- point deposits (1 MeV gammas on the z axis)
    def points(self, r_m: np.ndarray, *, energy_mev: float, generator: torch.Generator
               ) -> dict[str, dict[str, np.ndarray]]:
        """Point deposits at (0, 0, r_m): tables ``pmt`` and ``hits`` in the layout of ``simulate_points``."""
        if not energy_mev >= 0:
            raise DataError(f"energy_mev = {energy_mev}; expected a deposit energy >= 0 MeV")
        n_pmt = self.detector.n_pmt
        theta_pmt = torch.from_numpy(pmt_theta(self.detector)).float().to(self.device)
        r = torch.from_numpy(np.asarray(r_m, dtype=np.float64)).float().to(self.device)
        check_point_inputs(r, theta_pmt, self.tables.r_max_m, "point deposits")
        rr, tt = r[:, None].expand(-1, n_pmt), theta_pmt[None, :].expand(len(r), -1)
        per_mev, _ = self.tables.lookup(rr, tt)
        npe = torch.poisson((per_mev.clamp_min(0) * energy_mev).contiguous(), generator)
        # every p.e. gets its own hit time; the PMT's first hit is the earliest of them
        counts = npe.reshape(-1).long()
        owner = torch.repeat_interleave(torch.arange(counts.numel(), device=self.device), counts)
        z = torch.randn(owner.shape, generator=generator, device=self.device)
        hit_time = self.tables.time_quantile(rr.reshape(-1)[owner], tt.reshape(-1)[owner], z)
        first = torch.full((counts.numel(),), math.inf, device=self.device)
        first = first.scatter_reduce(0, owner, hit_time, reduce="amin")
        first = torch.where(counts > 0, first, torch.full_like(first, NO_HIT_TIME_NS))
        event, pmt = owner // n_pmt, owner % n_pmt  # ordered by (event, PMT) as repeat_interleave makes them
        event_np = np.repeat(np.arange(len(r), dtype=np.int32), n_pmt)
        return {
            "pmt": {"event": event_np, "pmt": np.tile(np.arange(n_pmt, dtype=np.int32), len(r)),
                    "r_m": rr.reshape(-1).cpu().numpy().astype(np.float32),
                    "theta": tt.reshape(-1).cpu().numpy().astype(np.float32),
                    "npe": counts.cpu().numpy().astype(np.int32),
                    "first_hit_ns": first.cpu().numpy().astype(np.float32)},
            "hits": {"event": event.cpu().numpy().astype(np.int32),
                     "pmt": pmt.cpu().numpy().astype(np.int32),
                     "r_m": r[event].cpu().numpy().astype(np.float32),
                     "theta": theta_pmt[pmt].cpu().numpy().astype(np.float32),
                     "time_ns": hit_time.cpu().numpy().astype(np.float32)},
        }


# ------------------------------------------------------------------------------------------------- the family
class PointNpeSampler(nn.Module):
    """``(noise, encoded r_m/theta) -> npe`` of one 1-MeV-like point deposit from the tables (Poisson inverse CDF).

    Deterministic given the noise (npe = the Poisson quantile at Phi(noise)); the trainer compares it with
    held-out point data, which checks the tabulation end to end. The count range is data-dependent, so this
    graph is for generation and validation, not for ONNX export.
    """

    def __init__(self, family: JunoMuonFastSim):
        super().__init__()
        self.family = family

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        family = self.family
        physical = conditions[:, family.condition_index] * family.condition_scale + family.condition_shift
        per_mev, _ = family.tables.lookup(physical[:, 0], physical[:, 1])
        mean = (per_mev.clamp_min(0) * family.config.point_energy_mev).unsqueeze(1)
        k_max = int(float(mean.max()) + 10.0 * math.sqrt(float(mean.max())) + 10.0) if mean.numel() else 1
        k = torch.arange(k_max + 1, device=mean.device, dtype=mean.dtype)
        pmf = torch.exp(torch.special.xlogy(k, mean) - mean - torch.lgamma(k + 1))
        u = torch.special.ndtr(noise[:, :1])
        return (torch.cumsum(pmf, dim=1) < u).sum(1, keepdim=True).to(noise.dtype)


class JunoMuonFastSim(ModelFamily):
    """The ``juno_muon`` family: tables of two trained runs (fitted in closed form) and a muon-file generator.

    ``detgen train`` on point data (conditions r_m, theta; target npe) builds the tables from
    ``model.npe_run`` and ``model.time_run`` and records how the table's npe sampler compares with the
    held-out point data; ``detgen generate`` with a file of muon tracks (columns x0, y0, z0, dx, dy, dz)
    writes per-muon ``npe`` and ``first_hit_ns`` arrays (see :meth:`generate_file`).
    """

    trainable = False
    noise_dim = 1
    condition_index: Tensor
    condition_shift: Tensor
    condition_scale: Tensor

    def __init__(self, *, n_targets: int, n_conditions: int, config: JunoMuonConfig,
                 detector: JunoDetector = DEFAULT_DETECTOR):
        super().__init__()
        self.config = config
        self.detector = detector
        self.tables = ResponseTables(r_nodes=config.r_nodes, theta_nodes=config.theta_nodes,
                                     quantile_nodes=config.quantile_nodes, r_max_m=detector.ls_radius_m)
        self.register_buffer("condition_index", torch.tensor([0, 1]))
        self.register_buffer("condition_shift", torch.zeros(2))
        self.register_buffer("condition_scale", torch.ones(2))

    def bind_preprocessor(self, preprocessor: Any) -> None:
        specs = {s["column"]: (i, s) for i, s in enumerate(preprocessor.condition_specs)}
        for j, column in enumerate(("r_m", "theta")):
            index, spec = specs[column]
            self.condition_index[j] = index
            self.condition_shift[j] = spec["shift"]
            self.condition_scale[j] = spec["scale"]

    def fit(self, targets: Tensor, conditions: Tensor) -> dict[str, Any]:
        from detgen.runs import load_run

        started = time.perf_counter()
        npe_run, time_run = load_run(self.config.npe_run), load_run(self.config.time_run)
        tables = tabulate_response(npe_run, time_run, r_nodes=self.config.r_nodes,
                                   theta_nodes=self.config.theta_nodes, noise_draws=self.config.noise_draws,
                                   quantile_nodes=self.config.quantile_nodes,
                                   point_energy_mev=self.config.point_energy_mev, r_max_m=self.detector.ls_radius_m)
        clipped = int(tables.pop("npe_cells_clipped_to_zero"))  # logged by the trainer with fit_info, in meta.json
        calibration: dict[str, Any] = {}
        if self.config.time_calibration_rows > 0:
            r_m, theta, time_ns, source = time_run_training_hits(time_run, self.config.time_calibration_rows)
            quantiles, calibration = calibrate_time_quantiles(
                tables["time_quantiles"].double().numpy(), r_m, theta, time_ns, r_max_m=self.detector.ls_radius_m,
                passes=self.config.time_calibration_passes, prior_hits=self.config.time_calibration_prior_hits,
                source=source)
            tables["time_quantiles"] = torch.from_numpy(quantiles).float()
        for name, value in tables.items():
            getattr(self.tables, name).copy_(value)
        mean = tables["npe_per_mev"] * self.config.point_energy_mev
        dispersion = (tables["npe_variance"] / mean)[mean > 0.05]
        return {"npe_run": str(Path(self.config.npe_run).resolve()),
                "time_run": str(Path(self.config.time_run).resolve()),
                "npe_dispersion_median": round(float(dispersion.median()), 4) if dispersion.numel() else None,
                "npe_cells_clipped_to_zero": clipped,
                **calibration,
                "tabulation_seconds": round(time.perf_counter() - started, 2)}

    def generator(self) -> nn.Module:
        return PointNpeSampler(self)

    def simulator(self, device: torch.device | str = "cpu") -> FastMuonSimulator:
        return FastMuonSimulator(self.tables, detector=self.detector, step_m=self.config.step_m,
                                 first_candidates=self.config.first_candidates, device=device)

    def generate_file(self, run: Any, conditions: str | Path, out: str | Path, *, seed: int, batch_size: int,
                      device: torch.device, split: str | None, progress: bool, log: Log) -> dict[str, Any]:
        """Simulate every muon track of ``conditions``; write the track columns plus per-muon arrays to ``out``."""
        return generate_muons(self.simulator(device), conditions, out, seed=seed, batch_size=batch_size,
                              split=split, progress=progress, log=log)


def time_run_training_hits(run: Any, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(r_m, theta, time, source) of up to ``rows`` random hits of the time run's training split (its file, read
    again and checked by sha256; without the run's ``max_train_rows`` cap) for :func:`calibrate_time_quantiles`."""
    from detgen.dataset import read_run_split

    path = Path(str(run.meta.get("data", {}).get("path", "")))
    if not path.is_file():
        raise ConfigError(f"{run.path}: the time calibration reads the time run's training file {path}, which is "
                          "missing; restore it or set model.time_calibration_rows: 0")
    targets = list(run.config.data.targets)
    if len(targets) != 1:
        raise ConfigError(f"{run.path}: the time run has targets {targets}; expected one hit-time column")
    train = read_run_split(run, path, "train", cap_train=False, purpose="the time calibration")
    n = len(train[targets[0]])
    keep = np.arange(n)
    if n > rows:
        keep = np.sort(np.random.default_rng([run.config.data.split_seed, 2]).choice(n, size=rows, replace=False))
    return (np.asarray(train["r_m"])[keep], np.asarray(train["theta"])[keep], np.asarray(train[targets[0]])[keep],
            f"{path} (training split of {run.path})")


def tracks_inside(entry_m: np.ndarray, direction: np.ndarray, radius_m: float) -> np.ndarray:
    """Whether each line (entry point, unit direction) crosses the sphere of ``radius_m`` ahead of its start."""
    b = np.einsum("ij,ij->i", entry_m, direction)
    disc = b * b - (np.einsum("ij,ij->i", entry_m, entry_m) - radius_m**2)
    return (disc > 0) & (-b + np.sqrt(np.clip(disc, 0, None)) > 0)


def generate_muons(sim: FastMuonSimulator, conditions: str | Path, out: str | Path, *, seed: int = 0,
                   batch_size: int = 64, split: str | None = None, progress: bool = True, log: Log = print
                   ) -> dict[str, Any]:
    """Fast-simulate the muon tracks of a file; tracks that miss the LS sphere are counted and left out."""
    from detgen.io import TableWriter, read_table, require_columns, require_finite, table_length

    source = str(conditions)
    if split is not None:
        raise DataError(f"--split {split}: a juno_muon run simulates a file of muon tracks; give the file itself")
    table = read_table(conditions)
    require_columns(table, list(TRACK_COLUMNS), source=source)
    require_finite(table, list(TRACK_COLUMNS), source=source)
    n = table_length(table)
    if n == 0:
        raise DataError(f"{source}: no muon tracks")
    entry = np.stack([table[c] for c in TRACK_COLUMNS[:3]], axis=1).astype(np.float64)
    direction = np.stack([table[c] for c in TRACK_COLUMNS[3:]], axis=1).astype(np.float64)
    norm = np.linalg.norm(direction, axis=1)
    if (norm == 0).any():
        raise DataError(f"{source}: {int((norm == 0).sum())} track(s) with direction (0, 0, 0) "
                        f"(first at row {int(np.flatnonzero(norm == 0)[0])}); expected a non-zero (dx, dy, dz)")
    direction = direction / norm[:, None]
    inside = tracks_inside(entry, direction, sim.detector.ls_radius_m)
    excluded = int(n - inside.sum())
    if excluded:
        log(f"note: {excluded} of {n} track(s) in {source} miss the LS sphere (radius {sim.detector.ls_radius_m} m); "
            "left out of the output (column muon_index gives each output row's input row)")
    if not inside.any():
        raise DataError(f"{source}: all {n} tracks miss the LS sphere; nothing to simulate")
    produced = {"npe", "first_hit_ns", "total_pe", "wall_time_s", "track_length_m", "edep_mev", "muon_index"}
    passthrough = [c for c in table if c not in produced and np.asarray(table[c]).ndim == 1]
    rows = np.flatnonzero(inside)
    generator = torch.Generator(device=sim.device).manual_seed(seed)
    started = time.perf_counter()
    bar = tqdm(total=len(rows), desc="JUNO fast muons", unit="muon", disable=None if progress else True)
    chunk = max(1, min(batch_size, 64))
    with TableWriter(out) as writer, torch.inference_mode():
        for begin in range(0, len(rows), chunk):
            part = rows[begin : begin + chunk]
            npe = np.zeros((len(part), sim.detector.n_pmt), np.int32)
            first = np.zeros((len(part), sim.detector.n_pmt), np.float32)
            wall = np.zeros(len(part))
            length = np.zeros(len(part))
            for j, i in enumerate(part):
                tic = time.perf_counter()
                npe[j], first[j] = sim.muon(entry[i], direction[i], generator)
                wall[j] = time.perf_counter() - tic
                length[j] = track_chord(entry[i], direction[i], detector=sim.detector)[1]
                bar.update()
            batch = {c: np.asarray(table[c])[part] for c in passthrough}
            batch.update({"muon_index": part.astype(np.int64), "track_length_m": length,
                          "edep_mev": length * 1e3 * sim.detector.muon_dedx_mev_per_mm,
                          "total_pe": npe.sum(axis=1, dtype=np.int64), "wall_time_s": wall,
                          "npe": npe, "first_hit_ns": first})
            writer.append(batch)
    bar.close()
    seconds = time.perf_counter() - started
    log(f"simulated {len(rows)} muons in {seconds:.2f}s ({seconds / len(rows) * 1e3:.1f} ms/muon) -> {out}")
    return {"rows": len(rows), "excluded_missing_ls": excluded, "seconds": seconds,
            "seconds_per_muon": seconds / len(rows), "rows_per_second": len(rows) / seconds}


def check_juno_muon_config(config: JunoMuonConfig, data: DataConfig, source: str) -> None:
    """The juno_muon family needs point data (r_m, theta -> npe) and two run dirs."""
    if not config.npe_run or not config.time_run:
        raise ConfigError(f"{source}: model.npe_run and model.time_run must name the trained NN_npe and NN_time runs")
    if sorted(data.conditions) != ["r_m", "theta"] or data.targets != ["npe"] or data.categorical:
        raise ConfigError(f"{source}: model.family juno_muon is built on point data: data.conditions [r_m, theta], "
                          f"data.targets [npe]; got {data.conditions} -> {data.targets}")
    if data.transforms.get("npe", "standard") != "identity":
        raise ConfigError(f"{source}: data.transforms.npe must be identity for juno_muon (counts in physical units)")
    for column in ("r_m", "theta"):
        if data.transforms.get(column, "standard") == "log":
            raise ConfigError(f"{source}: data.transforms.{column} = log is not supported by juno_muon")
    if data.group_by is not None:
        raise ConfigError(f"{source}: data.group_by is not supported by juno_muon")
    for name in ("r_nodes", "theta_nodes", "noise_draws", "quantile_nodes"):
        if getattr(config, name) < 2:
            raise ConfigError(f"{source}: model.{name} = {getattr(config, name)}; expected at least 2")
    if config.time_calibration_rows < 0 or config.time_calibration_passes < 1 or config.time_calibration_prior_hits < 0:
        raise ConfigError(f"{source}: model.time_calibration_rows must be >= 0 (0: off), time_calibration_passes "
                          ">= 1 and time_calibration_prior_hits >= 0")
    if config.step_m <= 0 or config.point_energy_mev <= 0 or config.first_candidates < 1:
        raise ConfigError(f"{source}: model.step_m, point_energy_mev and first_candidates must be positive")


def add_dequantized_counts(pmt_table: dict[str, np.ndarray], *, seed: int = 0) -> None:
    """Add ``npe_dequantized = npe + U(0, 1)`` to a point-mode pmt table (the target of configs/juno_npe_flow.yaml).

    A density model (a flow) cannot fit integer counts; on the dequantised column ``floor(sample)`` is a count
    with the learned distribution (uniform dequantisation, e.g. Theis et al., arXiv:1511.01844).
    """
    npe = np.asarray(pmt_table["npe"])
    pmt_table[DEQUANTIZED_NPE_COLUMN] = (npe + np.random.default_rng(seed).random(len(npe))).astype(np.float32)

