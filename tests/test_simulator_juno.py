"""JUNO reference optical simulator: geometry, light yield, known optical answers, muons, bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from detgen.errors import ConfigError, DataError
from detgen.simulators import juno
from detgen.simulators.juno import (
    DEFAULT_DETECTOR,
    NO_HIT_TIME_NS,
    SPEED_OF_LIGHT_M_PER_NS,
    JunoDetector,
    muon_deposits,
    pmt_positions,
    sample_muon_tracks,
    simulate_muon,
    simulate_muons,
    simulate_points,
    track_chord,
)

#: Ideal optics: no absorption, scattering, Fresnel reflection, water absorption, angular loss or TTS.
IDEAL = dataclasses.replace(DEFAULT_DETECTOR, absorption_length_m=math.inf, rayleigh_length_m=math.inf,
                            water_absorption_length_m=math.inf, fresnel=False, angular_acceptance_floor=1.0,
                            tts_sigma_ns=0.0)


def total_pe(tables: dict[str, dict[str, np.ndarray]], n_events: int) -> np.ndarray:
    return np.bincount(tables["pmt"]["event"], weights=tables["pmt"]["npe"], minlength=n_events)


def test_pmt_geometry_count_radius_coverage() -> None:
    positions = pmt_positions()
    assert positions.shape == (17_612, 3)
    np.testing.assert_allclose(np.linalg.norm(positions, axis=1), 19.5)
    np.testing.assert_array_equal(positions, pmt_positions())  # deterministic
    # the photocathode caps cover 78% of the sphere: fraction of random directions inside a cap
    rng = np.random.default_rng(0)
    directions = juno._isotropic(200_000, rng)
    tree = juno._pmt_tree(17_612)
    distance, _ = tree.query(directions, k=1)
    inside = distance < 2.0 * math.sin(0.5 * DEFAULT_DETECTOR.cap_half_angle_rad)
    # nominal 78%; neighbouring caps of the Fibonacci lattice overlap in thin slivers, which costs ~1%
    assert inside.mean() == pytest.approx(0.772, abs=0.004)
    # a cap has about the radius of a 20-inch photocathode
    assert DEFAULT_DETECTOR.cap_half_angle_rad * 19.5 == pytest.approx(0.26, abs=0.01)


def test_cap_lookup_grid_matches_a_kd_tree() -> None:
    rng = np.random.default_rng(5)
    directions = juno._isotropic(300_000, rng)
    found = juno.nearest_pmt_on_cap(directions)
    cap_chord = 2.0 * math.sin(0.5 * DEFAULT_DETECTOR.cap_half_angle_rad)
    distance, index = juno._pmt_tree(17_612).query(directions, k=1, distance_upper_bound=cap_chord)
    expected = np.where(np.isfinite(distance), index, -1)
    # identical apart from points in the slivers where two caps overlap (float32 ranking of the two)
    assert np.mean(found != expected) < 1e-4
    assert np.array_equal(found >= 0, np.isfinite(distance))


def test_light_yield_at_centre_is_1345_pe_per_mev() -> None:
    tables, info = simulate_points(150, r_values_m=[0.0], seed=11)
    pe = total_pe(tables, 150)
    assert pe.mean() == pytest.approx(1345.0, rel=0.015)
    assert info["n_detected"] == pe.sum() == len(tables["hits"]["time_ns"])
    # the light yield scales with the deposited energy
    tables2, _ = simulate_points(40, r_values_m=[0.0], energy_mev=2.0, seed=12)
    assert total_pe(tables2, 40).mean() == pytest.approx(2 * 1345.0, rel=0.02)


def test_ideal_optics_at_centre_known_answer() -> None:
    """No losses: every photon lands uniformly on the PMT sphere, so p.e. = yield x PDE x coverage."""
    tables, info = simulate_points(60, r_values_m=[0.0], seed=3, detector=IDEAL)
    expected = IDEAL.photons_per_mev * IDEAL.pde * IDEAL.photocoverage
    pe = total_pe(tables, 60)
    assert pe.mean() == pytest.approx(expected, rel=0.01)
    assert info["n_exited_ls"] == info["n_photons_tracked"]
    assert info["n_reflected"] == info["n_absorbed"] == info["n_rayleigh_scattered"] == 0


def test_absorption_attenuates_as_exp_minus_r_over_lambda() -> None:
    """Absorption only (no re-emission): from the centre every path is 17.7 m, survival exp(-17.7 / L)."""
    length = 20.0
    absorbing = dataclasses.replace(IDEAL, absorption_length_m=length, reemission_probability=0.0)
    pe_ideal = total_pe(simulate_points(60, r_values_m=[0.0], seed=5, detector=IDEAL)[0], 60).mean()
    pe_absorbed = total_pe(simulate_points(60, r_values_m=[0.0], seed=6, detector=absorbing)[0], 60).mean()
    assert pe_absorbed / pe_ideal == pytest.approx(math.exp(-17.7 / length), rel=0.02)


def test_rayleigh_scattering_keeps_light_but_delays_it() -> None:
    """Scattering alone loses no photon at the centre (apart from TIR of scattered ones) but adds late light."""
    scattering = dataclasses.replace(IDEAL, rayleigh_length_m=10.0, max_photon_steps=300)
    tables_ideal, _ = simulate_points(40, r_values_m=[0.0], seed=7, detector=IDEAL)
    tables_scat, info = simulate_points(40, r_values_m=[0.0], seed=8, detector=scattering)
    assert info["n_rayleigh_scattered"] > 0.5 * info["n_photons_tracked"]
    ratio = total_pe(tables_scat, 40).mean() / total_pe(tables_ideal, 40).mean()
    assert 0.8 < ratio < 1.0
    assert np.mean(tables_scat["hits"]["time_ns"]) > np.mean(tables_ideal["hits"]["time_ns"]) + 5.0


def test_total_internal_reflection_traps_the_known_fraction() -> None:
    """From radius r, a photon is trapped iff r sin(psi) > R n_water / n_ls: fraction sqrt(1 - (R s / r)^2)."""
    detector = dataclasses.replace(IDEAL, max_photon_steps=40)
    r = 17.0
    _, info = simulate_points(20, r_values_m=[r], seed=9, detector=detector)
    critical = 17.7 * detector.refractive_index_water / detector.refractive_index_ls / r
    trapped = math.sqrt(1.0 - critical**2)
    assert info["n_dropped_max_steps"] / info["n_photons_tracked"] == pytest.approx(trapped, abs=0.01)


def test_total_pe_versus_radius_shape() -> None:
    """Default optics: the total p.e. falls slowly with R (oblique incidence on the PMTs, Fresnel losses) and
    steeply beyond R n_water / n_ls = 15.8 m, where total internal reflection traps part of the light."""
    radii = [0.0, 10.0, 15.0, 17.5]
    tables, _ = simulate_points(4 * 30, r_values_m=radii, seed=10)
    pe = total_pe(tables, 120).reshape(30, 4).mean(axis=0)
    assert pe[0] > pe[1] > pe[2] > pe[3]
    slope_inner = (pe[0] - pe[1]) / 10.0
    slope_edge = (pe[2] - pe[3]) / 2.5
    assert slope_edge > 3.0 * slope_inner


def test_hit_times_start_at_the_time_of_flight() -> None:
    """Centre, ideal optics, no TTS: t - TOF is the emission profile (0.75 Exp(4.6 ns) + 0.25 Exp(20 ns):
    mean 8.45 ns, variance 160.3 ns^2); a Gaussian TTS adds its variance."""
    tables, _ = simulate_points(60, r_values_m=[0.0], seed=13, detector=IDEAL)
    tof = (17.7 * IDEAL.group_index_ls + 1.8 * IDEAL.group_index_water) / SPEED_OF_LIGHT_M_PER_NS
    delay = tables["hits"]["time_ns"] - tof
    mean = 0.75 * 4.6 + 0.25 * 20.0
    variance = 0.75 * 2 * 4.6**2 + 0.25 * 2 * 20.0**2 - mean**2
    assert delay.min() > -0.01
    assert np.quantile(delay, 0.01) < 0.2
    assert delay.mean() == pytest.approx(mean, rel=0.02)
    assert delay.var() == pytest.approx(variance, rel=0.05)  # ~100k hits, heavy tails: ~1.5% statistical error
    smeared = dataclasses.replace(IDEAL, tts_sigma_ns=5.0)
    tables_tts, _ = simulate_points(60, r_values_m=[0.0], seed=14, detector=smeared)
    delay_tts = tables_tts["hits"]["time_ns"] - tof
    assert delay_tts.mean() == pytest.approx(mean, rel=0.02)
    assert delay_tts.var() == pytest.approx(variance + 25.0, rel=0.05)


def test_earliest_hit_of_an_off_centre_deposit_follows_geometry() -> None:
    """Deposit at z = 15 m: the first hits of the PMT above it come ~(distance difference)/v earlier."""
    detector = dataclasses.replace(IDEAL, tts_sigma_ns=0.0)
    tables, _ = simulate_points(30, r_values_m=[15.0], seed=15, detector=detector)
    theta, first, npe = (tables["pmt"][k] for k in ("theta", "first_hit_ns", "npe"))
    near = (theta < 0.1) & (npe > 0)
    far = (theta > math.pi - 0.1) & (npe > 0)
    # straight paths: near side 2.7 m LS + 1.8 m water, far side 32.7 m LS + 1.8 m water
    expected_gap = 30.0 * detector.group_index_ls / SPEED_OF_LIGHT_M_PER_NS
    assert np.median(first[far]) - np.median(first[near]) == pytest.approx(expected_gap, rel=0.05)


def test_pde_at_emission_matches_pde_at_detection() -> None:
    tables_a, _ = simulate_points(80, r_values_m=[8.0], seed=16)
    tables_b, info_b = simulate_points(80, r_values_m=[8.0], seed=17, pde_at_emission=False)
    pe_a, pe_b = total_pe(tables_a, 80), total_pe(tables_b, 80)
    error = math.sqrt(pe_a.var() / 80 + pe_b.var() / 80)
    assert abs(pe_a.mean() - pe_b.mean()) < 4 * error
    assert info_b["n_rejected_pde"] > 0
    time_a, time_b = tables_a["hits"]["time_ns"], tables_b["hits"]["time_ns"]
    time_error = math.sqrt(time_a.var() / len(time_a) + time_b.var() / len(time_b))  # ~0.3 ns: long tails
    assert abs(time_a.mean() - time_b.mean()) < 4 * time_error


def test_point_tables_are_consistent_and_reproducible() -> None:
    tables, _ = simulate_points(3, r_range_m=(0.0, 17.7), seed=21, energy_mev=0.3)
    again, _ = simulate_points(3, r_range_m=(0.0, 17.7), seed=21, energy_mev=0.3)
    for name in ("pmt", "hits"):
        for column in tables[name]:
            np.testing.assert_array_equal(tables[name][column], again[name][column])
    pmt, hits = tables["pmt"], tables["hits"]
    assert len(pmt["npe"]) == 3 * 17_612
    assert pmt["npe"].sum() == len(hits["time_ns"])
    key = hits["event"].astype(np.int64) * 17_612 + hits["pmt"]
    first = np.full(3 * 17_612, np.inf)
    np.minimum.at(first, key, hits["time_ns"])
    with_hits = pmt["npe"] > 0
    np.testing.assert_array_equal(pmt["first_hit_ns"][with_hits], first[with_hits].astype(np.float32))
    assert np.all(pmt["first_hit_ns"][~with_hits] == NO_HIT_TIME_NS)
    assert np.all(np.isfinite(pmt["first_hit_ns"]))
    assert pmt["theta"].min() >= 0 and pmt["theta"].max() <= math.pi
    np.testing.assert_allclose(pmt["theta"][:17_612], np.arccos(pmt_positions()[:, 2] / 19.5), atol=1e-6)


def test_rayleigh_phase_function_moments() -> None:
    rng = np.random.default_rng(1)
    direction = juno._isotropic(200_000, rng)
    new = juno._rayleigh_directions(direction, rng)
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-12)
    mu = np.einsum("ij,ij->i", direction, new)
    assert mu.mean() == pytest.approx(0.0, abs=0.005)
    assert (mu**2).mean() == pytest.approx(0.4, abs=0.003)  # <mu^2> of (3/8)(1 + mu^2)


def test_fresnel_normal_incidence_and_critical_angle() -> None:
    n1, n2 = 1.49, 1.33
    reflectance = juno._fresnel_reflectance(np.array([1.0, 0.3, 0.0]), n1, n2)
    assert reflectance[0] == pytest.approx(((n1 - n2) / (n1 + n2)) ** 2)
    assert reflectance[1] == 1.0 and reflectance[2] == 1.0  # sin(i) = 0.954 > n2 / n1 = 0.893


def test_muon_deposits_along_the_chord() -> None:
    centres, energies = muon_deposits([0.0, 0.0, 30.0], [0.0, 0.0, -1.0], step_m=0.5)
    assert len(centres) == math.ceil(35.4 / 0.5)
    assert energies.sum() == pytest.approx(0.2 * 35_400.0)  # 0.2 MeV/mm x 35.4 m
    assert np.all(np.linalg.norm(centres, axis=1) < 17.7)
    entry, length = track_chord([5.0, 0.0, 40.0], [0.0, 0.0, -1.0])
    assert length == pytest.approx(2 * math.sqrt(17.7**2 - 25.0))
    assert np.linalg.norm(entry) == pytest.approx(17.7)


def test_muon_total_pe_proportional_to_track_length() -> None:
    """Dim detector (1/200 of the light) so that a muon takes ~0.1 s; p.e. per metre ~ equal for two chords."""
    dim = dataclasses.replace(DEFAULT_DETECTOR, scintillation_yield_per_mev=50.0)
    rng = np.random.default_rng(2)
    npe_centre, first = simulate_muon([0.0, 0.0, 20.0], [0.0, 0.0, -1.0], rng, detector=dim, step_m=0.5)
    npe_offset, _ = simulate_muon([9.0, 0.0, 20.0], [0.0, 0.0, -1.0], rng, detector=dim, step_m=0.5)
    length_offset = 2 * math.sqrt(17.7**2 - 81.0)
    per_metre_centre, per_metre_offset = npe_centre.sum() / 35.4, npe_offset.sum() / length_offset
    assert per_metre_offset == pytest.approx(per_metre_centre, rel=0.1)
    expected = 200.0 * 1345.0 / 200.0  # 200 MeV/m at ~1345 p.e./MeV scaled by 50/10000 -> ~1345/m
    assert per_metre_centre == pytest.approx(expected, rel=0.25)
    assert np.all(first[npe_centre == 0] == NO_HIT_TIME_NS)
    # the muon enters at the top at t = 0: the top PMTs fire first
    top = pmt_positions(dim)[:, 2] > 18.0
    assert np.median(first[top & (npe_centre > 0)]) < np.median(first[~top & (npe_centre > 0)])


def test_muon_light_is_emitted_as_the_muon_passes() -> None:
    """Vertical muon through the centre, no TTS: the bottom PMTs fire just after the muon reaches the bottom of
    the LS (35.4 m / c) plus the 1.8 m of water at the group velocity (126.3 ns)."""
    dim = dataclasses.replace(DEFAULT_DETECTOR, scintillation_yield_per_mev=100.0, tts_sigma_ns=0.0)
    npe, first = simulate_muon([0.0, 0.0, 20.0], [0.0, 0.0, -1.0], np.random.default_rng(8), detector=dim,
                               step_m=0.5)
    bottom = (pmt_positions(dim)[:, 2] < -19.3) & (npe > 0)
    expected = (35.4 + 1.8 * dim.group_index_water) / SPEED_OF_LIGHT_M_PER_NS
    assert bottom.sum() > 20
    assert expected - 0.2 < first[bottom].min() < expected + 2.0


def test_simulate_muons_table() -> None:
    dim = dataclasses.replace(DEFAULT_DETECTOR, scintillation_yield_per_mev=20.0)
    table, info = simulate_muons(2, seed=3, detector=dim, step_m=1.0)
    assert table["npe"].shape == (2, 17_612) and table["npe"].dtype == np.int32
    assert table["first_hit_ns"].shape == (2, 17_612) and table["first_hit_ns"].dtype == np.float32
    np.testing.assert_array_equal(table["total_pe"], table["npe"].sum(axis=1))
    np.testing.assert_allclose(table["edep_mev"], 200.0 * table["track_length_m"])
    np.testing.assert_allclose(np.linalg.norm(np.stack([table["x0"], table["y0"], table["z0"]], 1), axis=1), 17.7)
    assert info["seconds_per_muon"] > 0 and np.all(table["wall_time_s"] > 0)


def test_sampled_muon_tracks_cross_the_detector_downward() -> None:
    entry, direction = sample_muon_tracks(500, np.random.default_rng(4))
    assert np.all(direction[:, 2] < 0)
    lengths = np.array([track_chord(e, d)[1] for e, d in zip(entry, direction)])
    assert np.all(lengths > 0)
    # uniform flux through a sphere: mean chord 4R/3
    assert lengths.mean() == pytest.approx(4 * 17.7 / 3, rel=0.05)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="misses the LS sphere"):
        muon_deposits([20.0, 0.0, 30.0], [0.0, 0.0, -1.0])
    with pytest.raises(DataError, match="points away"):
        muon_deposits([0.0, 0.0, 30.0], [0.0, 0.0, 1.0])
    with pytest.raises(DataError, match="direction"):
        muon_deposits([0.0, 0.0, 30.0], [0.0, 0.0, 0.0])
    with pytest.raises(DataError, match="radii outside"):
        simulate_points(2, r_values_m=[18.0])
    with pytest.raises(DataError, match="radii outside"):
        simulate_points(2, r_range_m=(-1.0, 5.0))
    with pytest.raises(DataError, match="energies negative"):
        simulate_points(2, energy_mev=-1.0)
    with pytest.raises(DataError, match="positive integer"):
        simulate_points(0)
    with pytest.raises(ConfigError, match="pde"):
        JunoDetector(pde=1.5)
    with pytest.raises(ConfigError, match="pmt_radius_m"):
        JunoDetector(pmt_radius_m=17.0)
