"""BESIII EMC shower observables and the truth-versus-generated shower validation.

Observables of an 11 x 11 crystal map (MeV; axis 1 = theta/Z, axis 2 = phi; [5, 5] = the crystal at the
extrapolated track impact), computed the way reconstruction sees a shower: only crystals at or above the
digit threshold (0.5 MeV) count. Crystal positions are a flat grid with the nominal front-face pitch of
5.2 cm in both directions (the barrel's faces are 5.2 cm wide seen from the IP).

* ``e1x1`` ... ``e11x11``: energy in the centred n x n windows (MeV); ``e1_over_e9`` = E1x1 / E3x3 and
  ``e9_over_e25`` = E3x3 / E5x5 (0 when the denominator is 0).
* ``n_hits``: crystals at or above threshold.
* ``centroid_phi_cm``, ``centroid_z_cm``: energy-weighted mean position over the whole map, relative to the
  centre of the impact crystal.
* BESIII ``EmcRecShowerShape`` conventions (BOSS), over the 5 x 5 crystals around the seed (the hottest
  crystal), with the shower centre at their energy-weighted centroid and r_i the distance of crystal i to it:
  ``second_moment_cm2`` = sum E_i r_i^2 / sum E_i;
  ``lat_moment`` = sum_{i>=3} E_i r_i^2 / (sum_{i>=3} E_i r_i^2 + r0^2 (E_1 + E_2)) with crystals sorted by
  energy and r0 = 5.2 cm (0 when fewer than two crystals are hit);
  ``a20`` = |sum (E_i / E5x5) (2 rho_i^2 - 1)| and ``a42`` = |sum (E_i / E5x5) (4 rho_i^4 - 3 rho_i^2)
  exp(2 i phi_i)| with rho_i = r_i / R0, R0 = 15.6 cm, phi_i the azimuth of crystal i around the centre in
  the (phi, Z) plane and E5x5 the energy of those 5 x 5 crystals. (BOSS uses its log-weighted position as the
  centre; here the linear centroid of the same 5 x 5 is used.)
* Hit-energy spectrum (every crystal at or above threshold) and the energy profiles along phi and Z (the map
  summed over the other axis).

``validate_emc`` compares a generated sample with truth in momentum bins: CaloChallenge separation power per
observable, a classifier two-sample AUC on the high-level observables and on the maps (both with the
conditions present in both samples as extra features), mean shower images and individual showers side by side;
it writes metrics.json, PNG figures and report.html. Every metrics key is documented in docs/emc.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from detgen.errors import DataError
from detgen.io import finite_column
from detgen.validation import metrics as m
from detgen.validation import plots
from detgen.validation.report import write_metrics, write_report_html

FloatArray = NDArray[np.float64]
Table = Mapping[str, Any]

#: Side of the crystal map and the index of its centre (the impact crystal).
WINDOW = 11
CENTRE = WINDOW // 2
#: Nominal crystal pitch (cm) of the observables' flat grid: BESIII front faces are ~5.2 x 5.2 cm.
CRYSTAL_PITCH_CM = 5.2
#: BOSS EmcRecShowerShape constants: Zernike radius R0 and the LAT reference distance r0 (cm).
ZERNIKE_RADIUS_CM = 15.6
LAT_REFERENCE_CM = 5.2
#: Electronics (BOSS MC defaults): incoherent noise and digit threshold per crystal (MeV).
NOISE_MEV = 0.2
THRESHOLD_MEV = 0.5
#: A crystal energy below -5 sigma of the noise (-1.0 MeV) cannot be noise: the map is rejected.
NEGATIVE_TOLERANCE_MEV = 5.0 * NOISE_MEV
#: Condition columns of the seed GAN (used as classifier features when present in both samples).
CONDITION_COLUMNS: tuple[str, ...] = ("mom", "dtheta_mom", "dphi_mom", "dz_pos", "dphi_pos", "z")
REQUIRED_COLUMNS: tuple[str, ...] = ("map", "mom")
#: Default momentum bins (GeV/c) of the comparison.
MOMENTUM_EDGES_GEV: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
#: Per-shower observables, in report order, with their axis labels.
OBSERVABLES: dict[str, str] = {
    "e1x1": "E1x1 [MeV]", "e3x3": "E3x3 [MeV]", "e5x5": "E5x5 [MeV]", "e7x7": "E7x7 [MeV]",
    "e9x9": "E9x9 [MeV]", "e11x11": "E11x11 [MeV]", "e1_over_e9": "E1x1 / E3x3", "e9_over_e25": "E3x3 / E5x5",
    "n_hits": "crystals above threshold", "centroid_phi_cm": "centroid phi [cm]", "centroid_z_cm": "centroid Z [cm]",
    "second_moment_cm2": "second moment [cm^2]", "lat_moment": "LAT", "a20": "Zernike |A20|", "a42": "Zernike |A42|",
}
#: Observables that are not per-shower numbers: the hit-energy spectrum and the energy profiles.
POOLED_OBSERVABLES: tuple[str, ...] = ("hit_energy", "profile_phi", "profile_z")
#: Bins of the separation power of continuous observables; bins with fewer showers than this in either
#: sample are left out of the per-momentum comparison.
SEPARATION_BINS = 30
MIN_ENTRIES = 100


# --------------------------------------------------------------------------------------------------
# Input checking


def check_maps(maps: ArrayLike, name: str = "map") -> NDArray[np.float32]:
    """Return ``maps`` as float32 (N, 11, 11) after checking shape, NaN/inf and negative energies.

    Single precision (7 digits) is ample for crystal energies and halves the memory of large samples.

    Raises:
        DataError: naming ``name``, for a wrong shape, NaN/inf (count and first row/crystal) or energies below
            -``NEGATIVE_TOLERANCE_MEV`` (5 sigma of the 0.2 MeV noise), which no noise fluctuation produces.
    """
    try:
        array = np.asarray(maps, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name}: crystal maps are not numeric ({error})") from error
    if array.ndim != 3 or array.shape[1:] != (WINDOW, WINDOW) or array.shape[0] == 0:
        raise DataError(f"{name}: maps have shape {array.shape}; expected (N, {WINDOW}, {WINDOW}) crystal "
                        f"energies in MeV with N >= 1")
    for bad, what in ((~np.isfinite(array), "NaN/inf values"), (array < -NEGATIVE_TOLERANCE_MEV,
                                                                 f"energies below -{NEGATIVE_TOLERANCE_MEV} MeV")):
        if bad.any():
            row, i, j = (int(v) for v in np.argwhere(bad)[0])
            expected = ("finite energies" if "NaN" in what else
                        f"energies >= -{NEGATIVE_TOLERANCE_MEV} MeV (5 sigma of the {NOISE_MEV} MeV noise)")
            raise DataError(f"{name}: {int(bad.sum())} {what} (first at row {row}, crystal [{i}, {j}] = "
                            f"{array[row, i, j]}); expected {expected}")
    return array


def check_showers(table: Table, name: str) -> tuple[NDArray[np.float32], dict[str, FloatArray]]:
    """Checked (maps, conditions) of a shower table; conditions holds every condition column present.

    Raises:
        DataError: a missing 'map' or 'mom' column, bad maps (see :func:`check_maps`), a non-finite condition
            or a momentum <= 0.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in table]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)} and optionally "
                        f"{list(CONDITION_COLUMNS[1:])}")
    maps = check_maps(table["map"], f"{name}: column 'map'")
    conditions = {c: finite_column(table, c, source=name, n_rows=maps.shape[0]) for c in CONDITION_COLUMNS if c in table}
    if np.any(conditions["mom"] <= 0):
        raise DataError(f"{name}: column 'mom' has {int(np.sum(conditions['mom'] <= 0))} values <= 0; expected "
                        "momenta > 0 GeV/c")
    return maps, conditions


