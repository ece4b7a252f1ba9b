"""Reference simulator of electromagnetic showers in the BESIII barrel EMC (CsI(Tl)), with known truth.

One row per shower: the 11 x 11 crystal energy map around the impact crystal, the six conditions of the seed
GAN (Mom, dTheta_Mom, dPhi_Mom, dZ_Pos, dPhi_Pos, Z) and the truth kinematics. Physics model (numbers from
``PHYSICS.md`` sections 2 and 3; every other number is a named parameter below, "(unverified)" where it is a
plausible estimate rather than a BESIII number):

* **Barrel** (:class:`BarrelGeometry`): 44 rings in theta x 120 crystals in phi, front faces on the cylinder
  rho = 94.2 cm, crystals 28 cm long. Ring boundaries on that cylinder are equally spaced in pseudorapidity,
  Delta eta = 5.2 cm / 94.2 cm, so every front face is 5.2 cm wide seen from the IP; the 44 rings then reach
  |cos theta| = 0.838 (BESIII: 0.83) and |z| = 145 cm. Crystals do not point at the IP. In theta the boundary
  surfaces are cones through a focus on the beam axis at z = +-5 cm (same side as the crystal; the central
  boundary is the plane z = 0), which tilts them by 3.1 deg at 90 deg and 0.9 deg at the barrel ends (the
  quoted 1-3 deg; the focus distance is an assumption that reproduces that range). In phi every boundary
  plane is rotated by 1.5 deg about a line parallel to the beam through its front edge. Gaps, wrapping and
  support structure are not modelled; a crystal is the volume between its four boundary surfaces.
* **Kinematics** (:class:`EmcKinematics`): p uniform in 0.25-3 GeV/c, cos theta uniform in the range whose
  11 x 11 window lies inside the barrel (showers whose impact ring ends up closer than 5 rings to a barrel end
  are re-drawn and counted), phi uniform, vertex z ~ N(0, 1.5 cm) (unverified). e+- follow a helix in the
  1.0 T solenoid field (BESIII), so their direction at the EMC is bent in phi by asin(rho / 2 r_c); photons go
  straight. Energy loss before the EMC is not modelled.
* **Impact**: the track's intersection with the cylinder rho = 94.2 cm gives the impact crystal (map centre),
  Z and the offsets from the crystal's front-face centre: ``dz_pos`` in cm along z and ``dphi_pos`` in degrees
  of azimuth. ``dtheta_mom`` and ``dphi_mom`` (degrees) are the polar and azimuthal angles of the momentum at
  the impact minus those of the impact crystal's axis.
* **Shower** (:class:`ShowerPhysics`, GFlash homogeneous parameterisation, Grindhammer & Peters
  hep-ex/0001020, CsI with Z_eff = 54, X0 = 1.86 cm, R_M = 3.57 cm, E_c = 11 MeV): per shower ln T and ln a
  are drawn correlated (PHYSICS.md sec. 3); the visible energy E * g, where g ~ Gamma(mean 1, relative width
  sqrt(c_s^2 / E + c_0^2)) stands for the photo-statistics, light-collection non-uniformity and upstream
  material that make BESIII's 2.5% at 1 GeV (c_s, c_0 tuned to that number; the leakage fluctuations of the
  profiles add to it), is carried by N_spot = 93 ln(Z) E^0.876 spots. Every spot gets a depth t from the
  spot profile Gamma(a_spot, b_spot) (T_spot = T (0.698 + 0.00212 Z), a_spot = a (0.639 + 0.00334 Z)) and the
  energy weight f_energy(t) / f_spot(t) (normalised per shower), so the energy follows the shower's own
  profile Gamma(a, b) while the spot density follows GFlash's spot profile; a radius from the two-component
  radial profile at tau = t / T (core Rc, tail Rt, core probability p); a uniform azimuth around the axis. Photons first travel an exponential conversion depth with mean
  9/7 X0. Spots deeper than 28 cm along the impact crystal's axis leak out of the back.
* **Deposit**: every spot lands in the crystal whose boundary surfaces contain it, in 3-D, so the incidence
  angle, the tilt and the impact offset all shape the map. Then incoherent noise N(0, 0.2 MeV) is added to
  every crystal of the window and crystals below 0.5 MeV are zeroed (BOSS MC defaults).

Not modelled: the magnetic field inside the calorimeter, pre-showering in the material in front of the EMC
(folded into g), the individual shower particles (spots are GFlash's energy quanta), crystal-to-crystal
calibration, the sawtooth front surface (the shower starts on the cylinder; depth is counted from the impact
point along the impact crystal's axis; the 0.1-0.2% of spots placed in front of the cylinder are deposited in the
crystal whose boundary surfaces, extended inwards, contain them), dead material between crystals, photo-nuclear
and hadronic processes.

Speed: see ``docs/emc.md`` (measured with the command written there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special

from detgen.errors import DataError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Particles the simulator knows and their charge in units of e.
PARTICLE_CHARGE: dict[str, int] = {"e-": -1, "e+": 1, "gamma": 0}
PARTICLES: tuple[str, ...] = tuple(PARTICLE_CHARGE)
#: Electron mass in GeV/c^2 (PDG).
ELECTRON_MASS_GEV = 0.51099895e-3
#: Side of the crystal map in crystals and the index of its centre (the impact crystal).
WINDOW = 11
CENTRE = WINDOW // 2
#: Condition columns of the table, in the seed GAN's order (Mom, dTheta_Mom, dPhi_Mom, dZ_Pos, dPhi_Pos, Z).
CONDITION_COLUMNS: tuple[str, ...] = ("mom", "dtheta_mom", "dphi_mom", "dz_pos", "dphi_pos", "z")
#: Every column written by :func:`simulate_emc`.
COLUMNS: tuple[str, ...] = ("map", *CONDITION_COLUMNS, "particle", "theta", "phi", "e_outside", "e_total_dep")


@dataclass(frozen=True)
class BarrelGeometry:
    """The BESIII EMC barrel (PHYSICS.md sec. 2); lengths in cm, angles in degrees.

    Attributes:
        n_rings: crystal rings along theta.
        n_phi: crystals per ring.
        inner_radius_cm: radius of the front-face cylinder.
        crystal_length_cm: crystal length along its axis (15.05 X0).
        front_width_cm: width of a front face seen from the IP (sets the ring spacing in pseudorapidity).
        focus_offset_cm: the theta boundaries of the z > 0 (z < 0) half point at z = +offset (-offset) on the
            beam axis instead of the IP; 5 cm gives tilts of 0.9-3.1 deg (assumption reproducing "1-3 deg").
        phi_tilt_deg: rotation of every phi boundary plane away from the radial direction.
    """

    n_rings: int = 44
    n_phi: int = 120
    inner_radius_cm: float = 94.2
    crystal_length_cm: float = 28.0
    front_width_cm: float = 5.2
    focus_offset_cm: float = 5.0
    phi_tilt_deg: float = 1.5

    @cached_property
    def ring_edges_z(self) -> FloatArray:
        """z (cm) of the n_rings + 1 ring boundaries on the front-face cylinder, increasing."""
        eta = (np.arange(self.n_rings + 1) - self.n_rings / 2) * self.front_width_cm / self.inner_radius_cm
        return np.asarray(self.inner_radius_cm * np.sinh(eta))

    @cached_property
    def edge_focus_z(self) -> FloatArray:
        """z (cm) on the beam axis through which each ring boundary surface passes."""
        return np.sign(np.round(self.ring_edges_z, 9)) * self.focus_offset_cm

    @cached_property
    def ring_centre_z(self) -> FloatArray:
        """z (cm) of each ring's front-face centre on the cylinder."""
        return 0.5 * (self.ring_edges_z[1:] + self.ring_edges_z[:-1])

    @cached_property
    def ring_axis_theta(self) -> FloatArray:
        """Polar angle (rad) of each ring's crystal axis: the bisector of its two boundary surfaces."""
        edge_theta = np.arctan2(self.inner_radius_cm, self.ring_edges_z - self.edge_focus_z)
        return np.asarray(0.5 * (edge_theta[1:] + edge_theta[:-1]))

    @property
    def ring_theta_tilt_deg(self) -> FloatArray:
        """Angle (deg) between each ring's axis and the line from the IP to its front-face centre."""
        face_theta = np.arctan2(self.inner_radius_cm, self.ring_centre_z)
        return np.asarray(np.degrees(self.ring_axis_theta - face_theta))

    @property
    def phi_pitch(self) -> float:
        """Azimuthal width of a crystal on the front-face cylinder (rad)."""
        return 2.0 * math.pi / self.n_phi

    def ring_of(self, rho_cm: FloatArray, z_cm: FloatArray) -> IntArray:
        """Ring index of points (rho, z); -1 or n_rings outside the barrel.

        Every theta boundary of one half passes through that half's focus (0, +-f), so projecting a point
        through the focus onto the cylinder rho = R preserves its side of each boundary: one sorted search
        places it exactly.
        """
        radius, focus = self.inner_radius_cm, self.focus_offset_cm
        rho = np.maximum(rho_cm, 1e-6)
        side = np.where(z_cm >= 0.0, 1.0, -1.0)
        projected = side * focus + (z_cm - side * focus) * radius / rho
        # Points with rho < R near z = 0 project across the central plane; they stay on their own side.
        projected = np.where(side > 0, np.maximum(projected, 0.0), np.minimum(projected, -1e-12))
        return np.searchsorted(self.ring_edges_z, projected, side="right").astype(np.int64) - 1

    def phi_shift(self, rho_cm: FloatArray) -> FloatArray:
        """Azimuth (rad) by which every phi boundary has turned at radius rho (0 on the front-face cylinder).

        A boundary starts at (R, phi_b) and runs along the direction rotated by the tilt alpha from radial;
        it reaches radius rho after a path s = -R cos(alpha) + sqrt(rho^2 - R^2 sin^2(alpha)).
        """
        radius, alpha = self.inner_radius_cm, math.radians(self.phi_tilt_deg)
        s = -radius * math.cos(alpha) + np.sqrt(np.maximum(rho_cm**2 - (radius * math.sin(alpha)) ** 2, 0.0))
        return np.asarray(np.arctan2(s * math.sin(alpha), radius + s * math.cos(alpha)))

    def phi_index_of(self, rho_cm: FloatArray, phi: FloatArray) -> IntArray:
        """Crystal index in phi (0..n_phi-1) of points at radius rho and azimuth phi (rad)."""
        turned = (phi - self.phi_shift(rho_cm)) / self.phi_pitch
        return np.floor(turned).astype(np.int64) % self.n_phi


