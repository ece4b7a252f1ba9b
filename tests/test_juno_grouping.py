"""juno.group_pmt_rows (PMT rows of a point event summed in equal groups of neighbouring theta), pool_point_batches
(the rows of all events at one radius pooled) and radius_grid."""

from __future__ import annotations

import numpy as np
import pytest

from detgen.errors import DataError
from detgen.simulators.juno import (
    group_pmt_rows,
    pool_point_batches,
    radius_grid,
    radius_s,
    simulate_point_batches,
)


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


def test_pooled_rows_are_the_mean_count_per_radius_and_pmt() -> None:
    """Pooling 6 events at 2 radii in batches of 2 gives each PMT's mean count over its radius' 3 events (and with
    --group-pmts the group means of those); the hits pass through unchanged."""
    kwargs = {"batch_events": 2, "r_values_m": [12.0, 3.0], "seed": 4}
    batches = list(simulate_point_batches(6, **kwargs))
    pmt = {k: np.concatenate([b["pmt"][k] for b in batches]) for k in batches[0]["pmt"]}
    n_pmt = int(np.count_nonzero(pmt["event"] == 0))
    npe = pmt["npe"].reshape(6, n_pmt).astype(np.float64)
    radii = pmt["r_m"].reshape(6, n_pmt)[:, 0]
    pooled = list(pool_point_batches(iter(batches), 1))
    assert len(pooled) == 3 and all(len(b["pmt"]["npe"]) == 0 for b in pooled[:2])
    rows = pooled[-1]["pmt"]
    assert len(rows["npe"]) == 2 * n_pmt and set(rows["n_events"].tolist()) == {3}
    for index, radius in enumerate((3.0, 12.0)):  # rows sorted by radius, PMTs sorted by theta within a radius
        mine = rows["event"] == index
        np.testing.assert_allclose(rows["r_m"][mine], radius)
        order = np.argsort(pmt["theta"][:n_pmt], kind="stable")
        expected = npe[np.isclose(radii, radius)].mean(axis=0)[order]
        assert expected.sum() > 100
        np.testing.assert_allclose(rows["npe"][mine], expected, rtol=1e-6)
        np.testing.assert_allclose(rows["theta"][mine], pmt["theta"][:n_pmt][order], rtol=1e-6)
    for got, want in zip(pooled, batches, strict=True):
        np.testing.assert_array_equal(got["hits"]["time_ns"], want["hits"]["time_ns"])
    grouped = list(pool_point_batches(iter(batches), 14))[-1]["pmt"]
    assert len(grouped["npe"]) == 2 * n_pmt // 14 and set(grouped["n_pmt"].tolist()) == {14}
    np.testing.assert_allclose(grouped["npe"][: n_pmt // 14], rows["npe"][:n_pmt].reshape(-1, 14).mean(axis=1),
                               rtol=1e-5)


def test_pooling_needs_equal_events_per_radius() -> None:
    batches = simulate_point_batches(3, batch_events=3, r_values_m=[3.0, 12.0], seed=1)
    with pytest.raises(DataError, match="same number of events"):
        list(pool_point_batches(batches, 1))
    with pytest.raises(DataError, match="no events"):
        list(pool_point_batches(iter([]), 1))


def test_radius_grid_is_uniform_in_s_and_finest_at_the_edge() -> None:
    grid = radius_grid(50)
    assert grid[0] == 0.0 and grid[-1] == pytest.approx(17.7)
    np.testing.assert_allclose(np.diff(radius_s(grid, 17.7)), 1.0 / 49, rtol=1e-6)
    steps = np.diff(grid)
    assert steps[0] / steps[-1] == pytest.approx(3.0, rel=0.05)
    part = radius_grid(5, 10.0, 15.0)
    assert part[0] == pytest.approx(10.0) and part[-1] == pytest.approx(15.0) and np.all(np.diff(part) > 0)
    with pytest.raises(DataError, match="outside"):
        radius_grid(5, 0.0, 18.5)