# --------------------------------------------------------------------------------------------------
# Observables


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    """numerator / denominator, 0 where the denominator is not positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), 0.0)


def digitised(maps: ArrayLike, threshold_mev: float = THRESHOLD_MEV) -> FloatArray:
    """The maps with every crystal below ``threshold_mev`` set to 0 (what reconstruction sees)."""
    array = np.asarray(maps, dtype=np.float64)
    return np.where(array >= threshold_mev, array, 0.0)


def _seed_window(hits: FloatArray, pitch_cm: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(energies (N, 25), phi (N, 25), Z (N, 25) positions in cm) of the 5 x 5 crystals around each seed.

    Crystals of the 5 x 5 that fall outside the map carry no energy.
    """
    n = hits.shape[0]
    padded = np.pad(hits, ((0, 0), (2, 2), (2, 2)))
    seed = hits.reshape(n, -1).argmax(axis=1)
    seed_z, seed_phi = np.divmod(seed, WINDOW)
    offsets = np.arange(-2, 3)
    rows = (seed_z[:, None] + offsets)[:, :, None] + np.zeros(5, dtype=np.int64)
    cols = (seed_phi[:, None] + offsets)[:, None, :] + np.zeros((1, 5, 1), dtype=np.int64)
    energies = padded[np.arange(n)[:, None, None], rows + 2, cols + 2].reshape(n, 25)
    z_cm = ((rows - CENTRE) * pitch_cm).reshape(n, 25).astype(np.float64)
    phi_cm = ((cols - CENTRE) * pitch_cm).reshape(n, 25).astype(np.float64)
    return energies, phi_cm, z_cm


