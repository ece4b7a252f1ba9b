"""BESIII drift-chamber dE/dx observables: calibration, chi_i, dE/dx PID and the truth-vs-generated validation.

The analysis follows BOSS (ParticleID/DedxPID): an expected-value curve E(beta*gamma) and a resolution
model sigma(beta*gamma, N_hit, sin theta) are fitted **once, on the truth sample**, then applied to both
samples exactly as a physics analysis would apply its calibration to data and to simulation. For every
hypothesis i, chi_i = (dE/dx - E_i) / sigma_i; a track is identified as the hypothesis with the smallest
|chi| when that |chi| < 4 and the track has at least 5 hits. PID efficiencies and mis-identification
rates in bins of p and cos(theta), dE/dx distances per (p, theta) bin and a classifier two-sample test
then measure how well the generated sample reproduces the truth. See docs/metrics_dedx.md for every key.

Units: p in GeV/c, theta in rad, dE/dx in the gain-normalised units of the input (electron plateau ~550).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import interpolate, optimize

from detgen.errors import ConfigError, DataError
from detgen.io import finite_column
from detgen.particles import HYPOTHESIS_MASS_GEV, HYPOTHESIS_OF, MASS_GEV, SPECIES
from detgen.validation import metrics as m
from detgen.validation import plots
from detgen.validation.report import write_metrics, write_report_html

FloatArray = NDArray[np.float64]
Table = Mapping[str, Any]

#: Columns every dE/dx table must have (cos_theta is optional and computed from theta when absent).
REQUIRED_COLUMNS: tuple[str, ...] = ("species", "p", "theta", "nhits", "dedx")
#: Every hypothesis BOSS tests, lightest first.
ALL_HYPOTHESES: tuple[str, ...] = ("e", "mu", "pi", "K", "p")
#: PID cuts from BOSS DedxPID: |chi| of the chosen hypothesis below 4, at least 5 good hits.
MAX_ABS_CHI = 4.0
MIN_GOOD_HITS = 5
#: Fraction of hits kept by the truncated mean (N_use = int(0.7 N_hit)) and the reference N_use of
#: the resolution model (a full-length BESIII track).
TRUNCATION_FRACTION = 0.7
REFERENCE_N_USE = 35.0
#: sin(theta) floor in the resolution model; tracks inside the MDC acceptance (|cos theta| < 0.93,
#: sin theta > 0.37) never reach it, it only keeps sigma finite for a track along the beam.
MIN_SIN_THETA = 0.05
#: Default binning of the PID comparison: p 0.1-2.0 GeV/c in 0.1 steps, |cos theta| < 0.93 in 10 bins.
P_EDGES_GEV: FloatArray = np.round(np.linspace(0.1, 2.0, 20), 6)
COS_THETA_EDGES: FloatArray = np.round(np.linspace(-0.93, 0.93, 11), 6)
#: Coarser (p, cos theta) grid for the dE/dx distribution distances (W1, KS) and 1-D figures.
DISTRIBUTION_P_EDGES_GEV: FloatArray = np.array([0.1, 0.3, 0.5, 0.7, 0.9, 1.2, 1.5, 2.0])
DISTRIBUTION_COS_THETA_EDGES: FloatArray = np.round(np.linspace(-0.93, 0.93, 6), 6)
#: Bins with fewer tracks than this in either sample are left out of the comparisons.
MIN_ENTRIES_EFFICIENCY = 20
MIN_ENTRIES_DISTRIBUTION = 100
#: Relative uncertainty floor on the per-bin medians of the curve fit: with millions of tracks the
#: statistical errors are tiny and a few bins would otherwise dominate an imperfect functional form.
CURVE_RELATIVE_ERROR_FLOOR = 1e-3

_SPECIES_MASS = np.array([MASS_GEV[label] for label in SPECIES])


# --------------------------------------------------------------------------------------------------
# Input checking


@dataclass(frozen=True)
class Tracks:
    """A checked dE/dx table as float arrays (see :func:`as_tracks`).

    Attributes:
        species: integer index into :data:`detgen.particles.SPECIES` per track.
        p: momentum in GeV/c.
        theta: polar angle in rad.
        cos_theta: cos(theta) (the table's column when present).
        nhits: number of dE/dx hits.
        dedx: truncated-mean dE/dx (gain-normalised units).
    """

    species: NDArray[np.int64]
    p: FloatArray
    theta: FloatArray
    cos_theta: FloatArray
    nhits: FloatArray
    dedx: FloatArray

    def __len__(self) -> int:
        return int(self.p.size)

    @property
    def sin_theta(self) -> FloatArray:
        """sin(theta) from cos(theta), floored at :data:`MIN_SIN_THETA`."""
        return np.maximum(np.sqrt(np.clip(1.0 - self.cos_theta**2, 0.0, 1.0)), MIN_SIN_THETA)

    @property
    def beta_gamma(self) -> FloatArray:
        """beta*gamma = p/m with each track's true mass."""
        return self.p / _SPECIES_MASS[self.species]

    def labels_present(self) -> set[str]:
        """Species labels that have at least one track."""
        return {SPECIES[i] for i in np.flatnonzero(np.bincount(self.species, minlength=len(SPECIES)))}


def _species_codes(table: Table, name: str) -> NDArray[np.int64]:
    """Integer species codes of ``table['species']``, or a DataError listing unknown labels."""
    labels = np.asarray(table["species"]).ravel()
    if labels.dtype.kind == "S":
        labels = labels.astype("U")
    codes = np.full(labels.size, -1, dtype=np.int64)
    # One comparison per known label is much faster than np.unique over a million Python strings.
    for code, label in enumerate(SPECIES):
        codes[labels == label] = code
    if (codes < 0).any():
        unknown = sorted({str(x) for x in labels[codes < 0][:1000]})
        raise DataError(f"{name}: column 'species' has unknown labels {unknown[:10]}; expected labels from "
                        f"{list(SPECIES)}")
    return codes


def as_tracks(table: Table | Tracks, name: str = "table") -> Tracks:
    """Check a dE/dx table and return it as :class:`Tracks`.

    Raises:
        DataError: naming the column, for a missing column, unequal lengths, an empty table, NaN/inf,
            unknown species, p <= 0, negative nhits or |cos theta| > 1.
    """
    if isinstance(table, Tracks):
        return table
    missing = [column for column in REQUIRED_COLUMNS if column not in table]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; expected columns {list(REQUIRED_COLUMNS)}")
    species = _species_codes(table, name)
    if species.size == 0:
        raise DataError(f"{name}: column 'species' is empty; expected at least one track")
    p, theta, nhits, dedx = (finite_column(table, c, source=name, n_rows=species.size) for c in ("p", "theta", "nhits", "dedx"))
    if "cos_theta" in table:
        cos_theta = finite_column(table, "cos_theta", source=name, n_rows=species.size)
    else:
        cos_theta = np.cos(theta)
    for column, bad, expected in (
        ("p", p <= 0, "momenta > 0 GeV/c"),
        ("nhits", nhits < 0, "hit counts >= 0"),
        ("cos_theta", np.abs(cos_theta) > 1, "values in [-1, 1]"),
    ):
        if bad.any():
            raise DataError(f"{name}: column '{column}' has {int(bad.sum())} bad values; expected {expected}")
    return Tracks(species, p, theta, cos_theta, nhits, dedx)


def _check_hypotheses(hypotheses: Sequence[str]) -> tuple[str, ...]:
    """Return ``hypotheses`` as a tuple after checking the names; ConfigError naming a bad one."""
    names = tuple(hypotheses)
    unknown = [h for h in names if h not in HYPOTHESIS_MASS_GEV]
    if unknown or len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"hypotheses {list(names)}: expected at least two distinct names from "
                          f"{list(HYPOTHESIS_MASS_GEV)}" + (f", unknown {unknown}" if unknown else ""))
    return names


