"""JUNO validation: truth (photon transport) versus generated (fast simulation) PMT responses.

Two kinds of samples, detected from their columns (or forced with ``kind``):

* **points** (``detgen simulate juno --mode point``): a ``pmt`` table, one row per (event, PMT) with ``event``,
  ``r_m``, ``theta``, ``npe``, ``first_hit_ns`` (rows with ``npe == 0`` carry no time), and optionally a ``hits``
  table, one row per photo-electron with ``event``, ``r_m``, ``theta``, ``time_ns``. Compared per radius group
  (the distinct radii when the truth has at most :data:`MAX_DISCRETE_RADII` of them, as for 1 MeV gammas at
  Z = 0, 5, 10, 15, 17 m; otherwise the bins :data:`R_EDGES_M`): the total p.e. per event (mean, RMS,
  separation power) and the hit-time spectrum (median, separation power; the per-p.e. ``hits`` times when both
  samples have them, else the first-hit times of PMTs with hits). Per (R, theta) bin: the per-PMT npe and
  first-hit-time distributions (separation power, relative mean and RMS differences).
* **muons** (``--mode muon``): one row per muon with ``track_length_m``, ``total_pe`` and the array columns
  ``npe`` (n, n_pmt) and ``first_hit_ns`` (n, n_pmt). Compared: total p.e. versus track length, the pooled
  per-PMT npe and first-hit-time distributions, and, when both files hold the same muons in the same order
  (equal track parameters), the per-muon total p.e. and the per-PMT npe maps muon by muon.

"Bins with enough statistics": a (R, theta) bin is compared when both samples have at least
:data:`MIN_ROWS_NPE` PMT rows (npe) or :data:`MIN_ROWS_TIME` PMT rows with hits (time) in it; a radius group
when both have at least :data:`MIN_EVENTS` events. Separation powers of finite samples are biased upward
(about (bins - 1) / (4 N) for two samples of N entries); ``separation_power_floor`` is the same maximum
computed between two random halves of the truth, the value a perfect generator would reach with this
statistics. Every key is listed in docs/juno.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detgen.errors import DataError
from detgen.validation import metrics as m
from detgen.validation import plots
from detgen.validation.report import write_metrics, write_report_html

FloatArray = NDArray[np.float64]
Table = Mapping[str, np.ndarray]

#: Radius of the liquid-scintillator sphere (m); deposits beyond it are an error.
LS_RADIUS_M = 17.7
#: Radius bins (m) when the truth radii are continuous.
R_EDGES_M: FloatArray = np.array([0.0, 4.0, 8.0, 11.0, 13.0, 14.5, 15.5, 16.3, 17.0, 17.7 + 1e-9])
#: At most this many distinct truth radii are compared value by value.
MAX_DISCRETE_RADII = 20
#: theta bins (rad): equal steps in theta.
THETA_EDGES: FloatArray = np.linspace(0.0, math.pi, 13)
#: Minimum statistics per compared bin (see the module docstring): two samples of N entries from one
#: distribution in K bins have a separation power of about K / (2 N); N >= 10,000 keeps that floor <= 0.002
#: for the K = 40 bins of a time histogram, five times below the 0.01 target.
MIN_ROWS_NPE = 10_000
MIN_ROWS_TIME = 10_000
MIN_EVENTS = 20
#: Number of bins of the continuous (time, total p.e.) histograms behind separation powers.
N_HIST_BINS = 40
#: Track-length bins (m) for muons.
TRACK_LENGTH_EDGES_M: FloatArray = np.array([0.0, 10.0, 20.0, 25.0, 30.0, 33.0, 35.5])

POINT_COLUMNS = ("event", "r_m", "theta", "npe", "first_hit_ns")
HIT_COLUMNS = ("event", "r_m", "time_ns")
MUON_COLUMNS = ("track_length_m", "total_pe", "npe", "first_hit_ns")
TRACK_COLUMNS = ("x0", "y0", "z0", "dx", "dy", "dz")


# --------------------------------------------------------------------------------------------------
# Inputs


def _column(table: Table, name: str, source: str, *, ndim: int = 1) -> np.ndarray:
    if name not in table:
        raise DataError(f"{source}: missing column '{name}' (has {', '.join(table)})")
    values = np.asarray(table[name])
    if values.ndim != ndim or values.dtype.kind not in "biuf":
        raise DataError(f"{source}: column '{name}' has shape {values.shape} and dtype {values.dtype}; "
                        f"expected a numeric {'1-D column' if ndim == 1 else f'{ndim}-D array column'}")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        bad = int((~np.isfinite(values)).sum())
        raise DataError(f"{source}: column '{name}' has {bad} NaN/inf values; expected finite numbers")
    return values


@dataclass(frozen=True)
class PointSample:
    """A checked point-mode sample: per-(event, PMT) rows and optional per-p.e. hit times."""

    event: NDArray[np.int64]
    r_m: FloatArray
    theta: FloatArray
    npe: NDArray[np.int64]
    first_hit_ns: FloatArray
    hit_event: NDArray[np.int64] | None
    hit_r_m: FloatArray | None
    hit_time_ns: FloatArray | None

    def event_radii(self) -> tuple[NDArray[np.int64], FloatArray, FloatArray]:
        """(event ids, radius of each event, total p.e. of each event), computed once."""
        return self._events

    @cached_property
    def _events(self) -> tuple[NDArray[np.int64], FloatArray, FloatArray]:
        ids, first, inverse = np.unique(self.event, return_index=True, return_inverse=True)
        total: FloatArray = np.bincount(inverse, weights=self.npe, minlength=len(ids)).astype(np.float64)
        return ids, self.r_m[first], total


def as_point_sample(tables: Mapping[str, Table], name: str) -> PointSample:
    """Check a point-mode sample ``{"pmt": table, "hits": table (optional)}``.

    Raises:
        DataError: naming the column: missing, non-numeric, NaN/inf, R < 0, theta outside [0, pi], npe < 0.
    """
    if "pmt" not in tables:
        raise DataError(f"{name}: point-mode sample needs a 'pmt' table (has {', '.join(tables)})")
    source = f"{name} (pmt)"
    pmt = tables["pmt"]
    event = _column(pmt, "event", source).astype(np.int64)
    r_m = _column(pmt, "r_m", source).astype(np.float64)
    theta = _column(pmt, "theta", source).astype(np.float64)
    npe = _column(pmt, "npe", source)
    first = _column(pmt, "first_hit_ns", source).astype(np.float64)
    if len(event) == 0:
        raise DataError(f"{source}: no rows")
    if np.any(r_m < 0):
        raise DataError(f"{source}: column 'r_m' has {int((r_m < 0).sum())} negative radii; expected R >= 0 m")
    beyond = r_m > LS_RADIUS_M + 1e-4
    if beyond.any():
        raise DataError(f"{source}: column 'r_m' has {int(beyond.sum())} radii beyond the LS sphere "
                        f"(max {float(r_m.max())} m); expected R <= {LS_RADIUS_M} m")
    outside = (theta < 0) | (theta > math.pi + 1e-6)
    if outside.any():
        raise DataError(f"{source}: column 'theta' has {int(outside.sum())} values outside [0, pi] "
                        f"(first {float(theta[outside][0])}); expected the angle deposit-PMT in rad")
    if np.any(npe < 0):
        raise DataError(f"{source}: column 'npe' has {int((npe < 0).sum())} negative counts; expected >= 0")
    hit_event = hit_r = hit_time = None
    if "hits" in tables:
        hits = tables["hits"]
        hit_event = _column(hits, "event", f"{name} (hits)").astype(np.int64)
        hit_r = _column(hits, "r_m", f"{name} (hits)").astype(np.float64)
        hit_time = _column(hits, "time_ns", f"{name} (hits)").astype(np.float64)
    return PointSample(event, r_m, theta, np.rint(npe).astype(np.int64), first, hit_event, hit_r, hit_time)


@dataclass(frozen=True)
class MuonSample:
    """A checked muon sample: per-muon track length, total p.e. and per-PMT npe and first-hit maps."""

    track_length_m: FloatArray
    total_pe: FloatArray
    npe: NDArray[np.int64]
    first_hit_ns: FloatArray
    tracks: FloatArray | None


def as_muon_sample(table: Table, name: str) -> MuonSample:
    """Check a muon table (see the module docstring)."""
    length = _column(table, "track_length_m", name).astype(np.float64)
    total = _column(table, "total_pe", name).astype(np.float64)
    npe = _column(table, "npe", name, ndim=2)
    first = _column(table, "first_hit_ns", name, ndim=2).astype(np.float64)
    if npe.shape != first.shape or npe.shape[0] != len(length):
        raise DataError(f"{name}: 'npe' {npe.shape}, 'first_hit_ns' {first.shape} and 'track_length_m' "
                        f"({len(length)}) must describe the same muons and PMTs")
    if np.any(npe < 0) or np.any(length < 0):
        raise DataError(f"{name}: negative 'npe' or 'track_length_m'; expected >= 0")
    tracks = None
    if all(c in table for c in TRACK_COLUMNS):
        tracks = np.stack([_column(table, c, name).astype(np.float64) for c in TRACK_COLUMNS], axis=1)
    return MuonSample(length, total, np.rint(npe).astype(np.int64), first, tracks)


def detect_kind(table_or_tables: Mapping[str, Any]) -> str:
    """"points" for ``{"pmt": ..., "hits": ...}`` or a table with point columns, "muons" for a muon table."""
    if "pmt" in table_or_tables:
        return "points"
    if all(c in table_or_tables for c in MUON_COLUMNS):
        return "muons"
    if all(c in table_or_tables for c in POINT_COLUMNS):
        return "points"
    raise DataError(f"cannot tell the sample kind from columns {', '.join(map(str, table_or_tables))}; "
                    f"expected point-mode tables (pmt/hits) or muon columns {', '.join(MUON_COLUMNS)}")


# --------------------------------------------------------------------------------------------------
# Statistics


def relative_deviation(generated: float, truth: float) -> float:
    """generated / truth - 1 (NaN when truth is 0)."""
    return generated / truth - 1.0 if truth != 0 else math.nan


def _continuous_edges(truth: FloatArray, generated: FloatArray, bins: int = N_HIST_BINS) -> FloatArray:
    """Equal-width edges over the truth 0.5-99.5% range, widened to include both samples' central 99%."""
    low = min(np.quantile(truth, 0.005), np.quantile(generated, 0.005))
    high = max(np.quantile(truth, 0.995), np.quantile(generated, 0.995))
    return np.linspace(low, high if high > low else low + 1.0, bins + 1)


