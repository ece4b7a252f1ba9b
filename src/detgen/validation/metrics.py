"""Detector-agnostic distances and tests between a truth sample and a generated sample.

Everything here works on plain numpy arrays and knows nothing about a detector: 1-D Wasserstein and
Kolmogorov-Smirnov distances, the CaloChallenge separation power, binomial efficiencies and their
comparison (pulls, chi2/ndf), binned quantiles, and a classifier two-sample test (AUC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

FloatArray = NDArray[np.float64]

#: Quantiles of N(0, 1) at -1 and +1 sigma: half their distance is a robust Gaussian-core width.
ONE_SIGMA_QUANTILES: tuple[float, float] = (0.15865525393145707, 0.8413447460685429)


def _as_1d(values: ArrayLike, name: str) -> FloatArray:
    """Return ``values`` as a finite, non-empty 1-D float array or raise ValueError naming it."""
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty; expected at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def _as_2d(values: ArrayLike, name: str) -> FloatArray:
    """Return ``values`` as a finite (rows, columns) float array; a 1-D input is one column."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (rows, columns), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def wasserstein_1d(a: ArrayLike, b: ArrayLike) -> float:
    """1-D Wasserstein (earth mover's) distance W1 between two samples, in the samples' units."""
    return float(stats.wasserstein_distance(_as_1d(a, "a"), _as_1d(b, "b")))


