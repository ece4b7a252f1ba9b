"""Reference optical simulator of the JUNO central detector: photon-by-photon transport to 17,612 PMTs.

A deposit of energy E in the liquid scintillator (LS) sphere emits Poisson(yield x E) scintillation photons
isotropically, with a two-component exponential emission-time profile. Each photon travels in a straight line
through the LS until it is absorbed (then re-emitted isotropically with a probability, after a short delay),
Rayleigh-scattered (new direction from the 1 + cos^2 phase function), or reaches the LS surface, where it is
Fresnel-reflected back into the LS (including total internal reflection) or refracted into the water buffer.
A refracted photon flies straight to the PMT sphere (water absorption applied); it is detected if it lands
inside the photocathode cap of the nearest PMT and passes the angular acceptance. The hit time is the
emission time plus the time of flight at the group velocity of each medium, smeared by the PMT transit-time
spread (TTS). Everything is vectorised numpy over photons, processed in chunks (bounded memory). The distance
to the next interaction is drawn once from the total (absorption + Rayleigh) length and the process chosen by
its share, which is the same as racing two exponentials. The PMT under a landing point is found through a
precomputed (theta, phi) grid of candidate PMTs (the same answer as a KD-tree, ~3x faster).

Physics model (numbers from PHYSICS.md section 5; "(unverified)" marks a best estimate kept as a named,
documented parameter of :class:`JunoDetector`):

* Geometry: LS sphere of radius 17.7 m, 12 cm acrylic, water buffer, 17,612 PMTs on a sphere of 19.5 m
  placed on a Fibonacci lattice (deterministic, quasi-uniform). Photocoverage 78% gives each PMT a
  photocathode cap of angular radius alpha with N (1 - cos alpha) / 2 = 0.78 (alpha = 13.3 mrad, a 26 cm
  radius at 19.5 m, close to a 20-inch PMT).
* Light yield: ``scintillation_yield_per_mev`` (10,000 photons/MeV, unverified) times ``light_yield_scale``,
  which is tuned (a test checks it) so that 1 MeV at the centre gives ~1345 p.e. (arXiv 2104.02565).
  Quenching (Birks) is not modelled: the yield is per MeV of deposited energy.
* PDE 28.5% (PHYSICS: 28-29%) is wavelength- and history-independent here, so it is applied at emission
  ("thinning"): only the photons that would pass the PDE are tracked. This is exact in distribution
  (a Poisson count thinned by an independent Bernoulli is Poisson) and makes the reference 3.5x faster;
  ``pde_at_emission=False`` applies it at the photocathode instead (a test checks both agree).
* Absorption length 77 m and Rayleigh length 27 m (together the ~20 m attenuation length,
  1/20 = 1/77 + 1/27); re-emission probability 0.5 after absorption, delay ~ Exp(1.5 ns) (both unverified).
* Refractive index 1.49 (LS), 1.33 (water), group indices 1.58 (LS, the ~190 mm/ns effective speed used in
  JUNO vertex fits; unverified) and 1.37 (water; unverified). The acrylic (n ~ 1.50) is a thin parallel slab:
  its only effect on directions and the critical angle is that of a direct LS -> water interface, which is
  what is modelled (unpolarised Fresnel coefficients).
* Scintillation time profile: 4.6 ns (fraction 0.75) and 20 ns (0.25) exponentials (unverified; no rise time).
* PMT angular acceptance: relative efficiency floor + (1 - floor) cos(eta), eta the incidence angle on the PMT
  sphere, floor 0.5 (unverified). TTS: Gaussian, sigma 1.2 ns (a dynode PMT; unverified). The MCP-PMTs'
  larger TTS (5-7 ns) is not modelled (one ``tts_sigma_ns`` for every PMT).
* Muons: straight tracks at the speed of light, dE/dx = 0.2 MeV/mm along the chord inside the LS (no
  straggling, delta rays or showers); the light of a track step is emitted uniformly along the step.

Not modelled: wavelength dependence (spectra, absorption and re-emission shifts), polarisation, quenching,
light reflected back from PMT glass or the steel structure, scattering in water, dark noise, PMT
saturation, electronics, the 25,600 small PMTs.

Speed (one core, single-threaded numpy): ~300 1-MeV events per CPU-second and ~5.6 CPU-seconds per cosmic muon;
commands and load averages in docs/bench_juno.md (``benchmarks/juno_reference.py``).

Output conventions for point mode (see :func:`simulate_points`): ``theta`` is the angle between the deposit
direction (+z) and the PMT direction, which is the PMT's polar angle; ``first_hit_ns`` is the earliest p.e.
time of the PMT, and :data:`NO_HIT_TIME_NS` (-1) for PMTs with ``npe == 0``: select hits with ``npe > 0``,
never by the time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from detgen.errors import ConfigError, DataError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Speed of light in vacuum, m/ns.
SPEED_OF_LIGHT_M_PER_NS = 0.299792458
#: ``first_hit_ns`` of a PMT without photo-electrons (select rows with hits by ``npe > 0``).
NO_HIT_TIME_NS = -1.0
#: Photons tracked at a time (bounds memory to a few hundred MB).
DEFAULT_CHUNK_PHOTONS = 1 << 20


@dataclass(frozen=True)
class JunoDetector:
    """Every physical constant of the JUNO central-detector optical model (lengths in m, times in ns).

    Attributes:
        ls_radius_m: liquid-scintillator sphere radius (17.7 m).
        acrylic_thickness_m: acrylic vessel thickness (0.12 m; only documented, see the module notes).
        pmt_radius_m: radius of the sphere of photocathodes (~19.5 m).
        n_pmt: number of 20-inch PMTs (17,612).
        photocoverage: fraction of the PMT sphere covered by photocathode caps (0.78).
        pde: photon detection efficiency at normal incidence (0.285).
        scintillation_yield_per_mev: photons per MeV deposited before tuning (10,000; unverified).
        light_yield_scale: tuning factor so that 1 MeV at the centre gives ~1345 p.e.
        refractive_index_ls, refractive_index_water: phase indices (1.49, 1.33; unverified).
        group_index_ls, group_index_water: group indices for the time of flight (1.58, 1.37; unverified).
        absorption_length_m: LS absorption length (77 m; inf switches absorption off).
        reemission_probability: probability that an absorbed photon is re-emitted (0.5; unverified).
        reemission_time_ns: mean delay of re-emission (1.5 ns; unverified).
        rayleigh_length_m: LS Rayleigh scattering length (27 m at 430 nm; inf switches scattering off).
        water_absorption_length_m: water-buffer absorption length (60 m; unverified; inf: off).
        fast_time_ns, slow_time_ns, fast_fraction: two-exponential scintillation time profile
            (4.6 ns, 20 ns, 0.75; unverified).
        tts_sigma_ns: PMT transit-time spread, Gaussian sigma (1.2 ns; unverified).
        angular_acceptance_floor: relative PMT efficiency at grazing incidence; the acceptance is
            floor + (1 - floor) cos(incidence angle) (0.5; unverified).
        fresnel: Fresnel reflection at the LS surface (total internal reflection is always modelled).
        muon_dedx_mev_per_mm: muon energy loss in the LS (0.2 MeV/mm).
        max_photon_steps: transport iterations after which surviving photons are dropped (and counted).
    """

    ls_radius_m: float = 17.7
    acrylic_thickness_m: float = 0.12
    pmt_radius_m: float = 19.5
    n_pmt: int = 17_612
    photocoverage: float = 0.78
    pde: float = 0.285
    scintillation_yield_per_mev: float = 10_000.0
    light_yield_scale: float = 0.764
    refractive_index_ls: float = 1.49
    refractive_index_water: float = 1.33
    group_index_ls: float = 1.58
    group_index_water: float = 1.37
    absorption_length_m: float = 77.0
    reemission_probability: float = 0.5
    reemission_time_ns: float = 1.5
    rayleigh_length_m: float = 27.0
    water_absorption_length_m: float = 60.0
    fast_time_ns: float = 4.6
    slow_time_ns: float = 20.0
    fast_fraction: float = 0.75
    tts_sigma_ns: float = 1.2
    angular_acceptance_floor: float = 0.5
    fresnel: bool = True
    muon_dedx_mev_per_mm: float = 0.2
    max_photon_steps: int = 2000

    def __post_init__(self) -> None:
        positive = ("ls_radius_m", "pmt_radius_m", "refractive_index_ls", "refractive_index_water",
                    "group_index_ls", "group_index_water", "absorption_length_m", "rayleigh_length_m",
                    "water_absorption_length_m", "fast_time_ns", "slow_time_ns", "scintillation_yield_per_mev",
                    "light_yield_scale", "muon_dedx_mev_per_mm")
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"JunoDetector.{name} = {value}; expected a positive number")
        for name in ("photocoverage", "pde", "reemission_probability", "fast_fraction",
                     "angular_acceptance_floor"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"JunoDetector.{name} = {value}; expected a fraction in [0, 1]")
        if not 0 < self.photocoverage < 0.9:
            raise ConfigError(f"JunoDetector.photocoverage = {self.photocoverage}; expected 0 < coverage < 0.9 "
                              "(non-overlapping caps)")
        if self.pmt_radius_m <= self.ls_radius_m:
            raise ConfigError(f"JunoDetector.pmt_radius_m = {self.pmt_radius_m}; expected > ls_radius_m "
                              f"({self.ls_radius_m})")
        if self.n_pmt < 1 or self.max_photon_steps < 1:
            raise ConfigError("JunoDetector.n_pmt and max_photon_steps must be positive integers")
        if self.reemission_time_ns < 0 or self.tts_sigma_ns < 0:
            raise ConfigError("JunoDetector.reemission_time_ns and tts_sigma_ns must be >= 0")

    @property
    def cap_half_angle_rad(self) -> float:
        """Angular radius alpha of a photocathode cap: n_pmt (1 - cos alpha) / 2 = photocoverage."""
        return math.acos(1.0 - 2.0 * self.photocoverage / self.n_pmt)

    @property
    def photons_per_mev(self) -> float:
        """Scintillation photons per MeV after the light-yield tuning."""
        return self.scintillation_yield_per_mev * self.light_yield_scale

    def to_dict(self) -> dict[str, Any]:
        """The constants as a plain dict (recorded in ``info``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULT_DETECTOR = JunoDetector()


# ---------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------


def pmt_positions(detector: JunoDetector = DEFAULT_DETECTOR) -> FloatArray:
    """PMT centres (n_pmt, 3) in m on the PMT sphere: a Fibonacci lattice, deterministic and quasi-uniform.

    Point i sits at cos(theta_i) = 1 - (2 i + 1) / N and phi_i = i * golden angle, so the polar angles are
    spread evenly from the top (+z) to the bottom.
    """
    return _pmt_unit_vectors(detector.n_pmt) * detector.pmt_radius_m


@lru_cache(maxsize=4)
def _pmt_unit_vectors(n_pmt: int) -> FloatArray:
    index = np.arange(n_pmt, dtype=np.float64)
    cos_theta = 1.0 - (2.0 * index + 1.0) / n_pmt
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    phi = index * math.pi * (3.0 - math.sqrt(5.0))
    unit = np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta], axis=1)
    unit.flags.writeable = False
    return unit


