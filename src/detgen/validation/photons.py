"""ATLAS-like photon response validation: resolutions, correlations, tails and the diphoton system.

Both samples are tables with the truth columns of both photons and mu (``TRUTH_COLUMNS``) and the six responses
``d_et1, d_eta1, d_phi1, d_et2, d_eta2, d_phi2`` (reco - truth). The truth sample is the held-out simulation
(the target); the generated sample holds the same kind of events with the responses a model generated (what
``detgen generate`` writes: the conditions file's columns with the response columns replaced). Reconstructed
observables are always recomputed as truth + response, so stale ``*_reco`` columns in a generated file (copied
from the conditions file) are never used. Rows need not match one to one.

What is compared (every metrics key is documented in docs/photons.md):

* **Core resolution** of each observable (ET, eta, phi) versus the photon's truth ET (40-200 GeV, step 20),
  truth eta (-2..2, step 0.5) and the event's mu (5..35, step 5): the iteratively 3-sigma-clipped standard
  deviation of the response (``metrics.clipped_mean_width``), both photons pooled, each in the bins of its own
  truth ET and eta. A bin is **used** ("enough statistics") when both samples have at least ``min_entries``
  photons in it (default 1,000). The relative statistical uncertainty of a width ratio is about 1/sqrt(N)
  (3% at N = 1,000, 1% at N = 10,000), so the 2% target is only meaningful in bins with N >~ 20,000;
  the per-bin uncertainties are reported and ``max_rel_resolution_dev_sigma`` gives the largest deviation in
  units of them.
* **Correlations**: the 6 x 6 Pearson correlation matrix of the responses in each sample and their difference.
* **Response distributions and tails**: for each response, the fraction below mean - 2 sigma, where mean and
  sigma are the truth sample's clipped core mean and width of that response (the same threshold for both
  samples); 1-D Wasserstein distances in units of the truth spread.
* **Detector level**: ET, eta, phi of both photons (truth + response).
* **Diphoton system**: m_gg and pT_gg of the two photons taken as massless; mean and standard deviation of m_gg
  in the window [120, 130] GeV.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detgen.errors import DataError
from detgen.simulators.photons import OBSERVABLES, RESPONSE_COLUMNS, TRUTH_COLUMNS
from detgen.validation import metrics as m
from detgen.validation import plots
from detgen.validation.report import write_metrics, write_report_html

FloatArray = NDArray[np.float64]

#: Binning of the resolution comparison (paper section 4 / the authors' code).
RESOLUTION_BINS: dict[str, FloatArray] = {
    "et": np.arange(40.0, 200.0 + 1e-9, 20.0),
    "eta": np.arange(-2.0, 2.0 + 1e-9, 0.5),
    "mu": np.arange(5.0, 35.0 + 1e-9, 5.0),
}
#: Photons per bin, in both samples, for a resolution bin to be used.
MIN_ENTRIES = 1000
#: Clipping of the core resolution (iterative n-sigma).
CLIP_SIGMA = 3.0
#: Tail threshold in units of the truth core width below the truth core mean.
TAIL_SIGMA = 2.0
#: m_gg window for the mean and standard deviation, GeV.
MGG_WINDOW_GEV: tuple[float, float] = (120.0, 130.0)
#: Units of the responses, for labels.
UNITS = {"et": "GeV", "eta": "", "phi": "rad"}
LABELS = {"et": "E_T", "eta": "eta", "phi": "phi"}


@dataclass(frozen=True)
class PhotonSample:
    """The columns one validation needs: truth (both photons, mu) and the six responses, plus exclusions."""

    columns: dict[str, FloatArray]
    n_input: int
    excluded_single_photon: int

    def __len__(self) -> int:
        return int(self.columns["mu"].size)

    def photon(self, i: int, name: str) -> FloatArray:
        return self.columns[f"{name}{i}"]

    def response(self, observable: str, i: int) -> FloatArray:
        return self.columns[f"d_{observable}{i}"]

    def reco(self, observable: str, i: int) -> FloatArray:
        value = self.columns[f"{observable}{i}"] + self.response(observable, i)
        if observable == "phi":
            value = (value + np.pi) % (2 * np.pi) - np.pi
        return value

    def pooled(self, values_of: Any) -> FloatArray:
        """Concatenate a per-photon quantity over photons 1 and 2."""
        return np.concatenate([values_of(1), values_of(2)])


def as_photon_sample(table: Mapping[str, Any], name: str) -> PhotonSample:
    """Check ``table`` and return its photon columns.

    Events with fewer than two photons (second-photon ET missing, NaN or <= 0; files often fill absent photons
    with NaN or a negative default) are excluded and counted. Any other missing column, NaN/inf value or
    negative mu is a DataError naming the sample and the column.
    """
    needed = (*TRUTH_COLUMNS, *RESPONSE_COLUMNS)
    missing = [c for c in needed if c not in table]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(missing)}; a photon sample needs {', '.join(needed)}")
    columns = {c: np.asarray(table[c], dtype=np.float64).ravel() for c in needed}
    n_input = columns["mu"].size
    with np.errstate(invalid="ignore"):
        two_photons = np.isfinite(columns["et2"]) & (columns["et2"] > 0)
    columns = {c: v[two_photons] for c, v in columns.items()}
    for column, values in columns.items():
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(f"{name}: column '{column}' has {int(bad.sum())} NaN/inf value(s) in events with two "
                            "photons; expected finite numbers")
    if (columns["et1"] <= 0).any():
        raise DataError(f"{name}: column 'et1' has values <= 0; expected the leading photon's ET in GeV")
    if (columns["mu"] < 0).any():
        raise DataError(f"{name}: column 'mu' has negative values; expected pile-up mu >= 0")
    if columns["mu"].size == 0:
        raise DataError(f"{name}: no event with two photons (all {n_input} rows have second-photon ET missing/<= 0)")
    return PhotonSample(columns, n_input, int(n_input - two_photons.sum()))


# --------------------------------------------------------------------------------------------------
# Observables


def diphoton(sample: PhotonSample) -> tuple[FloatArray, FloatArray]:
    """(m_gg, pT_gg) in GeV of the two reconstructed photons, taken as massless."""
    et1, et2 = sample.reco("et", 1), sample.reco("et", 2)
    eta1, eta2 = sample.reco("eta", 1), sample.reco("eta", 2)
    phi1, phi2 = sample.reco("phi", 1), sample.reco("phi", 2)
    m2 = 2.0 * et1 * et2 * (np.cosh(eta1 - eta2) - np.cos(phi1 - phi2))
    px = et1 * np.cos(phi1) + et2 * np.cos(phi2)
    py = et1 * np.sin(phi1) + et2 * np.sin(phi2)
    return np.sqrt(np.clip(m2, 0.0, None)), np.hypot(px, py)


@dataclass(frozen=True)
class ResolutionCurve:
    """Clipped core widths of one observable in bins of one variable, with entries and uncertainties."""

    edges: FloatArray
    width: FloatArray
    error: FloatArray
    entries: NDArray[np.int64]


def resolution_curve(sample: PhotonSample, observable: str, variable: str, edges: FloatArray) -> ResolutionCurve:
    """Core resolution of ``observable`` in bins of the photon's truth ``variable`` ('et', 'eta' or 'mu').

    Both photons are pooled, each binned by its own truth ET/eta (mu is per event). Bins with fewer than 20
    photons give NaN. Uncertainty: width / sqrt(2 (N_kept - 1)) (Gaussian approximation).
    """
    response = sample.pooled(lambda i: sample.response(observable, i))
    x = sample.pooled(lambda i: sample.columns["mu"] if variable == "mu" else sample.photon(i, variable))
    index = np.digitize(x, edges) - 1
    n_bins = len(edges) - 1
    width = np.full(n_bins, np.nan)
    error = np.full(n_bins, np.nan)
    entries = np.bincount(index[(index >= 0) & (index < n_bins)], minlength=n_bins).astype(np.int64)
    for k in range(n_bins):
        if entries[k] >= 20:
            _, width[k], kept = m.clipped_mean_width(response[index == k], n_sigma=CLIP_SIGMA)
            error[k] = width[k] / np.sqrt(2.0 * max(kept - 1, 1))
    return ResolutionCurve(edges, width, error, entries)


def _resolution_metrics(truth: PhotonSample, generated: PhotonSample, min_entries: int
                        ) -> tuple[dict[str, Any], dict[tuple[str, str], tuple[ResolutionCurve, ResolutionCurve]]]:
    metrics: dict[str, Any] = {}
    curves = {}
    all_dev: list[float] = []
    all_sigma: list[float] = []
    for observable in OBSERVABLES:
        for variable, edges in RESOLUTION_BINS.items():
            t = resolution_curve(truth, observable, variable, edges)
            g = resolution_curve(generated, observable, variable, edges)
            curves[(observable, variable)] = (t, g)
            used = (t.entries >= min_entries) & (g.entries >= min_entries) & np.isfinite(t.width) & (t.width > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                rel_dev = g.width / t.width - 1.0
                rel_err = np.hypot(t.error / t.width, g.error / g.width) * (g.width / t.width)
            key = f"{observable}_vs_{variable}"
            metrics[f"resolution_{key}_truth"] = t.width
            metrics[f"resolution_{key}_generated"] = g.width
            metrics[f"resolution_{key}_rel_dev"] = np.where(used, rel_dev, np.nan)
            metrics[f"resolution_{key}_rel_dev_unc"] = np.where(used, rel_err, np.nan)
            metrics[f"resolution_{key}_entries_truth"] = t.entries
            metrics[f"resolution_{key}_entries_generated"] = g.entries
            metrics[f"resolution_{key}_bins_used"] = int(used.sum())
            metrics[f"max_rel_resolution_dev_{key}"] = float(np.max(np.abs(rel_dev[used]))) if used.any() else np.nan
            all_dev += list(np.abs(rel_dev[used]))
            all_sigma += list(np.abs(rel_dev[used]) / rel_err[used])
    metrics["resolution_bins_used"] = len(all_dev)
    metrics["max_rel_resolution_dev"] = float(max(all_dev)) if all_dev else np.nan
    metrics["mean_rel_resolution_dev"] = float(np.mean(all_dev)) if all_dev else np.nan
    metrics["max_rel_resolution_dev_sigma"] = float(max(all_sigma)) if all_sigma else np.nan
    return metrics, curves


def response_matrix(sample: PhotonSample) -> FloatArray:
    """(rows, 6) responses in ``RESPONSE_COLUMNS`` order."""
    return np.stack([sample.columns[c] for c in RESPONSE_COLUMNS], axis=1)


def correlation_matrix(sample: PhotonSample) -> FloatArray:
    """6 x 6 Pearson correlation matrix of the responses."""
    return np.asarray(np.corrcoef(response_matrix(sample), rowvar=False), dtype=np.float64)


def _correlation_metrics(truth: PhotonSample, generated: PhotonSample) -> tuple[dict[str, Any], FloatArray, FloatArray]:
    c_truth, c_generated = correlation_matrix(truth), correlation_matrix(generated)
    metrics: dict[str, Any] = {"corr_matrix_truth": c_truth, "corr_matrix_generated": c_generated}
    upper = np.triu_indices(6, 1)
    metrics["max_abs_corr_dev"] = float(np.max(np.abs(c_generated - c_truth)[upper]))
    for a, b in zip(*upper):
        name = f"corr_{RESPONSE_COLUMNS[a]}_{RESPONSE_COLUMNS[b]}"
        metrics[f"{name}_truth"] = float(c_truth[a, b])
        metrics[f"{name}_generated"] = float(c_generated[a, b])
    return metrics, c_truth, c_generated


def _distribution_metrics(truth: PhotonSample, generated: PhotonSample) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    rel_devs = []
    for column in RESPONSE_COLUMNS:
        t, g = truth.columns[column], generated.columns[column]
        mean, width, _ = m.clipped_mean_width(t, n_sigma=CLIP_SIGMA)
        threshold = mean - TAIL_SIGMA * width
        f_t, f_g = float(np.mean(t < threshold)), float(np.mean(g < threshold))
        metrics[f"tail_fraction_{column}_truth"] = f_t
        metrics[f"tail_fraction_{column}_generated"] = f_g
        metrics[f"tail_fraction_{column}_rel_dev"] = f_g / f_t - 1.0 if f_t > 0 else np.nan
        if f_t > 0:
            rel_devs.append(abs(f_g / f_t - 1.0))
        metrics[f"core_width_{column}_truth"] = width
        metrics[f"core_width_{column}_generated"] = m.clipped_mean_width(g, n_sigma=CLIP_SIGMA)[1]
    metrics["tail_fraction_rel_dev"] = float(max(rel_devs)) if rel_devs else np.nan
    w1 = m.wasserstein_per_column(response_matrix(truth), response_matrix(generated))
    for column, value in zip(RESPONSE_COLUMNS, w1):
        metrics[f"wasserstein_{column}"] = float(value)
    metrics["mean_wasserstein"] = float(np.mean(w1))
    reco_t = np.stack([truth.reco(o, i) for i in (1, 2) for o in OBSERVABLES], axis=1)
    reco_g = np.stack([generated.reco(o, i) for i in (1, 2) for o in OBSERVABLES], axis=1)
    w1_reco = m.wasserstein_per_column(reco_t, reco_g)
    for (i, o), value in zip([(i, o) for i in (1, 2) for o in OBSERVABLES], w1_reco):
        metrics[f"wasserstein_{o}{i}_reco"] = float(value)
    return metrics


def _diphoton_metrics(truth: PhotonSample, generated: PhotonSample) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    stats: dict[str, tuple[float, float, int]] = {}
    for name, sample in (("truth", truth), ("generated", generated)):
        mgg, ptgg = diphoton(sample)
        window = mgg[(mgg >= MGG_WINDOW_GEV[0]) & (mgg <= MGG_WINDOW_GEV[1])]
        if window.size < 2:
            raise DataError(f"{name}: fewer than 2 events with m_gg in {MGG_WINDOW_GEV} GeV; is this H -> gamma gamma?")
        stats[name] = (float(window.mean()), float(window.std(ddof=1)), int(window.size))
        metrics[f"mgg_mean_{name}_gev"] = stats[name][0]
        metrics[f"mgg_sd_{name}_gev"] = stats[name][1]
        metrics[f"mgg_window_fraction_{name}"] = window.size / mgg.size
        metrics[f"ptgg_mean_{name}_gev"] = float(ptgg.mean())
    (mean_t, sd_t, n_t), (mean_g, sd_g, n_g) = stats["truth"], stats["generated"]
    metrics["mgg_mean_dev_gev"] = abs(mean_g - mean_t)
    metrics["mgg_mean_stat_unc_gev"] = float(np.sqrt(sd_t**2 / n_t + sd_g**2 / n_g))
    metrics["mgg_sd_rel_dev"] = abs(sd_g / sd_t - 1.0)
    metrics["mgg_sd_rel_stat_unc"] = float(np.sqrt(1.0 / (2 * (n_t - 1)) + 1.0 / (2 * (n_g - 1))))
    mgg_t, ptgg_t = diphoton(truth)
    mgg_g, ptgg_g = diphoton(generated)
    metrics["wasserstein_mgg_gev"] = m.wasserstein_1d(mgg_t, mgg_g)
    metrics["wasserstein_ptgg_gev"] = m.wasserstein_1d(ptgg_t, ptgg_g)
    return metrics


# --------------------------------------------------------------------------------------------------
# Figures


def _resolution_figures(out: Path, curves: Mapping[tuple[str, str], tuple[ResolutionCurve, ResolutionCurve]],
                        labels: tuple[str, str]) -> list[tuple[str, str]]:
    figures = []
    xlabels = {"et": "truth photon E_T [GeV]", "eta": "truth photon eta", "mu": "pile-up mu"}
    for (observable, variable), (t, g) in curves.items():
        name = f"resolution_{observable}_vs_{variable}.png"
        unit = f" [{UNITS[observable]}]" if UNITS[observable] else ""
        plots.plot_curve_comparison(out / name, t.edges, {LABELS[observable]: (t.width, t.error)},
                                    {LABELS[observable]: (g.width, g.error)}, xlabel=xlabels[variable],
                                    ylabel=f"core resolution of {LABELS[observable]}{unit}", labels=labels,
                                    ratio_range=(0.9, 1.1))
        figures.append((name, f"Core (3-sigma-clipped) resolution of {LABELS[observable]} vs {xlabels[variable]}, "
                              "both photons; ratio panel generated / truth."))
    return figures


def _correlation_figure(out: Path, c_truth: FloatArray, c_generated: FloatArray,
                        labels: tuple[str, str]) -> list[tuple[str, str]]:
    from matplotlib.figure import Figure

    names = [c.replace("d_", "d") for c in RESPONSE_COLUMNS]
    with plots.figure_style():
        figure = Figure(figsize=(18.0, 5.8), layout="constrained")
        axes = figure.subplots(1, 3)
        for ax, matrix, title, vmax in zip(axes, (c_truth, c_generated, c_generated - c_truth),
                                           (labels[0], labels[1], f"{labels[1]} - {labels[0]}"),
                                           (1.0, 1.0, max(0.05, float(np.max(np.abs(c_generated - c_truth)))))):
            image = ax.imshow(matrix, vmin=-vmax, vmax=vmax, cmap="RdBu_r")
            for a in range(6):
                for b in range(6):
                    ax.text(b, a, f"{matrix[a, b]:.3f}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(6), names, rotation=45)
            ax.set_yticks(range(6), names)
            ax.set_title(title, fontsize="small")
            figure.colorbar(image, ax=ax, shrink=0.8)
        plots.save_figure(figure, out / "correlations.png")
    return [("correlations.png", "Correlation matrix of the six responses: truth, generated and their difference.")]


def _distribution_figures(out: Path, truth: PhotonSample, generated: PhotonSample,
                          labels: tuple[str, str]) -> list[tuple[str, str]]:
    figures = []
    pairs = [(truth.columns[c], generated.columns[c]) for c in RESPONSE_COLUMNS]
    edges = []
    for t, _ in pairs:
        mean, width, _ = m.clipped_mean_width(t, n_sigma=CLIP_SIGMA)
        edges.append(np.linspace(mean - 8 * width, mean + 5 * width, 66))
    plots.plot_hist_comparison(out / "responses.png", pairs, bins=edges, titles=list(RESPONSE_COLUMNS),
                               labels=labels, logy=True, ncols=3)
    figures.append(("responses.png", "Response distributions (reco - truth), log scale to show the tails."))
    reco_pairs = [(truth.reco(o, i), generated.reco(o, i)) for i in (1, 2) for o in OBSERVABLES]
    plots.plot_hist_comparison(out / "reco_observables.png", reco_pairs, bins=50,
                               titles=[f"{o}{i}_reco" for i in (1, 2) for o in OBSERVABLES], labels=labels, ncols=3)
    figures.append(("reco_observables.png", "Detector-level ET [GeV], eta and phi [rad] of both photons."))
    mgg_t, ptgg_t = diphoton(truth)
    mgg_g, ptgg_g = diphoton(generated)
    plots.plot_hist_comparison(out / "diphoton.png", [(mgg_t, mgg_g), (ptgg_t, ptgg_g)],
                               bins=[np.linspace(110, 140, 61), np.linspace(0, 300, 61)],
                               titles=["m_gg [GeV]", "pT_gg [GeV]"], labels=labels, ncols=2)
    figures.append(("diphoton.png", "Diphoton invariant mass and transverse momentum."))
    return figures


# --------------------------------------------------------------------------------------------------
# Entry point


def validate_photons(truth: Mapping[str, Any], generated: Mapping[str, Any], out_dir: str | os.PathLike[str], *,
                     seed: int = 0, min_entries: int = MIN_ENTRIES, label_generated: str = "generated",
                     make_figures: bool = True, sources: tuple[str, str] = ("truth", "generated")) -> dict[str, Any]:
    """Validate generated photon responses against the truth sample; write metrics.json, PNGs and report.html.

    Args:
        truth: table with ``TRUTH_COLUMNS`` and ``RESPONSE_COLUMNS`` (the target).
        generated: the same columns with generated responses.
        out_dir: output folder (created).
        seed: unused by the current metrics (all deterministic); kept for the common validate interface.
        min_entries: photons per bin in both samples for a resolution bin to be used.
        label_generated: name of the generated sample in figures and the report.
        make_figures: write the PNGs (metrics.json and report.html are always written).
        sources: names of the two samples in error messages (the CLI passes the file names).

    Returns:
        The metrics written to metrics.json (keys in docs/photons.md).
    """
    del seed
    if min_entries < 20:
        raise DataError(f"min_entries = {min_entries}: expected at least 20 photons per bin")
    truth_sample, generated_sample = as_photon_sample(truth, sources[0]), as_photon_sample(generated, sources[1])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = ("truth", label_generated)
    metrics: dict[str, Any] = {
        "n_truth": len(truth_sample), "n_generated": len(generated_sample),
        "excluded_single_photon_truth": truth_sample.excluded_single_photon,
        "excluded_single_photon_generated": generated_sample.excluded_single_photon,
        "min_entries": min_entries,
    }
    resolution_metrics, curves = _resolution_metrics(truth_sample, generated_sample, min_entries)
    metrics.update(resolution_metrics)
    correlation_metrics, c_truth, c_generated = _correlation_metrics(truth_sample, generated_sample)
    metrics.update(correlation_metrics)
    metrics.update(_distribution_metrics(truth_sample, generated_sample))
    metrics.update(_diphoton_metrics(truth_sample, generated_sample))
    figures: list[tuple[str, str]] = []
    if make_figures:
        figures += _resolution_figures(out, curves, labels)
        figures += _correlation_figure(out, c_truth, c_generated, labels)
        figures += _distribution_figures(out, truth_sample, generated_sample, labels)
    write_metrics(out / "metrics.json", metrics)
    write_report_html(out, f"Photon response validation: truth vs {label_generated}", metrics, figures, notes=[
        "Responses d_X = X_reco - X_truth of both photons; reco = truth + response is recomputed for both samples.",
        f"Core resolution: iterative {CLIP_SIGMA:g}-sigma clipping, both photons pooled; a bin is used when both "
        f"samples have at least {min_entries} photons in it (relative statistical uncertainty ~1/sqrt(N)).",
        f"Tail fraction: responses below the truth core mean - {TAIL_SIGMA:g} x truth core width.",
        f"m_gg mean and SD in [{MGG_WINDOW_GEV[0]:g}, {MGG_WINDOW_GEV[1]:g}] GeV.",
    ], key_metrics=_report_order(metrics))
    return metrics


SUMMARY_KEYS = ("max_rel_resolution_dev", "max_abs_corr_dev", "tail_fraction_rel_dev", "mgg_mean_dev_gev",
                "mgg_sd_rel_dev", "mean_wasserstein")
_HEADLINE = ("n_truth", "n_generated", *SUMMARY_KEYS, "resolution_bins_used", "max_rel_resolution_dev_sigma",
             "mgg_mean_stat_unc_gev", "mgg_sd_rel_stat_unc")


def _report_order(metrics: Mapping[str, Any]) -> list[str]:
    """Headline metrics first, then every other scalar key alphabetically."""
    return [k for k in _HEADLINE if k in metrics] + sorted(k for k in metrics if k not in _HEADLINE)


# --------------------------------------------------------------------------------------------------
# Command line: ``detgen validate photons``
CLI_HELP = "ATLAS-like photons: resolution vs ET/eta/mu, response correlations and tails, m_gg and pT_gg"


def add_cli_arguments(parser: Any) -> None:
    parser.add_argument("--min-entries", type=int, default=MIN_ENTRIES,
                        help="photons per bin in both samples for a resolution bin to be used")
    parser.add_argument("--label", default="generated", help="name of the generated sample in the report")


def validate_cli(truth: str, generated: str, out: str, args: Any) -> dict[str, Any]:
    from detgen.io import read_table

    def read(path: str) -> dict[str, np.ndarray]:
        return dict(read_table(path))

    return validate_photons(read(truth), read(generated), out, seed=args.seed, min_entries=args.min_entries,
                            label_generated=args.label, sources=(truth, generated))


__all__: Sequence[str] = ("as_photon_sample", "correlation_matrix", "diphoton", "resolution_curve", "validate_photons")