def _seed_moments(hits: FloatArray, pitch_cm: float, zernike_radius_cm: float, lat_reference_cm: float
                  ) -> dict[str, FloatArray]:
    """BOSS second moment, LAT and Zernike |A20|, |A42| over the 5 x 5 around the seed."""
    energy, phi_cm, z_cm = _seed_window(hits, pitch_cm)
    e5x5 = energy.sum(axis=1)
    centre_phi = _ratio((energy * phi_cm).sum(axis=1), e5x5)
    centre_z = _ratio((energy * z_cm).sum(axis=1), e5x5)
    d_phi, d_z = phi_cm - centre_phi[:, None], z_cm - centre_z[:, None]
    r2 = d_phi**2 + d_z**2
    second = _ratio((energy * r2).sum(axis=1), e5x5)

    order = np.argsort(-energy, axis=1, kind="stable")
    sorted_energy = np.take_along_axis(energy, order, axis=1)
    sorted_r2 = np.take_along_axis(r2, order, axis=1)
    outer = (sorted_energy[:, 2:] * sorted_r2[:, 2:]).sum(axis=1)
    lat = _ratio(outer, outer + lat_reference_cm**2 * sorted_energy[:, :2].sum(axis=1))
    lat = np.where((energy > 0).sum(axis=1) >= 2, lat, 0.0)

    rho2 = r2 / zernike_radius_cm**2
    fraction = energy / np.where(e5x5 > 0, e5x5, 1.0)[:, None]
    a20 = np.abs((fraction * (2.0 * rho2 - 1.0)).sum(axis=1))
    twice_azimuth = 2.0 * np.arctan2(d_z, d_phi)
    radial42 = fraction * (4.0 * rho2**2 - 3.0 * rho2)
    a42 = np.hypot((radial42 * np.cos(twice_azimuth)).sum(axis=1), (radial42 * np.sin(twice_azimuth)).sum(axis=1))
    empty = e5x5 <= 0
    return {"second_moment_cm2": second, "lat_moment": lat, "a20": np.where(empty, 0.0, a20),
            "a42": np.where(empty, 0.0, a42)}


def shower_observables(maps: ArrayLike, *, threshold_mev: float = THRESHOLD_MEV, pitch_cm: float = CRYSTAL_PITCH_CM,
                       zernike_radius_cm: float = ZERNIKE_RADIUS_CM, lat_reference_cm: float = LAT_REFERENCE_CM,
                       ) -> dict[str, FloatArray]:
    """Per-shower observables (keys of :data:`OBSERVABLES`, each of shape (N,)) of (N, 11, 11) maps in MeV.

    Only crystals at or above ``threshold_mev`` count (definitions in the module docstring). Input is not
    checked here; :func:`check_maps` does that.
    """
    hits = digitised(maps, threshold_mev)
    out: dict[str, FloatArray] = {}
    for size in (1, 3, 5, 7, 9, 11):
        half = size // 2
        window = slice(CENTRE - half, CENTRE + half + 1)
        out[f"e{size}x{size}"] = hits[:, window, window].sum(axis=(1, 2))
    out["e1_over_e9"] = _ratio(out["e1x1"], out["e3x3"])
    out["e9_over_e25"] = _ratio(out["e3x3"], out["e5x5"])
    out["n_hits"] = (hits > 0).sum(axis=(1, 2)).astype(np.float64)
    positions = (np.arange(WINDOW) - CENTRE) * pitch_cm
    profile_phi, profile_z = energy_profiles(hits, threshold_mev=0.0)
    out["centroid_phi_cm"] = _ratio(profile_phi @ positions, out["e11x11"])
    out["centroid_z_cm"] = _ratio(profile_z @ positions, out["e11x11"])
    out.update(_seed_moments(hits, pitch_cm, zernike_radius_cm, lat_reference_cm))
    return {key: out[key] for key in OBSERVABLES}


def energy_profiles(maps: ArrayLike, *, threshold_mev: float = THRESHOLD_MEV) -> tuple[FloatArray, FloatArray]:
    """(energy per phi column (N, 11), energy per Z row (N, 11)) in MeV, crystals above threshold only."""
    hits = digitised(maps, threshold_mev)
    return hits.sum(axis=1), hits.sum(axis=2)