@lru_cache(maxsize=4)
def _pmt_tree(n_pmt: int) -> cKDTree:
    return cKDTree(_pmt_unit_vectors(n_pmt))


@lru_cache(maxsize=4)
def _pmt_grid(n_pmt: int, cap_half_angle_rad: float) -> tuple[int, int, NDArray[np.int32], NDArray[np.float32]]:
    """Candidate PMTs per (theta, phi) cell: every PMT whose cap can reach into the cell.

    Cells are ~alpha/2 wide in theta and phi; a point in a cell is within alpha of a PMT only if the PMT's
    centre is within alpha + the cell's half-diagonal (plus 10%) of the cell centre, so the nearest PMT
    within its cap is always among the candidates (a test checks it against a KD-tree). Returns (n_theta,
    n_phi, candidates (n_cells, K) padded with n_pmt, the candidates' unit vectors (n_cells, 3 K) as float32,
    zero for padding). One contiguous row per photon makes the lookup a single gather.
    """
    cell = 0.5 * cap_half_angle_rad
    n_theta, n_phi = math.ceil(math.pi / cell), math.ceil(2.0 * math.pi / cell)
    d_theta, d_phi = math.pi / n_theta, 2.0 * math.pi / n_phi
    theta = (np.arange(n_theta) + 0.5) * d_theta
    phi = (np.arange(n_phi) + 0.5) * d_phi - math.pi
    sin_t = np.repeat(np.sin(theta), n_phi)
    centres = np.stack([sin_t * np.tile(np.cos(phi), n_theta), sin_t * np.tile(np.sin(phi), n_theta),
                        np.repeat(np.cos(theta), n_phi)], axis=1)
    reach = cap_half_angle_rad + 1.1 * 0.5 * math.hypot(d_theta, d_phi)
    width = 4
    while True:  # widen until every cell's candidate list fits (the last column stays empty)
        _, found = _pmt_tree(n_pmt).query(centres, k=width + 1, distance_upper_bound=2.0 * math.sin(0.5 * reach))
        if np.all(found[:, -1] == n_pmt):
            break
        width *= 2
    width = int(np.max(np.sum(found < n_pmt, axis=1)))
    candidates = found[:, :width].astype(np.int32)
    unit = np.vstack([_pmt_unit_vectors(n_pmt), np.zeros((1, 3))])
    vectors = unit[candidates].astype(np.float32).reshape(len(candidates), 3 * width)
    return n_theta, n_phi, candidates, vectors


def nearest_pmt_on_cap(unit_points: FloatArray, detector: JunoDetector = DEFAULT_DETECTOR) -> IntArray:
    """Index of the PMT whose photocathode cap holds each unit direction, or -1 for a gap between caps."""
    n_theta, n_phi, candidates, vectors = _pmt_grid(detector.n_pmt, detector.cap_half_angle_rad)
    n, width = len(unit_points), candidates.shape[1]
    theta = np.arccos(np.clip(unit_points[:, 2], -1.0, 1.0))
    phi = np.arctan2(unit_points[:, 1], unit_points[:, 0])
    row = np.minimum((theta * (n_theta / math.pi)).astype(np.int64), n_theta - 1)
    column = np.minimum(((phi + math.pi) * (n_phi / (2.0 * math.pi))).astype(np.int64), n_phi - 1)
    cell = row * n_phi + column
    cosine = np.einsum("ijk,ik->ij", np.take(vectors, cell, axis=0).reshape(n, width, 3),
                       unit_points.astype(np.float32))
    best = np.argmax(cosine, axis=1)
    flat = cell * width + best
    index = np.take(candidates.ravel(), flat).astype(np.int64)
    # the cap test in float64 (float32 dot products would move the cap edge by ~0.1 mm at random)
    centre = np.take(_pmt_unit_vectors(detector.n_pmt), np.minimum(index, detector.n_pmt - 1), axis=0)
    inside = (np.einsum("ij,ij->i", centre, unit_points) >= math.cos(detector.cap_half_angle_rad))
    index[~inside | (index >= detector.n_pmt)] = -1
    return index


def pmt_theta(detector: JunoDetector = DEFAULT_DETECTOR) -> FloatArray:
    """Polar angle (rad) of every PMT: the angle to a deposit on the +z axis (point-mode ``theta``)."""
    return np.arccos(np.clip(_pmt_unit_vectors(detector.n_pmt)[:, 2], -1.0, 1.0))


# ---------------------------------------------------------------------------------------------------------
# Photon transport
# ---------------------------------------------------------------------------------------------------------


def _isotropic(n: int, rng: np.random.Generator) -> FloatArray:
    cos_theta = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    return np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta], axis=1)