@dataclass(frozen=True)
class ShowerPhysics:
    """GFlash homogeneous-calorimeter shower parameters for CsI and the BESIII electronics.

    Attributes:
        z_eff: effective atomic number of CsI (Cs 55, I 53).
        radiation_length_cm: X0 of CsI.
        moliere_radius_cm: R_M of CsI.
        critical_energy_mev: E_c of CsI.
        stochastic_term: c_s of the visible-energy factor g, in GeV^1/2 (tuned, see module docstring).
        constant_term: c_0 of g (tuned).
        noise_mev: incoherent noise per crystal (BOSS MC default).
        threshold_mev: digit threshold per crystal (BOSS MC default).
        photon_conversion_x0: mean depth of a photon's first conversion, 9/7 X0.
    """

    z_eff: float = 54.0
    radiation_length_cm: float = 1.86
    moliere_radius_cm: float = 3.57
    critical_energy_mev: float = 11.0
    stochastic_term: float = 0.010
    constant_term: float = 0.005
    noise_mev: float = 0.2
    threshold_mev: float = 0.5
    photon_conversion_x0: float = 9.0 / 7.0


@dataclass(frozen=True)
class EmcKinematics:
    """Truth kinematics of the simulated particles.

    Attributes:
        p_min_gev, p_max_gev: uniform momentum range (GeV/c); 0.25 keeps every e+- able to reach the barrel.
        vertex_sigma_z_cm: Gaussian spread of the vertex along the beam (unverified).
        field_tesla: solenoid field (BESIII 1.0 T).
        margin_rings: rings required between the impact ring and a barrel end (5: the window fits).
    """

    p_min_gev: float = 0.25
    p_max_gev: float = 3.0
    vertex_sigma_z_cm: float = 1.5
    field_tesla: float = 1.0
    margin_rings: int = CENTRE