def hit_energies(maps: ArrayLike, *, threshold_mev: float = THRESHOLD_MEV) -> FloatArray:
    """Energies (MeV) of every crystal at or above threshold, all showers pooled (the hit-energy spectrum)."""
    array = np.asarray(maps)
    return np.asarray(array[array >= threshold_mev], dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Comparison


def separation(truth: ArrayLike, generated: ArrayLike, *, discrete: bool = False,
               bins: int = SEPARATION_BINS) -> float:
    """Separation power with edges from the truth's 0.1-99.9% range, outliers counted in the outer bins."""
    return m.separation_in_truth_range(truth, generated, discrete=discrete, bins=bins)


def separation_of_histograms(truth: ArrayLike, generated: ArrayLike) -> float:
    """Separation power 1/2 sum (h1 - h2)^2 / (h1 + h2) of two (weighted) histograms, each normalised to 1."""
    h1, h2 = np.asarray(truth, dtype=np.float64), np.asarray(generated, dtype=np.float64)
    if h1.sum() <= 0 or h2.sum() <= 0:
        return float("nan")
    h1, h2 = h1 / h1.sum(), h2 / h2.sum()
    total = h1 + h2
    filled = total > 0
    return float(0.5 * np.sum((h1[filled] - h2[filled]) ** 2 / total[filled]))


class _Sample:
    """Observables of one sample, kept together for slicing by momentum."""

    #: Showers whose observables are computed at once (bounds the float64 temporaries to ~0.2 GB).
    CHUNK = 50_000

    def __init__(self, maps: NDArray[np.float32], conditions: dict[str, FloatArray], threshold_mev: float) -> None:
        self.maps = maps
        self.conditions = conditions
        self.momentum = conditions["mom"]
        parts = [shower_observables(maps[i:i + self.CHUNK], threshold_mev=threshold_mev)
                 for i in range(0, maps.shape[0], self.CHUNK)]
        self.observables = {key: np.concatenate([part[key] for part in parts]) for key in OBSERVABLES}
        profiles = [energy_profiles(maps[i:i + self.CHUNK], threshold_mev=threshold_mev)
                    for i in range(0, maps.shape[0], self.CHUNK)]
        self.profile_phi = np.concatenate([p[0] for p in profiles])
        self.profile_z = np.concatenate([p[1] for p in profiles])
        self.threshold_mev = threshold_mev

    def __len__(self) -> int:
        return int(self.momentum.size)

    def separations(self, other: _Sample, rows: NDArray[np.bool_], other_rows: NDArray[np.bool_]
                    ) -> dict[str, float]:
        """Separation power of every observable between ``rows`` of self (truth) and ``other_rows`` of other."""
        out = {name: separation(self.observables[name][rows], other.observables[name][other_rows],
                                discrete=name == "n_hits") for name in OBSERVABLES}
        out["hit_energy"] = separation(np.log10(hit_energies(self.maps[rows], threshold_mev=self.threshold_mev)),
                                       np.log10(hit_energies(other.maps[other_rows], threshold_mev=self.threshold_mev)))
        out["profile_phi"] = separation_of_histograms(self.profile_phi[rows].sum(axis=0),
                                                      other.profile_phi[other_rows].sum(axis=0))
        out["profile_z"] = separation_of_histograms(self.profile_z[rows].sum(axis=0),
                                                    other.profile_z[other_rows].sum(axis=0))
        return out


def _momentum_bins(edges: ArrayLike) -> FloatArray:
    bins = np.asarray(edges, dtype=np.float64)
    if bins.ndim != 1 or bins.size < 2 or not np.all(np.diff(bins) > 0):
        raise DataError(f"momentum_bins {bins.tolist()}: expected at least two increasing edges in GeV/c")
    return bins


def _classifier_features(sample: _Sample, names: Sequence[str], maps: bool, max_rows: int, seed: int) -> FloatArray:
    """High-level observables (or the flattened maps) plus the named condition columns, one row per shower.

    At most ``max_rows`` random rows (seeded) are built, so large samples do not need a second full copy.
    """
    rows = np.sort(np.random.default_rng(seed).permutation(len(sample))[:max_rows])
    parts: list[np.ndarray] = ([sample.maps[rows].reshape(rows.size, -1)] if maps
                               else [np.column_stack([sample.observables[k][rows] for k in OBSERVABLES])])
    parts += [sample.conditions[name][rows, None] for name in names]
    return np.concatenate(parts, axis=1)


def _separation_metrics(truth: _Sample, generated: _Sample, edges: FloatArray, seed: int
                        ) -> tuple[dict[str, Any], FloatArray]:
    """sep_* keys over all momenta and per momentum bin, the truth-halves floor and the maxima."""
    metrics: dict[str, Any] = {}
    everything_t, everything_g = np.ones(len(truth), bool), np.ones(len(generated), bool)
    overall = truth.separations(generated, everything_t, everything_g)
    names = list(overall)
    table = np.full((len(names), edges.size - 1), np.nan)
    for name, value in overall.items():
        metrics[f"sep_{name}"] = value
    for i in range(edges.size - 1):
        rows_t = (truth.momentum >= edges[i]) & (truth.momentum < edges[i + 1])
        rows_g = (generated.momentum >= edges[i]) & (generated.momentum < edges[i + 1])
        metrics[f"n_truth_p{i}"], metrics[f"n_generated_p{i}"] = int(rows_t.sum()), int(rows_g.sum())
        if rows_t.sum() < MIN_ENTRIES or rows_g.sum() < MIN_ENTRIES:
            continue
        for j, (name, value) in enumerate(truth.separations(generated, rows_t, rows_g).items()):
            metrics[f"sep_{name}_p{i}"] = value
            table[j, i] = value
    # Statistical floor: the same comparison between two random halves of the truth sample, over all momenta
    # and within each momentum bin (half the statistics of the comparison itself: an upper estimate).
    half = np.random.default_rng(seed).permutation(len(truth)) < len(truth) // 2
    floor = truth.separations(truth, half, ~half)
    metrics["separation_floor_max"] = float(np.nanmax(list(floor.values())))
    bin_floors = []
    for i in range(edges.size - 1):
        rows = (truth.momentum >= edges[i]) & (truth.momentum < edges[i + 1])
        if np.isfinite(table[:, i]).any():  # the bins compared above
            bin_floors.append(float(np.nanmax(list(truth.separations(truth, rows & half, rows & ~half).values()))))
            metrics[f"separation_floor_p{i}"] = bin_floors[-1]
    if bin_floors:
        metrics["separation_floor_max_per_bin"] = max(bin_floors)
    per_bin = table[np.isfinite(table)]
    metrics["max_separation_power_all_momenta"] = float(np.nanmax(list(overall.values())))
    metrics["worst_observable_all_momenta"] = max(overall, key=lambda k: np.nan_to_num(overall[k], nan=-1.0))
    metrics["max_separation_power"] = float(max(metrics["max_separation_power_all_momenta"],
                                                per_bin.max() if per_bin.size else -np.inf))
    if per_bin.size:
        worst_name, worst_bin = np.unravel_index(np.nanargmax(table), table.shape)
        metrics["worst_observable"] = f"{names[worst_name]}_p{worst_bin}"
    else:
        metrics["worst_observable"] = metrics["worst_observable_all_momenta"]
    return metrics, table


def _response_metrics(truth: _Sample, generated: _Sample, edges: FloatArray) -> dict[str, float]:
    """Energy response and resolution per momentum bin: core mean and core width / mean of E11x11 / (1000 p).

    The core (median, half the central 68% interval, :func:`metrics.core_mean_width`) ignores the leakage
    tail, like the Crystal Ball fits that quote BESIII's 2.5% at 1 GeV. p stands for the energy (e+-, photons).
    """
    out: dict[str, float] = {}
    for i in range(edges.size - 1):
        for sample_name, sample in (("truth", truth), ("generated", generated)):
            rows = (sample.momentum >= edges[i]) & (sample.momentum < edges[i + 1])
            if rows.sum() < MIN_ENTRIES:
                continue
            mean, width = m.core_mean_width(sample.observables["e11x11"][rows] / (1000.0 * sample.momentum[rows]))
            out[f"response_p{i}_{sample_name}"] = mean
            out[f"resolution_p{i}_{sample_name}"] = width / mean if mean > 0 else float("nan")
    return out


# --------------------------------------------------------------------------------------------------
# Figures


def _image_panels(path: Path, images: Sequence[FloatArray], titles: Sequence[str], ncols: int,
                  *, label: str, shared_scale: bool = True) -> Path:
    """Crystal maps as log-colour images on a grid of panels (Z vertical, phi horizontal)."""
    from matplotlib import colors
    from matplotlib.figure import Figure

    positive = np.concatenate([np.ravel(image)[np.ravel(image) > 0] for image in images] + [np.array([1.0])])
    vmax = float(positive.max())
    vmin = max(float(positive.min()), vmax * 1e-5)
    rows = int(np.ceil(len(images) / ncols))
    with plots.figure_style():
        # Fixed margins: constrained layout re-draws the figure several times and triples the run time.
        figure = Figure(figsize=(3.3 * ncols + 1.2, 3.3 * rows))
        figure.subplots_adjust(left=0.6 / (3.3 * ncols + 1.2), right=1 - 1.4 / (3.3 * ncols + 1.2),
                               bottom=0.5 / (3.3 * rows), top=1 - 0.35 / (3.3 * rows), wspace=0.35, hspace=0.45)
        axes = np.atleast_1d(figure.subplots(rows, ncols, squeeze=False)).ravel()
        mesh = None
        for ax, image, title in zip(axes, images, titles):
            if shared_scale:
                norm = colors.LogNorm(vmin=vmin, vmax=vmax)
            else:
                own = image[image > 0]
                top = float(own.max()) if own.size else 1.0
                norm = colors.LogNorm(vmin=max(float(own.min()) if own.size else top / 10, top * 1e-4), vmax=top)
            extent = (-CENTRE - 0.5, CENTRE + 0.5, -CENTRE - 0.5, CENTRE + 0.5)
            mesh = ax.imshow(np.ma.masked_less_equal(image, 0), origin="lower", norm=norm, cmap="viridis",
                             extent=extent)
            ax.set_title(title, fontsize="x-small")
            ax.set_xlabel("phi offset [crystals]", fontsize="x-small")
            ax.set_ylabel("Z offset [crystals]", fontsize="x-small")
            ax.tick_params(labelsize="x-small")
        for ax in axes[len(images):]:
            ax.set_visible(False)
        if mesh is not None and shared_scale:
            figure.colorbar(mesh, cax=figure.add_axes((1 - 1.0 / (3.3 * ncols + 1.2), 0.15, 0.012, 0.7)),
                            label=label)
        return plots.save_figure(figure, path)


def _separation_figure(path: Path, table: FloatArray, names: Sequence[str], edges: FloatArray) -> Path:
    """Separation power per observable (rows) and momentum bin (columns) as an annotated heat map."""
    from matplotlib.figure import Figure

    with plots.figure_style():
        figure = Figure(figsize=(1.3 * table.shape[1] + 4.0, 0.42 * len(names) + 1.8), layout="constrained")
        ax = figure.subplots()
        vmax = max(0.05, float(np.nanmax(table)) if np.isfinite(table).any() else 0.05)
        ax.imshow(np.ma.masked_invalid(table), aspect="auto", cmap="magma_r", vmin=0.0, vmax=vmax)
        for (j, i), value in np.ndenumerate(table):
            if np.isfinite(value):
                ax.text(i, j, f"{value:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if value > 0.6 * vmax else "black")
        ax.set_yticks(range(len(names)), names, fontsize="x-small")
        ax.set_xticks(range(table.shape[1]), [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(table.shape[1])],
                      fontsize="x-small")
        ax.set_xlabel("momentum bin [GeV/c]")
        figure.colorbar(ax.images[0], ax=ax, label="separation power")
        return plots.save_figure(figure, path)


def _example_rows(truth: _Sample, generated: _Sample, n_examples: int, seed: int) -> tuple[NDArray[np.int64], ...]:
    """Truth rows spread over momentum, and for each the generated row with the nearest conditions."""
    rng = np.random.default_rng(seed)
    order = np.argsort(truth.momentum)
    picks = order[np.clip(((np.arange(n_examples) + rng.random(n_examples)) / n_examples * len(truth)).astype(int),
                          0, len(truth) - 1)]
    names = [c for c in CONDITION_COLUMNS if c in truth.conditions and c in generated.conditions]
    scale = np.array([max(float(np.std(truth.conditions[c])), 1e-12) for c in names])
    reference = np.column_stack([generated.conditions[c] for c in names]) / scale
    matches = [int(np.argmin(np.sum((reference - np.array([truth.conditions[c][row] for c in names]) / scale) ** 2,
                                    axis=1))) for row in picks]
    return picks, np.array(matches, dtype=np.int64)


def _figures(out: Path, truth: _Sample, generated: _Sample, edges: FloatArray, table: FloatArray,
             labels: tuple[str, str], n_examples: int, seed: int) -> list[tuple[str, str]]:
    figures: list[tuple[str, str]] = []
    names = list(OBSERVABLES)
    plots.plot_hist_comparison(out / "observables.png", [(truth.observables[k], generated.observables[k])
                                                         for k in names],
                               titles=[OBSERVABLES[k] for k in names], labels=labels, ncols=5)
    figures.append(("observables.png", "Shower observables, all momenta (BESIII EmcRecShowerShape conventions)."))
    hits = (np.log10(hit_energies(truth.maps, threshold_mev=truth.threshold_mev)),
            np.log10(hit_energies(generated.maps, threshold_mev=truth.threshold_mev)))
    plots.plot_hist_comparison(out / "hit_energy.png", [hits], xlabel="log10(crystal energy / MeV)", labels=labels,
                               logy=True, bins=60)
    figures.append(("hit_energy.png", "Hit-energy spectrum: every crystal above threshold, all showers."))
    crystal_edges = np.arange(WINDOW + 1) - CENTRE - 0.5
    for axis_name, profile_t, profile_g in (("phi", truth.profile_phi, generated.profile_phi),
                                            ("z", truth.profile_z, generated.profile_z)):
        curves = []
        for profile in (profile_t, profile_g):
            fraction = profile / np.maximum(profile.sum(axis=1, keepdims=True), 1e-12)
            curves.append({"energy fraction": (fraction.mean(axis=0),
                                               fraction.std(axis=0) / np.sqrt(max(len(fraction), 1)))})
        plots.plot_curve_comparison(out / f"profile_{axis_name}.png", crystal_edges, curves[0], curves[1],
                                    xlabel=f"{axis_name.upper() if axis_name == 'z' else 'phi'} offset [crystals]",
                                    ylabel="mean energy fraction", labels=labels, ratio_range=(0.5, 1.5))
        figures.append((f"profile_{axis_name}.png", f"Mean energy profile along {axis_name} (fraction of E11x11)."))
    _separation_figure(out / "separation_power.png", table, names + list(POOLED_OBSERVABLES), edges)
    figures.append(("separation_power.png", "Separation power per observable and momentum bin (0: identical)."))

    images, titles = [], []
    for i in range(edges.size - 1):
        rows_t = (truth.momentum >= edges[i]) & (truth.momentum < edges[i + 1])
        rows_g = (generated.momentum >= edges[i]) & (generated.momentum < edges[i + 1])
        if rows_t.sum() < MIN_ENTRIES or rows_g.sum() < MIN_ENTRIES:
            continue
        images += [digitised(truth.maps[rows_t]).mean(axis=0), digitised(generated.maps[rows_g]).mean(axis=0)]
        titles += [f"{label} {edges[i]:g}-{edges[i + 1]:g} GeV/c" for label in labels]
    if images:
        _image_panels(out / "mean_showers.png", images, titles, ncols=4, label="mean energy [MeV]")
        figures.append(("mean_showers.png", "Mean shower images per momentum bin, truth and generated side by side."))
    picks, matches = _example_rows(truth, generated, n_examples, seed)
    examples = [digitised(truth.maps[r]) for r in picks] + [digitised(generated.maps[r]) for r in matches]
    example_titles = ([f"{labels[0]} p={truth.momentum[r]:.2f}" for r in picks]
                      + [f"{labels[1]} p={generated.momentum[r]:.2f}" for r in matches])
    _image_panels(out / "example_showers.png", examples, example_titles, ncols=n_examples, label="energy [MeV]",
                  shared_scale=False)
    figures.append(("example_showers.png", "Individual showers: truth (top) and the generated shower with the "
                                           "nearest conditions (bottom)."))
    return figures


# --------------------------------------------------------------------------------------------------
# Entry point


def validate_emc(truth: Table, generated: Table, out_dir: str | os.PathLike[str], *, seed: int = 0,
                 momentum_bins: ArrayLike = MOMENTUM_EDGES_GEV, threshold_mev: float = THRESHOLD_MEV,
                 label_generated: str = "generated", classifier_max_rows: int = 100_000,
                 map_classifier_max_rows: int = 30_000, n_examples: int = 4, make_figures: bool = True,
                 ) -> dict[str, Any]:
    """Validate generated EMC showers against truth; write metrics.json, PNG figures and report.html.

    Args:
        truth: table with ``map`` (N, 11, 11) MeV and ``mom`` (GeV/c), optionally the other conditions
            (dtheta_mom, dphi_mom, dz_pos, dphi_pos, z), which the classifier tests use when both samples have them.
        generated: the same columns; rows need not match truth one to one.
        out_dir: report folder (created only after every input check passed).
        seed: seed of the classifier tests, the truth-halves floor and the example showers.
        momentum_bins: momentum bin edges (GeV/c); showers outside them count only in the all-momenta metrics.
        threshold_mev: digit threshold applied to both samples before any observable.
        label_generated: name of the generated sample in figures and the report.
        classifier_max_rows, map_classifier_max_rows: rows per sample for the high-level and map classifiers.
        n_examples: individual showers shown per sample.
        make_figures: write the PNGs (metrics.json and report.html are always written).

    Returns:
        The flat metrics dict written to metrics.json (keys documented in docs/emc.md).

    Raises:
        DataError: a missing column, maps of the wrong shape, NaN/inf, energies below -1 MeV, momenta <= 0, bad
            momentum bins; nothing is written then.
    """
    edges = _momentum_bins(momentum_bins)
    truth_sample = _Sample(*check_showers(truth, "truth"), threshold_mev)
    generated_sample = _Sample(*check_showers(generated, "generated"), threshold_mev)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = ("truth", label_generated)

    metrics: dict[str, Any] = {"n_truth": len(truth_sample), "n_generated": len(generated_sample)}
    separations, table = _separation_metrics(truth_sample, generated_sample, edges, seed)
    metrics.update(separations)
    metrics.update(_response_metrics(truth_sample, generated_sample, edges))
    for name in OBSERVABLES:
        metrics[f"mean_{name}_truth"] = float(truth_sample.observables[name].mean())
        metrics[f"mean_{name}_generated"] = float(generated_sample.observables[name].mean())
    names = [c for c in CONDITION_COLUMNS if c in truth_sample.conditions and c in generated_sample.conditions]
    metrics["classifier_conditions"] = ",".join(names)
    for key, use_maps, max_rows in (("classifier_auc_high_level", False, classifier_max_rows),
                                    ("classifier_auc_maps", True, map_classifier_max_rows)):
        metrics[key] = m.classifier_auc(_classifier_features(truth_sample, names, use_maps, max_rows, seed),
                                        _classifier_features(generated_sample, names, use_maps, max_rows, seed + 1),
                                        seed=seed, max_rows=max_rows)

    figures = (_figures(out, truth_sample, generated_sample, edges, table, labels, n_examples, seed)
               if make_figures else [])
    write_metrics(out / "metrics.json", metrics)
    write_report_html(out, f"BESIII EMC shower validation: truth vs {label_generated}", metrics, figures, notes=[
        f"Observables use only crystals at or above {threshold_mev} MeV, on a flat grid of {CRYSTAL_PITCH_CM} cm "
        f"crystals; moments follow BOSS EmcRecShowerShape (5x5 around the seed, R0 = {ZERNIKE_RADIUS_CM} cm).",
        "Separation power: 0 for identical histograms, 1 for disjoint ones; separation_floor_max is the largest "
        "value between two random halves of the truth sample (the statistical floor), separation_floor_max_per_bin "
        "the same within the momentum bins: per-bin values near it are limited by the sample size, not the model.",
        f"Classifier AUC: 0.5 means indistinguishable; features include the conditions {names}.",
    ], key_metrics=_report_order(metrics))
    return metrics


_HEADLINE = ("n_truth", "n_generated", "max_separation_power", "worst_observable",
             "max_separation_power_all_momenta", "worst_observable_all_momenta", "separation_floor_max", "separation_floor_max_per_bin",
             "classifier_auc_high_level",
             "classifier_auc_maps")


def _report_order(metrics: Mapping[str, Any]) -> list[str]:
    """Headline metrics first, then every other key alphabetically."""
    return [k for k in _HEADLINE if k in metrics] + sorted(k for k in metrics if k not in _HEADLINE)


# --------------------------------------------------------------------------------------------------
# Command line: ``detgen validate emc``

CLI_HELP = "BESIII EMC showers: E1x1..E11x11, moments, Zernike, profiles per momentum bin; classifier AUCs"
SUMMARY_KEYS = ("max_separation_power", "max_separation_power_all_momenta", "separation_floor_max",
                "separation_floor_max_per_bin",
                "classifier_auc_high_level", "classifier_auc_maps")


def add_cli_arguments(parser: Any) -> None:
    """Options of ``detgen validate emc`` beyond --truth, --generated, -o, --seed."""
    parser.add_argument("--momentum-bins", default=",".join(f"{v:g}" for v in MOMENTUM_EDGES_GEV),
                        help="comma-separated momentum bin edges in GeV/c")
    parser.add_argument("--threshold-mev", type=float, default=THRESHOLD_MEV, help="digit threshold per crystal")
    parser.add_argument("--no-figures", action="store_true", help="write only metrics.json and report.html")


def validate_cli(truth: str, generated: str, out: str, args: Any) -> dict[str, Any]:
    from detgen.io import read_table

    try:
        edges = [float(v) for v in args.momentum_bins.split(",") if v.strip()]
    except ValueError as error:
        raise DataError(f"--momentum-bins {args.momentum_bins!r}: expected comma-separated numbers") from error
    truth_table = read_table(truth)
    generated_table = read_table(generated)
    return validate_emc(truth_table, generated_table, out, seed=args.seed, momentum_bins=edges,
                        threshold_mev=args.threshold_mev, make_figures=not args.no_figures)