def _rayleigh_directions(direction: FloatArray, rng: np.random.Generator) -> FloatArray:
    """New unit directions after Rayleigh scattering: cos(angle) from (3/8)(1 + mu^2), azimuth uniform.

    The CDF (mu^3 + 3 mu + 4) / 8 = u is inverted exactly (Cardano): a = 4u - 2,
    mu = cbrt(a + sqrt(a^2 + 1)) + cbrt(a - sqrt(a^2 + 1)).
    """
    n = len(direction)
    a = 4.0 * rng.random(n) - 2.0
    root = np.sqrt(a * a + 1.0)
    mu = np.clip(np.cbrt(a + root) + np.cbrt(a - root), -1.0, 1.0)
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    sin_mu = np.sqrt(1.0 - mu * mu)
    cos_phi, sin_phi = np.cos(phi), np.sin(phi)
    ux, uy, uz = direction[:, 0], direction[:, 1], direction[:, 2]
    # rotate (sin_mu cos_phi, sin_mu sin_phi, mu) from the frame whose z axis is the old direction
    perp = np.sqrt(np.maximum(1.0 - uz * uz, 0.0))
    safe = perp > 1e-6
    inv_perp = np.divide(sin_mu, perp, out=np.zeros(n), where=safe)
    new = np.empty_like(direction)
    new[:, 0] = inv_perp * (ux * uz * cos_phi - uy * sin_phi) + ux * mu
    new[:, 1] = inv_perp * (uy * uz * cos_phi + ux * sin_phi) + uy * mu
    new[:, 2] = -sin_mu * cos_phi * perp + uz * mu
    if not safe.all():  # along the z axis the frame is the lab frame (up to the sign of z)
        pole = ~safe
        new[pole, 0] = sin_mu[pole] * cos_phi[pole]
        new[pole, 1] = sin_mu[pole] * sin_phi[pole]
        new[pole, 2] = np.sign(uz[pole]) * mu[pole]
    return new


def _exit_distance(position: FloatArray, direction: FloatArray, radius: float) -> FloatArray:
    """Distance along ``direction`` from a point inside (or on) the sphere of ``radius`` to its surface."""
    p_dot_d = np.einsum("ij,ij->i", position, direction)
    c = np.einsum("ij,ij->i", position, position) - radius * radius
    return -p_dot_d + np.sqrt(np.maximum(p_dot_d * p_dot_d - c, 0.0))


def _exponential(length: float, n: int, rng: np.random.Generator) -> FloatArray:
    if math.isinf(length):
        return np.full(n, np.inf)
    return rng.exponential(length, n)


def _fresnel_reflectance(cos_incidence: FloatArray, n1: float, n2: float) -> FloatArray:
    """Unpolarised Fresnel reflectance from index n1 into n2; 1 beyond the critical angle."""
    sin_t = (n1 / n2) * np.sqrt(np.maximum(1.0 - cos_incidence**2, 0.0))
    reflectance = np.ones_like(cos_incidence)
    ok = sin_t < 1.0
    cos_i = cos_incidence[ok]
    cos_t = np.sqrt(1.0 - sin_t[ok] ** 2)
    r_s = (n1 * cos_i - n2 * cos_t) / (n1 * cos_i + n2 * cos_t)
    r_p = (n2 * cos_i - n1 * cos_t) / (n2 * cos_i + n1 * cos_t)
    reflectance[ok] = 0.5 * (r_s * r_s + r_p * r_p)
    return reflectance


@dataclass
class _Photons:
    """Photons in flight: position (n, 3) m, unit direction (n, 3), time ns, owner (event or muon index)."""

    position: FloatArray
    direction: FloatArray
    time: FloatArray
    owner: IntArray

    def take(self, mask: NDArray[np.bool_]) -> _Photons:
        index = np.flatnonzero(mask)
        return _Photons(np.take(self.position, index, axis=0), np.take(self.direction, index, axis=0),
                        np.take(self.time, index), np.take(self.owner, index))

    def __len__(self) -> int:
        return len(self.time)


@dataclass
class _Hits:
    """Detected photo-electrons: owner index, PMT index and hit time (ns)."""

    owner: IntArray
    pmt: IntArray
    time: FloatArray


_COUNT_KEYS = ("n_photons_tracked", "n_absorbed", "n_reemitted", "n_rayleigh_scattered", "n_reflected",
               "n_exited_ls", "n_absorbed_in_water", "n_missed_photocathode", "n_rejected_acceptance",
               "n_rejected_pde", "n_detected", "n_dropped_max_steps")


def _detect(photons: _Photons, detector: JunoDetector, rng: np.random.Generator, counts: dict[str, int],
            pde_at_detection: bool) -> _Hits:
    """Photons refracted out of the LS (position on the LS surface, direction in water) -> hits."""
    n = len(photons)
    s_water = _exit_distance(photons.position, photons.direction, detector.pmt_radius_m)
    survive = rng.random(n) < np.exp(-s_water / detector.water_absorption_length_m)
    counts["n_absorbed_in_water"] += int(n - survive.sum())
    photons, s_water = photons.take(survive), s_water[survive]
    landing = photons.position + s_water[:, None] * photons.direction
    landing /= detector.pmt_radius_m
    index = nearest_pmt_on_cap(landing, detector)
    on_cap = index >= 0
    counts["n_missed_photocathode"] += int(len(photons) - on_cap.sum())
    index = index[on_cap]
    photons, s_water = photons.take(on_cap), s_water[on_cap]
    cos_eta = np.einsum("ij,ij->i", photons.direction, _pmt_unit_vectors(detector.n_pmt)[index])
    floor = detector.angular_acceptance_floor
    accept = rng.random(len(photons)) < floor + (1.0 - floor) * cos_eta
    counts["n_rejected_acceptance"] += int(len(photons) - accept.sum())
    if pde_at_detection:
        passed = rng.random(len(accept)) < detector.pde
        counts["n_rejected_pde"] += int((accept & ~passed).sum())
        accept &= passed
    time_ns = photons.time[accept] + s_water[accept] * (detector.group_index_water / SPEED_OF_LIGHT_M_PER_NS)
    if detector.tts_sigma_ns > 0:
        time_ns = time_ns + rng.normal(0.0, detector.tts_sigma_ns, len(time_ns))
    counts["n_detected"] += int(accept.sum())
    return _Hits(photons.owner[accept], index[accept].astype(np.int64), time_ns)


