"""Photon validation: known answers (identical samples, a 10% wider resolution, a known correlation, tails)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detgen.cli import main
from detgen.errors import DataError
from detgen.io import write_table
from detgen.simulators.photons import RESPONSE_COLUMNS, STANDIN_RESOLUTION, smear_photons
from detgen.validation import metrics as m
from detgen.validation.photons import validate_photons
from photon_toy import higgs_truth, photon_sample


def test_clipped_width_of_a_gaussian_is_its_known_fraction() -> None:
    x = np.random.default_rng(0).normal(2.0, 3.0, 400_000)
    mean, width, kept = m.clipped_mean_width(x)
    # the fixed point of 3-sigma clipping for a Gaussian: width = 0.9856 sigma, 99.73%+ kept
    assert mean == pytest.approx(2.0, abs=0.02)
    assert width == pytest.approx(0.9856 * 3.0, rel=0.005)
    assert kept / x.size == pytest.approx(0.9968, abs=0.001)
    # a far outlier does not move the clipped width
    assert m.clipped_mean_width(np.append(x, 1e6))[1] == pytest.approx(width, rel=1e-4)


def test_identical_samples_give_zero_deviations(tmp_path) -> None:
    sample = photon_sample(20_000, scenario="asymmetric")
    metrics = validate_photons(sample, sample, tmp_path, min_entries=200, make_figures=False)
    assert metrics["resolution_bins_used"] > 40
    for key in ("max_rel_resolution_dev", "max_abs_corr_dev", "tail_fraction_rel_dev", "mgg_mean_dev_gev",
                "mgg_sd_rel_dev", "mean_wasserstein"):
        assert metrics[key] == pytest.approx(0.0, abs=1e-12), key
    assert metrics["mgg_mean_truth_gev"] == pytest.approx(125.0, abs=0.3)  # the low ET tail pulls it down
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["max_abs_corr_dev"] == 0.0 and (tmp_path / "report.html").exists()


def test_ten_percent_wider_resolution_is_measured(tmp_path) -> None:
    truth = photon_sample(30_000, seed=1)
    wider = dict(truth)
    for column in RESPONSE_COLUMNS:
        wider[column] = 1.1 * truth[column]
    metrics = validate_photons(truth, wider, tmp_path, min_entries=200, make_figures=False)
    # clipping is scale invariant: every used bin is exactly 10% wider
    assert metrics["max_rel_resolution_dev"] == pytest.approx(0.1, abs=1e-9)
    assert metrics["mean_rel_resolution_dev"] == pytest.approx(0.1, abs=1e-9)
    assert metrics["max_abs_corr_dev"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["mgg_sd_rel_dev"] > 5 * metrics["mgg_sd_rel_stat_unc"]  # < 10%: the window truncates
    # independent draws of a 10% wider response: ~0.1 on average over the bins, within statistics
    independent = dict(truth)
    fresh = smear_photons(truth, rng=99)
    for column in RESPONSE_COLUMNS:
        independent[column] = 1.1 * fresh[column]
    metrics = validate_photons(truth, independent, tmp_path, min_entries=2000, make_figures=False)
    assert metrics["mean_rel_resolution_dev"] == pytest.approx(0.1, abs=0.02)


def test_known_correlation_is_measured(tmp_path) -> None:
    rho = 0.5
    truth = photon_sample(40_000, scenario="baseline", seed=2)
    correlated = {**truth, **smear_photons(truth, scenario="correlation", rho=rho, rng=5)}
    metrics = validate_photons(truth, correlated, tmp_path, min_entries=200, make_figures=False)
    # Pearson correlation of responses with event-dependent widths R: rho E[R1 R2] / sqrt(E[R1^2] E[R2^2])
    for observable in ("et", "eta", "phi"):
        r1 = STANDIN_RESOLUTION.of(observable)(truth["et1"], truth["eta1"], truth["mu"])
        r2 = STANDIN_RESOLUTION.of(observable)(truth["et2"], truth["eta2"], truth["mu"])
        expected = rho * np.mean(r1 * r2) / np.sqrt(np.mean(r1**2) * np.mean(r2**2))
        key = f"corr_d_{observable}1_d_{observable}2"
        assert metrics[f"{key}_generated"] == pytest.approx(expected, abs=0.015)
        assert metrics[f"{key}_truth"] == pytest.approx(0.0, abs=0.015)
    assert metrics["max_abs_corr_dev"] == pytest.approx(0.47, abs=0.04)
    # the correlation leaves the per-photon resolutions unchanged
    assert metrics["mean_rel_resolution_dev"] < 0.03


def test_missing_tail_is_measured(tmp_path) -> None:
    truth = photon_sample(30_000, scenario="asymmetric", seed=3)
    baseline = {**truth, **smear_photons(truth, scenario="baseline", rng=6)}
    same_kind = {**truth, **smear_photons(truth, scenario="asymmetric", rng=7)}
    bad = validate_photons(truth, baseline, tmp_path, min_entries=500, make_figures=False)
    good = validate_photons(truth, same_kind, tmp_path, min_entries=500, make_figures=False)
    assert bad["tail_fraction_d_et1_truth"] > 3 * bad["tail_fraction_d_et1_generated"]
    assert bad["tail_fraction_rel_dev"] > 0.5 and good["tail_fraction_rel_dev"] < 0.15
    assert bad["mgg_mean_dev_gev"] > 3 * bad["mgg_mean_stat_unc_gev"]
    assert good["mgg_mean_dev_gev"] < 3 * good["mgg_mean_stat_unc_gev"]


def test_bad_input(tmp_path) -> None:
    sample = photon_sample(3000, seed=4)
    missing = {k: v for k, v in sample.items() if k != "mu"}
    with pytest.raises(DataError, match="missing column.*mu"):
        validate_photons(sample, missing, tmp_path, make_figures=False)
    nan = {k: v.copy() for k, v in sample.items()}
    nan["d_eta1"][7] = np.nan
    with pytest.raises(DataError, match="'d_eta1'"):
        validate_photons(sample, nan, tmp_path, make_figures=False)
    negative_mu = {k: v.copy() for k, v in sample.items()}
    negative_mu["mu"][0] = -1
    with pytest.raises(DataError, match="mu"):
        validate_photons(negative_mu, sample, tmp_path, make_figures=False)
    none = {k: v.copy() for k, v in sample.items()}
    none["et2"][:] = np.nan
    with pytest.raises(DataError, match="no event with two photons"):
        validate_photons(none, sample, tmp_path, make_figures=False)


def test_events_without_second_photon_are_counted(tmp_path) -> None:
    sample = photon_sample(3000, seed=5)
    one_photon = {k: v.copy() for k, v in sample.items()}
    for column in ("et2", "eta2", "phi2", "d_et2", "d_eta2", "d_phi2"):
        one_photon[column][:10] = np.nan
    one_photon["et2"][10:15] = -999.0
    metrics = validate_photons(one_photon, sample, tmp_path, min_entries=100, make_figures=False)
    assert metrics["excluded_single_photon_truth"] == 15 and metrics["excluded_single_photon_generated"] == 0
    assert metrics["n_truth"] == 2985


def test_cli_validate_photons_bad_file_is_one_line_error(tmp_path, capsys) -> None:
    truth_path, generated_path = tmp_path / "truth.parquet", tmp_path / "gen.parquet"
    truth = photon_sample(500, seed=6)
    write_table(truth_path, truth)
    write_table(generated_path, {k: v for k, v in truth.items() if k != "d_phi2"})
    assert main(["validate", "photons", "--truth", str(truth_path), "--generated", str(generated_path),
                 "-o", str(tmp_path / "out")]) == 2
    assert "gen.parquet: missing column(s) d_phi2" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_validate_photons_writes_report(tmp_path) -> None:
    truth_path, generated_path = tmp_path / "truth.parquet", tmp_path / "gen.parquet"
    truth = photon_sample(4000, seed=6)
    write_table(truth_path, truth)
    write_table(generated_path, {**truth, **smear_photons(higgs_truth(4000, 6), rng=8)})
    out = tmp_path / "report"
    assert main(["validate", "photons", "--truth", str(truth_path), "--generated", str(generated_path),
                 "-o", str(out), "--min-entries", "100"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"max_rel_resolution_dev", "max_abs_corr_dev", "tail_fraction_rel_dev", "mgg_mean_dev_gev",
            "mgg_sd_rel_dev", "mean_wasserstein"} <= set(metrics)
    assert (out / "report.html").exists() and (out / "correlations.png").exists()
    assert (out / "resolution_et_vs_mu.png").exists()
