"""Tests of the generic validation metrics, plots and report writers, against known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from detgen.validation import metrics, plots, report


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def test_wasserstein_identical_and_shifted(rng: np.random.Generator) -> None:
    sample = rng.normal(size=5000)
    assert metrics.wasserstein_1d(sample, sample) == 0.0
    # W1 between a distribution and its translate is exactly the shift.
    assert metrics.wasserstein_1d(sample, sample + 0.7) == pytest.approx(0.7, rel=1e-9)
    independent = metrics.wasserstein_1d(rng.normal(size=200_000), rng.normal(0.5, 1.0, size=200_000))
    assert independent == pytest.approx(0.5, abs=0.01)


def test_mean_wasserstein_standardises_by_truth_spread(rng: np.random.Generator) -> None:
    truth = np.column_stack([rng.normal(0, 1, 100_000), rng.normal(0, 100, 100_000)])
    generated = truth + np.array([0.2, 20.0])  # both columns shifted by 0.2 truth standard deviations
    per_column = metrics.wasserstein_per_column(truth, generated)
    assert per_column == pytest.approx([0.2, 0.2], rel=0.02)
    assert metrics.mean_wasserstein(truth, generated) == pytest.approx(0.2, rel=0.02)
    assert metrics.mean_wasserstein(truth, generated, standardise=False) == pytest.approx(10.1, rel=0.02)
    with pytest.raises(ValueError, match="columns"):
        metrics.mean_wasserstein(truth, truth[:, :1])


def test_ks_statistic(rng: np.random.Generator) -> None:
    sample = rng.normal(size=1000)
    assert metrics.ks_statistic(sample, sample) == 0.0
    assert metrics.ks_statistic(np.zeros(10), np.ones(10)) == 1.0
    a, b = rng.normal(size=3000), rng.normal(0.3, 1.0, size=2000)
    from scipy import stats

    assert metrics.ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        metrics.ks_statistic([1.0, np.nan], [1.0])


def test_separation_power_bounds(rng: np.random.Generator) -> None:
    sample = rng.normal(size=10_000)
    assert metrics.separation_power(sample, sample, bins=40) == 0.0
    assert metrics.separation_power(np.zeros(100), np.full(100, 10.0), bins=10) == pytest.approx(1.0)
    partial = metrics.separation_power(sample, sample + 1.0, bins=np.linspace(-5, 6, 50))
    assert 0.0 < partial < 1.0


def test_binomial_efficiency_rule() -> None:
    efficiency, error = metrics.binomial_efficiency([0, 5, 10, 0], [10, 10, 10, 0])
    assert efficiency[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert np.isnan(efficiency[3]) and np.isnan(error[3])
    assert np.all(error[:3] > 0)  # non-zero at 0 and 1, unlike sqrt(eff (1 - eff) / n)
    assert error[0] == pytest.approx(error[2])
    large_eff, large_err = metrics.binomial_efficiency(30_000, 100_000)
    assert large_eff == pytest.approx(0.3)
    assert large_err == pytest.approx(math.sqrt(0.3 * 0.7 / 100_000), rel=0.01)
    with pytest.raises(ValueError, match="k <= n"):
        metrics.binomial_efficiency([5], [3])


def test_chi2_of_consistent_histograms_is_about_one(rng: np.random.Generator) -> None:
    edges = np.linspace(-3, 3, 41)
    a = np.histogram(rng.normal(size=200_000), bins=edges)[0].astype(float)
    b = np.histogram(rng.normal(size=200_000), bins=edges)[0].astype(float)
    result = metrics.chi2_ndf(a, np.sqrt(a), b, np.sqrt(b))
    assert result.ndf == 40 and result.n_skipped == 0
    assert 0.4 < result.chi2_ndf < 1.8
    shifted = np.histogram(rng.normal(0.1, 1.0, size=200_000), bins=edges)[0].astype(float)
    assert metrics.chi2_ndf(a, np.sqrt(a), shifted, np.sqrt(shifted)).chi2_ndf > 10


def test_chi2_skips_and_counts_unusable_bins() -> None:
    result = metrics.chi2_ndf([1.0, np.nan, 2.0, 3.0], [0.1, 0.1, 0.0, 0.1], [1.1, 1.0, 2.0, 3.0],
                              [0.1, 0.1, 0.0, 0.1])
    assert result.ndf == 2 and result.n_skipped == 2
    assert result.chi2 == pytest.approx(0.5)
    empty = metrics.chi2_ndf([np.nan], [1.0], [1.0], [1.0])
    assert empty.ndf == 0 and math.isnan(empty.chi2_ndf)
    total = result + empty
    assert (total.ndf, total.n_skipped) == (2, 3)


def test_efficiency_pulls_are_standard_normal(rng: np.random.Generator) -> None:
    n_a, n_b = rng.integers(50, 5000, 4000), rng.integers(50, 5000, 4000)
    efficiency = rng.uniform(0.01, 0.99, 4000)
    pull = metrics.efficiency_pulls(rng.binomial(n_a, efficiency), n_a, rng.binomial(n_b, efficiency), n_b)
    assert abs(np.mean(pull)) < 0.06
    assert np.std(pull) == pytest.approx(1.0, abs=0.05)
    # All-pass in both samples carries no information: zero pooled error, skipped.
    skipped = metrics.efficiency_chi2([10, 5], [10, 10], [20, 12], [20, 20])
    assert (skipped.ndf, skipped.n_skipped) == (1, 1)
    few = metrics.efficiency_chi2([1], [2], [1], [3], min_entries=10)
    assert (few.ndf, few.n_skipped) == (0, 1)


def test_binned_quantiles_match_numpy(rng: np.random.Generator) -> None:
    values = rng.normal(size=10_000)
    bins = rng.integers(-1, 6, size=10_000)  # -1 is outside and ignored; bin 5 of 6 holds data
    result, counts = metrics.binned_quantiles(bins, values, 7, [0.1, 0.5, 0.9])
    for b in range(6):
        assert counts[b] == np.sum(bins == b)
        assert result[b] == pytest.approx(np.quantile(values[bins == b], [0.1, 0.5, 0.9]))
    assert counts[6] == 0 and np.all(np.isnan(result[6]))


def test_core_mean_width_of_gaussian(rng: np.random.Generator) -> None:
    mean, width = metrics.core_mean_width(rng.normal(3.0, 2.0, size=200_000))
    assert mean == pytest.approx(3.0, abs=0.02)
    assert width == pytest.approx(2.0, rel=0.01)


def test_classifier_auc_indistinguishable_and_separated(rng: np.random.Generator) -> None:
    same = metrics.classifier_auc(rng.normal(size=(60_000, 2)), rng.normal(size=(60_000, 2)), seed=1)
    assert abs(same - 0.5) < 0.02
    separated = metrics.classifier_auc(rng.normal(size=(5000, 2)), rng.normal(3.0, 1.0, size=(5000, 2)))
    assert separated > 0.9
    again = metrics.classifier_auc(rng.normal(size=(2000, 2)), rng.normal(0.5, 1.0, size=(2000, 2)), seed=3)
    assert 0.55 < again < 0.8


def test_write_metrics_converts_types_and_nan(tmp_path: Path) -> None:
    path = report.write_metrics(tmp_path / "sub" / "metrics.json", {
        "a": np.float32(0.25), "b": np.int64(3), "c": float("nan"), "d": float("inf"), "e": True,
        "f": np.array([1.0, np.nan]), "g": "text",
    })
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": 0.25, "b": 3, "c": None, "d": None, "e": True, "f": [1.0, None], "g": "text"}
    with pytest.raises(TypeError, match="object"):
        report.write_metrics(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_plots_and_report(tmp_path: Path, rng: np.random.Generator) -> None:
    truth, generated = rng.normal(size=5000), rng.normal(0.1, 1.0, size=4000)
    hist = plots.plot_hist_comparison(tmp_path / "hist.png", [(truth, generated), (truth, generated)],
                                      bins=30, xlabel="x (a.u.)", titles=["one", "two"])
    edges = np.linspace(0, 1, 6)
    curve = plots.plot_curve_comparison(tmp_path / "curve.png", edges,
                                        {"pi": (np.full(5, 0.9), np.full(5, 0.01))},
                                        {"pi": (np.full(5, 0.88), np.full(5, 0.01))},
                                        xlabel=r"$p$ (GeV/$c$)", ylabel="efficiency")
    image = plots.plot_hist2d_side_by_side(tmp_path / "twod.png", (truth, truth**2), (generated, generated**2),
                                           np.linspace(-3, 3, 20), np.geomspace(1e-3, 9, 20), logy=True)
    for path in (hist, curve, image):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))
    page = report.write_report_html(tmp_path, "A <title>", {"auc": 0.51, "missing": float("nan")},
                                    [("hist.png", "histograms"), ("curve.png", "curves")], notes="note & more")
    html = page.read_text()
    assert 'src="hist.png"' in html and 'src="curve.png"' in html
    assert "A &lt;title&gt;" in html and "note &amp; more" in html and "n/a" in html


def test_importing_plots_leaves_pyplot_alone() -> None:
    import subprocess
    import sys

    code = "import sys, detgen.validation.plots, detgen.validation.dedx; print('matplotlib.pyplot' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"
