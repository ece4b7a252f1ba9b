"""Reference simulator of BESIII drift-chamber (MDC) dE/dx with known truth.

A track of a given species, momentum and polar angle crosses up to 43 sense-wire layers; each crossed cell
gives one energy-loss sample drawn from a Landau distribution around the PDG most probable value (with the
Sternheimer density effect of the He/C3H8 60:40 gas), divided by the track's path length in the cell; the
track's dE/dx is the 70% truncated mean of those samples, scaled so that the electron plateau sits at 550.

Physics model (numbers from docs PHYSICS.md section 1; everything else is a named, documented parameter,
"(unverified)" where it is a plausible estimate rather than a BESIII number):

* Energy loss per hit: Delta = Delta_p + w * xi * (lambda - lambda_mode), lambda drawn from the classical
  Landau density (ROOT's TMath::Landau, mode lambda_mode = -0.22278), Delta_p the PDG most probable value,
  xi the Landau width and w = ``Straggling.width_scale`` a broadening factor. Landau theory is known to be too
  narrow for thin gas layers (Allison & Cobb, Ann. Rev. Nucl. Part. Sci. 30 (1980) 253); w is tuned so that a
  full-length track has the ~6% resolution BESIII quotes. The mode stays at Delta_p.
* Upper cut: the Landau density has no mean. Each hit's lambda is drawn below a cut lambda_max chosen so that
  the mean of the truncated Landau equals the Bethe mean loss for that hit (solved from a table of the
  truncated mean vs the cut, which grows like ln(lambda_max) - 0.4228). With w = 2.1, lambda_max ~ 200 at
  minimum ionisation (losses up to ~40 keV in a 1.2 cm cell) and ~1600 on the electron plateau. The per-hit
  mean is then the Bethe mean by construction, the mode is Delta_p and the FWHM ~ 4 w xi.
* Geometry: 43 layers, 8 inner (cell height 1.2 cm) and 35 outer (1.62 cm); a track reaches a layer if it has
  not left through the endplate (|z| < half-length) or curled (the helix reaches at most 2 pT / (0.3 B));
  the path in the cell grows with 1/sin(theta) and with the transverse crossing angle psi, and when the track
  straddles two cells of a layer the hit keeps the longer piece (random entry point in azimuth). Each
  crossed cell is lost with probability 1 - ``MdcGeometry.hit_efficiency``. Tracks with fewer than
  ``MdcGeometry.min_hits`` hits are re-drawn (same species) and counted in ``info``.
* dE/dx: truncated mean of the per-hit losses in keV/cm (lowest ``int(0.7 N_hits)``), times a gain chosen so
  that the model's own expected truncated mean for a 1 GeV/c electron on the reference track is 550.
* Kinematics: per-species momentum spectra on 0.1-2 GeV/c and 1 + a cos^2(theta) polar-angle spectra on
  |cos theta| < 0.93, loosely shaped like BESIII J/psi samples (``SPECTRA``, unverified).

Not modelled: energy loss or range-out along the track (momentum is constant, so very slow protons that
would stop in the chamber still cross it), multiple scattering, re-entry of curling tracks, saturation,
gain non-uniformity, electronics noise, the Berger-Seltzer electron Bethe formula (electrons use the heavy-particle formula
at M = m_e, which only moves the far-tail cut), and variations of the radial cell height within a chamber.

Speed: 4.2-4.4 million tracks/min with the default chunk_size (2 CPU cores, AMD EPYC, single-threaded numpy,
load average ~3 from other jobs; ~5 million/min with chunk_size=10_000), measured with
``.venv/bin/python -c "import time; from detgen.simulators.dedx import simulate_dedx as s; s(1000);
t=time.perf_counter(); s(1_000_000, seed=1); print(6e7/(time.perf_counter()-t))"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats
from scipy.integrate import cumulative_trapezoid
from scipy.interpolate import PchipInterpolator

from detgen.errors import DataError
from detgen.particles import CHARGE, HYPOTHESIS_OF, MASS_GEV, SPECIES

FloatArray = NDArray[np.float64]

# ---------------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------------

#: Electron rest energy m_e c^2 in eV (PDG).
ELECTRON_REST_ENERGY_EV = 510_998.95
#: Bethe coefficient K = 4 pi N_A r_e^2 m_e c^2 in MeV cm^2/mol (PDG).
BETHE_K_MEV_CM2_PER_MOL = 0.307075
#: Constant j in the PDG most-probable-loss formula (PDG "Passage of particles through matter").
MPV_J = 0.200
#: Mode of the classical Landau density phi(lambda) (ROOT TMath::Landau convention).
LANDAU_MODE = -0.22278
#: The classical Landau density: scipy's ``landau`` rescaled to ROOT's convention (PHYSICS.md section 1).
LANDAU = stats.landau(loc=math.log(math.pi / 2), scale=math.pi / 2)
#: Fraction of the sorted hits kept in the truncated mean (BESIII).
TRUNCATION_FRACTION = 0.7
#: Gain-normalised truncated mean of a 1 GeV/c electron on the reference track (BESIII convention).
ELECTRON_PLATEAU = 550.0
#: Momentum of the electron that defines the gain, GeV/c.
GAIN_REFERENCE_MOMENTUM_GEV = 1.0
#: Magnetic-field constant: radius of curvature R[m] = pT[GeV/c] / (0.3 B[T]).
CURVATURE_CONSTANT = 0.29979
#: beta*gamma range on which ``expected_dedx`` is tabulated (below 0.02 the Bethe formula is meaningless).
EXPECTED_BETAGAMMA_RANGE = (0.02, 1.0e6)

#: Sense-wire cells per layer, 11 superlayers (BOSS MdcGeom/Constants.cxx via PHYSICS.md).
CELLS_PER_LAYER: tuple[int, ...] = (
    40, 44, 48, 56, 64, 72, 80, 80, 76, 76, 88, 88, 100, 100, 112, 112, 128, 128, 140, 140,
    *(160,) * 4, *(176,) * 4, *(208,) * 4, *(240,) * 4, *(256,) * 4, *(288,) * 3,
)
#: Number of layers in the inner chamber (the first two superlayers).
N_INNER_LAYERS = 8
#: Radius of the first inner / first outer sense layer, cm (unverified; the inner wall is at ~6 cm).
FIRST_INNER_RADIUS_CM = 7.3
FIRST_OUTER_RADIUS_CM = 20.2
#: Radial cell height of the inner / outer chamber, cm (PHYSICS.md: ~12 mm / 16.2 mm, unverified).
INNER_CELL_HEIGHT_CM = 1.2
OUTER_CELL_HEIGHT_CM = 1.62
#: |cos theta| covered by the innermost / outermost layer; half-lengths grow linearly with radius between
#: them (unverified: the real endplates are stepped; the MDC as a whole covers |cos theta| < 0.93).
INNER_LAYER_COVERAGE_COS = 0.96
OUTER_LAYER_COVERAGE_COS = 0.83


# ---------------------------------------------------------------------------------------------------------
# Model parameters
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GasMixture:
    """Stopping parameters of the chamber gas (Bragg-rule mixture, Sternheimer density effect).

    Attributes:
        z_over_a: <Z/A> in mol/g.
        mean_excitation_ev: mean excitation energy I in eV.
        density_g_per_cm3: gas density in g/cm^3.
        cbar, x0, x1, a, k, delta0: Sternheimer parameters (x = log10(beta*gamma)).
    """

    z_over_a: float = 0.579
    mean_excitation_ev: float = 46.5
    density_g_per_cm3: float = 0.85144e-3
    cbar: float = 9.57
    x0: float = 1.4326
    x1: float = 3.7998
    a: float = 0.09916
    k: float = 3.592
    delta0: float = 0.0


#: BESIII MDC gas, He/C3H8 60:40 by volume: mixture <Z/A>, I and Cbar with propane's x0, x1, a, k.
MDC_GAS = GasMixture()


def _layer_radii_cm() -> tuple[float, ...]:
    inner = [FIRST_INNER_RADIUS_CM + INNER_CELL_HEIGHT_CM * i for i in range(N_INNER_LAYERS)]
    n_outer = len(CELLS_PER_LAYER) - N_INNER_LAYERS
    outer = [FIRST_OUTER_RADIUS_CM + OUTER_CELL_HEIGHT_CM * i for i in range(n_outer)]
    return tuple(round(r, 4) for r in inner + outer)


def _cell_heights_cm() -> tuple[float, ...]:
    n_outer = len(CELLS_PER_LAYER) - N_INNER_LAYERS
    return (INNER_CELL_HEIGHT_CM,) * N_INNER_LAYERS + (OUTER_CELL_HEIGHT_CM,) * n_outer


def _half_lengths_cm() -> tuple[float, ...]:
    radii = np.array(_layer_radii_cm())

    def z_of(r: float, cos_max: float) -> float:
        return r * cos_max / math.sqrt(1.0 - cos_max**2)

    z_in, z_out = z_of(radii[0], INNER_LAYER_COVERAGE_COS), z_of(radii[-1], OUTER_LAYER_COVERAGE_COS)
    z = z_in + (z_out - z_in) * (radii - radii[0]) / (radii[-1] - radii[0])
    return tuple(float(v) for v in np.round(z, 3))


@dataclass(frozen=True)
class MdcGeometry:
    """Layer layout of the MDC (per-layer tuples, innermost first).

    Attributes:
        cells_per_layer: sense-wire cells in each layer.
        radius_cm: sense-layer radius, cm (unverified, see ``FIRST_*_RADIUS_CM``).
        cell_height_cm: radial cell height, cm; also the path of a radial track at theta = 90 deg.
        half_length_cm: chamber half-length at that layer, cm (unverified).
        field_tesla: solenoid field, T.
        hit_efficiency: probability that a crossed cell gives a usable dE/dx hit (unverified).
        min_hits: fewest hits a track needs for a dE/dx measurement (BOSS DedxPID: 5).
    """

    cells_per_layer: tuple[int, ...] = CELLS_PER_LAYER
    radius_cm: tuple[float, ...] = _layer_radii_cm()
    cell_height_cm: tuple[float, ...] = _cell_heights_cm()
    half_length_cm: tuple[float, ...] = _half_lengths_cm()
    field_tesla: float = 1.0
    hit_efficiency: float = 0.98
    min_hits: int = 5

    @property
    def n_layers(self) -> int:
        """Number of sense-wire layers."""
        return len(self.cells_per_layer)

    @property
    def cell_width_cm(self) -> FloatArray:
        """Azimuthal cell width 2 pi r / N per layer, cm."""
        return 2 * np.pi * np.array(self.radius_cm) / np.array(self.cells_per_layer)


MDC_GEOMETRY = MdcGeometry()


@dataclass(frozen=True)
class Straggling:
    """Shape of the per-hit energy-loss distribution.

    Attributes:
        width_scale: w, Landau width in units of xi (1 = pure Landau). Tuned (unverified) so that the
            truncated-mean resolution of a full-length minimum-ionising pion is ~6% (PHYSICS.md);
            2.1 gives 6.0% (pure Landau, w = 1, gives 3.1%).
        min_cut_lambda: lowest allowed upper cut on lambda. Only matters for very slow heavy particles
            (beta*gamma < ~0.11), where the PDG most probable value approaches the Bethe mean; there the cut
            stays at this value and the per-hit mean exceeds Bethe's.
    """

    width_scale: float = 2.1
    min_cut_lambda: float = 1.0


STRAGGLING = Straggling()


@dataclass(frozen=True)
class MomentumSpectrum:
    """Momentum and polar-angle spectrum of one particle type (unverified, plausible J/psi-like shapes).

    p density on [p_min_gev, p_max_gev]: (1 - peak_fraction) Gamma(gamma_shape, gamma_scale_gev)
    + peak_fraction Normal(peak_gev, peak_width_gev). |cos theta| density on [0, cos_theta_max]:
    1 + cos2_coefficient cos^2(theta).
    """

    gamma_shape: float
    gamma_scale_gev: float
    peak_fraction: float = 0.0
    peak_gev: float = 1.548
    peak_width_gev: float = 0.03
    cos2_coefficient: float = 0.2
    p_min_gev: float = 0.1
    p_max_gev: float = 2.0
    cos_theta_max: float = 0.93


#: Spectra by PID hypothesis. Leptons: a J/psi -> l+l- peak at 1.548 GeV/c with 1 + cos^2 theta plus a soft
#: continuum; hadrons: Gamma-shaped, harder for heavier species (modes ~0.25, 0.5, 0.7 GeV/c), nearly flat
#: in cos theta. All unverified.
SPECTRA: dict[str, MomentumSpectrum] = {
    "e": MomentumSpectrum(1.5, 0.4, peak_fraction=0.5, cos2_coefficient=1.0),
    "mu": MomentumSpectrum(2.0, 0.3, peak_fraction=0.5, peak_gev=1.545, cos2_coefficient=1.0),
    "pi": MomentumSpectrum(2.2, 0.22),
    "K": MomentumSpectrum(4.0, 0.16),
    "p": MomentumSpectrum(5.0, 0.17),
}


# ---------------------------------------------------------------------------------------------------------
# Energy-loss physics
# ---------------------------------------------------------------------------------------------------------


def _positive_array(values: ArrayLike, name: str) -> FloatArray:
    """Float array of finite positive values, else DataError naming the argument."""
    array = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(array) | (array <= 0)
    if np.any(bad):
        raise DataError(f"{name}: expected finite values > 0, got {array[bad].ravel()[:3].tolist()}")
    return array


def _beta_squared(betagamma: FloatArray) -> FloatArray:
    bg2 = betagamma**2
    return bg2 / (1.0 + bg2)


def density_effect(betagamma: ArrayLike, *, gas: GasMixture = MDC_GAS) -> FloatArray:
    """Sternheimer density-effect correction delta(beta*gamma) (dimensionless).

    With the mixture's Cbar and propane's x0, x1, a, k the formula is negative just above x0 (the parameter
    sets are not from one fit); delta is clamped at 0 there, which keeps it continuous.
    """
    bg = _positive_array(betagamma, "betagamma")
    x = np.log10(bg)
    rise = 2.0 * np.log(10.0) * x - gas.cbar
    transition = rise + gas.a * np.clip(gas.x1 - x, 0.0, None) ** gas.k
    below = gas.delta0 * 10.0 ** (2.0 * np.minimum(x - gas.x0, 0.0))
    delta = np.where(x >= gas.x1, rise, np.where(x >= gas.x0, transition, below))
    return np.maximum(delta, 0.0)


def landau_xi_kev(betagamma: ArrayLike, path_cm: ArrayLike, *, gas: GasMixture = MDC_GAS) -> FloatArray:
    """Landau width xi = (K/2) <Z/A> z^2 x / beta^2 in keV for a path of ``path_cm`` (|z| = 1)."""
    bg = _positive_array(betagamma, "betagamma")
    path = _positive_array(path_cm, "path_cm")
    thickness_g_cm2 = path * gas.density_g_per_cm3
    return 1e3 * 0.5 * BETHE_K_MEV_CM2_PER_MOL * gas.z_over_a * thickness_g_cm2 / _beta_squared(bg)


def _mpv_log_term(betagamma: FloatArray, gas: GasMixture) -> FloatArray:
    """ln(2 m c^2 b^2 g^2 / I) - ln(I / eV) + j - beta^2 - delta, so Delta_p = xi (term + ln(xi / eV))."""
    log_i = np.log(gas.mean_excitation_ev)
    return (np.log(2.0 * ELECTRON_REST_ENERGY_EV * betagamma**2) - 2.0 * log_i + MPV_J
            - _beta_squared(betagamma) - density_effect(betagamma, gas=gas))


def most_probable_loss_kev(betagamma: ArrayLike, path_cm: ArrayLike, *,
                           gas: GasMixture = MDC_GAS) -> FloatArray:
    """PDG most probable energy loss Delta_p in keV for a path of ``path_cm`` (|z| = 1).

    Delta_p = xi [ln(2 m c^2 b^2 g^2 / I) + ln(xi / I) + j - beta^2 - delta(beta*gamma)], j = 0.200.
    """
    bg = _positive_array(betagamma, "betagamma")
    xi_kev = landau_xi_kev(bg, path_cm, gas=gas)
    return xi_kev * (_mpv_log_term(bg, gas) + np.log(1e3 * xi_kev))


def bethe_mean_dedx_kev_per_cm(betagamma: ArrayLike, mass_gev: ArrayLike, *,
                               gas: GasMixture = MDC_GAS) -> FloatArray:
    """Mean energy loss -<dE/dx> from the Bethe formula, keV/cm (|z| = 1, no shell corrections).

    W_max = 2 m c^2 b^2 g^2 / (1 + 2 gamma m/M + (m/M)^2) uses ``mass_gev``; electrons are treated with the
    same heavy-particle formula.
    """
    bg = _positive_array(betagamma, "betagamma")
    mass_ratio = ELECTRON_REST_ENERGY_EV * 1e-9 / _positive_array(mass_gev, "mass_gev")
    beta2 = _beta_squared(bg)
    gamma = np.sqrt(1.0 + bg**2)
    two_mc2_bg2 = 2.0 * ELECTRON_REST_ENERGY_EV * bg**2
    w_max = two_mc2_bg2 / (1.0 + 2.0 * gamma * mass_ratio + mass_ratio**2)
    bracket = (0.5 * np.log(two_mc2_bg2 * w_max / gas.mean_excitation_ev**2) - beta2
               - 0.5 * density_effect(bg, gas=gas))
    prefactor_mev = BETHE_K_MEV_CM2_PER_MOL * gas.z_over_a * gas.density_g_per_cm3 / beta2
    return 1e3 * prefactor_mev * bracket


# ---------------------------------------------------------------------------------------------------------
# Landau straggling with an upper cut
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _landau_tables() -> tuple[FloatArray, FloatArray, FloatArray]:
    """(lambda grid, Landau CDF, mean of the Landau truncated at lambda) for cuts up to 1e9.

    The far tail is ~1/lambda^2, so the truncated mean grows like ln(lambda_max); a geometric grid there
    keeps the trapezoid integral of lambda * phi accurate to < 1e-4.
    """
    lam = np.concatenate([np.linspace(-4.0, 20.0, 24_001)[:-1], np.geomspace(20.0, 1e9, 30_000)])
    pdf, cdf = LANDAU.pdf(lam), LANDAU.cdf(lam)
    # mass below lambda = -4 is 1.6e-10; its first moment is approximated as sitting at -4.2
    first_moment = cumulative_trapezoid(lam * pdf, lam, initial=0.0) - 4.2 * cdf[0]
    return lam, cdf, first_moment / cdf


def _landau_cut(target_mean: FloatArray, straggling: Straggling) -> FloatArray:
    """Upper cut lambda_max at which the truncated Landau has mean ``target_mean`` (in lambda units)."""
    lam, _, truncated_mean_table = _landau_tables()
    usable = lam >= straggling.min_cut_lambda
    return np.interp(target_mean, truncated_mean_table[usable], lam[usable])


def _loss_parameters(betagamma: FloatArray, mass_gev: ArrayLike,
                     gas: GasMixture) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-track (xi per cm in keV/cm, MPV log term, Bethe mean in keV/cm)."""
    xi_per_cm = landau_xi_kev(betagamma, 1.0, gas=gas)
    return xi_per_cm, _mpv_log_term(betagamma, gas), bethe_mean_dedx_kev_per_cm(betagamma, mass_gev, gas=gas)