def _transport(photons: _Photons, detector: JunoDetector, rng: np.random.Generator, counts: dict[str, int],
               pde_at_detection: bool) -> _Hits:
    """Track photons through the LS until absorbed or out; return the hits of those that reach a PMT."""
    radius = detector.ls_radius_m
    ls_ns_per_m = detector.group_index_ls / SPEED_OF_LIGHT_M_PER_NS
    n1, n2 = detector.refractive_index_ls, detector.refractive_index_water
    hits: list[_Hits] = []
    counts["n_photons_tracked"] += len(photons)
    mu_absorb, mu_scatter = 1.0 / detector.absorption_length_m, 1.0 / detector.rayleigh_length_m
    interaction_length = 1.0 / (mu_absorb + mu_scatter) if mu_absorb + mu_scatter > 0 else math.inf
    absorb_fraction = mu_absorb / (mu_absorb + mu_scatter) if mu_absorb + mu_scatter > 0 else 0.0
    for _ in range(detector.max_photon_steps):
        n = len(photons)
        if n == 0:
            break
        s_wall = _exit_distance(photons.position, photons.direction, radius)
        # one exponential with the total interaction length; the process is absorption with probability
        # mu_abs / (mu_abs + mu_Rayleigh) (equivalent to racing two exponentials)
        s_interact = _exponential(interaction_length, n, rng)
        step = np.minimum(s_wall, s_interact)
        photons.position += step[:, None] * photons.direction
        photons.time += step * ls_ns_per_m
        at_wall = s_wall <= s_interact
        interacts = ~at_wall
        absorbed = interacts.copy()
        absorbed[interacts] = rng.random(int(interacts.sum())) < absorb_fraction
        scattered = interacts & ~absorbed

        wall_index = np.flatnonzero(at_wall)
        normal = np.take(photons.position, wall_index, axis=0) / radius
        direction_wall = np.take(photons.direction, wall_index, axis=0)
        cos_i = np.clip(np.einsum("ij,ij->i", direction_wall, normal), 0.0, 1.0)
        if detector.fresnel:
            reflect = rng.random(len(cos_i)) < _fresnel_reflectance(cos_i, n1, n2)
        else:
            reflect = (n1 / n2) ** 2 * (1.0 - cos_i**2) >= 1.0
        out, back = np.flatnonzero(~reflect), np.flatnonzero(reflect)
        out_index, back_index = wall_index[out], wall_index[back]
        counts["n_reflected"] += len(back_index)
        counts["n_exited_ls"] += len(out_index)
        # refraction: d_t = (n1/n2) d + (cos_t - (n1/n2) cos_i) n
        ratio = n1 / n2
        cos_out = cos_i[out]
        normal_out = np.take(normal, out, axis=0)
        cos_t = np.sqrt(np.maximum(1.0 - ratio**2 * (1.0 - cos_out**2), 0.0))
        d_out = ratio * np.take(direction_wall, out, axis=0) + (cos_t - ratio * cos_out)[:, None] * normal_out
        leaving = _Photons(normal_out * radius, d_out / np.linalg.norm(d_out, axis=1, keepdims=True),
                           np.take(photons.time, out_index), np.take(photons.owner, out_index))
        hits.append(_detect(leaving, detector, rng, counts, pde_at_detection))
        # reflection: d - 2 cos_i n; the point is pulled just inside the surface
        normal_back = np.take(normal, back, axis=0)
        photons.direction[back_index] = (np.take(direction_wall, back, axis=0)
                                         - 2.0 * cos_i[back][:, None] * normal_back)
        photons.position[back_index] = normal_back * (radius * (1.0 - 1e-12))

        n_absorbed = int(absorbed.sum())
        reemit = absorbed.copy()
        reemit[absorbed] = rng.random(n_absorbed) < detector.reemission_probability
        reemit_index = np.flatnonzero(reemit)
        counts["n_absorbed"] += n_absorbed
        counts["n_reemitted"] += len(reemit_index)
        photons.direction[reemit_index] = _isotropic(len(reemit_index), rng)
        if detector.reemission_time_ns > 0:
            photons.time[reemit_index] += rng.exponential(detector.reemission_time_ns, len(reemit_index))
        scatter_index = np.flatnonzero(scattered)
        counts["n_rayleigh_scattered"] += len(scatter_index)
        photons.direction[scatter_index] = _rayleigh_directions(
            np.take(photons.direction, scatter_index, axis=0), rng)

        alive = reemit | scattered
        alive[back_index] = True
        photons = photons.take(alive)
    counts["n_dropped_max_steps"] += len(photons)
    if not hits:
        return _Hits(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    return _Hits(np.concatenate([h.owner for h in hits]), np.concatenate([h.pmt for h in hits]),
                 np.concatenate([h.time for h in hits]))


def _emission_times(n: int, detector: JunoDetector, rng: np.random.Generator) -> FloatArray:
    fast = rng.random(n) < detector.fast_fraction
    return rng.exponential(1.0, n) * np.where(fast, detector.fast_time_ns, detector.slow_time_ns)


def _photon_chunks(n_photons: IntArray, chunk_photons: int) -> Iterator[tuple[int, int]]:
    total = int(n_photons.sum())
    for start in range(0, total, chunk_photons):
        yield start, min(start + chunk_photons, total)


def _simulate_deposits(start_m: FloatArray, step_m: FloatArray, t0_ns: FloatArray, energy_mev: FloatArray,
                       owner: IntArray, detector: JunoDetector, rng: np.random.Generator, *,
                       chunk_photons: int, pde_at_emission: bool, counts: dict[str, int],
                       progress_bar: Any = None) -> Iterator[_Hits]:
    """Emit and track the photons of deposits, chunk by chunk; yields the hits of each chunk.

    A deposit emits from ``start_m + U * step_m`` (U uniform in [0, 1); a point deposit has step 0) at time
    ``t0_ns + U |step_m| / c`` (a muon crosses its step at the speed of light) plus the scintillation delay.
    """
    step_duration_ns = np.linalg.norm(step_m, axis=1) / SPEED_OF_LIGHT_M_PER_NS
    mean = energy_mev * detector.photons_per_mev * (detector.pde if pde_at_emission else 1.0)
    n_photons = rng.poisson(mean).astype(np.int64)
    counts["n_photons_emitted"] += int(n_photons.sum())
    cumulative = np.cumsum(n_photons)
    for begin, end in _photon_chunks(n_photons, chunk_photons):
        deposit = np.searchsorted(cumulative, np.arange(begin, end), side="right")
        n = end - begin
        along = rng.random(n)
        position = start_m[deposit] + along[:, None] * step_m[deposit]
        emitted_ns = t0_ns[deposit] + along * step_duration_ns[deposit] + _emission_times(n, detector, rng)
        photons = _Photons(position, _isotropic(n, rng), emitted_ns, owner[deposit])
        yield _transport(photons, detector, rng, counts, pde_at_detection=not pde_at_emission)
        if progress_bar is not None:
            progress_bar.update(n)


def _new_counts() -> dict[str, int]:
    return {"n_photons_emitted": 0, **{key: 0 for key in _COUNT_KEYS}}


def _progress_bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="photon", unit_scale=True)


# ---------------------------------------------------------------------------------------------------------
# Point deposits
# ---------------------------------------------------------------------------------------------------------