def _integer_edges(truth: NDArray[np.int64], generated: NDArray[np.int64]) -> FloatArray:
    """One bin per count up to the 99.9% quantile of both samples."""
    high = int(max(np.quantile(truth, 0.999), np.quantile(generated, 0.999)))
    return np.arange(-0.5, high + 1.5)


separation_with_overflow = m.separation_with_overflow


def median_standard_error(values: np.ndarray) -> float:
    """Distribution-free standard error of the median: half the distance between the order statistics at
    N/2 -+ sqrt(N)/2 (the binomial 68% interval of the median)."""
    n = len(values)
    if n < 4:
        return math.nan
    half_width = 0.5 / math.sqrt(n)
    low, high = np.quantile(values, [0.5 - half_width, 0.5 + half_width])
    return float(0.5 * (high - low))


def _rel_rms(truth: np.ndarray, generated: np.ndarray) -> float:
    return relative_deviation(float(np.std(generated)), float(np.std(truth)))


def _radius_groups(truth_r: FloatArray) -> list[tuple[str, float, float]]:
    """(label, low, high) radius groups: the distinct truth radii, or the bins of :data:`R_EDGES_M`."""
    distinct = np.unique(np.round(truth_r, 4))
    if len(distinct) <= MAX_DISCRETE_RADII:
        return [(f"r{value:g}m", value - 5e-4, value + 5e-4) for value in distinct]
    return [(f"r{lo:g}-{hi:.4g}m", lo, hi) for lo, hi in itertools.pairwise(R_EDGES_M)]