# --------------------------------------------------------------------------------------------------
# Expected-value curve and resolution model


def beta_gamma(p_gev: ArrayLike, mass_gev: float | ArrayLike) -> FloatArray:
    """beta*gamma = p / m (p in GeV/c, m in GeV/c^2)."""
    return np.asarray(p_gev, dtype=np.float64) / np.asarray(mass_gev, dtype=np.float64)


def expected_curve(bg: ArrayLike, p0: float, p1: float, p2: float, p3: float, p4: float) -> FloatArray:
    """BESIII expected dE/dx: E(bg) = p0 / beta^p3 * (p1 - ln(p2 + bg^-p4)) - p0, beta = bg/sqrt(1+bg^2).

    The 1/beta^p3 term is the low-momentum fall, ln(bg^p4) the relativistic rise and p2 the onset of
    the density-effect plateau (E -> p0 (p1 - ln p2 - 1) for bg -> inf).
    """
    x = np.asarray(bg, dtype=np.float64)
    beta = x / np.sqrt(1.0 + x * x)
    return p0 / beta**p3 * (p1 - np.log(p2 + x ** (-p4))) - p0


def relative_resolution(
    bg: ArrayLike, n_use: ArrayLike, sin_theta: ArrayLike, s0: float, s1: float, s2: float, b: float, c: float
) -> FloatArray:
    """Resolution model sigma/E = s0 (1 + s1 bg^-s2) (N_use/35)^-b sin(theta)^-c.

    s0 is the relative resolution of a full-length (N_use = 35) track at theta = 90 deg and high bg,
    s1 bg^-s2 the degradation at low bg, b the hit-count exponent (~0.5 for independent hits; BESIII
    quotes 0.95 for its early runs), c the path-length exponent (negative: longer samples per cell at
    small sin(theta) improve the resolution).
    """
    x = np.asarray(bg, dtype=np.float64)
    n_ratio = np.maximum(np.asarray(n_use, dtype=np.float64), 1.0) / REFERENCE_N_USE
    return s0 * (1.0 + s1 * x ** (-s2)) * n_ratio ** (-b) * np.asarray(sin_theta, dtype=np.float64) ** (-c)


def n_used_hits(nhits: ArrayLike) -> FloatArray:
    """Hits kept by the 70% truncated mean, N_use = int(0.7 N_hit)."""
    return np.floor(TRUNCATION_FRACTION * np.asarray(nhits, dtype=np.float64))


@dataclass(frozen=True)
class DedxCalibration:
    """Fitted dE/dx calibration: the expected-value curve and the resolution model.

    E(bg) = expected_curve(bg; p0..p4) * correction(bg), where the optional correction is a table of
    factors in log10(bg), interpolated linearly and held constant beyond its ends: the smoothed ratio
    of the truth medians to the fitted curve. It absorbs the few-% shape differences between the
    BESIII functional form and a given detector (or simulator) without changing the analysis.

    Attributes:
        curve: (p0, p1, p2, p3, p4) of :func:`expected_curve`.
        resolution: (s0, s1, s2, b, c) of :func:`relative_resolution`.
        curve_rel_residual_rms: RMS over the fitted log(bg) bins of median / curve - 1 (fit quality of
            the functional form alone, before the correction).
        curve_converged: False if the least-squares curve fit stopped without converging.
        bg_range: (min, max) beta*gamma of the truth bins used in the curve fit.
        correction_log10_bg: abscissae of the correction table (empty: no correction).
        correction_factor: correction factors at those abscissae.
    """

    curve: tuple[float, float, float, float, float]
    resolution: tuple[float, float, float, float, float]
    curve_rel_residual_rms: float = float("nan")
    curve_converged: bool = True
    bg_range: tuple[float, float] = (float("nan"), float("nan"))
    correction_log10_bg: tuple[float, ...] = ()
    correction_factor: tuple[float, ...] = ()

    def expected(self, bg: ArrayLike) -> FloatArray:
        """Expected dE/dx at beta*gamma ``bg`` (functional form times the correction table)."""
        value = expected_curve(bg, *self.curve)
        if self.correction_factor:
            value = value * np.interp(np.log10(bg), self.correction_log10_bg, self.correction_factor)
        return value

    def sigma(self, bg: ArrayLike, nhits: ArrayLike, sin_theta: ArrayLike) -> FloatArray:
        """Absolute dE/dx resolution sigma = E(bg) * sigma/E for tracks with ``nhits`` hits at ``sin_theta``."""
        return self.expected(bg) * relative_resolution(bg, n_used_hits(nhits), sin_theta, *self.resolution)

    def to_metrics(self) -> dict[str, float | bool]:
        """The calibration as flat ``calib_*`` metric keys."""
        out: dict[str, float | bool] = {f"calib_curve_p{i}": float(v) for i, v in enumerate(self.curve)}
        names = ("s0", "s1", "s2", "nhit_exponent", "sin_theta_exponent")
        out.update({f"calib_sigma_{n}": float(v) for n, v in zip(names, self.resolution)})
        out["calib_curve_rel_residual_rms"] = float(self.curve_rel_residual_rms)
        out["calib_curve_converged"] = bool(self.curve_converged)
        out["calib_bg_min"], out["calib_bg_max"] = (float(v) for v in self.bg_range)
        factors = np.asarray(self.correction_factor, dtype=np.float64)
        out["calib_curve_max_abs_correction"] = float(np.max(np.abs(factors - 1))) if factors.size else 0.0
        return out