BARREL = BarrelGeometry()
PHYSICS = ShowerPhysics()
KINEMATICS = EmcKinematics()


# ---------------------------------------------------------------------------------------------------------
# Kinematics and impact


@dataclass(frozen=True)
class Impact:
    """Where and how each particle reaches the barrel (arrays of one length; cm, rad).

    Attributes:
        p: momentum (GeV/c); theta, phi: direction at the vertex; point: (n, 3) impact on the front-face
        cylinder; direction: (n, 3) unit momentum at the impact; phi_direction: its azimuth; ring, crystal:
        the impact crystal's ring and phi indices.
    """

    p: FloatArray
    theta: FloatArray
    phi: FloatArray
    point: FloatArray
    direction: FloatArray
    phi_direction: FloatArray
    ring: IntArray
    crystal: IntArray


def _wrap(angle: FloatArray) -> FloatArray:
    """Angle (rad) wrapped into [-pi, pi)."""
    return np.asarray((angle + math.pi) % (2.0 * math.pi) - math.pi)


def track_impact(p_gev: FloatArray, theta: FloatArray, phi: FloatArray, vertex_z_cm: FloatArray, charge: int,
                 geometry: BarrelGeometry = BARREL, field_tesla: float = KINEMATICS.field_tesla) -> Impact:
    """Follow particles from the vertex (0, 0, z_v) to the front-face cylinder.

    A charge q moves on a helix of transverse radius r_c = p_T / (0.3 B) (m, GeV/c, T); at radius R its
    position azimuth is phi - q asin(R / 2 r_c) and its direction azimuth phi - 2 q asin(R / 2 r_c) (a
    positive charge in a field along +z turns clockwise). The transverse arc 2 r_c asin(R / 2 r_c) sets z.

    Raises:
        DataError: a charged track that curls before the barrel (R > 2 r_c).
    """
    radius = geometry.inner_radius_cm
    sin_theta = np.sin(theta)
    if charge == 0:
        bend = np.zeros_like(p_gev)
        arc = np.full_like(p_gev, radius)
    else:
        curvature_radius_cm = 100.0 * p_gev * sin_theta / (0.299792458 * field_tesla)
        half_chord = radius / (2.0 * curvature_radius_cm)
        if np.any(half_chord >= 1.0):
            raise DataError(f"track_impact: {int(np.sum(half_chord >= 1))} charged tracks curl before the barrel "
                            f"(p_T < {0.299792458 * field_tesla * radius / 200:.3f} GeV/c); expected larger p_T")
        bend = np.arcsin(half_chord)
        arc = 2.0 * curvature_radius_cm * bend
    phi_position = phi - charge * bend
    phi_direction = _wrap(phi - 2.0 * charge * bend)
    z = vertex_z_cm + arc * np.cos(theta) / sin_theta
    point = np.stack([radius * np.cos(phi_position), radius * np.sin(phi_position), z], axis=1)
    direction = np.stack([sin_theta * np.cos(phi_direction), sin_theta * np.sin(phi_direction), np.cos(theta)],
                         axis=1)
    ring = geometry.ring_of(np.full_like(z, radius), z)
    crystal = geometry.phi_index_of(np.full_like(z, radius), phi_position)
    return Impact(p_gev, theta, phi, point, direction, phi_direction, ring, crystal)


