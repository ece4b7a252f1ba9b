"""Tests of the reference BESIII EMC shower simulator: geometry, physics (PHYSICS.md sec. 2-3), input errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from detgen.cli import main as detgen
from detgen.errors import DataError
from detgen.io import read_table
from detgen.simulators.emc import (
    BARREL,
    CENTRE,
    COLUMNS,
    PHYSICS,
    WINDOW,
    EmcKinematics,
    Impact,
    ShowerPhysics,
    deposit_showers,
    simulate_emc,
    track_impact,
)
from detgen.validation.metrics import core_mean_width


def fixed_momentum(p_gev: float) -> EmcKinematics:
    return EmcKinematics(p_min_gev=p_gev, p_max_gev=p_gev)


def photons_at(ring: int, crystal: int, n: int, *, dz_cm: float = 0.0, dphi_direction_deg: float = 0.0,
               ) -> Impact:
    """n identical photons pointing from the IP at the front-face centre of (ring, crystal).

    ``dz_cm`` moves the vertex along the beam (same direction, impact moved by dz_cm); ``dphi_direction_deg``
    turns the momentum in azimuth about the impact point (same impact, different incidence).
    """
    z_centre = BARREL.ring_centre_z[ring]
    theta = np.full(n, math.atan2(BARREL.inner_radius_cm, z_centre))
    phi = np.full(n, (crystal + 0.5) * BARREL.phi_pitch)
    impact = track_impact(np.full(n, 1.0), theta, phi, np.full(n, dz_cm), 0)
    if dphi_direction_deg:
        turned = phi + math.radians(dphi_direction_deg)
        direction = np.stack([np.sin(theta) * np.cos(turned), np.sin(theta) * np.sin(turned), np.cos(theta)], axis=1)
        impact = Impact(impact.p, theta, phi, impact.point, direction, turned, impact.ring, impact.crystal)
    return impact


def deposited(impact: Impact, seed: int = 0, physics: ShowerPhysics = PHYSICS) -> np.ndarray:
    window, _, _ = deposit_showers(impact, impact.p, True, np.random.default_rng(seed), physics=physics)
    return window


def phi_centroid(maps: np.ndarray) -> np.ndarray:
    """Energy-weighted mean crystal offset along phi (crystal units)."""
    return (maps * (np.arange(WINDOW) - CENTRE)).sum(axis=(1, 2)) / maps.sum(axis=(1, 2))


# --- geometry ----------------------------------------------------------------------------------------------


def test_barrel_geometry_matches_besiii_numbers() -> None:
    edges = BARREL.ring_edges_z
    assert edges.size == 45 and np.all(np.diff(edges) > 0)
    assert edges[22] == pytest.approx(0.0, abs=1e-9)
    # 5.2 cm faces seen from the IP cover the barrel up to |cos theta| ~ 0.83-0.84
    assert abs(edges[-1]) / math.hypot(edges[-1], 94.2) == pytest.approx(0.838, abs=0.005)
    tilt = np.abs(BARREL.ring_theta_tilt_deg)
    assert tilt.min() > 0.9 and tilt.max() < 3.1
    assert tilt[0] < 1.2 and tilt[20] > 2.7  # small at the barrel ends, large near 90 deg


def test_ring_and_phi_boundaries_follow_the_tilted_surfaces() -> None:
    radius = BARREL.inner_radius_cm
    rho = np.array([radius, radius + 14.0, radius + 28.0])
    for k in (5, 23, 30, 40):
        z_edge, focus = BARREL.ring_edges_z[k], BARREL.edge_focus_z[k]
        assert focus == (5.0 if z_edge > 0 else -5.0)
        on_edge = z_edge + (rho - radius) * (z_edge - focus) / radius
        assert np.all(BARREL.ring_of(rho, on_edge + 1e-6) == k)
        assert np.all(BARREL.ring_of(rho, on_edge - 1e-6) == k - 1)
    # phi: a boundary leaves (R, phi_b) along the direction turned by 1.5 deg from radial
    alpha, phi_b = math.radians(1.5), 7 * BARREL.phi_pitch
    for s in (0.0, 10.0, 28.0):
        x = radius * math.cos(phi_b) + s * math.cos(phi_b + alpha)
        y = radius * math.sin(phi_b) + s * math.sin(phi_b + alpha)
        rho_s, phi_s = np.array([math.hypot(x, y)]), math.atan2(y, x)
        assert BARREL.phi_index_of(rho_s, np.array([phi_s + 1e-7]))[0] == 7
        assert BARREL.phi_index_of(rho_s, np.array([phi_s - 1e-7]))[0] == 6
    # the crystal's rear is turned by ~0.34 deg in azimuth: not pointing at the IP
    assert math.degrees(BARREL.phi_shift(np.array([radius + 28.0]))[0]) == pytest.approx(0.34, abs=0.03)


def test_charged_tracks_bend_in_the_solenoid_and_photons_go_straight() -> None:
    electrons, _ = simulate_emc(300, particle="e-", seed=3)
    positrons, _ = simulate_emc(300, particle="e+", seed=3)
    photons, _ = simulate_emc(300, particle="gamma", seed=3)
    assert np.mean(electrons["dphi_mom"]) > 2.0 and np.mean(positrons["dphi_mom"]) < -4.0
    # photons from a vertex on the beam line: direction azimuth = position azimuth, axis turned by 1.5 deg
    np.testing.assert_allclose(photons["dphi_mom"], photons["dphi_pos"] - 1.5, atol=1e-9)
    with pytest.raises(DataError, match="curl"):
        track_impact(np.array([0.1]), np.array([math.pi / 2]), np.array([0.0]), np.array([0.0]), -1)


# --- output and physics ------------------------------------------------------------------------------------


def test_schema_ranges_and_threshold() -> None:
    table, info = simulate_emc(400, particle="e+", seed=1, chunk_size=150)
    assert set(table) == set(COLUMNS)
    assert table["map"].shape == (400, WINDOW, WINDOW) and table["map"].dtype == np.float32
    assert info["n_showers"] == 400 and info["n_chunks"] == 3
    maps = table["map"]
    assert np.all((maps == 0) | (maps >= PHYSICS.threshold_mev))
    assert np.all(np.abs(table["dphi_pos"]) <= 1.5 + 1e-9)
    half_ring = 0.5 * np.max(np.diff(BARREL.ring_edges_z))
    assert np.all(np.abs(table["dz_pos"]) <= half_ring)
    assert np.all((table["mom"] >= 0.25) & (table["mom"] <= 3.0))
    assert set(table["particle"]) == {"e+"}
    assert np.all(table["e_outside"] >= -1e-9) and np.all(table["e_outside"] <= table["e_total_dep"])
    # the impact crystal is usually the hottest one (not always: bent e+ arrive at up to ~50 deg in phi)
    hottest = maps.reshape(400, -1).argmax(axis=1)
    assert np.mean(hottest == CENTRE * WINDOW + CENTRE) > 0.6


def test_same_seed_same_showers_and_other_seed_differs() -> None:
    first, _ = simulate_emc(60, seed=5, chunk_size=25)
    second, _ = simulate_emc(60, seed=5, chunk_size=25)
    other, _ = simulate_emc(60, seed=6, chunk_size=25)
    for column in COLUMNS:
        np.testing.assert_array_equal(first[column], second[column])
    assert not np.array_equal(first["map"], other["map"])


def test_containment_in_the_window_for_electrons() -> None:
    table, _ = simulate_emc(600, particle="e-", seed=2, kinematics=fixed_momentum(1.0))
    outside = table["e_outside"].sum() / table["e_total_dep"].sum()
    assert 0.0005 < outside < 0.006  # BESIII: 99.7% of an electron shower inside 11 x 11


def test_energy_resolution_near_2p5_percent_at_1_gev() -> None:
    table, _ = simulate_emc(1500, particle="e-", seed=4, kinematics=fixed_momentum(1.0))
    response = table["map"].astype(np.float64).sum(axis=(1, 2)) / 1000.0
    peak, width = core_mean_width(response)
    assert 0.96 < peak < 1.0
    assert 0.021 < width / peak < 0.030


def test_lateral_spread_is_set_by_the_moliere_radius() -> None:
    impact = photons_at(30, 40, 400)
    narrow = deposited(impact, seed=1)
    wide = deposited(impact, seed=1, physics=ShowerPhysics(moliere_radius_cm=2 * PHYSICS.moliere_radius_cm))

    def e9_over_e121(maps: np.ndarray) -> float:
        return float(np.mean(maps[:, 4:7, 4:7].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))))

    def lateral_rms(maps: np.ndarray) -> float:
        offsets = np.arange(WINDOW) - CENTRE
        r2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
        return float(np.sqrt(np.mean((maps * r2).sum(axis=(1, 2)) / maps.sum(axis=(1, 2)))))

    assert 0.85 < e9_over_e121(narrow) < 0.98
    # the energy outside 3 x 3 comes from the 1/r^3 tails of the radial profile, ~R_M^2: > 2x for 2 R_M
    assert 1 - e9_over_e121(wide) > 2.0 * (1 - e9_over_e121(narrow))
    assert lateral_rms(wide) > 1.4 * lateral_rms(narrow)


def test_impact_offset_changes_the_map_for_the_same_direction() -> None:
    centred = deposited(photons_at(30, 40, 300), seed=2)
    half_width = 0.5 * (BARREL.ring_edges_z[31] - BARREL.ring_edges_z[30])
    near_edge = deposited(photons_at(30, 40, 300, dz_cm=0.8 * half_width), seed=2)
    e1_over_e9 = [np.mean(m[:, CENTRE, CENTRE] / m[:, 4:7, 4:7].sum(axis=(1, 2))) for m in (centred, near_edge)]
    assert e1_over_e9[0] > e1_over_e9[1] + 0.1
    # the shower moved towards +z: the ring above the impact ring gets more energy than the one below
    assert near_edge[:, CENTRE + 1, CENTRE].mean() > 3 * near_edge[:, CENTRE - 1, CENTRE].mean()


def test_incidence_angle_moves_the_shower_along_phi() -> None:
    plus = deposited(photons_at(30, 40, 300, dphi_direction_deg=12.0), seed=3)
    minus = deposited(photons_at(30, 40, 300, dphi_direction_deg=-12.0), seed=3)
    assert phi_centroid(plus).mean() > 0.15 and phi_centroid(minus).mean() < -0.15


# --- input errors and the command line ---------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"particle": "mu-"}, "unknown particle 'mu-'"),
    ({"n": 0}, "n must be a positive integer"),
    ({"n": -3}, "n must be a positive integer"),
    ({"chunk_size": 0}, "chunk_size must be a positive integer"),
])
def test_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"n": 10} | kwargs
    with pytest.raises(DataError, match=message):
        simulate_emc(**arguments)


def test_cli_writes_hdf5_and_rejects_bad_particle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "showers.h5"
    assert detgen(["--no-progress", "simulate", "emc", "--n", "30", "--particle", "gamma", "--seed", "2",
                   "-o", str(output)]) == 0
    table = read_table(output)
    assert table["map"].shape == (30, WINDOW, WINDOW)
    expected, _ = simulate_emc(30, particle="gamma", seed=2)
    np.testing.assert_array_equal(table["map"], expected["map"])
    capsys.readouterr()
    bad = tmp_path / "bad.h5"
    assert detgen(["simulate", "emc", "--n", "30", "--particle", "proton", "-o", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown particle 'proton'" in err[0]
    assert not bad.exists()
