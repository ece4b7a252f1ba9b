"""Tests of the reference BESIII MDC dE/dx simulator against PDG/BESIII numbers (docs PHYSICS.md section 1)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from detgen.errors import DataError
from detgen.particles import CHARGE, MASS_GEV, SPECIES
from detgen.simulators.dedx import (
    ELECTRON_PLATEAU,
    MDC_GAS,
    MDC_GEOMETRY,
    GasMixture,
    bethe_mean_dedx_kev_per_cm,
    dedx_for_kinematics,
    density_effect,
    expected_dedx,
    landau_xi_kev,
    most_probable_loss_kev,
    sample_hit_loss_kev,
    simulate_dedx,
    truncated_mean,
)

PION = MASS_GEV["pi+"]
MIP_BETAGAMMA = 3.5
MIP_PION_P_GEV = MIP_BETAGAMMA * PION  # 0.49 GeV/c


def full_length_tracks(label: str, p_gev: float, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """dE/dx and nhits of n tracks at theta = 90 deg (every layer reached)."""
    return dedx_for_kinematics([label] * n, np.full(n, p_gev), np.zeros(n), seed=seed)


# --- energy-loss physics ------------------------------------------------------------------------------------


def test_bethe_mean_at_minimum_ionisation_matches_physics_sheet() -> None:
    assert bethe_mean_dedx_kev_per_cm(MIP_BETAGAMMA, PION) == pytest.approx(1.89, rel=0.03)


def test_bethe_curve_shape() -> None:
    bg = np.geomspace(0.1, 1e5, 400)
    mean = bethe_mean_dedx_kev_per_cm(bg, PION)
    beta2 = bg**2 / (1 + bg**2)
    low = bg < 0.5
    # 1/beta^2 fall: dE/dx drops by > 5x while beta^2 dE/dx changes by < 1.6x
    assert mean[low][0] / mean[low][-1] > 5
    assert np.ptp(np.log(mean[low] * beta2[low])) < np.log(1.6)
    minimum = np.argmin(mean)
    assert 2.0 < bg[minimum] < 5.0
    assert np.all(np.diff(mean[:minimum]) < 0) and np.all(np.diff(mean[minimum:]) > 0)
    # relativistic rise, tamed by the density effect: compare with a gas whose delta is always 0
    rise = bethe_mean_dedx_kev_per_cm(1e4, PION) / mean[minimum]
    no_density = GasMixture(cbar=1e9)
    rise_without = (bethe_mean_dedx_kev_per_cm(1e4, PION, gas=no_density)
                    / bethe_mean_dedx_kev_per_cm(bg[minimum], PION, gas=no_density))
    assert 1.4 < rise < 1.9
    assert rise_without > rise + 0.2


def test_density_effect_limits() -> None:
    bg = np.geomspace(1.0, 1e6, 500)
    delta = density_effect(bg)
    x = np.log10(bg)
    assert np.all(delta[x < MDC_GAS.x0] == 0)
    high = x >= MDC_GAS.x1
    np.testing.assert_allclose(delta[high], 2 * np.log(bg[high]) - MDC_GAS.cbar, rtol=1e-12)
    assert np.all(delta >= 0) and np.all(np.diff(delta) >= 0)
    assert np.max(np.abs(np.diff(delta))) < 0.1  # continuous


def test_landau_width_and_most_probable_loss_for_a_cell() -> None:
    assert landau_xi_kev(MIP_BETAGAMMA, 1.2) == pytest.approx(0.098, rel=0.02)
    assert most_probable_loss_kev(MIP_BETAGAMMA, 1.2) == pytest.approx(1.23, rel=0.02)


def test_most_probable_loss_plateau_over_minimum() -> None:
    mpv = most_probable_loss_kev(np.geomspace(0.5, 1e6, 2000), 1.2)
    assert mpv[-1] / mpv.min() == pytest.approx(1.43, rel=0.10)
    # Fermi plateau: saturated once the density effect takes over
    assert most_probable_loss_kev(1e5, 1.2) == pytest.approx(mpv[-1], rel=1e-3)


def test_sampled_hit_loss_peaks_at_mpv_and_averages_to_bethe() -> None:
    rng = np.random.default_rng(5)
    losses = sample_hit_loss_kev(np.full(2_000_000, MIP_BETAGAMMA), 1.2, PION, rng)
    mpv = float(most_probable_loss_kev(MIP_BETAGAMMA, 1.2))
    counts, edges = np.histogram(losses, bins=np.arange(0.5, 2.5, 0.02))
    centres = 0.5 * (edges[1:] + edges[:-1])
    peak = np.argmax(counts)
    near = slice(peak - 5, peak + 6)  # +-0.1 keV: narrow enough that the skew barely shifts the vertex
    a, b, _ = np.polyfit(centres[near], counts[near], 2)
    assert -b / (2 * a) == pytest.approx(mpv, rel=0.015)
    assert losses.mean() == pytest.approx(1.2 * float(bethe_mean_dedx_kev_per_cm(MIP_BETAGAMMA, PION)),
                                          rel=0.03)
    assert np.all(losses > 0)


# --- truncated mean and the dE/dx scale ---------------------------------------------------------------------


def test_truncated_mean_keeps_lowest_seventy_percent_and_ignores_padding() -> None:
    rows = np.array([[10.0, 1, 9, 2, 8, 3, 7, 4, 6, 5], [3.0, 1, 2, 5, 4, np.nan, np.nan, np.inf, 0, 0]])
    result = truncated_mean(rows, np.array([10, 5]))
    np.testing.assert_allclose(result, [4.0, 2.0])  # mean(1..7); int(0.7 * 5) = 3 -> mean(1, 2, 3)
    assert truncated_mean(rows[:1], np.array([10]), fraction=0.5)[0] == pytest.approx(3.0)


def test_truncated_mean_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="nhits"):
        truncated_mean(np.ones((1, 4)), np.array([5]))
    with pytest.raises(DataError, match="kept hit"):
        truncated_mean(np.ones((1, 4)), np.array([1]))
    with pytest.raises(DataError, match="non-finite"):
        truncated_mean(np.array([[1.0, np.nan, 1.0]]), np.array([3]))
    with pytest.raises(DataError, match="fraction"):
        truncated_mean(np.ones((1, 4)), np.array([4]), fraction=0.0)


def test_electron_plateau_near_550() -> None:
    assert expected_dedx(1.0 / MASS_GEV["e-"], mass_gev=MASS_GEV["e-"]) == pytest.approx(ELECTRON_PLATEAU)
    dedx, _ = full_length_tracks("e-", 1.0, 20_000)
    assert np.mean(dedx) == pytest.approx(ELECTRON_PLATEAU, rel=0.02)


def test_resolution_of_full_length_mip_pions_is_about_six_percent() -> None:
    dedx, nhits = full_length_tracks("pi+", MIP_PION_P_GEV, 20_000)
    assert np.all(nhits <= MDC_GEOMETRY.n_layers) and nhits.mean() > 40
    assert 0.05 < np.std(dedx) / np.mean(dedx) < 0.075


def test_expected_curve_is_the_simulators_mean() -> None:
    for label, p_gev in [("pi+", MIP_PION_P_GEV), ("K+", 0.5), ("p", 0.8)]:
        dedx, _ = full_length_tracks(label, p_gev, 10_000)
        expected = expected_dedx(p_gev / MASS_GEV[label], mass_gev=MASS_GEV[label])
        assert np.mean(dedx) == pytest.approx(expected, rel=0.015)
    curve = expected_dedx(np.geomspace(0.1, 1e5, 300))
    assert curve[-1] / curve.min() == pytest.approx(1.4, rel=0.1)


def test_dedx_ordering_pion_kaon_proton_at_half_gev() -> None:
    means = [np.mean(full_length_tracks(label, 0.5, 5_000)[0]) for label in ("pi+", "K+", "p")]
    assert means[0] < means[1] < means[2]


# --- geometry -----------------------------------------------------------------------------------------------


def test_hits_decrease_at_small_polar_angle() -> None:
    n = 5_000
    mean_hits = [full_length_tracks("pi+", 1.0, n)[1].mean() if c == 0 else
                 dedx_for_kinematics(["pi+"] * n, np.full(n, 1.0), np.full(n, c))[1].mean()
                 for c in (0.0, 0.85, 0.9, 0.93)]
    assert mean_hits[0] > 41
    assert np.all(np.diff(mean_hits) < 0)


def test_low_transverse_momentum_tracks_curl_before_the_outer_layers() -> None:
    _, slow_hits = full_length_tracks("pi+", 0.1, 5_000)  # turns at 2 pT / 0.3 B = 67 cm
    _, fast_hits = full_length_tracks("pi+", 0.3, 5_000)
    assert slow_hits.max() < fast_hits.max() == MDC_GEOMETRY.n_layers


# --- the track sample ---------------------------------------------------------------------------------------


def test_simulated_table_columns_and_ranges() -> None:
    table, info = simulate_dedx(20_000, seed=2, chunk_size=7_000)
    assert set(table) == {"species", "charge", "p", "theta", "cos_theta", "nhits", "dedx"}
    assert all(len(column) == 20_000 for column in table.values())
    assert table["species"].dtype == object and set(table["species"]) == set(SPECIES)
    assert table["charge"].dtype == np.int8
    np.testing.assert_array_equal(table["charge"], [CHARGE[label] for label in table["species"]])
    assert np.all((table["p"] >= 0.1) & (table["p"] <= 2.0))
    np.testing.assert_allclose(np.cos(table["theta"]), table["cos_theta"])
    assert np.all(np.abs(table["cos_theta"]) <= 0.93)
    assert np.all((table["nhits"] >= 5) & (table["nhits"] <= 43))
    assert np.all(np.isfinite(table["dedx"]) & (table["dedx"] > 0))
    assert info["n_tracks"] == 20_000 and info["n_chunks"] == 3
    assert info["n_redrawn_few_hits"] > 0  # tracks near |cos theta| = 0.93 leave too early
    forward = np.abs(table["cos_theta"]) > 0.88
    assert table["nhits"][forward].mean() < table["nhits"][~forward].mean() - 10


def test_seeded_reproducibility() -> None:
    first, _ = simulate_dedx(3_000, seed=11)
    again, _ = simulate_dedx(3_000, seed=11)
    other, _ = simulate_dedx(3_000, seed=12)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["dedx"], other["dedx"])


def test_species_and_fractions() -> None:
    table, _ = simulate_dedx(4_000, seed=3, species=["K-", "p"], progress=True)
    assert set(table["species"]) == {"K-", "p"}
    table, _ = simulate_dedx(8_000, seed=3, fractions={"pi+": 3.0, "mu-": 1.0})
    share = np.mean(table["species"] == "pi+")
    assert share == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 10, "species": ["pi+", "kaon"]}, r"unknown species \['kaon'\]; allowed: \['e\+'"),
    ({"n": 0}, "positive integer"),
    ({"n": -5}, "positive integer"),
    ({"n": 10, "chunk_size": 0}, "chunk_size"),
    ({"n": 10, "species": ["p"], "fractions": {"K+": 1.0}}, "differ"),
    ({"n": 10, "fractions": {"p": -1.0, "K+": 1.0}}, "fractions"),
    ({"n": 10, "species": []}, "non-empty"),
    ({"n": 10, "species": ["p", "p"]}, "repeats"),
])
def test_bad_input_raises_data_error(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        simulate_dedx(**kwargs)


def test_dedx_for_kinematics_rejects_bad_tracks() -> None:
    with pytest.raises(DataError, match="unknown species"):
        dedx_for_kinematics(["pion"], [0.5], [0.0])
    with pytest.raises(DataError, match="cos_theta"):
        dedx_for_kinematics(["pi+"], [0.5], [1.0])
    dedx, nhits = dedx_for_kinematics(["pi+"], [0.5], [0.97])  # leaves through the endplate at once
    assert np.isnan(dedx[0]) and nhits[0] < MDC_GEOMETRY.min_hits


def test_physics_functions_reject_non_positive_betagamma() -> None:
    with pytest.raises(DataError, match="betagamma"):
        most_probable_loss_kev(np.array([1.0, -1.0]), 1.2)
    with pytest.raises(DataError, match="betagamma"):
        expected_dedx(1e-3)


@pytest.mark.slow
def test_speed_at_least_a_million_tracks_per_minute() -> None:
    simulate_dedx(1_000, seed=0)
    start = time.perf_counter()
    simulate_dedx(500_000, seed=1)
    assert 500_000 / (time.perf_counter() - start) * 60 > 1e6