def _cos_theta_limit(geometry: BarrelGeometry, kinematics: EmcKinematics) -> float:
    """|cos theta| of a straight line from the IP to the innermost allowed ring edge (before re-drawing)."""
    edge_z = geometry.ring_edges_z[geometry.n_rings - kinematics.margin_rings]
    return float(edge_z / math.hypot(edge_z, geometry.inner_radius_cm))


def _draw_impacts(n: int, charge: int, rng: np.random.Generator, geometry: BarrelGeometry,
                  kinematics: EmcKinematics) -> tuple[Impact, int]:
    """Draw n particles whose 11 x 11 window lies in the barrel; also return how many were re-drawn."""
    cos_limit = _cos_theta_limit(geometry, kinematics)
    low, high = kinematics.margin_rings, geometry.n_rings - 1 - kinematics.margin_rings
    parts: list[Impact] = []
    kept = redrawn = 0
    while kept < n:
        m = n - kept
        p = rng.uniform(kinematics.p_min_gev, kinematics.p_max_gev, m)
        theta = np.arccos(rng.uniform(-cos_limit, cos_limit, m))
        phi = rng.uniform(-math.pi, math.pi, m)
        vertex_z = rng.normal(0.0, kinematics.vertex_sigma_z_cm, m)
        impact = track_impact(p, theta, phi, vertex_z, charge, geometry, kinematics.field_tesla)
        good = (impact.ring >= low) & (impact.ring <= high)
        redrawn += int(m - good.sum())
        kept += int(good.sum())
        parts.append(Impact(*(getattr(impact, f)[good] for f in Impact.__dataclass_fields__)))
    joined = Impact(*(np.concatenate([getattr(part, f) for part in parts]) for f in Impact.__dataclass_fields__))
    return joined, redrawn