def _sample_loss_per_cm(xi_per_cm: FloatArray, log_term: FloatArray, mean_per_cm: FloatArray,
                        path_cm: FloatArray, uniform: FloatArray, straggling: Straggling) -> FloatArray:
    """Energy loss divided by path, keV/cm, from uniforms in (0, 1] (all arrays broadcast together).

    Delta / x = xi_cm [log_term + ln(xi / eV) + w (lambda - lambda_mode)], lambda ~ Landau below the cut.
    """
    w = straggling.width_scale
    mpv_over_xi = log_term + np.log(1e3 * xi_per_cm * path_cm)
    cut = _landau_cut((mean_per_cm / xi_per_cm - mpv_over_xi) / w + LANDAU_MODE, straggling)
    lam_grid, cdf_grid, _ = _landau_tables()
    lam = LANDAU.ppf(uniform * np.interp(cut, lam_grid, cdf_grid))
    return xi_per_cm * (mpv_over_xi + w * (lam - LANDAU_MODE))


def sample_hit_loss_kev(betagamma: ArrayLike, path_cm: ArrayLike, mass_gev: float,
                        rng: np.random.Generator, *, gas: GasMixture = MDC_GAS,
                        straggling: Straggling = STRAGGLING) -> FloatArray:
    """Draw one per-hit energy loss in keV for each element of the broadcast (betagamma, path_cm)."""
    bg, path = np.broadcast_arrays(_positive_array(betagamma, "betagamma"), _positive_array(path_cm, "path_cm"))
    xi_per_cm, log_term, mean_per_cm = _loss_parameters(bg, mass_gev, gas)
    uniform = 1.0 - rng.random(bg.shape)  # in (0, 1]: ppf(0) would be -inf
    return path * _sample_loss_per_cm(xi_per_cm, log_term, mean_per_cm, path, uniform, straggling)


