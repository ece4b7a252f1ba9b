"""juno.group_pmt_rows: PMT rows of a point event summed in equal groups of neighbouring theta."""

from __future__ import annotations

import numpy as np
import pytest

from detgen.errors import DataError
from detgen.simulators.juno import group_pmt_rows


def _table(n_events: int, n_pmt: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    theta = np.arccos(rng.uniform(-1, 1, (n_events, n_pmt)))
    r = np.repeat(rng.uniform(0, 17.7, n_events), n_pmt).reshape(n_events, n_pmt)
    lam = 0.2 * np.exp(-1.5 * theta) * (1 + r / 17.7)
    return {"event": np.repeat(np.arange(n_events, dtype=np.int32), n_pmt), "pmt": np.tile(np.arange(n_pmt), n_events),
            "r_m": r.ravel().astype(np.float32), "theta": theta.ravel().astype(np.float32),
            "npe": rng.poisson(lam).ravel().astype(np.int32)}


def test_groups_keep_every_count_and_sort_by_theta() -> None:
    table = _table(3, 28)
    grouped = group_pmt_rows(table, 14)
    assert len(grouped["npe"]) == 6 and set(grouped["n_pmt"].tolist()) == {14}
    for event in range(3):
        rows = grouped["event"] == event
        assert grouped["npe"][rows].sum() * 14 == pytest.approx(table["npe"][table["event"] == event].sum(), rel=1e-6)
        theta = np.sort(table["theta"][table["event"] == event])
        np.testing.assert_allclose(grouped["theta"][rows], [theta[:14].mean(), theta[14:].mean()], rtol=1e-6)
        np.testing.assert_allclose(grouped["r_m"][rows], table["r_m"][table["event"] == event][0])
    # the low-theta group holds the 14 smallest angles of its event with their own counts
    order = np.argsort(table["theta"][:28], kind="stable")
    assert grouped["npe"][0] * 14 == pytest.approx(table["npe"][:28][order[:14]].sum(), rel=1e-6)


def test_grouped_poisson_fit_equals_the_per_pmt_fit() -> None:
    """The maximum-likelihood lambda = c exp(b theta) on grouped rows matches the per-PMT fit (smooth lambda)."""
    from scipy.optimize import minimize

    table = _table(40, 1400, seed=2)
    grouped = group_pmt_rows(table, 14)

    def fit(theta: np.ndarray, counts: np.ndarray) -> np.ndarray:
        def nll(p: np.ndarray) -> float:
            log_lam = p[0] + p[1] * theta
            return float(np.sum(np.exp(log_lam) - counts * log_lam))
        return minimize(nll, np.array([-1.0, -1.0]), method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-9}).x

    per_pmt = fit(table["theta"].astype(np.float64), table["npe"].astype(np.float64))
    per_group = fit(grouped["theta"].astype(np.float64), grouped["npe"].astype(np.float64))
    np.testing.assert_allclose(per_group, per_pmt, atol=3e-3)
    assert per_pmt[1] == pytest.approx(-1.5, abs=0.1)  # and both find the true slope


def test_group_errors() -> None:
    table = _table(2, 28)
    with pytest.raises(DataError, match="must divide"):
        group_pmt_rows(table, 8)
    with pytest.raises(DataError, match="positive"):
        group_pmt_rows(table, 0)
    shuffled = {k: v[::-1].copy() for k, v in table.items()}
    with pytest.raises(DataError, match="ordered by event"):
        group_pmt_rows(shuffled, 14)