def ks_statistic(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest distance between the empirical CDFs (0..1)."""
    sorted_a = np.sort(_as_1d(a, "a"))
    sorted_b = np.sort(_as_1d(b, "b"))
    # The supremum is reached at one of the sample points, so evaluating both ECDFs there is exact.
    points = np.concatenate([sorted_a, sorted_b])
    cdf_a = np.searchsorted(sorted_a, points, side="right") / sorted_a.size
    cdf_b = np.searchsorted(sorted_b, points, side="right") / sorted_b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def wasserstein_per_column(truth: ArrayLike, generated: ArrayLike, *, standardise: bool = True) -> FloatArray:
    """W1 of every column of ``generated`` against the same column of ``truth``.

    With ``standardise`` each column is divided by the truth sample's standard deviation first, so the
    result is in units of the truth spread and columns with different units can be averaged.
    """
    truth_2d = _as_2d(truth, "truth")
    generated_2d = _as_2d(generated, "generated")
    if truth_2d.shape[1] != generated_2d.shape[1]:
        raise ValueError(
            f"truth has {truth_2d.shape[1]} columns but generated has {generated_2d.shape[1]}; expected the same"
        )
    scale = np.ones(truth_2d.shape[1])
    if standardise:
        spread = truth_2d.std(axis=0)
        # A constant truth column has no natural scale; leave it unscaled rather than divide by zero.
        scale = np.where(spread > 0, spread, 1.0)
    return np.array(
        [
            stats.wasserstein_distance(truth_2d[:, i] / scale[i], generated_2d[:, i] / scale[i])
            for i in range(truth_2d.shape[1])
        ]
    )


def mean_wasserstein(truth: ArrayLike, generated: ArrayLike, standardise: bool = True) -> float:
    """Mean over columns of the 1-D W1 distance (see :func:`wasserstein_per_column`)."""
    return float(np.mean(wasserstein_per_column(truth, generated, standardise=standardise)))


def separation_power(a: ArrayLike, b: ArrayLike, bins: int | ArrayLike = 50) -> float:
    """CaloChallenge separation power S = 1/2 sum_i (h1_i - h2_i)^2 / (h1_i + h2_i).

    h1 and h2 are the histograms of ``a`` and ``b`` normalised to unit sum over the bins. ``bins`` is a
    number of equal-width bins spanning both samples, or explicit edges. S is 0 for identical histograms
    and 1 for histograms with no overlapping bin.
    """
    sample_a = _as_1d(a, "a")
    sample_b = _as_1d(b, "b")
    if np.ndim(bins) == 0:
        low = min(sample_a.min(), sample_b.min())
        high = max(sample_a.max(), sample_b.max())
        edges = np.linspace(low, high if high > low else low + 1.0, int(np.asarray(bins)) + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
    hist_a = np.histogram(sample_a, bins=edges)[0].astype(np.float64)
    hist_b = np.histogram(sample_b, bins=edges)[0].astype(np.float64)
    if hist_a.sum() == 0 or hist_b.sum() == 0:
        raise ValueError("no entries of a or b fall inside the bins; expected overlapping ranges")
    hist_a /= hist_a.sum()
    hist_b /= hist_b.sum()
    total = hist_a + hist_b
    filled = total > 0
    return float(0.5 * np.sum((hist_a[filled] - hist_b[filled]) ** 2 / total[filled]))


def separation_with_overflow(truth: ArrayLike, generated: ArrayLike, edges: ArrayLike) -> float:
    """Separation power on ``edges`` with values beyond the edges counted in the first/last bin (overflow)."""
    edges = np.asarray(edges, dtype=np.float64)
    span = float(edges[-1] - edges[0])
    inner = (float(edges[0]) + 1e-9 * span, float(edges[-1]) - 1e-9 * span)
    return separation_power(np.clip(np.asarray(truth, dtype=np.float64), *inner),
                            np.clip(np.asarray(generated, dtype=np.float64), *inner), bins=edges)


def truth_range_edges(truth: ArrayLike, generated: ArrayLike, *, discrete: bool = False, bins: int = 30) -> FloatArray:
    """Bin edges over the truth's 0.1-99.9 % range (the generated sample's if the truth is empty); integers
    (``discrete``): one bin per value."""
    a = np.asarray(truth, dtype=np.float64)
    low, high = np.quantile(a if a.size else np.asarray(generated, dtype=np.float64), [0.001, 0.999])
    if discrete:
        return np.arange(np.floor(low) - 0.5, np.ceil(high) + 1.0)
    return np.linspace(low, high if high > low else low + 1.0, bins + 1)


def separation_in_truth_range(truth: ArrayLike, generated: ArrayLike, *, discrete: bool = False,
                              bins: int = 30) -> float:
    """Separation power on :func:`truth_range_edges`, outliers of either sample counted in the outer bins."""
    return separation_with_overflow(truth, generated, truth_range_edges(truth, generated, discrete=discrete,
                                                                         bins=bins))

def binomial_efficiency(k: ArrayLike, n: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Efficiency k/n and its uncertainty for counts ``k`` passing out of ``n``.

    Rule: the efficiency is the maximum-likelihood value k/n; the uncertainty is the standard
    deviation of the Beta(k+1, n-k+1) posterior (uniform prior),
    sqrt((k+1)(n-k+1) / ((n+2)^2 (n+3))). It equals sqrt(eff(1-eff)/n) for large n and, unlike that
    formula, stays non-zero when k = 0 or k = n. Bins with n = 0 give NaN for both.
    """
    passed = np.asarray(k, dtype=np.float64)
    total = np.asarray(n, dtype=np.float64)
    if np.any(passed < 0) or np.any(passed > total):
        raise ValueError("binomial counts must satisfy 0 <= k <= n")
    with np.errstate(invalid="ignore", divide="ignore"):
        efficiency = np.where(total > 0, passed / total, np.nan)
        error = np.sqrt((passed + 1) * (total - passed + 1) / ((total + 2) ** 2 * (total + 3)))
    return efficiency, np.where(total > 0, error, np.nan)


@dataclass(frozen=True)
class Chi2Result:
    """Outcome of a bin-by-bin chi2 comparison.

    Attributes:
        chi2: sum of squared pulls over the bins used.
        ndf: number of bins used.
        n_skipped: bins left out (no entries, non-finite value, or zero total uncertainty).
    """

    chi2: float
    ndf: int
    n_skipped: int

    @property
    def chi2_ndf(self) -> float:
        """chi2 / ndf, NaN when no bin could be used."""
        return self.chi2 / self.ndf if self.ndf > 0 else float("nan")

    def __add__(self, other: Chi2Result) -> Chi2Result:
        """Combine two comparisons (chi2, ndf and skipped bins add)."""
        return Chi2Result(self.chi2 + other.chi2, self.ndf + other.ndf, self.n_skipped + other.n_skipped)


def pulls(values_a: ArrayLike, err_a: ArrayLike, values_b: ArrayLike, err_b: ArrayLike) -> FloatArray:
    """Per-bin pulls (b - a) / sqrt(err_a^2 + err_b^2); NaN where a bin cannot be compared."""
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    total_error = np.hypot(np.asarray(err_a, dtype=np.float64), np.asarray(err_b, dtype=np.float64))
    usable = np.isfinite(a) & np.isfinite(b) & np.isfinite(total_error) & (total_error > 0)
    result = np.full(np.broadcast(a, b, total_error).shape, np.nan)
    result[usable] = (b[usable] - a[usable]) / total_error[usable]
    return result