# ---------------------------------------------------------------------------------------------------------
# Truncated mean and the expected curve
# ---------------------------------------------------------------------------------------------------------


def _hits_used(nhits: NDArray[np.int64], fraction: float) -> NDArray[np.int64]:
    # the tiny offset keeps int(0.7 * n) exact where 0.7 * n rounds just below an integer
    return np.floor(fraction * nhits + 1e-9).astype(np.int64)


def truncated_mean(losses_per_cm: np.ndarray, nhits: np.ndarray, fraction: float = TRUNCATION_FRACTION,
                   ) -> FloatArray:
    """Mean of the lowest ``int(fraction * nhits)`` of each row's first ``nhits`` entries.

    Args:
        losses_per_cm: (n_tracks, max_hits) per-hit losses (any unit). Entries at column >= nhits of a row are
            padding and ignored whatever their value (the simulator pads with NaN).
        nhits: (n_tracks,) number of valid hits per row, 1 <= nhits <= max_hits.
        fraction: kept fraction, 0 < fraction <= 1.

    Returns:
        (n_tracks,) truncated means in the unit of ``losses_per_cm``.
    """
    losses = np.asarray(losses_per_cm, dtype=np.float64)
    counts = np.asarray(nhits)
    if losses.ndim != 2 or counts.shape != losses.shape[:1]:
        raise DataError(f"truncated_mean: expected losses (n, max_hits) and nhits (n,), "
                        f"got {losses.shape} and {counts.shape}")
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"truncated_mean: fraction must be in (0, 1], got {fraction}")
    counts = counts.astype(np.int64)
    n_use = _hits_used(counts, fraction)
    if counts.size and (counts.max() > losses.shape[1] or n_use.min() < 1):
        raise DataError(f"truncated_mean: nhits must give at least one kept hit and be <= {losses.shape[1]}, "
                        f"got nhits in [{counts.min()}, {counts.max()}]")
    valid = np.arange(losses.shape[1]) < counts[:, None]
    if not np.all(np.isfinite(losses[valid])):
        raise DataError("truncated_mean: non-finite loss among the first nhits entries of a row")
    ordered = np.sort(np.where(valid, losses, np.inf), axis=1)
    kept = np.arange(losses.shape[1]) < n_use[:, None]
    return np.where(kept, ordered, 0.0).sum(axis=1) / n_use