def _check_count(n: Any, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise DataError(f"{name}: n must be a positive integer, got {n!r}")
    return int(n)


def _check_radii(r_m: FloatArray, detector: JunoDetector, source: str) -> None:
    bad = ~np.isfinite(r_m) | (r_m < 0) | (r_m > detector.ls_radius_m)
    if bad.any():
        raise DataError(f"{source}: {int(bad.sum())} radii outside [0, {detector.ls_radius_m}] m "
                        f"(first {float(r_m[np.flatnonzero(bad)[0]])}); a deposit must lie inside the LS sphere")


def _check_energies(energy_mev: FloatArray, source: str) -> None:
    bad = ~np.isfinite(energy_mev) | (energy_mev < 0)
    if bad.any():
        raise DataError(f"{source}: {int(bad.sum())} energies negative or not finite "
                        f"(first {float(energy_mev[np.flatnonzero(bad)[0]])} MeV); expected >= 0 MeV")


def point_radii(n: int, *, r_range_m: tuple[float, float] = (0.0, 17.7), r_values_m: ArrayLike | None = None,
                rng: np.random.Generator, detector: JunoDetector = DEFAULT_DETECTOR) -> FloatArray:
    """Radii of ``n`` point deposits: uniform in R on ``r_range_m``, or cycling through ``r_values_m``."""
    if r_values_m is not None:
        values = np.asarray(r_values_m, dtype=np.float64).ravel()
        if values.size == 0:
            raise DataError("r_values_m: empty; expected at least one radius in m")
        _check_radii(values, detector, "r_values_m")
        return np.resize(values, n)
    low, high = (float(x) for x in r_range_m)
    _check_radii(np.array([low, high]), detector, "r_range_m")
    if high < low:
        raise DataError(f"r_range_m = {r_range_m}: expected (low, high) with low <= high")
    return rng.uniform(low, high, n)


def simulate_points(n: int, *, r_range_m: tuple[float, float] = (0.0, 17.7),
                    r_values_m: ArrayLike | None = None, energy_mev: float = 1.0, seed: int | Sequence[int] = 0,
                    detector: JunoDetector = DEFAULT_DETECTOR, chunk_photons: int = DEFAULT_CHUNK_PHOTONS,
                    pde_at_emission: bool = True, progress: bool = False,
                    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Simulate ``n`` point deposits of ``energy_mev`` on the +z axis at radius R and their PMT response.

    Args:
        n: number of events (one deposit each).
        r_range_m: R is uniform on this range (m) unless ``r_values_m`` is given.
        r_values_m: explicit radii (m), used in turn (event i gets ``r_values_m[i % len]``).
        energy_mev: deposited energy per event (>= 0 MeV).
        seed: seed of ``numpy.random.default_rng``; the same arguments give identical output.
        detector: the optical constants.
        chunk_photons: photons tracked at a time (memory ~ 300 bytes per photon).
        pde_at_emission: apply the PDE at emission (exact in distribution, faster; see the module notes).
        progress: show a tqdm bar over photons.

    Returns:
        ``({"pmt": pmt_table, "hits": hits_table}, info)``. pmt_table has one row per (event, PMT): ``event``
        (int32), ``pmt`` (int32 PMT index), ``r_m``, ``theta`` (rad, the PMT's polar angle = angle to the
        deposit direction), ``npe`` (int32), ``first_hit_ns`` (earliest p.e. time, :data:`NO_HIT_TIME_NS`
        when npe = 0). hits_table has one row per photo-electron: ``event``, ``pmt``, ``r_m``, ``theta``,
        ``time_ns`` (from the deposit time 0). Floats are float32. info holds the photon bookkeeping counts,
        wall time and rates.
    """
    n = _check_count(n, "simulate_points")
    energy = float(energy_mev)
    _check_energies(np.array([energy]), "energy_mev")
    rng = np.random.default_rng(seed)
    r_m = point_radii(n, r_range_m=r_range_m, r_values_m=r_values_m, rng=rng, detector=detector)
    start = np.zeros((n, 3))
    start[:, 2] = r_m
    counts = _new_counts()
    bar = _progress_bar(progress, round(n * energy * detector.photons_per_mev
                                            * (detector.pde if pde_at_emission else 1.0)), "JUNO photons")
    began = time.perf_counter()
    parts = list(_simulate_deposits(start, np.zeros((n, 3)), np.zeros(n), np.full(n, energy),
                                    np.arange(n, dtype=np.int64), detector, rng, chunk_photons=chunk_photons,
                                    pde_at_emission=pde_at_emission, counts=counts, progress_bar=bar))
    if bar is not None:
        bar.close()
    owner = np.concatenate([p.owner for p in parts]) if parts else np.zeros(0, np.int64)
    pmt = np.concatenate([p.pmt for p in parts]) if parts else np.zeros(0, np.int64)
    hit_time = np.concatenate([p.time for p in parts]) if parts else np.zeros(0)
    tables = _point_tables(owner, pmt, hit_time, r_m, detector)
    wall = time.perf_counter() - began
    info: dict[str, Any] = {"n_events": n, "energy_mev": energy, **counts, "wall_time_s": round(wall, 3),
                            "pe_per_s": round(counts["n_detected"] / wall, 1) if wall > 0 else None,
                            "events_per_s": round(n / wall, 2) if wall > 0 else None}
    return tables, info


def _point_tables(owner: IntArray, pmt: IntArray, hit_time: FloatArray, r_m: FloatArray,
                  detector: JunoDetector) -> dict[str, dict[str, np.ndarray]]:
    n_events, n_pmt = len(r_m), detector.n_pmt
    theta = pmt_theta(detector)
    key = owner * n_pmt + pmt
    npe = np.bincount(key, minlength=n_events * n_pmt)
    first = np.full(n_events * n_pmt, np.inf)
    np.minimum.at(first, key, hit_time)
    first[npe == 0] = NO_HIT_TIME_NS
    pmt_table = {
        "event": np.repeat(np.arange(n_events, dtype=np.int32), n_pmt),
        "pmt": np.tile(np.arange(n_pmt, dtype=np.int32), n_events),
        "r_m": np.repeat(r_m.astype(np.float32), n_pmt),
        "theta": np.tile(theta.astype(np.float32), n_events),
        "npe": npe.astype(np.int32),
        "first_hit_ns": first.astype(np.float32),
    }
    order = np.lexsort((hit_time, pmt, owner))
    hits_table = {
        "event": owner[order].astype(np.int32),
        "pmt": pmt[order].astype(np.int32),
        "r_m": r_m[owner[order]].astype(np.float32),
        "theta": theta[pmt[order]].astype(np.float32),
        "time_ns": hit_time[order].astype(np.float32),
    }
    return {"pmt": pmt_table, "hits": hits_table}


# ---------------------------------------------------------------------------------------------------------
# Muons
# ---------------------------------------------------------------------------------------------------------


def _unit_direction(direction: ArrayLike) -> FloatArray:
    d = np.asarray(direction, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(d))
    if not np.all(np.isfinite(d)) or norm == 0.0:
        raise DataError(f"muon direction {d.tolist()}: expected a finite non-zero 3-vector")
    return d / norm


def track_chord(entry_m: ArrayLike, direction: ArrayLike, *, detector: JunoDetector = DEFAULT_DETECTOR
                ) -> tuple[FloatArray, float]:
    """Where the line through ``entry_m`` along ``direction`` enters the LS sphere, and its chord length (m).

    Raises:
        DataError: the line misses the LS sphere (or only touches it).
    """
    point = np.asarray(entry_m, dtype=np.float64).reshape(3)
    d = _unit_direction(direction)
    if not np.all(np.isfinite(point)):
        raise DataError(f"muon entry point {point.tolist()}: expected finite coordinates in m")
    radius = detector.ls_radius_m
    b = float(point @ d)
    disc = b * b - (float(point @ point) - radius * radius)
    if disc <= 0.0:
        impact = math.sqrt(max(float(point @ point) - b * b, 0.0))
        raise DataError(f"muon track through {point.tolist()} m along {d.tolist()} misses the LS sphere "
                        f"(impact parameter {impact:.3f} m >= R = {radius} m)")
    t_in, t_out = -b - math.sqrt(disc), -b + math.sqrt(disc)
    if t_out <= 0.0:
        raise DataError(f"muon track from {point.tolist()} m along {d.tolist()} points away from the LS sphere")
    t_in = max(t_in, 0.0)  # a start point inside the sphere begins the track there
    return point + t_in * d, t_out - t_in


def muon_deposits(entry_m: ArrayLike, direction: ArrayLike, *, detector: JunoDetector = DEFAULT_DETECTOR,
                  step_m: float = 0.1) -> tuple[FloatArray, FloatArray]:
    """Deposits of a straight muon track in the LS: step centres (M, 3) in m and energies (M,) in MeV.

    The chord inside the LS sphere is cut into M = ceil(L / step_m) equal steps; each deposit sits at its
    step's centre with energy dE/dx x step length (dE/dx = ``detector.muon_dedx_mev_per_mm``). The time of
    a deposit is its distance from the LS entry point divided by c (:func:`deposit_times_ns`).

    Raises:
        DataError: the track misses the LS sphere, or step_m <= 0.
    """
    if not step_m > 0:
        raise DataError(f"muon_deposits: step_m = {step_m}; expected a positive step in m")
    start, length = track_chord(entry_m, direction, detector=detector)
    d = _unit_direction(direction)
    n_steps = max(math.ceil(length / step_m), 1)
    step = length / n_steps
    centres = start + ((np.arange(n_steps) + 0.5) * step)[:, None] * d
    energies = np.full(n_steps, detector.muon_dedx_mev_per_mm * 1e3 * step)
    return centres, energies


def deposit_times_ns(entry_m: ArrayLike, direction: ArrayLike, positions_m: ArrayLike, *,
                     detector: JunoDetector = DEFAULT_DETECTOR) -> FloatArray:
    """Time (ns) at which the muon (speed c) passes each position, from its entry into the LS sphere."""
    start, _ = track_chord(entry_m, direction, detector=detector)
    d = _unit_direction(direction)
    return (np.asarray(positions_m, dtype=np.float64) - start) @ d / SPEED_OF_LIGHT_M_PER_NS


def sample_muon_tracks(n: int, rng: np.random.Generator, *, detector: JunoDetector = DEFAULT_DETECTOR,
                       zenith_power: float = 2.0) -> tuple[FloatArray, FloatArray]:
    """Entry points on the LS sphere (n, 3) m and unit directions (n, 3) of cosmic-like muons crossing it.

    Directions point downward with dN/dcos(zenith) ~ cos^zenith_power (2: a surface-like spectrum;
    unverified for JUNO's overburden) and uniform azimuth; the impact point is uniform over the sphere's
    cross-section perpendicular to the direction (a uniform flux), so every track crosses the LS.
    Impact parameters are kept below 0.999 R so that no chord is vanishingly short.
    """
    n = _check_count(n, "sample_muon_tracks")
    cos_zenith = rng.random(n) ** (1.0 / (zenith_power + 1.0))
    azimuth = rng.uniform(0.0, 2.0 * math.pi, n)
    sin_zenith = np.sqrt(1.0 - cos_zenith**2)
    direction = np.stack([sin_zenith * np.cos(azimuth), sin_zenith * np.sin(azimuth), -cos_zenith], axis=1)
    radius = detector.ls_radius_m
    impact = 0.999 * radius * np.sqrt(rng.random(n))
    angle = rng.uniform(0.0, 2.0 * math.pi, n)
    helper = np.where(np.abs(direction[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    u1 = np.cross(direction, helper)
    u1 /= np.linalg.norm(u1, axis=1, keepdims=True)
    u2 = np.cross(direction, u1)
    offset = impact[:, None] * (np.cos(angle)[:, None] * u1 + np.sin(angle)[:, None] * u2)
    half_chord = np.sqrt(radius**2 - impact**2)
    entry = offset - half_chord[:, None] * direction
    return entry, direction


def simulate_muon(entry_m: ArrayLike, direction: ArrayLike, rng: np.random.Generator, *,
                  detector: JunoDetector = DEFAULT_DETECTOR, step_m: float = 0.1,
                  chunk_photons: int = DEFAULT_CHUNK_PHOTONS, counts: dict[str, int] | None = None,
                  progress: bool = False) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Photon transport for one muon: per-PMT p.e. counts (n_pmt,) and first-hit times (n_pmt,) in ns.

    Light is emitted uniformly along each step of :func:`muon_deposits` (the continuous track), at the time
    the muon passes. Time 0 is the muon's entry into the LS. PMTs without p.e. get :data:`NO_HIT_TIME_NS`.
    """
    centres, energies = muon_deposits(entry_m, direction, detector=detector, step_m=step_m)
    d = _unit_direction(direction)
    step_vector = (centres[1] - centres[0]) if len(centres) > 1 else 2.0 * (centres[0] - track_chord(
        entry_m, direction, detector=detector)[0])
    starts = centres - 0.5 * step_vector
    t0 = deposit_times_ns(entry_m, d, starts, detector=detector)
    counts = _new_counts() if counts is None else counts
    total = int(energies.sum() * detector.photons_per_mev * detector.pde)
    bar = _progress_bar(progress, total, "muon photons")
    npe = np.zeros(detector.n_pmt, dtype=np.int64)
    first = np.full(detector.n_pmt, np.inf)
    for hits in _simulate_deposits(starts, np.broadcast_to(step_vector, starts.shape), t0, energies,
                                   np.zeros(len(energies), np.int64), detector, rng, chunk_photons=chunk_photons,
                                   pde_at_emission=True, counts=counts, progress_bar=bar):
        npe += np.bincount(hits.pmt, minlength=detector.n_pmt)
        np.minimum.at(first, hits.pmt, hits.time)
    if bar is not None:
        bar.close()
    first[npe == 0] = NO_HIT_TIME_NS
    return npe.astype(np.int32), first.astype(np.float32)


def simulate_muons(n: int, *, seed: int = 0, detector: JunoDetector = DEFAULT_DETECTOR, step_m: float = 0.1,
                   chunk_photons: int = DEFAULT_CHUNK_PHOTONS, progress: bool = False,
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Simulate ``n`` cosmic-like muons crossing the LS (tracks from :func:`sample_muon_tracks`).

    Returns:
        (table, info). table: ``x0, y0, z0`` (LS entry point, m), ``dx, dy, dz`` (unit direction),
        ``track_length_m``, ``edep_mev``, ``total_pe`` (int64), ``wall_time_s`` per muon, and the array
        columns ``npe`` (n, n_pmt) int32 and ``first_hit_ns`` (n, n_pmt) float32 (:data:`NO_HIT_TIME_NS`
        where npe = 0). info: photon bookkeeping counts, total and mean wall time per muon.
    """
    n = _check_count(n, "simulate_muons")
    rng = np.random.default_rng(seed)
    entry, direction = sample_muon_tracks(n, rng, detector=detector)
    counts = _new_counts()
    npe = np.zeros((n, detector.n_pmt), dtype=np.int32)
    first = np.zeros((n, detector.n_pmt), dtype=np.float32)
    length = np.zeros(n)
    wall = np.zeros(n)
    muons: Any = range(n)
    if progress:
        from tqdm import tqdm

        muons = tqdm(muons, desc="JUNO muons", unit="muon")
    for i in muons:
        began = time.perf_counter()
        length[i] = track_chord(entry[i], direction[i], detector=detector)[1]
        npe[i], first[i] = simulate_muon(entry[i], direction[i], rng, detector=detector, step_m=step_m,
                                         chunk_photons=chunk_photons, counts=counts)
        wall[i] = time.perf_counter() - began
    table: dict[str, np.ndarray] = {
        "x0": entry[:, 0], "y0": entry[:, 1], "z0": entry[:, 2],
        "dx": direction[:, 0], "dy": direction[:, 1], "dz": direction[:, 2],
        "track_length_m": length, "edep_mev": length * 1e3 * detector.muon_dedx_mev_per_mm,
        "total_pe": npe.sum(axis=1, dtype=np.int64), "wall_time_s": wall,
        "npe": npe, "first_hit_ns": first,
    }
    info: dict[str, Any] = {"n_muons": n, **counts, "wall_time_s": round(float(wall.sum()), 3),
                            "seconds_per_muon": round(float(wall.mean()), 3),
                            "pe_per_s": round(float(npe.sum()) / float(wall.sum()), 1)}
    return table, info


# ---------------------------------------------------------------------------------------------------------
# Files and command line
# ---------------------------------------------------------------------------------------------------------

#: HDF5 groups of a point-mode file (select one with ``data.key`` in a training config).
POINT_GROUPS = ("pmt", "hits")


def write_point_tables(path: str | Path,
                       tables: dict[str, dict[str, np.ndarray]] | Iterable[dict[str, dict[str, np.ndarray]]],
                       ) -> int:
    """Write point-mode tables as the groups ``pmt`` and ``hits`` of one HDF5 file, atomically.

    ``tables`` is one ``{"pmt": ..., "hits": ...}`` dict or an iterable of them (batches appended in order;
    memory stays bounded by one batch). Each group holds one resizable 1-D dataset per column (the layout
    ``detgen.io.read_table(path, key=...)`` reads), lzf-compressed (the pmt table is mostly zeros). Nothing is
    left at ``path`` if a batch fails. Returns the number of rows written in all groups.
    """
    import h5py

    from detgen.files import atomic_path
    from detgen.io.table import check_table, table_length

    target = Path(path)
    if target.suffix.lower() not in (".h5", ".hdf5"):
        raise DataError(f"{target}: point mode writes two tables (pmt, hits) as HDF5 groups; "
                        "expected a .h5 or .hdf5 file")
    if not target.parent.is_dir():
        raise DataError(f"{target}: directory {target.parent} does not exist; create it first")
    batches = [tables] if isinstance(tables, dict) else tables
    n_rows = 0
    with atomic_path(target) as temporary, h5py.File(temporary, "w", track_order=True) as file:
        for batch in batches:
            for name in POINT_GROUPS:
                table = check_table(batch[name], source=f"{target} (group '{name}')")
                rows = table_length(table)
                n_rows += rows
                group = file.require_group(name)
                for column, values in table.items():
                    if column not in group:
                        group.create_dataset(column, shape=(0,), maxshape=(None,), dtype=values.dtype,
                                             chunks=(1 << 16,), compression="lzf")
                    dataset = group[column]
                    start = dataset.shape[0]
                    dataset.resize((start + rows,))
                    dataset[start:] = values
    return n_rows


def simulate_point_batches(n: int, *, batch_events: int = 500, r_range_m: tuple[float, float] = (0.0, 17.7),
                           r_values_m: Sequence[float] | None = None, energy_mev: float = 1.0, seed: int = 0,
                           detector: JunoDetector = DEFAULT_DETECTOR, progress: bool = False,
                           info: dict[str, Any] | None = None) -> Iterator[dict[str, dict[str, np.ndarray]]]:
    """:func:`simulate_points` in batches of ``batch_events`` events (bounded memory for large samples).

    Batch b uses the seed ``[seed, b]``; event ids run on across batches and ``r_values_m`` continues its
    cycle. The bookkeeping counts of every batch are summed into ``info`` (when given) as batches are made.
    """
    n = _check_count(n, "simulate_point_batches")
    batch_events = _check_count(batch_events, "batch_events")
    _check_energies(np.array([float(energy_mev)]), "energy_mev")
    if r_values_m is not None:
        _check_radii(np.asarray(r_values_m, dtype=np.float64).ravel(), detector, "r_values_m")
    else:
        _check_radii(np.asarray(r_range_m, dtype=np.float64), detector, "r_range_m")
    starts: Any = range(0, n, batch_events)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="JUNO event batches", unit="batch")
    for number, start in enumerate(starts):
        size = min(batch_events, n - start)
        values = None
        if r_values_m is not None:
            cycle = np.asarray(r_values_m, dtype=np.float64).ravel()
            values = np.roll(cycle, -(start % len(cycle)))
        tables, batch_info = simulate_points(size, r_range_m=r_range_m, r_values_m=values, energy_mev=energy_mev,
                                             seed=[seed, number], detector=detector)
        for group in POINT_GROUPS:
            tables[group]["event"] = tables[group]["event"] + np.int32(start)
        if info is not None:
            for key, value in batch_info.items():
                if key.startswith("n_") or key == "wall_time_s":
                    info[key] = info.get(key, 0) + value
        yield tables


def radius_s(r_m: Any, r_max_m: float) -> Any:
    """The radius coordinate s in [0, 1]: s = (x + x^2) / 2, x = R / R_max (3x finer in R at R_max than at 0)."""
    x = r_m / r_max_m
    return 0.5 * (x + x * x)


def radius_from_s(s: Any, r_max_m: float) -> Any:
    """Inverse of :func:`radius_s`."""
    return r_max_m * 0.5 * (np.sqrt(1.0 + 8.0 * s) - 1.0)


def radius_grid(k: int, r_min_m: float = 0.0, r_max_m: float | None = None,
                detector: JunoDetector = DEFAULT_DETECTOR) -> FloatArray:
    """``k`` radii from ``r_min_m`` to ``r_max_m`` (default the LS radius), uniform in :func:`radius_s`: the
    spacing of the fast simulation's tables, finest at the LS edge where the response changes fastest."""
    k = _check_count(k, "radius_grid")
    r_ls = detector.ls_radius_m
    high = r_ls if r_max_m is None else float(r_max_m)
    _check_radii(np.array([r_min_m, high]), detector, "radius_grid range")
    if high < r_min_m:
        raise DataError(f"radius_grid: r_min {r_min_m} m > r_max {high} m; expected r_min <= r_max")
    s = np.linspace(radius_s(float(r_min_m), r_ls), radius_s(high, r_ls), k)
    return np.clip(radius_from_s(s, r_ls), r_min_m, high)


POOLED_COLUMNS = {"event": np.int64, "r_m": np.float32, "theta": np.float32, "npe": np.float32,
                  "n_pmt": np.int32, "n_events": np.int32}


def pool_point_batches(batches: Iterable[dict[str, dict[str, np.ndarray]]], group_size: int = 1,
                       ) -> Iterator[dict[str, dict[str, np.ndarray]]]:
    """Point-mode batches with the pmt rows of all events at the same radius pooled into one row per PMT.

    Deposits lie on the z axis, so a PMT's theta is the same in every event, and the counts of the events at
    one radius are independent Poisson draws of the same mean: their mean per PMT is the sufficient statistic of
    a Poisson-mean fit (the summed NLL of the events equals n_events x [lambda - n_mean log lambda] up to a
    constant). Pooled rows (optionally also summed over ``group_size`` PMTs of neighbouring theta, as in
    :func:`group_pmt_rows`) give the same fit as every event's rows with n_events x group_size times fewer,
    far less noisy rows. Rows are weighted equally in training, so every radius must have the same number of
    events (DataError otherwise). The hits pass through batch by batch; the pooled pmt table (``event``: the
    radius index, ``npe``: mean count per PMT and event, ``n_events``) comes with the last batch.
    """
    sums: dict[float, np.ndarray] = {}
    counts: dict[float, int] = {}
    theta: np.ndarray | None = None
    empty = {name: np.zeros(0, dtype=dtype) for name, dtype in POOLED_COLUMNS.items()}
    pending: dict[str, dict[str, np.ndarray]] | None = None
    for batch in batches:
        pmt = batch["pmt"]
        n_pmt = int(np.count_nonzero(np.asarray(pmt["event"]) == pmt["event"][0])) if len(pmt["event"]) else 0
        if n_pmt == 0 or len(pmt["event"]) % n_pmt:
            raise DataError("pmt table: expected one row per PMT and event, ordered by event")
        npe = np.asarray(pmt["npe"], dtype=np.float64).reshape(-1, n_pmt)
        radii = np.asarray(pmt["r_m"], dtype=np.float32).reshape(-1, n_pmt)[:, 0]
        if theta is None:
            theta = np.asarray(pmt["theta"], dtype=np.float64)[:n_pmt]
        for radius in np.unique(radii):
            rows = radii == radius
            key = float(radius)
            sums[key] = sums.get(key, 0.0) + npe[rows].sum(axis=0)
            counts[key] = counts.get(key, 0) + int(rows.sum())
        if pending is not None:
            yield pending
        pending = {"pmt": empty, "hits": batch["hits"]}
    if pending is None or theta is None:
        raise DataError("pool_point_batches: no events to pool")
    per_radius = sorted(set(counts.values()))
    if len(per_radius) != 1:
        raise DataError(f"pooled point data: radii have {per_radius[0]}-{per_radius[-1]} events; pooled rows are "
                        "weighted equally, so every radius needs the same number of events (make --n a multiple "
                        "of the number of radii)")
    radii_sorted = sorted(sums)
    n_pmt = len(theta)
    table: dict[str, np.ndarray] = {"event": np.repeat(np.arange(len(radii_sorted)), n_pmt),
             "r_m": np.repeat(np.array(radii_sorted, dtype=np.float32), n_pmt),
             "theta": np.tile(theta, len(radii_sorted)),
             "npe": np.concatenate([sums[r] / counts[r] for r in radii_sorted])}
    pooled = group_pmt_rows(table, group_size)
    pooled["n_events"] = np.full(len(pooled["npe"]), per_radius[0], dtype=np.int32)
    yield {"pmt": {name: pooled[name].astype(dtype) for name, dtype in POOLED_COLUMNS.items()},
           "hits": pending["hits"]}


CLI_HELP = ("JUNO central detector, photon-by-photon optical transport: point deposits on the z axis "
            "(--mode point: HDF5 groups pmt and hits) or cosmic muons (--mode muon)")


def group_pmt_rows(pmt_table: dict[str, np.ndarray], group_size: int) -> dict[str, np.ndarray]:
    """Point-mode pmt rows summed in groups of ``group_size`` PMTs of one event with neighbouring theta.

    For a Poisson-mean NN_npe (``loss: poisson``) the training information of an event is in the counts per
    (R, theta); within a group of PMTs of one event sorted by theta, the summed Poisson NLL
    sum_i [lambda(theta_i) - n_i log lambda(theta_i)] equals group_size x [lambda(theta_bar) - n_bar log
    lambda(theta_bar)] up to the curvature of lambda over the group's theta range (second order; a group of 14
    of the 17,612 PMTs spans < 0.06 rad at theta ~ 0 and ~0.002 rad at pi/2). So a row per group (``theta`` the
    group's mean, ``npe`` its mean count, float) gives the same Poisson fit with ``group_size`` times fewer rows:
    more events for the same training cost. Groups have equal size (equal weights); every row is used (DataError
    if an event's PMT count is not a multiple of ``group_size``). Returns columns event, r_m, theta, npe, n_pmt.
    """
    event = np.asarray(pmt_table["event"])
    if group_size < 1:
        raise DataError(f"group_size = {group_size}; expected a positive number of PMTs per group")
    if len(event) and np.any(np.diff(event) < 0):
        raise DataError("pmt table: rows must be ordered by event (as detgen simulate juno --mode point writes them)")
    starts = np.flatnonzero(np.r_[True, event[1:] != event[:-1]]) if len(event) else np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.r_[starts, len(event)])
    if len(sizes) and (np.any(sizes != sizes[0]) or sizes[0] % group_size):
        raise DataError(f"pmt table: events have {sorted(set(sizes.tolist()))[:3]} PMT rows; group_size "
                        f"{group_size} must divide the PMT count of every event")
    n_events = len(sizes)
    per_event = int(sizes[0]) if n_events else 0
    theta = np.asarray(pmt_table["theta"], dtype=np.float64).reshape(n_events, per_event)
    order = np.argsort(theta, axis=1, kind="stable")
    shape = (n_events, per_event // max(group_size, 1), group_size)
    sorted_theta = np.take_along_axis(theta, order, axis=1).reshape(shape)
    npe = np.take_along_axis(np.asarray(pmt_table["npe"], dtype=np.float64).reshape(n_events, per_event), order,
                             axis=1).reshape(shape)
    r = np.asarray(pmt_table["r_m"], dtype=np.float64).reshape(n_events, per_event)[:, :1]
    return {"event": np.repeat(event[starts], shape[1]).astype(np.int64),
            "r_m": np.repeat(r, shape[1], axis=1).reshape(-1).astype(np.float32),
            "theta": sorted_theta.mean(axis=2).reshape(-1).astype(np.float32),
            "npe": npe.mean(axis=2).reshape(-1).astype(np.float32),
            "n_pmt": np.full(n_events * shape[1], group_size, dtype=np.int32)}


def add_cli_arguments(parser: Any) -> None:
    """Options of ``detgen simulate juno`` beyond the common --n, --seed, -o."""
    parser.add_argument("--mode", choices=("point", "muon"), default="point",
                        help="point deposits (per-PMT npe/first hit and per-p.e. hit times) or muon tracks")
    parser.add_argument("--energy-mev", type=float, default=1.0, help="point mode: energy per deposit (MeV)")
    parser.add_argument("--r-min", type=float, default=0.0, help="point mode: smallest radius (m)")
    parser.add_argument("--r-max", type=float, default=DEFAULT_DETECTOR.ls_radius_m,
                        help="point mode: largest radius (m); R is uniform on [r-min, r-max]")
    parser.add_argument("--r-values", default=None,
                        help="point mode: comma-separated radii (m) used in turn instead of a uniform R")
    parser.add_argument("--r-grid", type=int, default=0,
                        help="point mode: use this many radii from --r-min to --r-max in turn instead of a uniform "
                             "R, spaced like the fast simulation's tables (finest at the LS edge)")
    parser.add_argument("--pool-events", action="store_true",
                        help="point mode, with --r-values or --r-grid: write the pmt table as one row per radius "
                             "and PMT (or PMT group, --group-pmts) with the mean count over that radius' events "
                             "(training data for the Poisson NN_npe; --n must be a multiple of the number of "
                             "radii); the hits table is unchanged")
    parser.add_argument("--batch-events", type=int, default=500,
                        help="point mode: events simulated and written at a time (memory ~1 GB per 500 events)")
    parser.add_argument("--group-pmts", type=int, default=0,
                        help="point mode: write the pmt table as rows of this many PMTs of one event with "
                             "neighbouring theta summed (training data for the Poisson NN_npe, e.g. 14; "
                             "not for validate, which needs one row per PMT); 0: one row per PMT")
    parser.add_argument("--step-m", type=float, default=0.1, help="muon mode: track step length (m)")


def simulate_cli(args: Any, *, progress: bool) -> tuple[Any, dict[str, Any]]:
    if args.mode == "muon":
        return simulate_muons(args.n, seed=args.seed, step_m=args.step_m, progress=progress)
    r_values = None
    if args.r_values and args.r_grid:
        raise DataError("--r-values and --r-grid: give one of them")
    if args.r_values:
        try:
            r_values = [float(x) for x in args.r_values.split(",") if x.strip()]
        except ValueError as error:
            raise DataError(f"--r-values {args.r_values!r}: expected comma-separated numbers in m") from error
    elif args.r_grid:
        if args.r_grid < 1:
            raise DataError(f"--r-grid {args.r_grid}: expected a positive number of radii")
        r_values = radius_grid(args.r_grid, args.r_min, args.r_max).tolist()
    if args.pool_events and r_values is None:
        raise DataError("--pool-events pools the events of each radius: give the radii with --r-values or --r-grid")
    if args.pool_events and args.n % len(r_values):  # type: ignore[arg-type]
        raise DataError(f"--pool-events: --n {args.n} is not a multiple of the {len(r_values)} radii "  # type: ignore[arg-type]
                        "(pooled rows are weighted equally, so every radius needs the same number of events)")
    # lazy: the batches are simulated while write_cli_output writes them; info fills in as they go
    info: dict[str, Any] = {}
    batches = simulate_point_batches(args.n, batch_events=args.batch_events, r_range_m=(args.r_min, args.r_max),
                                     r_values_m=r_values, energy_mev=args.energy_mev, seed=args.seed,
                                     progress=progress, info=info)
    if args.group_pmts and (args.group_pmts < 0 or DEFAULT_DETECTOR.n_pmt % args.group_pmts):
        raise DataError(f"--group-pmts {args.group_pmts}: expected a positive divisor of the "
                        f"{DEFAULT_DETECTOR.n_pmt} PMTs (e.g. 14), or 0")
    if args.pool_events:
        batches = pool_point_batches(batches, max(args.group_pmts, 1))
        info["pmt_rows_pooled_over_events_per_radius"] = args.n // len(r_values)  # type: ignore[arg-type]
    elif args.group_pmts:
        size = args.group_pmts
        batches = ({**tables, "pmt": group_pmt_rows(tables["pmt"], size)} for tables in batches)
    if args.group_pmts:
        info["pmt_rows_grouped_by"] = args.group_pmts
    return _PointBatches(batches), info


class _PointBatches:
    """The lazily simulated batches of a point-mode CLI run."""

    def __init__(self, batches: Iterator[dict[str, dict[str, np.ndarray]]]) -> None:
        self.batches = batches


def write_cli_output(path: str, result: Any) -> int:
    """Write what :func:`simulate_cli` returned: point mode as two HDF5 groups, muons as one table."""
    if isinstance(result, _PointBatches):
        return write_point_tables(path, result.batches)
    from detgen.io import table_length, write_table

    write_table(path, result)
    return table_length(result)