def conditions_of(impact: Impact, geometry: BarrelGeometry = BARREL) -> dict[str, FloatArray]:
    """The six seed conditions of each impact (GeV/c, deg, cm): mom, dtheta_mom, dphi_mom, dz_pos, dphi_pos, z."""
    axis_theta = geometry.ring_axis_theta[impact.ring]
    face_phi = (impact.crystal + 0.5) * geometry.phi_pitch
    axis_phi = face_phi + math.radians(geometry.phi_tilt_deg)
    position_phi = np.arctan2(impact.point[:, 1], impact.point[:, 0])
    return {
        "mom": impact.p,
        "dtheta_mom": np.degrees(impact.theta - axis_theta),
        "dphi_mom": np.degrees(_wrap(impact.phi_direction - axis_phi)),
        "dz_pos": impact.point[:, 2] - geometry.ring_centre_z[impact.ring],
        "dphi_pos": np.degrees(_wrap(position_phi - face_phi)),
        "z": impact.point[:, 2],
    }


# ---------------------------------------------------------------------------------------------------------
# Shower


def longitudinal_parameters(energy_gev: FloatArray, rng: np.random.Generator, physics: ShowerPhysics = PHYSICS
                            ) -> tuple[FloatArray, FloatArray]:
    """Per-shower (T, a) of the GFlash longitudinal profile, drawn with their correlation (T in X0).

    ln T and ln a are Gaussian with the homogeneous-calorimeter means, widths and correlation
    rho = 0.705 - 0.023 ln y, y = E / E_c (PHYSICS.md sec. 3).
    """
    ln_y = np.log(energy_gev * 1000.0 / physics.critical_energy_mev)
    mean_ln_t = np.log(ln_y - 0.812)
    mean_ln_a = np.log(0.81 + (0.458 + 2.26 / physics.z_eff) * ln_y)
    sigma_ln_t = 1.0 / (-1.4 + 1.26 * ln_y)
    sigma_ln_a = 1.0 / (-0.58 + 0.86 * ln_y)
    rho = 0.705 - 0.023 * ln_y
    z1 = rng.standard_normal(energy_gev.size)
    z2 = rng.standard_normal(energy_gev.size)
    common, opposite = np.sqrt((1.0 + rho) / 2.0) * z1, np.sqrt((1.0 - rho) / 2.0) * z2
    return np.exp(mean_ln_t + sigma_ln_t * (common + opposite)), np.exp(mean_ln_a + sigma_ln_a * (common - opposite))