def _integration_lambda() -> FloatArray:
    """lambda grid for the expected truncated mean: fine near the peak, sparse in the tail (error < 1e-7)."""
    return np.concatenate([np.linspace(-4.5, 12.0, 500)[:-1], np.geomspace(12.0, 400.0, 100)])


def _binomial_pmf(n: int, prob: FloatArray) -> FloatArray:
    """Binomial pmf, shape prob.shape + (n + 1,); exact at prob 0 and 1."""
    k = np.arange(n + 1)
    coefficients = np.array([math.comb(n, i) for i in k], dtype=np.float64)
    return coefficients * prob[..., None] ** k * (1.0 - prob[..., None]) ** (n - k)


def _count_below_cdf(groups: list[tuple[int, FloatArray]], k: int) -> FloatArray:
    """P(sum of independent Binomial(n_g, prob_g) counts <= k), elementwise over the prob arrays.

    The smaller groups are convolved exactly; the largest one enters through its CDF (``bdtr``).
    """
    *small, (n_last, prob_last) = sorted(groups, key=lambda group: group[0])
    total = np.ones((*prob_last.shape, 1))
    for n, prob in small:
        pmf = _binomial_pmf(n, prob)
        combined = np.zeros((*total.shape[:-1], total.shape[-1] + n))
        for i in range(n + 1):
            combined[..., i:i + total.shape[-1]] += pmf[..., i:i + 1] * total
        total = combined
    return sum(total[..., a] * special.bdtr(min(k - a, n_last), n_last, prob_last)
               for a in range(min(k, total.shape[-1] - 1) + 1))