def chi2_ndf(values_a: ArrayLike, err_a: ArrayLike, values_b: ArrayLike, err_b: ArrayLike) -> Chi2Result:
    """Chi2 between two binned measurements with independent uncertainties.

    chi2 = sum_i (b_i - a_i)^2 / (err_a_i^2 + err_b_i^2) over bins where both values and both errors are
    finite and the total error is positive; the other bins (e.g. empty bins, whose values are NaN) are
    skipped and counted in ``n_skipped``.
    """
    pull = pulls(values_a, err_a, values_b, err_b)
    used = np.isfinite(pull)
    return Chi2Result(float(np.sum(pull[used] ** 2)), int(used.sum()), int(pull.size - used.sum()))


def efficiency_pulls(
    k_a: ArrayLike, n_a: ArrayLike, k_b: ArrayLike, n_b: ArrayLike, *, min_entries: int = 1
) -> FloatArray:
    """Pulls (eff_b - eff_a) / sqrt(err_a^2 + err_b^2) between two binned efficiencies.

    The errors are evaluated at the pooled efficiency (k_a + k_b) / (n_a + n_b), err_x^2 =
    eff_pool (1 - eff_pool) / n_x: the two-proportion z-test, whose pulls are close to N(0, 1) when both
    samples come from the same efficiency, even for efficiencies near 0 or 1. Bins where both samples
    are all-pass or all-fail have zero error and give NaN, as do bins with fewer than ``min_entries``
    tracks in either sample.
    """
    ka, na, kb, nb = (np.asarray(x, dtype=np.float64) for x in (k_a, n_a, k_b, n_b))
    usable = (na >= max(min_entries, 1)) & (nb >= max(min_entries, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (ka + kb) / (na + nb)
        eff_a = ka / na
        eff_b = kb / nb
        err_a = np.sqrt(pooled * (1 - pooled) / na)
        err_b = np.sqrt(pooled * (1 - pooled) / nb)
    return np.where(usable, pulls(eff_a, err_a, eff_b, err_b), np.nan)


def efficiency_chi2(
    k_a: ArrayLike, n_a: ArrayLike, k_b: ArrayLike, n_b: ArrayLike, *, min_entries: int = 1
) -> Chi2Result:
    """Chi2 of :func:`efficiency_pulls` over the bins; bins without a pull are skipped and counted."""
    pull = efficiency_pulls(k_a, n_a, k_b, n_b, min_entries=min_entries)
    used = np.isfinite(pull)
    return Chi2Result(float(np.sum(pull[used] ** 2)), int(used.sum()), int(pull.size - used.sum()))


def binned_quantiles(
    bin_index: ArrayLike, values: ArrayLike, n_bins: int, quantiles: ArrayLike
) -> tuple[FloatArray, NDArray[np.int64]]:
    """Quantiles of ``values`` within each bin, in one sort (fast for millions of rows).

    Args:
        bin_index: integer bin of every value; values outside 0..n_bins-1 are ignored.
        values: the values to summarise.
        n_bins: number of bins.
        quantiles: quantile levels in [0, 1].

    Returns:
        (result, counts): result has shape (n_bins, len(quantiles)) with linear interpolation between
        order statistics (numpy's default) and NaN for empty bins; counts is the number of values per bin.
    """
    index = np.asarray(bin_index, dtype=np.int64).ravel()
    data = np.asarray(values, dtype=np.float64).ravel()
    levels = np.atleast_1d(np.asarray(quantiles, dtype=np.float64))
    inside = (index >= 0) & (index < n_bins)
    index, data = index[inside], data[inside]
    sorted_values = data[np.lexsort((data, index))]
    counts = np.bincount(index, minlength=n_bins).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    result = np.full((n_bins, levels.size), np.nan)
    filled = counts > 0
    for j, level in enumerate(levels):
        position = starts[filled] + level * (counts[filled] - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, starts[filled] + counts[filled] - 1)
        fraction = position - low
        result[filled, j] = sorted_values[low] * (1 - fraction) + sorted_values[high] * fraction
    return result, counts


def core_mean_width(values: ArrayLike) -> tuple[float, float]:
    """Robust Gaussian-core location and width: the median and half the central 68.27% interval.

    Both equal (mu, sigma) for a Gaussian and ignore tails that would inflate a standard deviation.
    """
    sample = _as_1d(values, "values")
    low, median, high = np.quantile(sample, [ONE_SIGMA_QUANTILES[0], 0.5, ONE_SIGMA_QUANTILES[1]])
    return float(median), float(0.5 * (high - low))


def clipped_mean_width(values: ArrayLike, *, n_sigma: float = 3.0, max_iterations: int = 50,
                       tolerance: float = 1e-6) -> tuple[float, float, int]:
    """Iteratively n-sigma-clipped mean and standard deviation (the usual "core resolution" of a response).

    Start from the mean and standard deviation of all values; keep the values within ``n_sigma`` standard
    deviations of the mean; recompute both from the kept values; repeat until the kept set no longer changes
    (or the width changes by less than ``tolerance`` relative, or ``max_iterations``). For a Gaussian the
    3-sigma-clipped width is 0.986 sigma (the clipped tails are missing), the same for both samples
    compared, so ratios of clipped widths are unbiased.

    Returns:
        (mean, width, number of values kept).
    """
    sample = _as_1d(values, "values")
    keep = np.ones(sample.size, dtype=bool)
    mean, width = float(sample.mean()), float(sample.std())
    for _ in range(max_iterations):
        new_keep = np.abs(sample - mean) <= n_sigma * width
        if not new_keep.any():
            break
        new_mean, new_width = float(sample[new_keep].mean()), float(sample[new_keep].std())
        converged = np.array_equal(new_keep, keep) or abs(new_width - width) <= tolerance * max(width, 1e-300)
        keep, mean, width = new_keep, new_mean, new_width
        if converged:
            break
    return mean, width, int(keep.sum())


def classifier_auc(
    truth: ArrayLike, generated: ArrayLike, seed: int = 0, max_rows: int = 200_000, *, n_threads: int | None = 1
) -> float:
    """Classifier two-sample test: ROC AUC of a classifier trained to tell ``generated`` from ``truth``.

    Up to ``max_rows`` rows are drawn from each sample (the same number from both so the classes are
    balanced), a histogram gradient-boosted tree classifier is trained on one half and the AUC is
    measured on the held-out half. 0.5 means the samples cannot be told apart; 1.0 means perfectly
    separable. Values slightly below 0.5 are statistical fluctuations. Deterministic given ``seed``.

    ``n_threads`` caps the OpenMP threads of the boosting (None: the library default, all cores). The
    default of 1 is deliberate: at the default ``max_rows`` a single thread takes about a second, and
    OpenMP's spinning threads become many times slower on a machine busy with other work.
    """
    # Imported here: scikit-learn is heavy and only this function needs it.
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    truth_2d = _as_2d(truth, "truth")
    generated_2d = _as_2d(generated, "generated")
    if truth_2d.shape[1] != generated_2d.shape[1]:
        raise ValueError(
            f"truth has {truth_2d.shape[1]} features but generated has {generated_2d.shape[1]}; expected the same"
        )
    rng = np.random.default_rng(seed)
    n_rows = min(truth_2d.shape[0], generated_2d.shape[0], max_rows)
    if n_rows < 10:
        raise ValueError(f"classifier_auc needs at least 10 rows per sample, got {n_rows}")
    features = np.concatenate(
        [
            truth_2d[rng.choice(truth_2d.shape[0], n_rows, replace=False)],
            generated_2d[rng.choice(generated_2d.shape[0], n_rows, replace=False)],
        ]
    )
    labels = np.concatenate([np.zeros(n_rows), np.ones(n_rows)])
    order = rng.permutation(labels.size)
    train, test = order[: labels.size // 2], order[labels.size // 2 :]
    classifier = HistGradientBoostingClassifier(
        max_iter=300,
        learning_rate=0.1,
        # A held-out tenth stops the boosting once it no longer helps; too few rows to spare one otherwise.
        early_stopping=train.size >= 2000,
        validation_fraction=0.1,
        n_iter_no_change=20,
        random_state=seed,
    )
    with threadpool_limits(limits=n_threads, user_api="openmp"):
        classifier.fit(features[train], labels[train])
        score = classifier.predict_proba(features[test])[:, 1]
    return float(roc_auc_score(labels[test], score))