def radial_parameters(tau: FloatArray, energy_gev: FloatArray, physics: ShowerPhysics = PHYSICS
                      ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(Rc, Rt, p) of the GFlash radial profile at tau = t / T (radii in Moliere radii, E in GeV)."""
    z, ln_e = physics.z_eff, np.log(energy_gev)
    core = (0.0251 + 0.00319 * ln_e) + (0.1162 - 0.000381 * z) * tau
    k4 = 0.3585 + 0.0412 * ln_e
    tail = (0.659 - 0.00309 * z) * (np.exp(-2.59 * (tau - 0.645)) + np.exp(k4 * (tau - 0.645)))
    x = ((0.401 + 0.00187 * z) - tau) / (1.313 - 0.0686 * ln_e)
    return core, tail, (2.632 - 0.00094 * z) * np.exp(x - np.exp(x))


def spot_count(energy_gev: FloatArray, physics: ShowerPhysics = PHYSICS) -> IntArray:
    """GFlash number of spots N = 93 ln(Z) E^0.876 (E in GeV), at least one."""
    return np.maximum(np.rint(93.0 * math.log(physics.z_eff) * energy_gev**0.876), 1).astype(np.int64)


def _shower_frame(direction: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Two unit vectors perpendicular to each direction (n, 3): along z x u and along u x (z x u)."""
    first = np.cross(np.array([0.0, 0.0, 1.0]), direction)
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    return first, np.cross(direction, first)


def _crystal_axis(impact: Impact, geometry: BarrelGeometry) -> FloatArray:
    """Unit axis (n, 3) of each impact crystal."""
    theta = geometry.ring_axis_theta[impact.ring]
    phi = (impact.crystal + 0.5) * geometry.phi_pitch + math.radians(geometry.phi_tilt_deg)
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=1)