def _expected_raw(betagamma: FloatArray, mass_gev: float, gas: GasMixture, geometry: MdcGeometry,
                  straggling: Straggling, fraction: float) -> FloatArray:
    """Expected truncated mean (keV/cm) on the reference track, from the order statistics of the hits.

    Reference track: theta = 90 deg, infinite momentum, every layer hit, so layer group g (cells of height
    h_g) contributes n_g independent losses. E[sum of the lowest k] = sum_g n_g int x f_g(x) P(at most k-1
    of the other hits are below x) dx, the count of the others being a sum of binomials.
    """
    heights, counts = np.unique(np.array(geometry.cell_height_cm), return_counts=True)
    k = int(_hits_used(np.array([counts.sum()]), fraction)[0])
    bg = np.asarray(betagamma, dtype=np.float64)[:, None]  # (n_bg, 1) against (n_groups,) or (n_grid,)
    xi_per_cm, log_term, mean_per_cm = _loss_parameters(bg, mass_gev, gas)
    w = straggling.width_scale
    mpv_per_cm = xi_per_cm * (log_term + np.log(1e3 * xi_per_cm * heights))  # (n_bg, n_groups)
    cuts = _landau_cut((mean_per_cm - mpv_per_cm) / (w * xi_per_cm) + LANDAU_MODE, straggling)
    # per-cm losses of all groups share the scale w * xi_per_cm and differ only by the MPV per cm
    scale = w * xi_per_cm
    x = mpv_per_cm.min(axis=1, keepdims=True) + scale * (_integration_lambda() - LANDAU_MODE)
    densities, cdfs = [], []
    for g in range(len(heights)):
        lam = (x - mpv_per_cm[:, g:g + 1]) / scale + LANDAU_MODE
        cut = cuts[:, g:g + 1]
        norm = LANDAU.cdf(cut)
        densities.append(np.where(lam < cut, LANDAU.pdf(lam) / (norm * scale), 0.0))
        cdfs.append(np.where(lam < cut, LANDAU.cdf(lam) / norm, 1.0))
    total = np.zeros(bg.shape[0])
    for g, n_g in enumerate(counts):
        others = counts - (np.arange(len(counts)) == g)
        below = _count_below_cdf([(int(n), cdfs[h]) for h, n in enumerate(others)], k - 1)
        total += n_g * np.trapezoid(x * densities[g] * below, x, axis=1)
    return total / k