@dataclass(frozen=True)
class CurveFit:
    """Result of :func:`fit_expected_curve`.

    Attributes:
        curve: fitted (p0, p1, p2, p3, p4).
        rel_residual_rms: RMS over the bins of median / curve - 1.
        converged: whether the least-squares fit converged.
        log10_bg: median log10(bg) of every bin used.
        ratio: median dE/dx / curve in every bin used.
        ratio_error: uncertainty of ``ratio``.
    """

    curve: tuple[float, float, float, float, float]
    rel_residual_rms: float
    converged: bool
    log10_bg: FloatArray
    ratio: FloatArray
    ratio_error: FloatArray

    def smoothed_ratio(self) -> FloatArray:
        """``ratio`` through a cubic smoothing spline in log10(bg) (smoothness by generalised cross-validation).

        The spline follows a real shape difference between the data and the functional form and
        averages away the bin-to-bin noise of sparse bins.
        """
        if self.log10_bg.size < 5:
            return np.asarray(self.ratio, dtype=np.float64)
        spline = interpolate.make_smoothing_spline(self.log10_bg, self.ratio, w=self.ratio_error**-2.0)
        return np.asarray(spline(self.log10_bg), dtype=np.float64)


def _binned_medians(
    log_bg: FloatArray, dedx: FloatArray, n_bins: int, min_entries: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per log10(bg) bin: (median bg, median dE/dx, uncertainty of that median) for filled bins."""
    edges = np.linspace(log_bg.min(), log_bg.max() + 1e-9, n_bins + 1)
    index = np.digitize(log_bg, edges) - 1
    q_dedx, counts = m.binned_quantiles(index, dedx, n_bins, [m.ONE_SIGMA_QUANTILES[0], 0.5,
                                                               m.ONE_SIGMA_QUANTILES[1]])
    q_bg, _ = m.binned_quantiles(index, log_bg, n_bins, [0.5])
    keep = counts >= min_entries
    width = 0.5 * (q_dedx[keep, 2] - q_dedx[keep, 0])
    median = q_dedx[keep, 1]
    # Error of a median is sqrt(pi/2) sigma/sqrt(n) for a Gaussian core.
    error = np.hypot(1.2533 * width / np.sqrt(counts[keep]), CURVE_RELATIVE_ERROR_FLOOR * np.abs(median))
    return 10 ** q_bg[keep, 0], median, error


#: Bounds of the non-linear curve parameters (log10 p2, p3, p4) in the fit.
_CURVE_LOWER, _CURVE_UPPER = np.array([-12.0, 0.1, 0.05]), np.array([3.0, 6.0, 6.0])


def _solve_linear_part(
    bg: FloatArray, median: FloatArray, error: FloatArray, shape: ArrayLike
) -> tuple[float, float, FloatArray]:
    """Best (p0, p1) for fixed shape = (log10 p2, p3, p4), and the weighted residuals.

    For fixed (p2, p3, p4) the curve is linear in (p0*p1, p0): E = (p0 p1) / beta^p3 - p0 (L / beta^p3 + 1)
    with L = ln(p2 + bg^-p4), so weighted linear least squares gives the exact optimum.
    """
    log10_p2, p3, p4 = (float(v) for v in np.asarray(shape, dtype=np.float64))
    inverse_beta = (np.sqrt(1 + bg * bg) / bg) ** p3
    log_term = np.log(10**log10_p2 + bg ** (-p4))
    design = np.column_stack([inverse_beta, -(log_term * inverse_beta + 1)]) / error[:, None]
    (p0_p1, p0), *_ = np.linalg.lstsq(design, median / error, rcond=None)
    residual = design @ np.array([p0_p1, p0]) - median / error
    return float(p0), float(p0_p1 / p0) if p0 != 0 else float("nan"), residual


def _curve_start(bg: FloatArray, median: FloatArray, error: FloatArray) -> FloatArray:
    """Starting shape (log10 p2, p3, p4): the best point of a coarse grid (with p0 > 0)."""
    best, best_cost = np.array([-3.0, 2.0, 1.0]), np.inf
    for p3 in (1.0, 1.5, 2.0, 2.5, 3.0):
        for p4 in (0.3, 0.6, 1.0, 1.5, 2.0, 3.0):
            for log10_p2 in np.linspace(-7, 0.5, 16):
                p0, _, residual = _solve_linear_part(bg, median, error, (log10_p2, p3, p4))
                cost = float(residual @ residual)
                if p0 > 0 and cost < best_cost:
                    best, best_cost = np.array([log10_p2, p3, p4]), cost
    return best


def fit_expected_curve(bg: ArrayLike, dedx: ArrayLike, *, n_bins: int = 80, min_entries: int = 100) -> CurveFit:
    """Fit :func:`expected_curve` to the per-bin median dE/dx in ``n_bins`` bins of log10(bg).

    The median is robust against the remaining Landau tail of the truncated mean; each bin sits at the
    median bg of its tracks, so the steep low-bg region is not biased by the bin width. The fit is by
    variable projection: the non-linear shape (log10 p2, p3, p4) is fitted with bounded least squares
    (scipy's ``least_squares``, the engine of ``curve_fit``), and for every trial shape the scale
    parameters (p0, p1) are solved exactly. This removes the strong p0-p1 correlation that makes a
    direct 5-parameter fit stall, and a coarse grid supplies the starting shape, so no hand-tuned
    starting values are needed.

    Raises:
        DataError: fewer than 6 bins with ``min_entries`` tracks, or no curve with p0 > 0 fits.
    """
    x, median, error = _binned_medians(np.log10(np.asarray(bg, dtype=np.float64)),
                                       np.asarray(dedx, dtype=np.float64), n_bins, min_entries)
    if x.size < 6:
        raise DataError(f"dedx calibration: only {x.size} beta*gamma bins have >= {min_entries} tracks; "
                        "expected at least 6 (need more truth tracks or a wider momentum range)")
    start = _curve_start(x, median, error)
    result = optimize.least_squares(lambda shape: _solve_linear_part(x, median, error, shape)[2], start,
                                    bounds=(_CURVE_LOWER, _CURVE_UPPER), max_nfev=500)
    shape = result.x
    p0, p1, _ = _solve_linear_part(x, median, error, shape)
    if not (p0 > 0 and np.isfinite(p1)):
        shape = start
        p0, p1, _ = _solve_linear_part(x, median, error, shape)
    if not (p0 > 0 and np.isfinite(p1)):
        raise DataError("dedx calibration: no expected-value curve with p0 > 0 fits the truth medians; "
                        "check the 'dedx' and 'p' columns of the truth sample")
    curve = (p0, p1, float(10 ** shape[0]), float(shape[1]), float(shape[2]))
    fitted = expected_curve(x, *curve)
    rms = float(np.sqrt(np.mean((median / fitted - 1) ** 2)))
    return CurveFit(curve, rms, bool(result.success), np.log10(x), median / fitted, error / fitted)


def fit_resolution(
    bg: ArrayLike, nhits: ArrayLike, sin_theta: ArrayLike, relative_residual: ArrayLike, *, min_entries: int = 50
) -> tuple[float, float, float, float, float]:
    """Fit :func:`relative_resolution` to the Gaussian-core widths of dE/dx/E - 1.

    Widths (half the central 68% interval) are measured in a 3-D grid of log10(bg) (10 bins), N_use
    (up to 6 quantile bins) and sin(theta) (5 bins); every bin with ``min_entries`` tracks enters one
    joint least-squares fit, each at the median (bg, N_use, sin theta) of its tracks.

    Returns:
        (s0, s1, s2, b, c).
    """
    log_bg = np.log10(np.asarray(bg, dtype=np.float64))
    n_use = n_used_hits(nhits)
    sin_values = np.asarray(sin_theta, dtype=np.float64)
    residuals = np.asarray(relative_residual, dtype=np.float64)
    axes = [
        np.linspace(log_bg.min(), log_bg.max() + 1e-9, 11),
        np.unique(np.quantile(n_use, np.linspace(0, 1, 7))),
        np.linspace(sin_values.min(), sin_values.max() + 1e-9, 6),
    ]
    axes[1][-1] += 1e-9
    sizes = [len(a) - 1 for a in axes]
    indices = [np.clip(np.digitize(v, a) - 1, 0, s - 1) for v, a, s in zip((log_bg, n_use, sin_values), axes, sizes)]
    flat = np.ravel_multi_index(indices, sizes)
    n_bins = int(np.prod(sizes))
    q, counts = m.binned_quantiles(flat, residuals, n_bins, m.ONE_SIGMA_QUANTILES)
    centres = [m.binned_quantiles(flat, v, n_bins, [0.5])[0][:, 0] for v in (log_bg, n_use, sin_values)]
    keep = (counts >= min_entries) & (q[:, 1] > q[:, 0])
    if keep.sum() < 3:
        raise DataError(f"dedx calibration: only {int(keep.sum())} resolution bins have >= {min_entries} tracks; "
                        "expected at least 3")
    width = 0.5 * (q[keep, 1] - q[keep, 0])
    # The quantile width has relative error ~ 1/sqrt(n); weight the bins accordingly.
    error = width / np.sqrt(counts[keep])
    x_bg, x_n, x_sin = 10 ** centres[0][keep], centres[1][keep], centres[2][keep]

    def residual(params: FloatArray) -> FloatArray:
        return (relative_resolution(x_bg, x_n, x_sin, *params) - width) / error

    lower, upper = [1e-5, 0.0, 0.0, -1.0, -3.0], [10.0, 1e3, 8.0, 3.0, 3.0]
    start = np.array([float(np.median(width)), 0.1, 1.0, 0.5, 0.0])
    result = optimize.least_squares(residual, start, bounds=(lower, upper), x_scale="jac", max_nfev=2000)
    s0, s1, s2, b, c = (float(v) for v in result.x)
    return s0, s1, s2, b, c


def fit_calibration(truth: Table | Tracks, *, residual_correction: bool = True) -> DedxCalibration:
    """Fit the expected-value curve and the resolution model on the truth sample (all species pooled).

    Every track enters at beta*gamma = p/m with its own species' mass; species with the same bg share
    one curve. The curve is fitted first (then, with ``residual_correction``, the smoothed ratio of the
    truth medians to it becomes the correction table), then the widths of dE/dx/E(bg) - 1 around it.
    """
    tracks = as_tracks(truth, "truth")
    bg = tracks.beta_gamma
    fit = fit_expected_curve(bg, tracks.dedx)
    correction = (tuple(fit.log10_bg.tolist()), tuple(fit.smoothed_ratio().tolist())) if residual_correction else ((), ())
    bg_range = (float(10 ** fit.log10_bg.min()), float(10 ** fit.log10_bg.max()))
    partial = DedxCalibration(fit.curve, (1.0, 0.0, 0.0, 0.0, 0.0), fit.rel_residual_rms, fit.converged, bg_range,
                              *correction)
    resolution = fit_resolution(bg, tracks.nhits, tracks.sin_theta, tracks.dedx / partial.expected(bg) - 1)
    return dataclasses.replace(partial, resolution=resolution)


# --------------------------------------------------------------------------------------------------
# chi and PID


def chi(
    table: Table | Tracks, calibration: DedxCalibration, hypotheses: Sequence[str] = ("pi", "K", "p")
) -> dict[str, FloatArray]:
    """chi_i = (dE/dx - E_i) / sigma_i for every hypothesis i (E_i and sigma_i at bg = p / m_i).

    Pass ``hypotheses=ALL_HYPOTHESES`` to include 'e' and 'mu'. Returns hypothesis -> chi per track.
    """
    tracks = as_tracks(table)
    sin_theta = tracks.sin_theta
    out = {}
    for hypothesis in _check_hypotheses(hypotheses):
        bg = beta_gamma(tracks.p, HYPOTHESIS_MASS_GEV[hypothesis])
        out[hypothesis] = (tracks.dedx - calibration.expected(bg)) / calibration.sigma(bg, tracks.nhits, sin_theta)
    return out


def identify(
    chis: Mapping[str, ArrayLike],
    nhits: ArrayLike | None = None,
    *,
    max_abs_chi: float = MAX_ABS_CHI,
    min_hits: int = MIN_GOOD_HITS,
) -> NDArray[np.int64]:
    """BOSS dE/dx PID: index (into ``list(chis)``) of the hypothesis with the smallest |chi|, or -1.

    A track is unidentified (-1) when that smallest |chi| is not below ``max_abs_chi`` or, when
    ``nhits`` is given, when it has fewer than ``min_hits`` hits.
    """
    abs_chi = np.abs(np.vstack([np.asarray(v, dtype=np.float64) for v in chis.values()]))
    best = np.argmin(abs_chi, axis=0)
    identified = np.take_along_axis(abs_chi, best[None, :], axis=0)[0] < max_abs_chi
    if nhits is not None:
        identified &= np.asarray(nhits) >= min_hits
    return np.where(identified, best, -1).astype(np.int64)


@dataclass(frozen=True)
class PidCounts:
    """Track counts for PID efficiencies in bins of one variable.

    Attributes:
        edges: bin edges of the variable.
        total: true hypothesis (charges pooled, 'pi' = pi+ and pi-) -> tracks per bin.
        assigned: (true hypothesis, assigned hypothesis) -> tracks per bin identified as the latter.
        species_total, species_assigned: the same per species label ('pi+', 'pbar', ...).
    """

    edges: FloatArray
    total: dict[str, NDArray[np.int64]]
    assigned: dict[tuple[str, str], NDArray[np.int64]]
    species_total: dict[str, NDArray[np.int64]]
    species_assigned: dict[tuple[str, str], NDArray[np.int64]]

    def rate(self, label: str, hypothesis: str, *, by_species: bool = False) -> tuple[FloatArray, FloatArray]:
        """(fraction of true ``label`` tracks identified as ``hypothesis``, binomial uncertainty) per bin.

        ``label`` is a hypothesis name, or a species label with ``by_species=True``; efficiency when
        ``hypothesis`` is the label's own, mis-identification rate otherwise.
        """
        if by_species:
            return m.binomial_efficiency(self.species_assigned[(label, hypothesis)], self.species_total[label])
        return m.binomial_efficiency(self.assigned[(label, hypothesis)], self.total[label])


def pid_counts(
    tracks: Tracks, assigned: NDArray[np.int64], hypotheses: Sequence[str], x: FloatArray, edges: ArrayLike
) -> PidCounts:
    """Count tracks per bin of ``x`` by true species and assigned hypothesis, in one bincount.

    ``assigned`` is the output of :func:`identify` (index into ``hypotheses``, -1 unidentified). Only
    tracks whose species belongs to ``hypotheses`` are counted; tracks outside ``edges`` are ignored.
    """
    bin_edges = np.asarray(edges, dtype=np.float64)
    n_bins, n_hyp, n_species = bin_edges.size - 1, len(hypotheses), len(SPECIES)
    bins = np.digitize(x, bin_edges) - 1
    inside = (bins >= 0) & (bins < n_bins)
    code = (tracks.species[inside] * (n_hyp + 1) + assigned[inside] + 1) * n_bins + bins[inside]
    table = np.bincount(code, minlength=n_species * (n_hyp + 1) * n_bins).reshape(n_species, n_hyp + 1, n_bins)
    counts = PidCounts(bin_edges, {}, {}, {}, {})
    for hypothesis in hypotheses:
        members = [i for i, label in enumerate(SPECIES) if HYPOTHESIS_OF[label] == hypothesis]
        counts.total[hypothesis] = table[members].sum(axis=(0, 1))
        for j, assigned_to in enumerate(hypotheses):
            counts.assigned[(hypothesis, assigned_to)] = table[members, j + 1].sum(axis=0)
        for i in members:
            counts.species_total[SPECIES[i]] = table[i].sum(axis=0)
            for j, assigned_to in enumerate(hypotheses):
                counts.species_assigned[(SPECIES[i], assigned_to)] = table[i, j + 1]
    return counts


# --------------------------------------------------------------------------------------------------
# Truth vs generated comparison


def _check_same_species(truth: Tracks, generated: Tracks) -> None:
    """DataError if a species has tracks in one sample and none in the other."""
    only_truth = truth.labels_present() - generated.labels_present()
    only_generated = generated.labels_present() - truth.labels_present()
    if only_truth or only_generated:
        raise DataError(
            "column 'species': truth and generated must hold the same species; "
            f"only in truth: {sorted(only_truth)}, only in generated: {sorted(only_generated)}"
        )


def compare_pid(
    truth: PidCounts, generated: PidCounts, hypotheses: Sequence[str], true_hypotheses: Sequence[str] | None = None
) -> tuple[dict[str, m.Chi2Result], dict[str, float]]:
    """Efficiency and mis-ID chi2 for one binning (two-proportion pulls, see ``metrics.efficiency_pulls``).

    ``true_hypotheses`` (default: all ``hypotheses``) are the true species compared; tracks may still
    be assigned to any of ``hypotheses``. Species with no track in either sample are left out.

    Returns:
        (chi2 results keyed 'eff_<h>', 'misid_<a>_to_<b>' and 'species_<label>' (own-hypothesis
        efficiency per charge), largest |pull| keyed 'eff' and 'misid').
    """
    results: dict[str, m.Chi2Result] = {}
    max_pull = {"eff": 0.0, "misid": 0.0}
    compared = tuple(hypotheses if true_hypotheses is None else true_hypotheses)
    for true_hypothesis in compared:
        for assigned_to in hypotheses:
            args = (truth.assigned[(true_hypothesis, assigned_to)], truth.total[true_hypothesis],
                    generated.assigned[(true_hypothesis, assigned_to)], generated.total[true_hypothesis])
            pull = m.efficiency_pulls(*args, min_entries=MIN_ENTRIES_EFFICIENCY)
            kind = "eff" if assigned_to == true_hypothesis else "misid"
            name = f"eff_{true_hypothesis}" if kind == "eff" else f"misid_{true_hypothesis}_to_{assigned_to}"
            results[name] = m.efficiency_chi2(*args, min_entries=MIN_ENTRIES_EFFICIENCY)
            if np.isfinite(pull).any():
                max_pull[kind] = max(max_pull[kind], float(np.nanmax(np.abs(pull))))
    for label in truth.species_total:
        if HYPOTHESIS_OF[label] not in compared or truth.species_total[label].sum() + generated.species_total[
                label].sum() == 0:
            continue
        own = (label, HYPOTHESIS_OF[label])
        results[f"species_{label}"] = m.efficiency_chi2(
            truth.species_assigned[own], truth.species_total[label],
            generated.species_assigned[own], generated.species_total[label], min_entries=MIN_ENTRIES_EFFICIENCY)
    return results, max_pull


def _pid_metrics(
    truth: Tracks,
    generated: Tracks,
    assigned: tuple[NDArray[np.int64], NDArray[np.int64]],
    hypotheses: Sequence[str],
    binnings: Mapping[str, FloatArray],
    present: Sequence[str],
) -> tuple[dict[str, Any], dict[str, tuple[PidCounts, PidCounts]]]:
    """All PID comparison keys for the true hypotheses ``present``, plus the counts per binning (for figures)."""
    out: dict[str, Any] = {}
    counts: dict[str, tuple[PidCounts, PidCounts]] = {}
    combined: dict[str, m.Chi2Result] = {}  # summed over the binnings
    totals = {"eff": m.Chi2Result(0.0, 0, 0), "misid": m.Chi2Result(0.0, 0, 0)}
    max_pull = {"eff": 0.0, "misid": 0.0}
    for variable, edges in binnings.items():
        truth_counts, generated_counts = (
            pid_counts(t, a, hypotheses, t.p if variable == "p" else t.cos_theta, edges)
            for t, a in zip((truth, generated), assigned)
        )
        counts[variable] = (truth_counts, generated_counts)
        results, pulls = compare_pid(truth_counts, generated_counts, hypotheses, present)
        for name, result in results.items():
            combined[name] = combined.get(name, m.Chi2Result(0.0, 0, 0)) + result
            kind = name.split("_")[0]
            if kind in totals:
                totals[kind] += result
        for hypothesis in present:
            out[f"pid_eff_chi2_ndf_{variable}_{hypothesis}"] = results[f"eff_{hypothesis}"].chi2_ndf
        max_pull = {kind: max(max_pull[kind], pulls[kind]) for kind in max_pull}
    for kind, key in (("eff", "pid_eff"), ("misid", "misid")):
        out[f"{key}_chi2_ndf"] = totals[kind].chi2_ndf
        out[f"{key}_ndf"] = totals[kind].ndf
        out[f"{key}_n_skipped"] = totals[kind].n_skipped
        out[f"{key}_max_abs_pull"] = max_pull[kind]
    for name, result in combined.items():
        if name.startswith("misid_"):
            out[f"misid_chi2_ndf_{name[len('misid_'):]}"] = result.chi2_ndf
        elif name.startswith("species_"):
            out[f"pid_eff_chi2_ndf_species_{name[len('species_'):]}"] = result.chi2_ndf
    return out, counts


def _integrated_rates(
    tracks: Tracks, assigned: NDArray[np.int64], hypotheses: Sequence[str], present: Sequence[str], sample: str,
    p_range: FloatArray
) -> dict[str, float | int]:
    """Track counts, efficiencies and mis-ID rates over ``p_range`` (GeV/c), per true hypothesis in ``present``."""
    counts = pid_counts(tracks, assigned, hypotheses, tracks.p, p_range)
    out: dict[str, float | int] = {}
    for label in present:
        out[f"n_{sample}_{label}"] = int(counts.total[label][0])
        for assigned_to in hypotheses:
            value = float(counts.rate(label, assigned_to)[0][0])
            key = f"pid_eff_{sample}_{label}" if label == assigned_to else f"misid_{sample}_{label}_to_{assigned_to}"
            out[key] = value
    return out


def _chi_summary(chis: Mapping[str, FloatArray], tracks: Tracks, hypotheses: Sequence[str], sample: str) -> dict[str, float]:
    """Gaussian-core mean and width of chi for each hypothesis' own tracks (0 and 1 for a good calibration)."""
    out: dict[str, float] = {}
    own = np.array([HYPOTHESIS_OF[label] for label in SPECIES])[tracks.species]
    for hypothesis in hypotheses:
        values = chis[hypothesis][own == hypothesis]
        mean, width = m.core_mean_width(values) if values.size else (float("nan"), float("nan"))
        out[f"chi_mean_{sample}_{hypothesis}"] = mean
        out[f"chi_width_{sample}_{hypothesis}"] = width
    return out


#: Grids of the distribution comparison, finest first: (name, p edges in GeV/c, cos(theta) edges).
_DISTRIBUTION_GRIDS: tuple[tuple[str, FloatArray, FloatArray], ...] = (
    ("p_cos_theta", DISTRIBUTION_P_EDGES_GEV, DISTRIBUTION_COS_THETA_EDGES),
    ("p", DISTRIBUTION_P_EDGES_GEV, np.array([-1.0, 1.0 + 1e-9])),
    ("none", np.array([0.0, np.inf]), np.array([-1.0, 1.0 + 1e-9])),
)


def _group_by_bin(
    tracks: Tracks, hypotheses: Sequence[str], p_edges: FloatArray, cos_edges: FloatArray
) -> dict[tuple[str, int, int], FloatArray]:
    """dE/dx values per (true hypothesis, p bin, cos theta bin), in one sort."""
    n_p, n_cos = p_edges.size - 1, cos_edges.size - 1
    p_bin = np.digitize(tracks.p, p_edges) - 1
    cos_bin = np.digitize(tracks.cos_theta, cos_edges) - 1
    hypothesis_index = np.array([hypotheses.index(HYPOTHESIS_OF[s]) if HYPOTHESIS_OF[s] in hypotheses else -1
                                 for s in SPECIES])[tracks.species]
    inside = (p_bin >= 0) & (p_bin < n_p) & (cos_bin >= 0) & (cos_bin < n_cos) & (hypothesis_index >= 0)
    code = (hypothesis_index[inside] * n_p + p_bin[inside]) * n_cos + cos_bin[inside]
    order = np.argsort(code, kind="stable")
    sorted_code, sorted_dedx = code[order], tracks.dedx[inside][order]
    boundaries = np.flatnonzero(np.diff(sorted_code)) + 1
    groups = {}
    for chunk_code, values in zip(sorted_code[np.r_[0, boundaries]] if sorted_code.size else [],
                                  np.split(sorted_dedx, boundaries)):
        h, rest = divmod(int(chunk_code), n_p * n_cos)
        groups[(hypotheses[h], *divmod(rest, n_cos))] = values
    return groups


def _bin_distances(
    truth: Tracks, generated: Tracks, hypotheses: Sequence[str], p_edges: FloatArray, cos_edges: FloatArray
) -> dict[str, list[tuple[float, float, float]]]:
    """(W1 / truth core width, KS, KS * sqrt(n_eff)) per bin with enough tracks in both samples, by hypothesis."""
    groups_truth = _group_by_bin(truth, hypotheses, p_edges, cos_edges)
    groups_generated = _group_by_bin(generated, hypotheses, p_edges, cos_edges)
    per_hypothesis: dict[str, list[tuple[float, float, float]]] = {h: [] for h in hypotheses}
    for key, values in groups_truth.items():
        other = groups_generated.get(key)
        if other is None or min(values.size, other.size) < MIN_ENTRIES_DISTRIBUTION:
            continue
        _, width = m.core_mean_width(values)
        scale = width if width > 0 else 1.0
        ks = m.ks_statistic(values, other)
        # KS * sqrt(n_eff) follows the Kolmogorov distribution when both samples agree, whatever the bin size.
        scaled = ks * np.sqrt(values.size * other.size / (values.size + other.size))
        per_hypothesis[key[0]].append((m.wasserstein_1d(values, other) / scale, ks, scaled))
    return per_hypothesis


def _distribution_metrics(
    truth: Tracks, generated: Tracks, hypotheses: Sequence[str], present: Sequence[str]
) -> dict[str, Any]:
    """W1 (in units of the truth core width) and KS of dE/dx per (hypothesis, p, cos theta) bin.

    Small samples fall back to coarser grids (p only, then one bin per hypothesis): the finest grid on
    which every compared hypothesis has at least one bin with enough tracks is used.
    """
    grid_name, per_hypothesis = "", {}
    for name, p_edges, cos_edges in _DISTRIBUTION_GRIDS:
        grid_name, per_hypothesis = name, _bin_distances(truth, generated, hypotheses, p_edges, cos_edges)
        if all(per_hypothesis[h] for h in present):
            break
    everything = [item for h in present for item in per_hypothesis[h]]
    out: dict[str, Any] = {"n_distribution_bins": len(everything), "distribution_grid": grid_name}
    for suffix, items in [("", everything)] + [(f"_{h}", per_hypothesis[h]) for h in present]:
        array = np.array(items).reshape(-1, 3)
        out[f"mean_wasserstein{suffix}"] = float(array[:, 0].mean()) if array.size else float("nan")
        out[f"max_ks{suffix}"] = float(array[:, 1].max()) if array.size else float("nan")
        if not suffix:
            out["mean_ks"] = float(array[:, 1].mean()) if array.size else float("nan")
            out["max_ks_scaled"] = float(array[:, 2].max()) if array.size else float("nan")
    return out


def classifier_features(tracks: Tracks, calibration: DedxCalibration) -> FloatArray:
    """Features of the classifier two-sample test, one row per track.

    p, theta, nhits, dE/dx, the species index, and dE/dx / E(bg) with the track's own mass: the last is
    a function of the others, given so that trees see a 5% shift within one species' band directly.
    """
    ratio = tracks.dedx / calibration.expected(tracks.beta_gamma)
    return np.column_stack([tracks.p, tracks.theta, tracks.nhits, tracks.dedx, tracks.species, ratio])


# --------------------------------------------------------------------------------------------------
# Figures


def _dedx_figures(
    out: Path, truth: Tracks, generated: Tracks, hypotheses: Sequence[str], labels: tuple[str, str]
) -> list[tuple[str, str]]:
    """2-D dE/dx vs p and vs theta, and 1-D dE/dx per hypothesis in four p bins."""
    figures = []
    low, high = np.quantile(truth.dedx, [0.001, 0.995])
    y_edges = np.geomspace(max(low * 0.8, 1e-6), high * 1.2, 120)
    p_edges = np.linspace(truth.p.min(), truth.p.max(), 120)
    theta_edges = np.linspace(truth.theta.min(), truth.theta.max(), 100)
    for name, x_truth, x_gen, edges, xlabel in (
        ("dedx_vs_p.png", truth.p, generated.p, p_edges, r"$p$ (GeV/$c$)"),
        ("dedx_vs_theta.png", truth.theta, generated.theta, theta_edges, r"$\theta$ (rad)"),
    ):
        plots.plot_hist2d_side_by_side(out / name, (x_truth, truth.dedx), (x_gen, generated.dedx), edges, y_edges,
                                       xlabel=xlabel, ylabel="dE/dx", titles=labels, logy=True)
        figures.append((name, f"dE/dx vs {xlabel}: {labels[0]} (left) and {labels[1]} (right)."))
    p_bins = [(0.1, 0.3), (0.5, 0.7), (0.9, 1.2), (1.5, 2.0)]
    for hypothesis in hypotheses:
        own = np.isin(truth.species, [i for i, s in enumerate(SPECIES) if HYPOTHESIS_OF[s] == hypothesis])
        own_gen = np.isin(generated.species, [i for i, s in enumerate(SPECIES) if HYPOTHESIS_OF[s] == hypothesis])
        pairs, titles = [], []
        for lo, hi in p_bins:
            in_truth = own & (truth.p >= lo) & (truth.p < hi)
            in_gen = own_gen & (generated.p >= lo) & (generated.p < hi)
            if in_truth.sum() >= MIN_ENTRIES_DISTRIBUTION and in_gen.sum() >= MIN_ENTRIES_DISTRIBUTION:
                pairs.append((truth.dedx[in_truth], generated.dedx[in_gen]))
                titles.append(f"{hypothesis}, {lo} < p < {hi} GeV/c")
        if pairs:
            name = f"dedx_1d_{hypothesis}.png"
            plots.plot_hist_comparison(out / name, pairs, bins=60, xlabel="dE/dx", titles=titles, labels=labels)
            figures.append((name, f"dE/dx of true {hypothesis} tracks in bins of p (normalised shapes)."))
    return figures


def _chi_figure(
    out: Path, chis: tuple[Mapping[str, FloatArray], Mapping[str, FloatArray]], tracks: tuple[Tracks, Tracks],
    hypotheses: Sequence[str], labels: tuple[str, str]
) -> list[tuple[str, str]]:
    """chi of each hypothesis for its own true tracks, truth vs generated."""
    pairs, titles = [], []
    for hypothesis in hypotheses:
        selected = []
        for chi_values, sample in zip(chis, tracks):
            own = np.array([HYPOTHESIS_OF[s] == hypothesis for s in SPECIES])[sample.species]
            selected.append(chi_values[hypothesis][own])
        if min(v.size for v in selected) > 0:
            pairs.append((selected[0], selected[1]))
            titles.append(f"true {hypothesis}")
    if not pairs:
        return []
    plots.plot_hist_comparison(out / "chi.png", pairs, bins=np.linspace(-6, 6, 61), xlabel=r"$\chi$ (own hypothesis)",
                               titles=titles, labels=labels, logy=True)
    return [("chi.png", "chi of each hypothesis for tracks of that species; the calibration is fitted on "
             "truth and applied to both samples.")]


_AXIS_LABELS = {"p": r"$p$ (GeV/$c$)", "cos_theta": r"$\cos\theta$"}


def _pid_figures(
    out: Path, counts: Mapping[str, tuple[PidCounts, PidCounts]], hypotheses: Sequence[str], present: Sequence[str],
    labels: tuple[str, str]
) -> list[tuple[str, str]]:
    """PID efficiency and mis-ID rate vs p and vs cos(theta), truth vs generated with ratio panels."""
    figures = []
    for variable, (truth, generated) in counts.items():
        efficiencies = {h: (truth.rate(h, h), generated.rate(h, h)) for h in present}
        name = f"pid_eff_vs_{variable}.png"
        plots.plot_curve_comparison(out / name, truth.edges, {h: v[0] for h, v in efficiencies.items()},
                                    {h: v[1] for h, v in efficiencies.items()}, xlabel=_AXIS_LABELS[variable],
                                    ylabel="PID efficiency", labels=labels, ylim=(0.0, 1.15))
        figures.append((name, f"dE/dx PID efficiency vs {variable} (|chi| < {MAX_ABS_CHI}, minimum |chi|)."))
        pairs = [(a, b) for a in present for b in hypotheses if a != b]
        misid = {f"{a}->{b}": (truth.rate(a, b), generated.rate(a, b)) for a, b in pairs}
        name = f"misid_vs_{variable}.png"
        plots.plot_curve_comparison(out / name, truth.edges, {k: v[0] for k, v in misid.items()},
                                    {k: v[1] for k, v in misid.items()}, xlabel=_AXIS_LABELS[variable],
                                    ylabel="mis-identification rate", labels=labels, ratio_range=(0.0, 2.0))
        figures.append((name, f"dE/dx mis-identification rates vs {variable}."))
    return figures


# --------------------------------------------------------------------------------------------------
# Entry point


def validate_dedx(
    truth: Table,
    generated: Table,
    out_dir: str | os.PathLike[str],
    *,
    hypotheses: Sequence[str] = ("pi", "K", "p"),
    seed: int = 0,
    label_generated: str = "generated",
    p_edges: ArrayLike = P_EDGES_GEV,
    cos_theta_edges: ArrayLike = COS_THETA_EDGES,
    classifier_max_rows: int = 200_000,
    make_figures: bool = True,
) -> dict[str, Any]:
    """Validate a generated dE/dx sample against truth; write metrics.json, PNGs and report.html.

    Args:
        truth: table with species, p (GeV/c), theta (rad), nhits, dedx (and optionally cos_theta).
        generated: the same columns; rows need not match truth one to one (different lengths are fine).
        out_dir: output folder (created).
        hypotheses: PID hypotheses (names from ``detgen.particles.HYPOTHESIS_MASS_GEV``).
        seed: seed of the classifier test (subsampling, split, boosting).
        label_generated: name of the generated sample in figures and the report.
        p_edges, cos_theta_edges: binning of the PID efficiency comparison.
        classifier_max_rows: rows drawn from each sample for the classifier test.
        make_figures: write the PNGs (metrics.json and report.html are always written).

    Returns:
        The flat metrics dict written to metrics.json (keys documented in docs/metrics_dedx.md).

    Raises:
        DataError: a missing/bad column (named), unknown species, or a species in only one sample.
        ConfigError: unknown hypothesis names.
    """
    names = _check_hypotheses(hypotheses)
    truth_tracks, generated_tracks = as_tracks(truth, "truth"), as_tracks(generated, "generated")
    _check_same_species(truth_tracks, generated_tracks)
    # True species compared: the hypotheses with truth tracks (tracks can still be assigned to any name).
    present = tuple(h for h in names if any(HYPOTHESIS_OF[s] == h for s in truth_tracks.labels_present()))
    if not present:
        raise DataError(f"column 'species': truth has no track of the hypotheses {list(names)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = ("truth", label_generated)

    calibration = fit_calibration(truth_tracks)
    samples = (truth_tracks, generated_tracks)
    chis = (chi(truth_tracks, calibration, names), chi(generated_tracks, calibration, names))
    assigned = (identify(chis[0], truth_tracks.nhits), identify(chis[1], generated_tracks.nhits))
    binnings = {"p": np.asarray(p_edges, dtype=np.float64), "cos_theta": np.asarray(cos_theta_edges, dtype=np.float64)}

    metrics: dict[str, Any] = {"n_truth": len(truth_tracks), "n_generated": len(generated_tracks),
                               "hypotheses": ",".join(names)}
    metrics.update(calibration.to_metrics())
    for sample_name, tracks, chi_values, assigned_values in zip(("truth", "generated"), samples, chis, assigned):
        metrics.update(_chi_summary(chi_values, tracks, present, sample_name))
        metrics.update(_integrated_rates(tracks, assigned_values, names, present, sample_name,
                                         binnings["p"][[0, -1]]))
    pid_metrics, counts = _pid_metrics(truth_tracks, generated_tracks, assigned, names, binnings, present)
    metrics.update(pid_metrics)
    metrics.update(_distribution_metrics(truth_tracks, generated_tracks, names, present))
    metrics["classifier_auc"] = m.classifier_auc(classifier_features(truth_tracks, calibration),
                                                 classifier_features(generated_tracks, calibration),
                                                 seed=seed, max_rows=classifier_max_rows)

    figures: list[tuple[str, str]] = []
    if make_figures:
        figures += _dedx_figures(out, truth_tracks, generated_tracks, present, labels)
        figures += _chi_figure(out, chis, samples, present, labels)
        figures += _pid_figures(out, counts, names, present, labels)
    write_metrics(out / "metrics.json", metrics)
    write_report_html(out, f"dE/dx validation: truth vs {label_generated}", metrics, figures, notes=[
        "The dE/dx calibration (expected-value curve and resolution model) is fitted once on the truth sample "
        "and applied to both samples.",
        f"PID: minimum |chi| over hypotheses {', '.join(names)}, |chi| < {MAX_ABS_CHI}, at least {MIN_GOOD_HITS} hits.",
        "chi2/ndf use two-proportion pulls per bin; ~1 means agreement within statistics.",
    ], key_metrics=_report_order(metrics))
    return metrics


_HEADLINE = ("n_truth", "n_generated", "pid_eff_chi2_ndf", "misid_chi2_ndf", "classifier_auc", "mean_wasserstein",
             "max_ks", "pid_eff_max_abs_pull", "misid_max_abs_pull")


def _report_order(metrics: Mapping[str, Any]) -> list[str]:
    """Headline metrics first, then every other key alphabetically."""
    return [k for k in _HEADLINE if k in metrics] + sorted(k for k in metrics if k not in _HEADLINE)


# --------------------------------------------------------------------------------------------------
# Command line: ``detgen validate dedx``
CLI_HELP = "BESIII dE/dx: PID efficiency and mis-ID vs p and cos(theta), distributions, classifier AUC"
SUMMARY_KEYS = ("pid_eff_chi2_ndf", "misid_chi2_ndf", "classifier_auc", "mean_wasserstein")


def add_cli_arguments(parser: Any) -> None:
    parser.add_argument("--hypotheses", default="pi,K,p", help="PID hypotheses (add e,mu as an option)")


def validate_cli(truth: str, generated: str, out: str, args: Any) -> dict[str, Any]:
    from detgen.io import read_table

    hypotheses = tuple(h for h in args.hypotheses.split(",") if h)
    return validate_dedx(read_table(truth), read_table(generated), out, hypotheses=hypotheses, seed=args.seed)
