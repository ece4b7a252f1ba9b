"""Truth-versus-generated comparison figures, saved as PNG files.

Three figure kinds cover the validations: step histograms with a ratio panel, binned curves
(efficiencies, resolutions) with error bars and a ratio panel, and a pair of 2-D histograms side by
side. Figures are built with :class:`matplotlib.figure.Figure` directly, never through pyplot, so
importing this module changes no global state (no backend switch, no rcParams edits) and works on
headless machines; the ROOT-like style of mplhep is applied only inside each function.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray

from detgen.files import atomic_path

#: Colours for successive curves (colour-blind-safe palette used by mplhep's styles).
PALETTE: tuple[str, ...] = ("#5790fc", "#f89c20", "#e42536", "#964a8b", "#9c9ca1", "#7a21dd")

#: Line/marker colours of the two samples in histogram comparisons.
TRUTH_COLOUR = "black"
GENERATED_COLOUR = "#e42536"

#: A binned curve: (values, uncertainties), one entry per bin.
Curve = tuple[ArrayLike, ArrayLike]


def _style() -> dict[str, Any]:
    """rcParams for the figures: mplhep's ROOT style when available, scaled to a readable font size."""
    rc: dict[str, Any] = {}
    try:
        import mplhep

        rc.update(mplhep.style.ROOT)
    except ImportError:  # mplhep is a declared dependency; fall back to matplotlib defaults if absent
        pass
    # The ROOT style is tuned for 10x10 inch single plots; multi-panel figures need smaller text.
    # Minor ticks are off: they double the drawing time of multi-panel figures for little gain.
    rc.update({"font.size": 13, "axes.labelsize": "medium", "legend.fontsize": "small",
               "xtick.minor.visible": False, "ytick.minor.visible": False})
    return rc


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Apply the detgen figure style for the duration of the block (restored afterwards)."""
    import matplotlib

    # rc_context's stubs want literal rcParams names; our keys come from mplhep at run time.
    with matplotlib.rc_context(_style()):  # type: ignore[arg-type]
        yield


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Save ``figure`` as PNG atomically: write a temporary file in the same folder, then rename.

    A reader never sees a half-written PNG, and a crash leaves the previous file in place.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary, open(temporary, "wb") as stream:
        figure.savefig(stream, format="png", dpi=dpi)
    return target


def _grid_shape(n_panels: int, ncols: int | None) -> tuple[int, int]:
    """(rows, columns) of a panel grid: at most 4 columns unless ``ncols`` says otherwise."""
    columns = ncols if ncols is not None else min(n_panels, 4)
    return int(np.ceil(n_panels / columns)), columns


def _ratio_axes(figure: Figure, n_panels: int, ncols: int | None) -> list[tuple[Any, Any]]:
    """Create (main, ratio) axis pairs, the ratio panel a third of the main panel's height below it.

    Margins are fixed in inches rather than left to constrained layout, which re-draws the figure
    several times and dominates the run time of many-panel figures.
    """
    rows, columns = _grid_shape(n_panels, ncols)
    width, height = figure.get_size_inches()
    outer = figure.add_gridspec(rows, columns, left=1.0 / width, right=1 - 0.25 / width, bottom=0.65 / height,
                                top=1 - 0.4 / height, hspace=0.3, wspace=0.3)
    pairs = []
    for i in range(n_panels):
        inner = outer[i // columns, i % columns].subgridspec(2, 1, height_ratios=(3, 1), hspace=0.05)
        main = figure.add_subplot(inner[0])
        ratio = figure.add_subplot(inner[1], sharex=main)
        main.tick_params(labelbottom=False)
        pairs.append((main, ratio))
    return pairs


def _safe_ratio(numerator: NDArray[np.float64], denominator: NDArray[np.float64]) -> NDArray[np.float64]:
    """numerator / denominator, NaN where the denominator is not positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def _histogram_edges(truth: NDArray[np.float64], generated: NDArray[np.float64], bins: Any) -> NDArray[np.float64]:
    """Explicit bin edges: ``bins`` itself when it is a sequence, else equal bins over the truth 0.1-99.9%."""
    if np.ndim(bins) > 0:
        return np.asarray(bins, dtype=np.float64)
    reference = truth if truth.size else generated
    if reference.size == 0:
        return np.linspace(0.0, 1.0, int(bins) + 1)
    low, high = np.quantile(reference, [0.001, 0.999])
    return np.linspace(low, high if high > low else low + 1.0, int(bins) + 1)