@lru_cache(maxsize=16)
def _expected_curve(mass_gev: float) -> PchipInterpolator:
    """ln(expected truncated mean, keV/cm) as a function of ln(beta*gamma), tabulated and interpolated."""
    lo, hi = EXPECTED_BETAGAMMA_RANGE
    log_bg = np.linspace(math.log(lo), math.log(hi), 300)
    values = _expected_raw(np.exp(log_bg), mass_gev, MDC_GAS, MDC_GEOMETRY, STRAGGLING, TRUNCATION_FRACTION)
    return PchipInterpolator(log_bg, np.log(values))


@lru_cache(maxsize=1)
def dedx_gain() -> float:
    """Gain (units per keV/cm) that puts the expected truncated mean of a 1 GeV/c electron at 550.

    341.8 with the default parameters (computed from the model, see ``expected_dedx``).
    """
    mass = MASS_GEV["e-"]
    raw = _expected_raw(np.array([GAIN_REFERENCE_MOMENTUM_GEV / mass]), mass, MDC_GAS, MDC_GEOMETRY,
                        STRAGGLING, TRUNCATION_FRACTION)
    return ELECTRON_PLATEAU / float(raw[0])


def expected_dedx(betagamma: ArrayLike, *, mass_gev: float = MASS_GEV["pi+"]) -> FloatArray:
    """The simulator's noise-free expected dE/dx (gain-normalised, electron plateau = 550).

    Exact expectation of the truncated mean for the reference track (theta = 90 deg, all 43 layers hit,
    straight radial path through each cell), tabulated on beta*gamma in ``EXPECTED_BETAGAMMA_RANGE`` and
    interpolated (error < 3e-4). Tracks with fewer hits, other angles or curling differ from it by up to
    a few percent (as BESIII's N_hit and sin(theta) corrections describe). ``mass_gev`` only enters through
    W_max in the per-hit upper cut (effect < 1e-3).
    """
    bg = _positive_array(betagamma, "betagamma")
    lo, hi = EXPECTED_BETAGAMMA_RANGE
    if np.any((bg < lo) | (bg > hi)):
        raise DataError(f"expected_dedx: betagamma must be within [{lo}, {hi}], got [{bg.min()}, {bg.max()}]")
    return dedx_gain() * np.exp(_expected_curve(float(mass_gev))(np.log(bg)))