def deposit_showers(impact: Impact, energy_gev: FloatArray, photon: bool, rng: np.random.Generator,
                    geometry: BarrelGeometry = BARREL, physics: ShowerPhysics = PHYSICS,
                    ) -> tuple[FloatArray, FloatArray, dict[str, int]]:
    """Deposit one GFlash shower per impact into the crystals, without noise or threshold.

    Returns:
        (window (n, 11, 11) MeV in the crystals around the impact crystal, axis 1 = ring offset along +z,
        axis 2 = crystal offset along +phi; total (n,) MeV deposited in the barrel anywhere; counts).
    """
    n = energy_gev.size
    shower_t, shower_a = longitudinal_parameters(energy_gev, rng, physics)
    clipped = shower_a * (0.639 + 0.00334 * physics.z_eff) <= 1.01
    spot_t = shower_t * (0.698 + 0.00212 * physics.z_eff)
    spot_a = np.maximum(shower_a * (0.639 + 0.00334 * physics.z_eff), 1.01)
    variance = physics.stochastic_term**2 / energy_gev + physics.constant_term**2
    gain = rng.gamma(1.0 / np.maximum(variance, 1e-12), variance)
    visible_mev = 1000.0 * energy_gev * np.where(variance > 0, gain, 1.0)
    n_spots = spot_count(energy_gev, physics)
    owner = np.repeat(np.arange(n), n_spots)

    def per_spot(values: np.ndarray) -> np.ndarray:
        """Per-shower values repeated for each spot of the shower, floats as float32.

        Single precision is ample for spot positions (1e-5 cm at the barrel) and halves the memory traffic;
        energies are summed in double precision by ``np.bincount``.
        """
        return np.repeat(values.astype(np.float32) if values.dtype == np.float64 else values, n_spots, axis=-1)

    # Depth along the shower axis (X0): spots are placed with the spot profile Gamma(a_spot, b_spot),
    # b = (a - 1) / T, and weighted by f_energy / f_spot, so the energy follows Gamma(a, b) as in GFlash.
    spot_b = (spot_a - 1.0) / spot_t
    depth = rng.standard_gamma(per_spot(spot_a), dtype=np.float32) / per_spot(spot_b)
    energy_a = np.maximum(shower_a, 1.01)
    energy_b = (energy_a - 1.0) / shower_t
    # log f_energy(t) - log f_spot(t) = c + (a - a_spot) ln t - (b - b_spot) t, c per shower.
    offset = (energy_a * np.log(energy_b) - special.gammaln(energy_a)
              - spot_a * np.log(spot_b) + special.gammaln(spot_a))
    weight = np.exp(per_spot(offset) + per_spot(energy_a - spot_a) * np.log(depth)
                    - per_spot(energy_b - spot_b) * depth)
    # tau is capped at 100 (> 15 X0 for any T > 0.15 X0, so only spots that leak out of the back are affected)
    # to keep exp(k4 tau) finite in single precision.
    tau = np.minimum(depth / per_spot(shower_t), np.float32(100.0))
    core, tail, core_probability = radial_parameters(tau, per_spot(energy_gev), physics)
    scale = np.where(rng.random(owner.size, dtype=np.float32) < core_probability, core, tail)
    u = rng.random(owner.size, dtype=np.float32)
    radius_cm = np.float32(physics.moliere_radius_cm) * scale * np.sqrt(u / (np.float32(1.0) - u))
    if photon:
        depth = depth + per_spot(rng.exponential(physics.photon_conversion_x0, n))
    azimuth = np.float32(2.0 * math.pi) * rng.random(owner.size, dtype=np.float32)

    first, second = _shower_frame(impact.direction)
    along = depth * np.float32(physics.radiation_length_cm)
    across1, across2 = radius_cm * np.cos(azimuth), radius_cm * np.sin(azimuth)
    # (3, spots) arrays: each coordinate contiguous in memory
    start, direction = per_spot(impact.point.T), per_spot(impact.direction.T)
    first_spot, second_spot = per_spot(first.T), per_spot(second.T)
    position = [start[i] + along * direction[i] + across1 * first_spot[i] + across2 * second_spot[i]
                for i in range(3)]
    # Depth along the impact crystal's axis decides rear leakage (the whole shower uses one crystal length).
    axis = _crystal_axis(impact, geometry)
    projections = per_spot(np.stack([np.sum(v * axis, axis=1) for v in (impact.direction, first, second)]))
    crystal_depth = along * projections[0] + across1 * projections[1] + across2 * projections[2]
    rho = np.hypot(position[0], position[1])
    ring = geometry.ring_of(rho, position[2])
    inside = (crystal_depth <= geometry.crystal_length_cm) & (ring >= 0) & (ring < geometry.n_rings)
    spot_energy = weight * per_spot(visible_mev / np.bincount(owner, weights=weight, minlength=n))
    total = np.bincount(owner, weights=np.where(inside, spot_energy, 0.0), minlength=n)

    ring_offset = ring - per_spot(impact.ring) + CENTRE
    phi_offset = (geometry.phi_index_of(rho, np.arctan2(position[1], position[0])) - per_spot(impact.crystal)
                  + CENTRE) % geometry.n_phi
    in_window = inside & (ring_offset >= 0) & (ring_offset < WINDOW) & (phi_offset < WINDOW)
    cell = (owner * WINDOW + ring_offset) * WINDOW + phi_offset
    window = np.bincount(cell[in_window], weights=spot_energy[in_window], minlength=n * WINDOW * WINDOW)
    counts = {"n_spots": int(owner.size), "n_profiles_clipped": int(clipped.sum())}
    window_mev = np.asarray(window, dtype=np.float64).reshape(n, WINDOW, WINDOW)
    return window_mev, np.asarray(total, dtype=np.float64), counts


def digitise(window_mev: FloatArray, rng: np.random.Generator, physics: ShowerPhysics = PHYSICS
             ) -> NDArray[np.float32]:
    """Add incoherent Gaussian noise to every crystal and zero those below the threshold (MeV, float32)."""
    measured = window_mev + rng.normal(0.0, physics.noise_mev, window_mev.shape)
    return np.where(measured >= physics.threshold_mev, measured, 0.0).astype(np.float32)


def particle_energy_gev(p_gev: FloatArray, particle: str) -> FloatArray:
    """Total energy (GeV) of the particle with momentum p (GeV/c): e+- with the electron mass, photons E = p."""
    return p_gev if particle == "gamma" else np.sqrt(p_gev**2 + ELECTRON_MASS_GEV**2)


