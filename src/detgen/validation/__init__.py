"""Validation: generic truth-vs-generated metrics, figures, reports, and per-detector observables.

``metrics`` (distances and tests, detector-agnostic), ``plots`` (comparison figures), ``report``
(metrics.json and report.html) and one observables module per detector (``dedx`` for the BESIII
drift-chamber dE/dx). Import the observables modules directly: ``from detgen.validation import dedx``.
"""

from __future__ import annotations

from detgen.validation.metrics import (
    Chi2Result,
    binned_quantiles,
    binomial_efficiency,
    chi2_ndf,
    classifier_auc,
    core_mean_width,
    efficiency_chi2,
    efficiency_pulls,
    ks_statistic,
    mean_wasserstein,
    pulls,
    separation_power,
    wasserstein_1d,
    wasserstein_per_column,
)
from detgen.validation.report import write_metrics, write_report_html

__all__ = [
    "Chi2Result",
    "binned_quantiles",
    "binomial_efficiency",
    "chi2_ndf",
    "classifier_auc",
    "core_mean_width",
    "efficiency_chi2",
    "efficiency_pulls",
    "ks_statistic",
    "mean_wasserstein",
    "pulls",
    "separation_power",
    "wasserstein_1d",
    "wasserstein_per_column",
    "write_metrics",
    "write_report_html",
]