# ---------------------------------------------------------------------------------------------------------
# Track kinematics and hits
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _inverse_cdf_tables(spectrum: MomentumSpectrum) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(momentum CDF, momentum grid, |cos theta| CDF, |cos theta| grid) for inverse-CDF sampling."""
    p = np.linspace(spectrum.p_min_gev, spectrum.p_max_gev, 4_001)
    p_density = ((1.0 - spectrum.peak_fraction) * stats.gamma.pdf(p, spectrum.gamma_shape,
                                                                  scale=spectrum.gamma_scale_gev)
                 + spectrum.peak_fraction * stats.norm.pdf(p, spectrum.peak_gev, spectrum.peak_width_gev))
    c = np.linspace(0.0, spectrum.cos_theta_max, 1_001)
    c_density = 1.0 + spectrum.cos2_coefficient * c**2

    def cdf(density: FloatArray, grid: FloatArray) -> FloatArray:
        values = cumulative_trapezoid(density, grid, initial=0.0)
        return values / values[-1]

    return cdf(p_density, p), p, cdf(c_density, c), c


def _sample_kinematics(labels: NDArray[np.str_], rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """Momentum (GeV/c) and cos(theta) for each track label."""
    p = np.empty(labels.shape)
    cos_theta = np.empty(labels.shape)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        p_cdf, p_grid, c_cdf, c_grid = _inverse_cdf_tables(SPECTRA[HYPOTHESIS_OF[str(label)]])
        p[rows] = np.interp(rng.random(rows.size), p_cdf, p_grid)
        sign = np.where(rng.random(rows.size) < 0.5, -1.0, 1.0)
        cos_theta[rows] = sign * np.interp(rng.random(rows.size), c_cdf, c_grid)
    return p, cos_theta


def _cell_crossings(pt_gev: FloatArray, cos_theta: FloatArray, rng: np.random.Generator,
                    geometry: MdcGeometry) -> tuple[NDArray[np.bool_], FloatArray]:
    """Which layers a track crosses (n, n_layers) and its path length in the hit cell there, cm.

    A helix of transverse diameter D = 2 pT / (0.3 B) reaches radius r at transverse arc 2 R arcsin(r / D)
    and crosses it at angle psi to the radial direction, sin(psi) = r / D. Crossing a layer of height h it
    spans h tan(psi) in azimuth; if that straddles a cell boundary (uniform entry point) the hit keeps the
    longer piece, at most one cell width w.
    """
    radius = np.array(geometry.radius_cm)
    height = np.array(geometry.cell_height_cm)
    width = geometry.cell_width_cm
    diameter_cm = 200.0 * pt_gev[:, None] / (CURVATURE_CONSTANT * geometry.field_tesla)
    sin_theta = np.sqrt(1.0 - cos_theta**2)[:, None]
    sin_psi = radius / diameter_cm
    reached = sin_psi < 1.0
    sin_psi = np.minimum(sin_psi, 0.999)  # layers not reached get a finite dummy path
    arc_z = diameter_cm * np.arcsin(sin_psi) * np.abs(cos_theta)[:, None] / sin_theta
    crossed = np.logical_and.accumulate(reached & (arc_z < np.array(geometry.half_length_cm)), axis=1)
    cos_psi = np.sqrt(1.0 - sin_psi**2)
    span = np.maximum(height * sin_psi / cos_psi, 1e-12)
    entry = rng.random(span.shape) * width
    first_piece = (width - entry) / span
    fraction = np.where(entry + span <= width, 1.0,
                        np.where(span <= width, np.maximum(first_piece, 1.0 - first_piece), width / span))
    return crossed, height / cos_psi * fraction / sin_theta


def _draw_tracks(labels: NDArray[np.str_], rng: np.random.Generator, geometry: MdcGeometry,
                 ) -> tuple[FloatArray, FloatArray, NDArray[np.bool_], FloatArray, dict[str, int]]:
    """Kinematics and hits for each label, re-drawing tracks with fewer than ``min_hits`` hits."""
    n, n_layers = labels.size, geometry.n_layers
    p, cos_theta = np.empty(n), np.empty(n)
    hits, paths = np.zeros((n, n_layers), dtype=bool), np.empty((n, n_layers))
    counts = {"n_redrawn_few_hits": 0, "n_hits_lost_inefficiency": 0}
    pending = np.arange(n)
    for _ in range(10_000):
        p[pending], cos_theta[pending] = _sample_kinematics(labels[pending], rng)
        pt = p[pending] * np.sqrt(1.0 - cos_theta[pending] ** 2)
        crossed, paths[pending] = _cell_crossings(pt, cos_theta[pending], rng, geometry)
        hits[pending] = crossed & (rng.random(crossed.shape) < geometry.hit_efficiency)
        few = hits[pending].sum(axis=1) < geometry.min_hits
        counts["n_hits_lost_inefficiency"] += int(crossed[~few].sum() - hits[pending][~few].sum())
        pending = pending[few]
        if pending.size == 0:
            return p, cos_theta, hits, paths, counts
        counts["n_redrawn_few_hits"] += int(pending.size)
    raise DataError(f"simulate_dedx: {pending.size} track(s) of species {sorted(set(labels[pending]))} never "
                    f"reached {geometry.min_hits} hits; check the spectra and geometry")


def _track_dedx(labels: NDArray[np.str_], p: FloatArray, hits: NDArray[np.bool_], paths: FloatArray,
                rng: np.random.Generator) -> tuple[FloatArray, NDArray[np.int64]]:
    """Gain-normalised truncated-mean dE/dx and number of hits for each track."""
    mass = np.array([MASS_GEV[str(label)] for label in labels]) if labels.size else np.empty(0)
    betagamma = p / mass
    xi_per_cm, log_term, mean_per_cm = _loss_parameters(betagamma, mass, MDC_GAS)
    rows, cols = np.nonzero(hits)
    loss = _sample_loss_per_cm(xi_per_cm[rows], log_term[rows], mean_per_cm[rows], paths[rows, cols],
                               1.0 - rng.random(rows.size), STRAGGLING)
    nhits = hits.sum(axis=1)
    # left-align each track's hits: column = rank of the hit within its track
    first_hit = np.cumsum(nhits) - nhits
    packed = np.full(hits.shape, np.nan)
    packed[rows, np.arange(rows.size) - first_hit[rows]] = loss
    return dedx_gain() * truncated_mean(packed, nhits), nhits


# ---------------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------------


def _check_labels(labels: Sequence[str], where: str) -> None:
    """DataError naming unknown species labels and the allowed ones."""
    unknown = sorted({str(label) for label in labels if label not in MASS_GEV})
    if unknown:
        raise DataError(f"{where}: unknown species {unknown}; allowed: {list(SPECIES)}")


def _species_weights(species: Sequence[str] | None,
                     fractions: Mapping[str, float] | None) -> tuple[list[str], FloatArray]:
    """Validated labels and normalised weights (equal unless ``fractions`` is given)."""
    if isinstance(species, str):
        species = [species]
    if species is None:
        labels = list(SPECIES if fractions is None else fractions)
    else:
        labels = list(species)
    _check_labels(labels, "simulate_dedx")
    if not labels or len(set(labels)) != len(labels):
        raise DataError(f"simulate_dedx: species must be non-empty and without repeats, got {labels}")
    if fractions is None:
        return labels, np.full(len(labels), 1.0 / len(labels))
    if set(fractions) != set(labels):
        raise DataError(f"simulate_dedx: fractions keys {sorted(fractions)} differ from species {sorted(labels)}")
    weights = np.array([fractions[label] for label in labels], dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise DataError(f"simulate_dedx: fractions must be finite, >= 0 and not all 0, got {dict(fractions)}")
    return labels, weights / weights.sum()


def _simulate_chunk(n: int, labels: list[str], weights: FloatArray, rng: np.random.Generator,
                    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """One chunk of ``n`` tracks: columns of the output table and the chunk's counters."""
    codes = rng.choice(len(labels), size=n, p=weights)
    track_labels = np.array(labels)[codes]
    p, cos_theta, hits, paths, counts = _draw_tracks(track_labels, rng, MDC_GEOMETRY)
    dedx, nhits = _track_dedx(track_labels, p, hits, paths, rng)
    turn_diameter_cm = 200.0 * p * np.sqrt(1.0 - cos_theta**2) / (CURVATURE_CONSTANT * MDC_GEOMETRY.field_tesla)
    counts["n_tracks_curling"] = int(np.count_nonzero(turn_diameter_cm <= MDC_GEOMETRY.radius_cm[-1]))
    table = {
        "species": track_labels.astype(object),
        "charge": np.array([CHARGE[label] for label in labels], dtype=np.int8)[codes],
        "p": p,
        "theta": np.arccos(cos_theta),
        "cos_theta": cos_theta,
        "nhits": nhits.astype(np.int16),
        "dedx": dedx,
    }
    return table, counts