def _simulate_chunk(n: int, particle: str, rng: np.random.Generator, geometry: BarrelGeometry,
                    physics: ShowerPhysics, kinematics: EmcKinematics) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    impact, redrawn = _draw_impacts(n, PARTICLE_CHARGE[particle], rng, geometry, kinematics)
    energy = particle_energy_gev(impact.p, particle)
    window, total, counts = deposit_showers(impact, energy, particle == "gamma", rng, geometry, physics)
    table: dict[str, np.ndarray] = {"map": digitise(window, rng, physics)}
    table.update(conditions_of(impact, geometry))
    table["particle"] = np.full(n, particle, dtype=object)
    table["theta"], table["phi"] = impact.theta, impact.phi
    table["e_outside"] = total - window.sum(axis=(1, 2))
    table["e_total_dep"] = total
    counts["n_redrawn_outside_window"] = redrawn
    return table, counts


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DataError(f"simulate_emc: {name} must be a positive integer, got {value!r}")
    return int(value)


def simulate_emc(n: int, *, particle: str = "e-", seed: int = 0, progress: bool = False, chunk_size: int = 1000,
                 geometry: BarrelGeometry = BARREL, physics: ShowerPhysics = PHYSICS,
                 kinematics: EmcKinematics = KINEMATICS) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Simulate ``n`` showers of one particle type in the BESIII EMC barrel.

    Args:
        n: number of showers (> 0).
        particle: "e-", "e+" or "gamma".
        seed: seed of ``numpy.random.default_rng``; the same (seed, chunk_size) gives identical output.
        progress: show a tqdm bar over chunks.
        chunk_size: showers simulated at once (~560 spots per shower on average, ~0.2 kB per spot in flight:
            ~100 MB at the default; the output takes ~0.6 kB per shower).
        geometry, physics, kinematics: model parameters (defaults: the BESIII values documented above).

    Returns:
        (table, info). table: ``map`` float32 (n, 11, 11) crystal energies in MeV (axis 1 = ring/Z, axis 2 =
        phi, [5, 5] = impact crystal); ``mom`` (GeV/c), ``dtheta_mom``, ``dphi_mom`` (deg), ``dz_pos`` (cm),
        ``dphi_pos`` (deg), ``z`` (cm); ``particle`` (str); ``theta``, ``phi`` (rad, direction at the vertex);
        ``e_outside`` (MeV deposited in the barrel outside the window, before noise), ``e_total_dep`` (MeV
        deposited in the barrel, before noise). info: n_showers, n_chunks, n_spots, n_redrawn_outside_window,
        n_profiles_clipped (showers whose spot shape parameter was raised to 1.01).

    Raises:
        DataError: unknown particle, n or chunk_size not a positive integer.
    """
    n = _check_count(n, "n")
    chunk_size = _check_count(chunk_size, "chunk_size")
    if particle not in PARTICLE_CHARGE:
        raise DataError(f"simulate_emc: unknown particle {particle!r}; expected one of {list(PARTICLES)}")
    if kinematics.p_min_gev <= 0.05 or kinematics.p_max_gev < kinematics.p_min_gev:
        raise DataError(f"simulate_emc: momentum range {kinematics.p_min_gev}-{kinematics.p_max_gev} GeV/c; "
                        "expected 0.05 < p_min <= p_max (the GFlash fluctuation formulas fail below ~40 MeV)")
    rng = np.random.default_rng(seed)
    starts = range(0, n, chunk_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"EMC {particle} chunks", unit="chunk")
    parts, info = [], {"n_showers": n, "n_chunks": 0}
    for start in starts:
        table, counts = _simulate_chunk(min(chunk_size, n - start), particle, rng, geometry, physics, kinematics)
        parts.append(table)
        info["n_chunks"] += 1
        for key, value in counts.items():
            info[key] = info.get(key, 0) + value
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}, info


# ------------------------------------------------------------------------------------------ command line
CLI_HELP = "BESIII EMC barrel: 11x11 crystal energy maps of e+, e- or photon showers (HDF5 table)"


def add_cli_arguments(parser: Any) -> None:
    """Options of ``detgen simulate emc`` beyond the common --n, --seed, -o."""
    parser.add_argument("--particle", default="e-", help="e-, e+ or gamma (default e-)")
    parser.add_argument("--chunk-size", type=int, default=1000, help="showers simulated at once")


def simulate_cli(args: Any, *, progress: bool) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    return simulate_emc(args.n, particle=args.particle, seed=args.seed, progress=progress,
                        chunk_size=args.chunk_size)