def _draw_hist_pair(
    main: Any,
    ratio: Any,
    truth: NDArray[np.float64],
    generated: NDArray[np.float64],
    edges: NDArray[np.float64],
    *,
    labels: tuple[str, str],
    density: bool,
    logy: bool,
    ratio_range: tuple[float, float],
) -> None:
    """Step histograms of both samples on ``main`` and generated/truth with Poisson errors on ``ratio``."""
    counts_truth = np.histogram(truth, bins=edges)[0].astype(np.float64)
    counts_generated = np.histogram(generated, bins=edges)[0].astype(np.float64)
    widths = np.diff(edges)
    norm_truth = counts_truth.sum() * widths if density and counts_truth.sum() > 0 else np.ones_like(widths)
    norm_generated = (
        counts_generated.sum() * widths if density and counts_generated.sum() > 0 else np.ones_like(widths)
    )
    main.stairs(counts_truth / norm_truth, edges, color=TRUTH_COLOUR, label=labels[0], linewidth=1.5)
    main.stairs(counts_generated / norm_generated, edges, color=GENERATED_COLOUR, label=labels[1], linewidth=1.5)
    if logy and np.any(counts_truth > 0):
        main.set_yscale("log")
    main.legend(loc="best")
    main.set_ylabel("density" if density else "entries")

    value = _safe_ratio(counts_generated / norm_generated, counts_truth / norm_truth)
    with np.errstate(invalid="ignore", divide="ignore"):
        error = value * np.sqrt(_safe_ratio(np.ones_like(value), counts_generated)
                                + _safe_ratio(np.ones_like(value), counts_truth))
    centres = 0.5 * (edges[1:] + edges[:-1])
    ratio.errorbar(centres, value, yerr=error, xerr=widths / 2, fmt="o", markersize=3,
                   color=GENERATED_COLOUR, elinewidth=1)
    ratio.axhline(1.0, color=TRUTH_COLOUR, linewidth=1, linestyle="--")
    _format_ratio_axis(ratio, ratio_range, labels[0])


def _format_ratio_axis(ratio: Any, ratio_range: tuple[float, float], reference: str) -> None:
    """Fix the ratio panel's range; ticks only inside it, so its top label cannot collide with the main panel's."""
    ratio.set_ylim(*ratio_range)
    ratio.set_yticks(np.linspace(*ratio_range, 5)[1:-1])
    ratio.set_ylabel(f"/ {reference}", fontsize="small")


def plot_hist_comparison(
    path: str | os.PathLike[str],
    pairs: Sequence[tuple[ArrayLike, ArrayLike]],
    *,
    bins: int | ArrayLike | Sequence[ArrayLike] = 50,
    xlabel: str = "",
    titles: Sequence[str] | None = None,
    labels: tuple[str, str] = ("truth", "generated"),
    density: bool = True,
    logy: bool = False,
    ratio_range: tuple[float, float] = (0.5, 1.5),
    ncols: int | None = None,
) -> Path:
    """Step histograms of truth vs generated, one panel per (truth, generated) pair, each with a ratio panel.

    Args:
        path: PNG file to write (atomically).
        pairs: one (truth values, generated values) pair per panel.
        bins: number of bins (spanning the truth 0.1-99.9% quantiles), explicit edges shared by all
            panels, or a list of edges, one per panel.
        xlabel: x-axis label with units.
        titles: optional panel titles.
        labels: legend names of the two samples.
        density: normalise each histogram to unit area (shape comparison) instead of raw entries.
        logy: logarithmic y axis on the main panels.
        ratio_range: y range of the generated/truth ratio panels.
        ncols: panel columns (default: up to 4).

    Returns:
        The path written.
    """
    per_panel_bins = isinstance(bins, Sequence) and len(bins) == len(pairs) and np.ndim(bins[0]) == 1
    with figure_style():
        rows, columns = _grid_shape(len(pairs), ncols)
        figure = Figure(figsize=(4.6 * columns, 4.6 * rows))
        for i, ((main, ratio), (truth, generated)) in enumerate(
            zip(_ratio_axes(figure, len(pairs), ncols), pairs)
        ):
            truth_values = np.asarray(truth, dtype=np.float64).ravel()
            generated_values = np.asarray(generated, dtype=np.float64).ravel()
            panel_bins = bins[i] if per_panel_bins else bins  # type: ignore[index]
            edges = _histogram_edges(truth_values, generated_values, panel_bins)
            _draw_hist_pair(main, ratio, truth_values, generated_values, edges, labels=labels,
                            density=density, logy=logy, ratio_range=ratio_range)
            ratio.set_xlabel(xlabel)
            if titles is not None:
                main.set_title(titles[i], fontsize="small")
        return save_figure(figure, path)