def dedx_for_kinematics(species: Sequence[str] | np.ndarray, p_gev: ArrayLike, cos_theta: ArrayLike, *,
                        seed: int = 0) -> tuple[FloatArray, NDArray[np.int16]]:
    """dE/dx and number of hits for given tracks, without re-drawing (all arrays of one length).

    Useful as an oracle at fixed conditions (e.g. full-length tracks at theta = 90 deg). Tracks with fewer
    than ``MdcGeometry.min_hits`` hits get dedx NaN. No chunking: memory is ~6 kB per track.

    Returns:
        (dedx (gain-normalised), nhits (int16)).
    """
    labels = np.asarray(species).astype(str)
    _check_labels(list(np.unique(labels)), "dedx_for_kinematics")
    p = _positive_array(p_gev, "p_gev")
    cos = np.asarray(cos_theta, dtype=np.float64)
    if not (labels.ndim == 1 and p.shape == labels.shape and cos.shape == labels.shape):
        raise DataError(f"dedx_for_kinematics: species, p_gev and cos_theta must be 1-D of one length, "
                        f"got {labels.shape}, {p.shape}, {cos.shape}")
    if not np.all(np.abs(cos) < 1.0):
        raise DataError("dedx_for_kinematics: cos_theta must be finite with |cos_theta| < 1")
    rng = np.random.default_rng(seed)
    crossed, paths = _cell_crossings(p * np.sqrt(1.0 - cos**2), cos, rng, MDC_GEOMETRY)
    hits = crossed & (rng.random(crossed.shape) < MDC_GEOMETRY.hit_efficiency)
    enough = hits.sum(axis=1) >= MDC_GEOMETRY.min_hits
    dedx = np.full(labels.shape, np.nan)
    dedx[enough], _ = _track_dedx(labels[enough], p[enough], hits[enough], paths[enough], rng)
    return dedx, hits.sum(axis=1).astype(np.int16)


def simulate_dedx(n: int, *, seed: int = 0, species: Sequence[str] | None = None, chunk_size: int = 200_000,
                  progress: bool = False, fractions: Mapping[str, float] | None = None,
                  ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Simulate ``n`` tracks and their MDC dE/dx.

    Args:
        n: number of tracks returned (> 0).
        seed: seed of ``numpy.random.default_rng``; the same (seed, chunk_size) gives identical output.
        species: labels to simulate (default: all ten in ``detgen.particles.SPECIES``), equal fractions.
        chunk_size: tracks simulated at a time (bounds memory: ~6.5 kB per track in flight,
            1.3 GB peak at the default).
        progress: show a tqdm bar over chunks.
        fractions: optional relative weight per label (keys must equal ``species`` when both are given).

    Returns:
        (table, info). table columns: species (object array of str), charge (int8), p (GeV/c), theta (rad),
        cos_theta, nhits (int16), dedx (gain-normalised, electron plateau ~550). info: n_tracks, n_chunks,
        n_redrawn_few_hits (tracks re-drawn for < 5 hits), n_hits_lost_inefficiency, n_tracks_curling
        (tracks whose helix turns before the outermost layer).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise DataError(f"simulate_dedx: n must be a positive integer, got {n!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
        raise DataError(f"simulate_dedx: chunk_size must be a positive integer, got {chunk_size!r}")
    labels, weights = _species_weights(species, fractions)
    rng = np.random.default_rng(seed)
    starts = range(0, int(n), int(chunk_size))
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="dE/dx chunks", unit="chunk")
    parts, info = [], {"n_tracks": int(n), "n_chunks": 0}
    for start in starts:
        table, counts = _simulate_chunk(min(int(chunk_size), int(n) - start), labels, weights, rng)
        parts.append(table)
        info["n_chunks"] += 1
        for key, value in counts.items():
            info[key] = info.get(key, 0) + value
    columns = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return columns, info


# ------------------------------------------------------------------------------------------ command line
CLI_HELP = "BESIII MDC dE/dx of single tracks (Parquet/ROOT/HDF5 table)"


def add_cli_arguments(parser: Any) -> None:
    """Options of ``detgen simulate dedx`` beyond the common --n, --seed, -o."""
    parser.add_argument("--species", default=None, help="comma-separated species labels (default: all)")


def simulate_cli(args: Any, *, progress: bool) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    species = [s for s in args.species.split(",") if s] if args.species else None
    return simulate_dedx(args.n, seed=args.seed, species=species, progress=progress)
