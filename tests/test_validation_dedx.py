"""Tests of the BESIII dE/dx observables on a toy with a known expected curve and Gaussian resolution."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from detgen.errors import ConfigError, DataError
from detgen.particles import HYPOTHESIS_OF, MASS_GEV
from detgen.validation import dedx

#: Toy truth: a realistic BESIII-like curve (plateau ~550, minimum ~380 at bg ~ 3.5).
CURVE = (43.8, 7.76, 0.003, 2.0, 1.0)
#: sigma/E = 6% (1 + 0.15 bg^-1.5) (N_use/35)^-0.6 sin(theta)^0.4.
RESOLUTION = (0.06, 0.15, 1.5, 0.6, -0.4)
SPECIES_FRACTIONS = {"pi+": 0.2, "pi-": 0.2, "K+": 0.13, "K-": 0.12, "p": 0.18, "pbar": 0.17}


def make_toy(n: int, seed: int, *, kaon_shift: float = 0.0, distortion: float = 0.0) -> dict[str, np.ndarray]:
    """Toy dE/dx table: dedx = E(bg) (1 + sigma/E * N(0,1)).

    ``kaon_shift`` scales kaon dE/dx by (1 + shift); ``distortion`` multiplies the expected curve by
    1 + distortion * sin(3 log10 bg), a shape the BESIII functional form cannot follow.
    """
    rng = np.random.default_rng(seed)
    labels = np.array(list(SPECIES_FRACTIONS), dtype=object)
    index = rng.choice(labels.size, size=n, p=list(SPECIES_FRACTIONS.values()))
    species = labels[index]
    p = rng.uniform(0.1, 2.0, n)
    cos_theta = rng.uniform(-0.93, 0.93, n)
    nhits = rng.integers(15, 44, n).astype(np.float64)
    mass = np.array([MASS_GEV[s] for s in labels])[index]
    bg = p / mass
    relative = dedx.relative_resolution(bg, dedx.n_used_hits(nhits), np.sqrt(1 - cos_theta**2), *RESOLUTION)
    expected = dedx.expected_curve(bg, *CURVE) * (1 + distortion * np.sin(3 * np.log10(bg)))
    values = expected * (1 + relative * rng.standard_normal(n))
    kaon = np.array([HYPOTHESIS_OF[s] == "K" for s in labels])[index]
    values[kaon] *= 1 + kaon_shift
    return {"species": species, "p": p, "theta": np.arccos(cos_theta), "nhits": nhits, "dedx": values}


@pytest.fixture(scope="module")
def truth() -> dict[str, np.ndarray]:
    return make_toy(200_000, seed=1)


@pytest.fixture(scope="module")
def same_model_result(truth: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("same_model")
    metrics = dedx.validate_dedx(truth, make_toy(150_000, seed=2), out, seed=0)
    return metrics, out


def test_calibration_recovers_known_curve_and_resolution(truth: dict[str, np.ndarray]) -> None:
    calibration = dedx.fit_calibration(truth)
    bg = np.geomspace(0.12, 14.0, 200)  # the bg range the toy covers (p 0.1-2 GeV/c, pi to p)
    expected = dedx.expected_curve(bg, *CURVE)
    assert np.max(np.abs(calibration.expected(bg) / expected - 1)) < 0.015
    nhits, sin_theta = np.array([20.0, 30.0, 43.0]), np.array([0.5, 0.8, 1.0])
    for b in (0.3, 1.0, 5.0):
        true_sigma = dedx.expected_curve(b, *CURVE) * dedx.relative_resolution(b, dedx.n_used_hits(nhits), sin_theta, *RESOLUTION)
        assert np.allclose(calibration.sigma(b, nhits, sin_theta), true_sigma, rtol=0.05)
    assert calibration.curve_converged
    assert abs(calibration.resolution[3] - RESOLUTION[3]) < 0.1  # N_use exponent
    assert abs(calibration.resolution[4] - RESOLUTION[4]) < 0.1  # sin(theta) exponent


def test_residual_correction_follows_a_shape_the_functional_form_misses() -> None:
    distorted = make_toy(200_000, seed=4, distortion=0.05)
    bg = np.geomspace(0.12, 14.0, 200)
    expected = dedx.expected_curve(bg, *CURVE) * (1 + 0.05 * np.sin(3 * np.log10(bg)))
    corrected = dedx.fit_calibration(distorted)
    plain = dedx.fit_calibration(distorted, residual_correction=False)
    # The last few % of the range (the steep, sparse low-bg edge) are the least constrained.
    assert np.max(np.abs(corrected.expected(bg) / expected - 1)) < 0.02
    assert np.max(np.abs(plain.expected(bg) / expected - 1)) > 0.04
    assert corrected.to_metrics()["calib_curve_max_abs_correction"] > 0.01


def test_chi_is_standard_normal_for_own_hypothesis(truth: dict[str, np.ndarray]) -> None:
    calibration = dedx.fit_calibration(truth)
    chis = dedx.chi(truth, calibration, hypotheses=dedx.ALL_HYPOTHESES)
    assert set(chis) == {"e", "mu", "pi", "K", "p"}
    pions = np.array([HYPOTHESIS_OF[s] == "pi" for s in truth["species"]])
    assert abs(np.mean(chis["pi"][pions])) < 0.05
    assert abs(np.std(chis["pi"][pions]) - 1) < 0.05


def test_pid_efficiency_high_at_low_p_and_lower_where_bands_overlap(truth: dict[str, np.ndarray]) -> None:
    calibration = dedx.fit_calibration(truth)
    tracks = dedx.as_tracks(truth)
    assigned = dedx.identify(dedx.chi(tracks, calibration), tracks.nhits)
    counts = dedx.pid_counts(tracks, assigned, ("pi", "K", "p"), tracks.p, [0.2, 0.5, 1.6, 2.0])
    efficiency, error = counts.rate("pi", "pi")
    assert efficiency[0] > 0.98  # pi/K well separated at 0.2-0.5 GeV/c
    assert efficiency[2] < 0.85  # pi/K bands overlap above 1.6 GeV/c
    assert np.all(error > 0)
    misid, _ = counts.rate("pi", "K")
    assert misid[2] > 0.1


def test_identify_applies_chi_and_hit_cuts() -> None:
    chis = {"pi": np.array([0.5, 5.0, -0.2, 0.1]), "K": np.array([2.0, 4.5, 0.1, 3.0])}
    assigned = dedx.identify(chis, nhits=np.array([30, 30, 30, 3]))
    assert assigned.tolist() == [0, -1, 1, -1]


def test_same_model_is_consistent(same_model_result: tuple[dict, Path]) -> None:
    metrics, _ = same_model_result
    assert metrics["pid_eff_chi2_ndf"] < 2
    assert metrics["misid_chi2_ndf"] < 2
    assert metrics["classifier_auc"] < 0.55
    assert metrics["max_ks"] < 0.12  # largest of ~100 bins of ~1000 tracks: ~0.07 from statistics alone
    assert metrics["max_ks_scaled"] < 2.4  # Kolmogorov distribution: P(> 2.4) ~ 2e-5 per bin
    assert metrics["n_truth"] == 200_000 and metrics["n_generated"] == 150_000
    for hypothesis in ("pi", "K", "p"):
        assert metrics[f"pid_eff_chi2_ndf_p_{hypothesis}"] < 2.5
        assert abs(metrics[f"chi_mean_generated_{hypothesis}"]) < 0.1


def test_kaon_shift_is_detected(truth: dict[str, np.ndarray], same_model_result: tuple[dict, Path],
                                tmp_path: Path) -> None:
    reference, _ = same_model_result
    shifted = dedx.validate_dedx(truth, make_toy(150_000, seed=3, kaon_shift=0.05), tmp_path, make_figures=False)
    assert shifted["pid_eff_chi2_ndf_p_K"] > 5
    assert shifted["pid_eff_chi2_ndf_p_K"] > 3 * shifted["pid_eff_chi2_ndf_p_pi"]
    # Kaons are a quarter of the tracks and the shift is 0.8 sigma: the expected AUC is about 0.55.
    assert shifted["classifier_auc"] > reference["classifier_auc"] + 0.03
    assert shifted["chi_mean_generated_K"] > 0.4
    assert shifted["max_ks_K"] > 3 * shifted["max_ks_pi"]
    assert shifted["max_ks_scaled"] > 5


def test_lepton_hypotheses_without_lepton_tracks(tmp_path: Path) -> None:
    metrics = dedx.validate_dedx(make_toy(60_000, seed=5), make_toy(50_000, seed=6), tmp_path,
                                 hypotheses=dedx.ALL_HYPOTHESES, make_figures=False)
    assert "misid_chi2_ndf_pi_to_e" in metrics and "pid_eff_chi2_ndf_p_pi" in metrics
    # No lepton tracks: leptons appear only as the hypothesis a hadron is mis-identified as.
    lepton_as_truth = re.compile(r"(pid_eff|chi_mean|chi_width|mean_wasserstein|max_ks).*_(e|mu)$|_(e|mu)_to_|(e|mu)[+-]$")
    assert not [key for key in metrics if lepton_as_truth.search(key)]
    assert metrics["hypotheses"] == "e,mu,pi,K,p"


def test_small_generated_sample_falls_back_to_coarser_distribution_grid(
    truth: dict[str, np.ndarray], tmp_path: Path
) -> None:
    metrics = dedx.validate_dedx(truth, make_toy(3000, seed=7), tmp_path, make_figures=False)
    assert metrics["distribution_grid"] in ("p", "none")
    assert np.isfinite(metrics["mean_wasserstein"]) and metrics["n_distribution_bins"] > 0
    assert np.isfinite(metrics["pid_eff_chi2_ndf"]) and np.isfinite(metrics["classifier_auc"])


def test_outputs_are_written_and_documented(same_model_result: tuple[dict, Path]) -> None:
    metrics, out = same_model_result
    written = json.loads((out / "metrics.json").read_text())
    assert set(written) == set(metrics)
    for key in ("pid_eff_chi2_ndf", "misid_chi2_ndf", "classifier_auc", "mean_wasserstein", "max_ks", "n_truth",
                "n_generated", "calib_curve_p0", "pid_eff_chi2_ndf_cos_theta_K", "misid_chi2_ndf_pi_to_K",
                "pid_eff_chi2_ndf_species_pbar"):
        assert key in written
    documented = (Path(__file__).parents[1] / "docs" / "metrics_dedx.md").read_text()
    patterns = [re.escape(k).replace(r"<h>", ".+").replace(r"<a>", ".+").replace(r"<b>", ".+")
                .replace(r"<sample>", "(truth|generated)").replace(r"<label>", ".+").replace(r"<binning>", ".+")
                for k in re.findall(r"`([a-z0-9_<>]+)`", documented)]
    for key in written:
        assert any(re.fullmatch(pattern, key) for pattern in patterns), f"{key} is not documented"
    html = (out / "report.html").read_text()
    pngs = sorted(path.name for path in out.glob("*.png"))
    assert len(pngs) >= 8
    for name in pngs:
        assert f'src="{name}"' in html
    assert not list(out.glob("*.tmp"))


def test_missing_column_is_named(truth: dict[str, np.ndarray], tmp_path: Path) -> None:
    broken = {k: v for k, v in truth.items() if k != "nhits"}
    with pytest.raises(DataError, match="nhits"):
        dedx.validate_dedx(truth, broken, tmp_path)


def test_nan_is_named(truth: dict[str, np.ndarray], tmp_path: Path) -> None:
    broken = dict(truth, dedx=truth["dedx"].copy())
    broken["dedx"][5] = np.nan
    with pytest.raises(DataError, match="'dedx'"):
        dedx.validate_dedx(broken, truth, tmp_path)


def test_unknown_species_is_named(truth: dict[str, np.ndarray], tmp_path: Path) -> None:
    broken = dict(truth, species=truth["species"].copy())
    broken["species"][0] = "kaon"
    with pytest.raises(DataError, match=r"species.*kaon"):
        dedx.validate_dedx(truth, broken, tmp_path)


def test_species_only_in_one_sample(truth: dict[str, np.ndarray], tmp_path: Path) -> None:
    keep = truth["species"] != "pbar"
    without_pbar = {k: v[keep] for k, v in truth.items()}
    with pytest.raises(DataError, match="pbar"):
        dedx.validate_dedx(truth, without_pbar, tmp_path)


def test_bad_values_and_hypotheses(truth: dict[str, np.ndarray], tmp_path: Path) -> None:
    negative = dict(truth, p=-truth["p"])
    with pytest.raises(DataError, match="'p'"):
        dedx.as_tracks(negative)
    short = dict(truth, theta=truth["theta"][:10])
    with pytest.raises(DataError, match="'theta'"):
        dedx.as_tracks(short)
    with pytest.raises(ConfigError, match="kaon"):
        dedx.validate_dedx(truth, truth, tmp_path, hypotheses=("pi", "kaon"))