def plot_curve_comparison(
    path: str | os.PathLike[str],
    edges: ArrayLike,
    truth: Mapping[str, Curve],
    generated: Mapping[str, Curve],
    *,
    xlabel: str = "",
    ylabel: str = "",
    labels: tuple[str, str] = ("truth", "generated"),
    ylim: tuple[float, float] | None = None,
    ratio_range: tuple[float, float] = (0.8, 1.2),
    title: str | None = None,
) -> Path:
    """Binned curves (e.g. efficiency vs p) of truth and generated with error bars and a ratio panel.

    Args:
        path: PNG file to write (atomically).
        edges: bin edges of the x variable (the points sit at the bin centres).
        truth: curve name -> (values, uncertainties) for the truth sample.
        generated: the same names -> (values, uncertainties) for the generated sample.
        xlabel, ylabel: axis labels with units.
        labels: names of the two samples in the legend.
        ylim: y range of the main panel.
        ratio_range: y range of the generated/truth ratio panel.
        title: optional title.

    Returns:
        The path written.
    """
    x_edges = np.asarray(edges, dtype=np.float64)
    centres = 0.5 * (x_edges[1:] + x_edges[:-1])
    half_widths = 0.5 * np.diff(x_edges)
    with figure_style():
        figure = Figure(figsize=(7.5, 7.0))
        ((main, ratio),) = _ratio_axes(figure, 1, 1)
        for i, name in enumerate(truth):
            colour = PALETTE[i % len(PALETTE)]
            y_truth, e_truth = (np.asarray(v, dtype=np.float64) for v in truth[name])
            y_gen, e_gen = (np.asarray(v, dtype=np.float64) for v in generated[name])
            main.errorbar(centres, y_truth, yerr=e_truth, xerr=half_widths, fmt="o", color=colour,
                          markersize=4, label=f"{name} {labels[0]}")
            main.errorbar(centres, y_gen, yerr=e_gen, fmt="s", color=colour, markerfacecolor="none",
                          markersize=6, label=f"{name} {labels[1]}")
            value = _safe_ratio(y_gen, y_truth)
            with np.errstate(invalid="ignore", divide="ignore"):
                error = np.abs(value) * np.hypot(_safe_ratio(e_gen, y_gen), _safe_ratio(e_truth, y_truth))
            ratio.errorbar(centres, value, yerr=error, fmt="s", color=colour, markerfacecolor="none",
                           markersize=4)
        ratio.axhline(1.0, color=TRUTH_COLOUR, linewidth=1, linestyle="--")
        _format_ratio_axis(ratio, ratio_range, labels[0])
        ratio.set_xlabel(xlabel)
        main.set_ylabel(ylabel)
        if ylim is not None:
            main.set_ylim(*ylim)
        main.legend(loc="best", ncol=2, fontsize="x-small")
        if title:
            main.set_title(title, fontsize="small")
        return save_figure(figure, path)


def plot_hist2d_side_by_side(
    path: str | os.PathLike[str],
    truth_xy: tuple[ArrayLike, ArrayLike],
    generated_xy: tuple[ArrayLike, ArrayLike],
    x_edges: ArrayLike,
    y_edges: ArrayLike,
    *,
    xlabel: str = "",
    ylabel: str = "",
    titles: tuple[str, str] = ("truth", "generated"),
    log_colour: bool = True,
    logy: bool = False,
) -> Path:
    """Two 2-D histograms (e.g. dE/dx vs p) side by side on a shared colour scale.

    Both are normalised to unit sum so samples of different size compare directly; the colour scale
    is logarithmic by default (dE/dx bands span orders of magnitude in density). ``logy`` draws the
    y axis logarithmically (use log-spaced ``y_edges`` with it).

    Returns:
        The path written.
    """
    x_bins = np.asarray(x_edges, dtype=np.float64)
    y_bins = np.asarray(y_edges, dtype=np.float64)
    histograms = []
    for x, y in (truth_xy, generated_xy):
        counts = np.histogram2d(np.asarray(x).ravel(), np.asarray(y).ravel(), bins=(x_bins, y_bins))[0]
        histograms.append(counts / max(counts.sum(), 1.0))
    positive = np.concatenate([h[h > 0] for h in histograms])
    vmax = float(positive.max()) if positive.size else 1.0
    vmin = float(positive.min()) if positive.size else vmax / 10
    norm: colors.Normalize = (
        colors.LogNorm(vmin=vmin, vmax=vmax) if log_colour and vmin < vmax else colors.Normalize(0.0, vmax)
    )
    with figure_style():
        figure = Figure(figsize=(13.0, 5.5), layout="constrained")
        axes = figure.subplots(1, 2, sharey=True)
        mesh = None
        for ax, histogram, title in zip(axes, histograms, titles):
            # Masking empty bins keeps them white and keeps LogNorm away from zeros.
            mesh = ax.pcolormesh(x_bins, y_bins, np.ma.masked_less_equal(histogram.T, 0), norm=norm,
                                 cmap="viridis")
            ax.set_title(title, fontsize="small")
            ax.set_xlabel(xlabel)
            if logy:
                ax.set_yscale("log")
        axes[0].set_ylabel(ylabel)
        if mesh is not None:
            figure.colorbar(mesh, ax=list(axes), label="fraction of tracks")
        return save_figure(figure, path)