def _in(values: FloatArray, low: float, high: float) -> NDArray[np.bool_]:
    return (values >= low) & (values < high)


# --------------------------------------------------------------------------------------------------
# Point-mode comparison


def _hit_times(sample: PointSample, low: float, high: float, use_hits: bool) -> FloatArray:
    if use_hits:
        assert sample.hit_r_m is not None and sample.hit_time_ns is not None
        return sample.hit_time_ns[_in(sample.hit_r_m, low, high)]
    select = _in(sample.r_m, low, high) & (sample.npe > 0)
    return sample.first_hit_ns[select]


def _radius_metrics(truth: PointSample, generated: PointSample, use_hits: bool
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per radius group: total p.e. per event and the hit-time spectrum."""
    metrics: dict[str, Any] = {}
    groups: list[dict[str, Any]] = []
    _, truth_r, truth_total = truth.event_radii()
    _, gen_r, gen_total = generated.event_radii()
    for label, low, high in _radius_groups(truth_r):
        t_total, g_total = truth_total[_in(truth_r, low, high)], gen_total[_in(gen_r, low, high)]
        if len(t_total) < MIN_EVENTS or len(g_total) < MIN_EVENTS:
            continue
        t_time, g_time = _hit_times(truth, low, high, use_hits), _hit_times(generated, low, high, use_hits)
        group = {"label": label, "truth_total": t_total, "generated_total": g_total,
                 "truth_time": t_time, "generated_time": g_time}
        metrics[f"total_pe_mean_truth_{label}"] = float(t_total.mean())
        metrics[f"total_pe_mean_generated_{label}"] = float(g_total.mean())
        metrics[f"total_pe_rel_dev_{label}"] = relative_deviation(float(g_total.mean()), float(t_total.mean()))
        metrics[f"total_pe_rel_dev_stat_err_{label}"] = float(math.sqrt(
            t_total.var() / len(t_total) / t_total.mean() ** 2 + g_total.var() / len(g_total) / g_total.mean() ** 2))
        metrics[f"total_pe_rms_rel_dev_{label}"] = _rel_rms(t_total, g_total)
        metrics[f"total_pe_separation_power_{label}"] = separation_with_overflow(
            t_total, g_total, _continuous_edges(t_total, g_total, 20))
        if len(t_time) and len(g_time):
            metrics[f"hit_time_median_truth_ns_{label}"] = float(np.median(t_time))
            metrics[f"hit_time_median_dev_ns_{label}"] = float(np.median(g_time) - np.median(t_time))
            metrics[f"hit_time_median_dev_stat_err_ns_{label}"] = math.hypot(median_standard_error(t_time),
                                                                            median_standard_error(g_time))
            metrics[f"hit_time_separation_power_{label}"] = separation_with_overflow(
                t_time, g_time, _continuous_edges(t_time, g_time))
        groups.append(group)
    if not groups:
        raise DataError(f"no radius group has >= {MIN_EVENTS} events in both samples; nothing to compare")
    labels = [g["label"] for g in groups]
    metrics["n_radius_groups"] = len(groups)
    metrics["total_pe_rel_dev"] = max(abs(metrics[f"total_pe_rel_dev_{k}"]) for k in labels)
    metrics["total_pe_rel_dev_stat_err"] = max(metrics[f"total_pe_rel_dev_stat_err_{k}"] for k in labels)
    metrics["total_pe_rms_rel_dev"] = max(abs(metrics[f"total_pe_rms_rel_dev_{k}"]) for k in labels)
    time_keys = [f"hit_time_median_dev_ns_{k}" for k in labels if f"hit_time_median_dev_ns_{k}" in metrics]
    metrics["hit_time_median_dev_ns"] = max((abs(metrics[k]) for k in time_keys), default=math.nan)
    metrics["hit_time_median_dev_stat_err_ns"] = max(
        (metrics[k.replace("median_dev_ns", "median_dev_stat_err_ns")] for k in time_keys), default=math.nan)
    return metrics, groups


def _bin_statistics(truth: PointSample, generated: PointSample, r_groups: Sequence[tuple[str, float, float]],
                    truth_select: NDArray[np.bool_] | None = None,
                    generated_select: NDArray[np.bool_] | None = None) -> dict[str, list[float]]:
    """Separation powers and relative mean/RMS differences per (R, theta) bin with enough statistics."""
    out: dict[str, list[float]] = {"sp_npe": [], "sp_time": [], "mean_npe": [], "rms_npe": [], "mean_time": [],
                                   "rms_time": []}
    t_sel = np.ones(len(truth.npe), bool) if truth_select is None else truth_select
    g_sel = np.ones(len(generated.npe), bool) if generated_select is None else generated_select
    t_theta_bin = np.digitize(truth.theta, THETA_EDGES[1:-1])
    g_theta_bin = np.digitize(generated.theta, THETA_EDGES[1:-1])
    for _, low, high in r_groups:
        t_r, g_r = t_sel & _in(truth.r_m, low, high), g_sel & _in(generated.r_m, low, high)
        for k in range(len(THETA_EDGES) - 1):
            t_rows, g_rows = t_r & (t_theta_bin == k), g_r & (g_theta_bin == k)
            if t_rows.sum() >= MIN_ROWS_NPE and g_rows.sum() >= MIN_ROWS_NPE:
                t_npe, g_npe = truth.npe[t_rows], generated.npe[g_rows]
                out["sp_npe"].append(separation_with_overflow(t_npe, g_npe, _integer_edges(t_npe, g_npe)))
                out["mean_npe"].append(relative_deviation(float(g_npe.mean()), float(t_npe.mean())))
                out["rms_npe"].append(_rel_rms(t_npe, g_npe))
            t_hit, g_hit = t_rows & (truth.npe > 0), g_rows & (generated.npe > 0)
            if t_hit.sum() >= MIN_ROWS_TIME and g_hit.sum() >= MIN_ROWS_TIME:
                t_time, g_time = truth.first_hit_ns[t_hit], generated.first_hit_ns[g_hit]
                out["sp_time"].append(separation_with_overflow(t_time, g_time, _continuous_edges(t_time, g_time)))
                out["mean_time"].append(float(g_time.mean() - t_time.mean()))
                out["rms_time"].append(_rel_rms(t_time, g_time))
    return out


def _max_abs(values: Sequence[float]) -> float:
    return max((abs(v) for v in values), default=math.nan)


def _truth_split_floor(truth: PointSample, r_groups: Sequence[tuple[str, float, float]], seed: int) -> float:
    """Max separation power between two random halves (by event) of the truth: the statistical floor."""
    events = np.unique(truth.event)
    half = np.random.default_rng(seed).permutation(events)[: len(events) // 2]
    in_a = np.isin(truth.event, half)
    stats = _bin_statistics(truth, truth, r_groups, in_a, ~in_a)
    return max(_max_abs(stats["sp_npe"]), _max_abs(stats["sp_time"]))


def compare_points(truth: PointSample, generated: PointSample, *, seed: int = 0
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of a point-mode comparison (see docs/juno.md) and the per-radius data for figures."""
    use_hits = truth.hit_time_ns is not None and generated.hit_time_ns is not None
    metrics: dict[str, Any] = {"kind": "points", "hit_time_source": "hits" if use_hits else "first_hit",
                               "n_events_truth": len(truth.event_radii()[0]),
                               "n_events_generated": len(generated.event_radii()[0])}
    radius_metrics, groups = _radius_metrics(truth, generated, use_hits)
    metrics.update(radius_metrics)
    r_groups = _radius_groups(truth.event_radii()[1])
    stats = _bin_statistics(truth, generated, r_groups)
    metrics["n_bins_compared_npe"] = len(stats["sp_npe"])
    metrics["n_bins_compared_time"] = len(stats["sp_time"])
    metrics["max_separation_power_npe"] = _max_abs(stats["sp_npe"])
    metrics["max_separation_power_time"] = _max_abs(stats["sp_time"])
    metrics["mean_separation_power_npe"] = float(np.mean(stats["sp_npe"])) if stats["sp_npe"] else math.nan
    metrics["mean_separation_power_time"] = float(np.mean(stats["sp_time"])) if stats["sp_time"] else math.nan
    metrics["max_separation_power"] = max(metrics["max_separation_power_npe"], metrics["max_separation_power_time"])
    metrics["npe_mean_rel_dev_max"] = _max_abs(stats["mean_npe"])
    metrics["npe_rms_rel_dev_max"] = _max_abs(stats["rms_npe"])
    metrics["first_hit_mean_dev_ns_max"] = _max_abs(stats["mean_time"])
    metrics["first_hit_rms_rel_dev_max"] = _max_abs(stats["rms_time"])
    metrics["separation_power_floor"] = _truth_split_floor(truth, r_groups, seed)
    return metrics, groups


# --------------------------------------------------------------------------------------------------
# Muon comparison


def _same_muons(truth: MuonSample, generated: MuonSample) -> bool:
    return (truth.tracks is not None and generated.tracks is not None and truth.tracks.shape == generated.tracks.shape
            and bool(np.allclose(truth.tracks, generated.tracks, atol=1e-6)))


def compare_muons(truth: MuonSample, generated: MuonSample) -> dict[str, Any]:
    """Metrics of a muon comparison (see docs/juno.md)."""
    if truth.npe.shape[1] != generated.npe.shape[1]:
        raise DataError(f"truth has {truth.npe.shape[1]} PMTs per muon, generated {generated.npe.shape[1]}")
    metrics: dict[str, Any] = {"kind": "muons", "n_muons_truth": len(truth.total_pe),
                               "n_muons_generated": len(generated.total_pe)}
    t_pe_per_m = truth.total_pe.sum() / truth.track_length_m.sum()
    g_pe_per_m = generated.total_pe.sum() / generated.track_length_m.sum()
    metrics["total_pe_per_m_truth"] = float(t_pe_per_m)
    metrics["total_pe_per_m_generated"] = float(g_pe_per_m)
    metrics["total_pe_rel_dev"] = abs(relative_deviation(float(g_pe_per_m), float(t_pe_per_m)))
    paired = _same_muons(truth, generated)
    metrics["paired"] = paired
    if paired:
        per_muon = generated.total_pe / truth.total_pe - 1.0
        metrics["total_pe_paired_rel_dev_mean"] = float(per_muon.mean())
        metrics["total_pe_paired_rel_dev_rms"] = float(per_muon.std())
        metrics["npe_map_l1_rel_dev"] = float(np.abs(generated.npe - truth.npe).sum() / truth.npe.sum())
        both = (truth.npe > 0) & (generated.npe > 0)
        metrics["first_hit_paired_median_dev_ns"] = float(np.median(generated.first_hit_ns[both]
                                                                    - truth.first_hit_ns[both]))
    t_npe, g_npe = truth.npe.ravel(), generated.npe.ravel()
    metrics["max_separation_power_npe"] = separation_with_overflow(t_npe, g_npe, _integer_edges(t_npe, g_npe))
    metrics["npe_mean_rel_dev_max"] = abs(relative_deviation(float(g_npe.mean()), float(t_npe.mean())))
    metrics["npe_rms_rel_dev_max"] = abs(_rel_rms(t_npe, g_npe))
    t_time, g_time = truth.first_hit_ns[truth.npe > 0], generated.first_hit_ns[generated.npe > 0]
    if len(t_time) and len(g_time):
        metrics["max_separation_power_time"] = separation_with_overflow(t_time, g_time,
                                                                        _continuous_edges(t_time, g_time))
        metrics["hit_time_median_dev_ns"] = abs(float(np.median(g_time) - np.median(t_time)))
    else:
        metrics["max_separation_power_time"] = metrics["hit_time_median_dev_ns"] = math.nan
    metrics["max_separation_power"] = max(metrics["max_separation_power_npe"], metrics["max_separation_power_time"])
    return metrics


# --------------------------------------------------------------------------------------------------
# Figures


def _point_figures(out: Path, groups: Sequence[Mapping[str, Any]], truth: PointSample, generated: PointSample,
                   labels: tuple[str, str], hit_source: str) -> list[tuple[str, str]]:
    figures: list[tuple[str, str]] = []
    titles = [g["label"] for g in groups]
    plots.plot_hist_comparison(out / "total_pe.png", [(g["truth_total"], g["generated_total"]) for g in groups],
                               bins=30, xlabel="total p.e. per event", titles=titles, labels=labels)
    figures.append(("total_pe.png", "Total p.e. per event, one panel per radius group"))
    timed = [g for g in groups if len(g["truth_time"]) and len(g["generated_time"])]
    if timed:
        pairs = [(g["truth_time"], g["generated_time"]) for g in timed]
        plots.plot_hist_comparison(out / "hit_time.png", pairs, bins=60, xlabel="hit time (ns)",
                                   titles=[g["label"] for g in timed], labels=labels, logy=True)
        figures.append(("hit_time.png", f"Hit-time spectra ({hit_source}) per radius group"))
    # mean npe versus theta for the radius groups
    curves_t, curves_g = {}, {}
    for g in groups[:6]:
        low, high = _group_range(g["label"], truth)
        t_sel, g_sel = _in(truth.r_m, low, high), _in(generated.r_m, low, high)
        curves_t[g["label"]] = _binned_mean(truth.theta[t_sel], truth.npe[t_sel])
        curves_g[g["label"]] = _binned_mean(generated.theta[g_sel], generated.npe[g_sel])
    plots.plot_curve_comparison(out / "npe_vs_theta.png", THETA_EDGES, curves_t, curves_g, xlabel="theta (rad)",
                                ylabel="mean npe per PMT", labels=labels, ratio_range=(0.9, 1.1))
    figures.append(("npe_vs_theta.png", "Mean p.e. per PMT versus theta, per radius group"))
    return figures


def _group_range(label: str, truth: PointSample) -> tuple[float, float]:
    for name, low, high in _radius_groups(truth.event_radii()[1]):
        if name == label:
            return low, high
    raise KeyError(label)


def _binned_mean(x: FloatArray, y: np.ndarray) -> tuple[FloatArray, FloatArray]:
    index = np.digitize(x, THETA_EDGES[1:-1])
    count = np.bincount(index, minlength=len(THETA_EDGES) - 1).astype(np.float64)
    total = np.bincount(index, weights=y, minlength=len(THETA_EDGES) - 1)
    square = np.bincount(index, weights=np.asarray(y, np.float64) ** 2, minlength=len(THETA_EDGES) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        error = np.sqrt(np.maximum(square / count - mean**2, 0.0) / count)
    return mean, error


def _muon_figures(out: Path, truth: MuonSample, generated: MuonSample, labels: tuple[str, str]
                  ) -> list[tuple[str, str]]:
    figures: list[tuple[str, str]] = []
    curves = []
    for sample in (truth, generated):
        index = np.digitize(sample.track_length_m, TRACK_LENGTH_EDGES_M[1:-1])
        n_bins = len(TRACK_LENGTH_EDGES_M) - 1
        count = np.bincount(index, minlength=n_bins).astype(np.float64)
        total = np.bincount(index, weights=sample.total_pe, minlength=n_bins)
        square = np.bincount(index, weights=sample.total_pe**2, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
            error = np.sqrt(np.maximum(square / count - mean**2, 0.0) / count)
        curves.append({"total p.e.": (mean, error)})
    plots.plot_curve_comparison(out / "muon_total_pe_vs_length.png", TRACK_LENGTH_EDGES_M, curves[0], curves[1],
                                xlabel="track length in LS (m)", ylabel="total p.e. per muon", labels=labels)
    figures.append(("muon_total_pe_vs_length.png", "Total p.e. per muon versus track length"))
    t_npe, g_npe = truth.npe.ravel(), generated.npe.ravel()
    plots.plot_hist_comparison(out / "muon_npe.png", [(t_npe, g_npe)], bins=_integer_edges(t_npe, g_npe)[:200],
                               xlabel="npe per PMT", labels=labels, logy=True)
    figures.append(("muon_npe.png", "Per-PMT p.e. counts, all muons pooled"))
    t_time, g_time = truth.first_hit_ns[truth.npe > 0], generated.first_hit_ns[generated.npe > 0]
    if len(t_time) and len(g_time):
        plots.plot_hist_comparison(out / "muon_first_hit.png", [(t_time, g_time)], bins=60,
                                   xlabel="first hit time (ns)", labels=labels, logy=True)
        figures.append(("muon_first_hit.png", "Per-PMT first-hit times, all muons pooled"))
    from detgen.simulators.juno import JunoDetector, pmt_positions

    n_pmt = truth.npe.shape[1]
    unit = pmt_positions(JunoDetector(n_pmt=n_pmt)) / JunoDetector().pmt_radius_m
    cos_theta, phi = unit[:, 2], np.arctan2(unit[:, 1], unit[:, 0])
    edges_phi, edges_cos = np.linspace(-math.pi, math.pi, 61), np.linspace(-1.0, 1.0, 31)
    weights_t, weights_g = truth.npe[0], generated.npe[0]
    plots.plot_hist2d_side_by_side(out / "muon_npe_map.png", (np.repeat(phi, weights_t), np.repeat(cos_theta, weights_t)),
                                   (np.repeat(phi, weights_g), np.repeat(cos_theta, weights_g)), edges_phi,
                                   edges_cos, xlabel="PMT phi (rad)", ylabel="PMT cos(theta)", titles=labels)
    figures.append(("muon_npe_map.png", "p.e. map of the first muon of each file (PMT phi, cos theta)"))
    return figures


# --------------------------------------------------------------------------------------------------
# Entry points


def validate_juno(truth: Mapping[str, Any], generated: Mapping[str, Any], out_dir: str | Path, *, seed: int = 0,
                  kind: str = "auto", label_generated: str = "generated", make_figures: bool = True,
                  ) -> dict[str, Any]:
    """Compare a generated JUNO sample with the truth; write metrics.json, figures and report.html.

    Args:
        truth, generated: point-mode ``{"pmt": table, "hits": table}`` (hits optional) or muon tables.
        out_dir: report folder (created).
        seed: seed of the truth split behind ``separation_power_floor``.
        kind: "points", "muons" or "auto" (from the columns).
        label_generated: name of the generated sample in figures.
        make_figures: write the PNG figures.

    Returns:
        The metrics (also in ``out_dir/metrics.json``; every key in docs/juno.md).
    """
    kind = detect_kind(truth) if kind == "auto" else kind
    if kind not in ("points", "muons"):
        raise DataError(f"kind={kind!r}; expected 'points', 'muons' or 'auto'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = ("truth", label_generated)
    figures: list[tuple[str, str]] = []
    if kind == "points":
        t_sample, g_sample = as_point_sample(truth, "truth"), as_point_sample(generated, "generated")
        metrics, groups = compare_points(t_sample, g_sample, seed=seed)
        if make_figures:
            figures = _point_figures(out, groups, t_sample, g_sample, labels, metrics["hit_time_source"])
    else:
        t_muons, g_muons = as_muon_sample(truth, "truth"), as_muon_sample(generated, "generated")
        metrics = compare_muons(t_muons, g_muons)
        if make_figures:
            figures = _muon_figures(out, t_muons, g_muons, labels)
    write_metrics(out / "metrics.json", metrics)
    write_report_html(out, f"JUNO validation ({kind}): truth vs {label_generated}", metrics, figures, notes=[
        f"(R, theta) bins are compared when both samples have >= {MIN_ROWS_NPE} PMT rows (npe) or "
        f">= {MIN_ROWS_TIME} PMT rows with hits (first-hit time); radius groups need >= {MIN_EVENTS} events.",
        "separation_power_floor is the same maximum between two halves of the truth: what a perfect generator "
        "reaches with this statistics.",
    ], key_metrics=[k for k in SUMMARY_KEYS if k in metrics] + sorted(k for k in metrics if k not in SUMMARY_KEYS))
    return metrics


def read_sample(path: str | Path) -> dict[str, Any]:
    """Read a JUNO file: the ``pmt`` and ``hits`` groups of a point-mode HDF5 file, or a muon table."""
    import h5py

    from detgen.io import read_table

    path = Path(path)
    groups: list[str] = []
    if path.suffix.lower() in (".h5", ".hdf5") and path.is_file():
        try:
            with h5py.File(path, "r") as file:
                groups = [name for name in ("pmt", "hits") if isinstance(file.get(name), h5py.Group)]
        except OSError as error:
            raise DataError(f"{path}: cannot read as an HDF5 file ({error})") from error
    if "pmt" in groups:
        return {name: read_table(path, key=name) for name in groups}
    return dict(read_table(path))


CLI_HELP = ("JUNO: total p.e. and hit-time spectra per radius, npe/time distributions per (R, theta) bin, "
            "muon total p.e. vs track length and npe maps")
SUMMARY_KEYS = ("total_pe_rel_dev", "hit_time_median_dev_ns", "max_separation_power", "separation_power_floor",
                "max_separation_power_npe", "max_separation_power_time")


def add_cli_arguments(parser: Any) -> None:
    parser.add_argument("--kind", choices=("auto", "points", "muons"), default="auto",
                        help="sample kind (default: from the file's groups/columns)")


def validate_cli(truth: str, generated: str, out: str, args: Any) -> dict[str, Any]:
    return validate_juno(read_sample(truth), read_sample(generated), out, seed=args.seed, kind=args.kind)
