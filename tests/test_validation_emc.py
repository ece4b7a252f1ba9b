"""Tests of the EMC shower observables (known answers on hand-made maps) and the truth-vs-generated validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from detgen.cli import main as detgen
from detgen.errors import DataError
from detgen.io import write_table
from detgen.simulators.emc import PHYSICS, ShowerPhysics, simulate_emc
from detgen.validation.emc import (
    CRYSTAL_PITCH_CM,
    LAT_REFERENCE_CM,
    OBSERVABLES,
    ZERNIKE_RADIUS_CM,
    check_maps,
    energy_profiles,
    hit_energies,
    separation,
    shower_observables,
    validate_emc,
)

PITCH = CRYSTAL_PITCH_CM


def single(values: dict[tuple[int, int], float]) -> np.ndarray:
    """One (1, 11, 11) map with the given crystal energies (MeV)."""
    grid = np.zeros((1, 11, 11))
    for (z, phi), energy in values.items():
        grid[0, z, phi] = energy
    return grid


def observables_of(values: dict[tuple[int, int], float]) -> dict[str, float]:
    return {key: float(value[0]) for key, value in shower_observables(single(values)).items()}


# --- observables: known answers ----------------------------------------------------------------------------


def test_single_crystal_shower() -> None:
    obs = observables_of({(5, 5): 800.0})
    for size in (1, 3, 5, 7, 9, 11):
        assert obs[f"e{size}x{size}"] == 800.0
    assert obs["e1_over_e9"] == 1.0 and obs["e9_over_e25"] == 1.0 and obs["n_hits"] == 1
    assert obs["centroid_phi_cm"] == 0.0 and obs["centroid_z_cm"] == 0.0
    assert obs["lat_moment"] == 0.0 and obs["second_moment_cm2"] == 0.0
    assert obs["a20"] == pytest.approx(1.0) and obs["a42"] == pytest.approx(0.0, abs=1e-12)


def test_symmetric_cross_has_zero_centroid_and_known_moments() -> None:
    obs = observables_of({(5, 5): 100.0, (4, 5): 10.0, (6, 5): 10.0, (5, 4): 10.0, (5, 6): 10.0})
    assert obs["centroid_phi_cm"] == pytest.approx(0.0, abs=1e-12)
    assert obs["centroid_z_cm"] == pytest.approx(0.0, abs=1e-12)
    # LAT: the two hottest crystals (100 and one 10) count with r0 = 5.2 cm, the other three at r = pitch
    assert obs["lat_moment"] == pytest.approx(30 * PITCH**2 / (30 * PITCH**2 + 110 * LAT_REFERENCE_CM**2))
    assert obs["second_moment_cm2"] == pytest.approx(40 * PITCH**2 / 140)
    rho2 = (PITCH / ZERNIKE_RADIUS_CM) ** 2
    assert obs["a20"] == pytest.approx(abs(100 / 140 * -1 + 40 / 140 * (2 * rho2 - 1)))
    assert obs["a42"] == pytest.approx(0.0, abs=1e-12)  # exp(2i phi) cancels over four-fold symmetry
    assert obs["e1_over_e9"] == pytest.approx(100 / 140) and obs["n_hits"] == 5


def test_two_crystals_and_an_off_centre_seed() -> None:
    obs = observables_of({(5, 5): 60.0, (5, 6): 40.0})
    assert obs["centroid_phi_cm"] == pytest.approx(0.4 * PITCH) and obs["centroid_z_cm"] == 0.0
    assert obs["lat_moment"] == 0.0  # both crystals are among the two hottest
    assert obs["second_moment_cm2"] == pytest.approx(0.6 * (0.4 * PITCH) ** 2 + 0.4 * (0.6 * PITCH) ** 2)
    # two crystals along phi: exp(2i phi) = 1 for both, so |A42| is the plain radial sum
    r1, r2 = 0.4 * PITCH / ZERNIKE_RADIUS_CM, 0.6 * PITCH / ZERNIKE_RADIUS_CM
    assert obs["a42"] == pytest.approx(abs(0.6 * (4 * r1**4 - 3 * r1**2) + 0.4 * (4 * r2**4 - 3 * r2**2)))
    off = observables_of({(7, 8): 500.0})  # the seed is 2 rings up and 3 crystals along phi
    assert off["e1x1"] == 0.0 and off["e3x3"] == 0.0 and off["e5x5"] == 0.0 and off["e7x7"] == 500.0
    assert off["centroid_phi_cm"] == pytest.approx(3 * PITCH) and off["centroid_z_cm"] == pytest.approx(2 * PITCH)
    assert off["a20"] == pytest.approx(1.0) and off["second_moment_cm2"] == 0.0  # moments follow the seed


def test_threshold_profiles_and_hit_spectrum() -> None:
    maps = single({(5, 5): 50.0, (5, 6): 0.3, (2, 5): 0.7})
    obs = shower_observables(maps)
    assert obs["n_hits"][0] == 2 and obs["e11x11"][0] == pytest.approx(50.7)  # 0.3 MeV is below 0.5 MeV
    np.testing.assert_allclose(np.sort(hit_energies(maps)), [0.7, 50.0])
    profile_phi, profile_z = energy_profiles(maps)
    assert profile_phi[0, 5] == pytest.approx(50.7) and profile_phi[0, 6] == 0.0
    assert profile_z[0, 2] == pytest.approx(0.7) and profile_z[0, 5] == pytest.approx(50.0)


def test_separation_known_answers() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=20000)
    assert separation(a, a) == 0.0
    assert separation(a, a + 20.0) > 0.99  # disjoint but for the truth's own 0.1% in the overflow bin
    assert separation(a, rng.normal(size=20000)) < 0.005


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("maps", "message"), [
    (np.zeros((3, 10, 11)), r"shape \(3, 10, 11\); expected \(N, 11, 11\)"),
    (np.zeros((3, 121)), r"expected \(N, 11, 11\)"),
    (np.where(np.arange(3 * 121).reshape(3, 11, 11) == 130, np.nan, 1.0), r"1 NaN/inf values \(first at row 1, "
                                                                          r"crystal \[0, 9\]"),
    (np.where(np.arange(3 * 121).reshape(3, 11, 11) == 5, -1.5, 1.0), r"1 energies below -1.0 MeV \(first at "
                                                                      r"row 0, crystal \[0, 5\] = -1.5\)"),
])
def test_bad_maps_are_rejected(maps: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_maps(maps, "generated")


def test_noise_sized_negative_energies_are_accepted() -> None:
    maps = np.full((2, 11, 11), -0.9)  # within 5 sigma of the 0.2 MeV noise
    assert check_maps(maps).shape == (2, 11, 11)


# --- validation --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples() -> dict[str, dict[str, np.ndarray]]:
    wide = ShowerPhysics(moliere_radius_cm=1.5 * PHYSICS.moliere_radius_cm)
    return {"truth": simulate_emc(2000, seed=11)[0], "same": simulate_emc(2000, seed=12)[0],
            "wide": simulate_emc(2000, seed=12, physics=wide)[0]}


def test_same_physics_is_indistinguishable(samples: dict, tmp_path: Path) -> None:
    metrics = validate_emc(samples["truth"], samples["same"], tmp_path / "same", make_figures=False)
    # statistical floor ~ bins (1/N1 + 1/N2) / 4 = 0.0075 per observable; the truth halves have twice that
    assert metrics["max_separation_power_all_momenta"] < 0.02
    assert metrics["max_separation_power_all_momenta"] < 1.5 * metrics["separation_floor_max"]
    # within the momentum bins (~330 showers each) the floor is several times higher, and the per-bin maximum
    # of two samples of the same physics sits below it: per-bin values at that level say nothing about a model
    assert metrics["separation_floor_max_per_bin"] > 2 * metrics["separation_floor_max"]
    assert metrics["max_separation_power"] < metrics["separation_floor_max_per_bin"]
    assert all(0 < metrics[f"separation_floor_p{i}"] <= metrics["separation_floor_max_per_bin"] for i in range(6))
    assert abs(metrics["classifier_auc_high_level"] - 0.5) < 0.05
    assert abs(metrics["classifier_auc_maps"] - 0.5) < 0.05
    assert metrics["classifier_conditions"] == "mom,dtheta_mom,dphi_mom,dz_pos,dphi_pos,z"
    written = json.loads((tmp_path / "same" / "metrics.json").read_text())
    for name in [*OBSERVABLES, "hit_energy", "profile_phi", "profile_z"]:
        assert f"sep_{name}" in written and f"sep_{name}_p1" in written
    assert (tmp_path / "same" / "report.html").exists()


def test_validation_is_deterministic_given_the_seed(samples: dict, tmp_path: Path) -> None:
    first = validate_emc(samples["truth"], samples["same"], tmp_path / "a", make_figures=False, seed=3)
    second = validate_emc(samples["truth"], samples["same"], tmp_path / "b", make_figures=False, seed=3)
    assert first == second


def test_identical_samples_give_zero_separation(samples: dict, tmp_path: Path) -> None:
    metrics = validate_emc(samples["truth"], samples["truth"], tmp_path / "identical", make_figures=False)
    assert metrics["max_separation_power"] == 0.0
    # the same rows in both classes: the classifier learns the training rows' labels and is wrong on their
    # copies in the test half, so the AUC drops below 0.5 (the signature of a generator copying truth showers)
    assert metrics["classifier_auc_high_level"] < 0.5


def test_wider_showers_are_caught(samples: dict, tmp_path: Path) -> None:
    metrics = validate_emc(samples["truth"], samples["wide"], tmp_path / "wide", make_figures=False)
    assert metrics["max_separation_power"] > 0.2
    assert metrics["sep_e1_over_e9"] > 0.05 and metrics["sep_e11x11"] < metrics["sep_e1_over_e9"]
    assert metrics["classifier_auc_high_level"] > 0.8 and metrics["classifier_auc_maps"] > 0.8


def test_energy_scale_is_caught_in_every_momentum_bin(samples: dict, tmp_path: Path) -> None:
    scaled = dict(samples["same"], map=samples["same"]["map"] * 0.9)
    metrics = validate_emc(samples["truth"], scaled, tmp_path / "scaled", make_figures=False)
    for i in range(6):
        assert metrics[f"sep_e11x11_p{i}"] > 0.1
        assert metrics[f"response_p{i}_generated"] == pytest.approx(0.9 * metrics[f"response_p{i}_truth"], rel=0.02)
    # the simulator's resolution near 1 GeV/c (bins 0.5-1 and 1-1.5) is ~2.5-3.5% (leakage tails excluded)
    assert 0.02 < metrics["resolution_p1_truth"] < 0.04 and 0.02 < metrics["resolution_p2_truth"] < 0.04
    assert metrics["classifier_auc_high_level"] > 0.9


@pytest.mark.slow
def test_figures_and_report(tmp_path: Path) -> None:
    truth, _ = simulate_emc(400, seed=1)
    generated, _ = simulate_emc(400, seed=2)
    out = tmp_path / "report"
    validate_emc(truth, generated, out, momentum_bins=(0.0, 1.5, 3.0), n_examples=3)
    for name in ("observables", "hit_energy", "profile_phi", "profile_z", "separation_power", "mean_showers",
                 "example_showers"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert "max_separation_power" in (out / "report.html").read_text()


def test_bad_input_writes_nothing(samples: dict, tmp_path: Path) -> None:
    out = tmp_path / "never"
    no_momentum = {"map": samples["same"]["map"]}
    with pytest.raises(DataError, match=r"generated: missing column\(s\) \['mom'\]"):
        validate_emc(samples["truth"], no_momentum, out)
    nan_momentum = dict(samples["same"], mom=np.where(np.arange(2000) == 7, math.nan, samples["same"]["mom"]))
    with pytest.raises(DataError, match=r"generated: column 'mom' has 1 NaN/inf values \(first at row 7\)"):
        validate_emc(samples["truth"], nan_momentum, out)
    with pytest.raises(DataError, match="truth: column 'map': maps have shape"):
        validate_emc(dict(samples["truth"], map=samples["truth"]["map"][:, :10]), samples["same"], out)
    with pytest.raises(DataError, match="momentum_bins"):
        validate_emc(samples["truth"], samples["same"], out, momentum_bins=(1.0, 0.5))
    negative_momentum = dict(samples["same"], mom=-samples["same"]["mom"])
    with pytest.raises(DataError, match="column 'mom' has 2000 values <= 0"):
        validate_emc(samples["truth"], negative_momentum, out)
    assert not out.exists()


def test_cli(samples: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth_path, generated_path = tmp_path / "truth.h5", tmp_path / "gen.h5"
    write_table(truth_path, {k: v[:500] for k, v in samples["truth"].items()})
    write_table(generated_path, {k: v[:500] for k, v in samples["same"].items()})
    out = tmp_path / "cli_report"
    assert detgen(["validate", "emc", "--truth", str(truth_path), "--generated", str(generated_path), "-o", str(out),
                   "--momentum-bins", "0,1,2,3", "--no-figures"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"max_separation_power", "classifier_auc_high_level", "classifier_auc_maps", "sep_a42_p2"} <= set(metrics)
    capsys.readouterr()
    bad = {k: v[:500] for k, v in samples["same"].items()}
    bad["map"] = bad["map"].copy()
    bad["map"][3, 2, 2] = -4.0
    bad_path = tmp_path / "bad.h5"
    write_table(bad_path, bad)
    assert detgen(["validate", "emc", "--truth", str(truth_path), "--generated", str(bad_path), "-o",
                   str(tmp_path / "bad_report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 3, crystal [2, 2] = -4.0" in err[0]
    assert not (tmp_path / "bad_report").exists()
