"""The photon simulator: resolution functions, the three response scenarios, Pythia truth and its sharding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from detgen.cli import main
from detgen.errors import ConfigError, DataError
from detgen.io import read_table
from detgen.simulators import photons as ph


def toy_truth(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Truth-like photons without Pythia: ET 20-250 GeV, |eta| < 2.5, mu U(0, 40)."""
    rng = np.random.default_rng(seed)
    et = np.sort(rng.uniform(20, 250, (n, 2)), axis=1)[:, ::-1]
    return {"et1": et[:, 0], "eta1": rng.uniform(-2.5, 2.5, n), "phi1": rng.uniform(-np.pi, np.pi, n),
            "et2": et[:, 1], "eta2": rng.uniform(-2.5, 2.5, n), "phi2": rng.uniform(-np.pi, np.pi, n),
            "mu": rng.uniform(0, 40, n)}


def pulls(truth: dict[str, np.ndarray], response: dict[str, np.ndarray], observable: str, i: int) -> np.ndarray:
    """Responses in units of the photon's resolution function."""
    r = ph.STANDIN_RESOLUTION.of(observable)(truth[f"et{i}"], truth[f"eta{i}"], truth["mu"])
    return response[f"d_{observable}{i}"] / r


def test_resolution_functions_at_reference_and_trends() -> None:
    et, eta, mu = ph.REFERENCE_POINT
    assert ph.resolution_et(et, eta, mu) == pytest.approx(1.5)
    assert ph.resolution_eta(et, eta, mu) == pytest.approx(0.0005)
    assert ph.resolution_phi(et, eta, mu) == pytest.approx(0.0003)
    grid = np.linspace(*ph.ET_DOMAIN_GEV, 200)
    r_et = ph.resolution_et(grid, 0.0, 20.0)
    r_eta = ph.resolution_eta(grid, 0.0, 20.0)
    assert np.all(np.diff(r_et) > 0) and np.all(np.diff(r_eta) < 0) and np.all(r_eta > 0)
    # ET is clamped to the domain: constant above 250 GeV
    assert ph.resolution_et(400.0, 0.0, 20.0) == pytest.approx(ph.resolution_et(250.0, 0.0, 20.0))
    # worse towards the end-caps and with pile-up
    assert ph.resolution_et(60.0, 2.0, 20.0) > ph.resolution_et(60.0, 0.5, 20.0)
    assert ph.resolution_et(60.0, 0.0, 40.0) > ph.resolution_et(60.0, 0.0, 0.0)


def test_polynomial_is_the_paper_form() -> None:
    poly = ph.ResolutionPolynomial((1.0, 2.0, 3.0, 4.0, 5.0), 2.0)
    x = 0.7
    assert poly(x) == pytest.approx((1 + 2 * x + 3 * x**2 + 4 * x**3 + 5 * x**4) / 2.0)


def test_baseline_widths_follow_resolution_in_bins() -> None:
    truth = toy_truth(200_000)
    response = ph.smear_photons(truth, scenario="baseline", rng=1)
    edges = np.array([20, 40, 60, 100, 150, 250])
    for i in (1, 2):
        for observable in ph.OBSERVABLES:
            z = pulls(truth, response, observable, i)
            b = np.digitize(truth[f"et{i}"], edges) - 1
            for k in range(len(edges) - 1):
                sel = z[b == k]
                if sel.size > 5000:
                    assert sel.std() == pytest.approx(1.0, abs=0.03), (observable, i, k)
                    assert abs(sel.mean()) < 0.03
    corr = np.corrcoef(np.stack([response[c] for c in ph.RESPONSE_COLUMNS]))
    assert np.max(np.abs(corr - np.eye(6))) < 0.01


def test_reco_is_truth_plus_response_with_phi_wrapped() -> None:
    truth = toy_truth(1000)
    truth["phi1"][:] = np.pi - 1e-6  # responses cross the +-pi boundary
    response = ph.smear_photons(truth, rng=2)
    np.testing.assert_allclose(response["et1_reco"], truth["et1"] + response["d_et1"])
    np.testing.assert_allclose(response["eta2_reco"], truth["eta2"] + response["d_eta2"])
    assert np.all((response["phi1_reco"] >= -np.pi) & (response["phi1_reco"] < np.pi))
    assert (response["phi1_reco"] < 0).any()
    wrapped = (response["phi1_reco"] - truth["phi1"] + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(wrapped, response["d_phi1"], atol=1e-9)


@pytest.mark.parametrize("rho", [0.5, 1.0])
def test_correlation_scenario_gives_rho_and_keeps_widths(rho: float) -> None:
    truth = toy_truth(100_000)
    response = ph.smear_photons(truth, scenario="correlation", rho=rho, rng=3)
    for observable in ph.OBSERVABLES:
        z1, z2 = pulls(truth, response, observable, 1), pulls(truth, response, observable, 2)
        assert np.corrcoef(z1, z2)[0, 1] == pytest.approx(rho, abs=0.01)
        assert z2.std() == pytest.approx(1.0, abs=0.01)
    # different observables stay independent
    assert abs(np.corrcoef(response["d_et1"], response["d_eta2"])[0, 1]) < 0.015


def test_rho_squared_form_gives_its_known_correlation_and_width() -> None:
    rho = 0.5
    truth = toy_truth(100_000)
    response = ph.smear_photons(truth, scenario="correlation", rho=rho, rng=4, correlation_form="rho_squared")
    z1, z2 = pulls(truth, response, "et", 1), pulls(truth, response, "et", 2)
    width = math.sqrt(1 - rho**2 + rho**4)
    assert np.corrcoef(z1, z2)[0, 1] == pytest.approx(rho**2 / width, abs=0.01)
    assert z2.std() == pytest.approx(width, abs=0.01)


def test_asymmetric_tail_fraction_and_core() -> None:
    truth = toy_truth(200_000)
    response = ph.smear_photons(truth, scenario="asymmetric", rng=5)
    expected = ph.CORE_FRACTION * stats.norm.cdf(-2) + (1 - ph.CORE_FRACTION) * stats.norm.cdf(1 / 3)
    assert expected == pytest.approx(0.1200, abs=1e-4)
    for i in (1, 2):
        z = pulls(truth, response, "et", i)
        assert np.mean(z < -2) == pytest.approx(expected, abs=0.003)
        assert z.mean() == pytest.approx((1 - ph.CORE_FRACTION) * ph.TAIL_MEAN_SHIFT, abs=0.02)
        # angles have no tail by default
        assert np.mean(pulls(truth, response, "eta", i) < -2) == pytest.approx(stats.norm.cdf(-2), abs=0.002)
    all_tails = ph.smear_photons(truth, scenario="asymmetric", rng=5, tail_observables=("et", "eta", "phi"))
    assert np.mean(pulls(truth, all_tails, "phi", 1) < -2) == pytest.approx(expected, abs=0.003)


def test_smear_is_reproducible_given_seed() -> None:
    truth = toy_truth(500)
    a = ph.smear_photons(truth, scenario="asymmetric", rng=7)
    b = ph.smear_photons(truth, scenario="asymmetric", rng=7)
    c = ph.smear_photons(truth, scenario="asymmetric", rng=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["d_et1"], c["d_et1"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("mu"), "missing column"),
        (lambda t: t["eta2"].__setitem__(3, np.nan), "'eta2'"),
        (lambda t: t["et2"].__setitem__(5, 0.0), "two photons"),
        (lambda t: t["et2"].__setitem__(5, np.nan), "'et2'"),
        (lambda t: t["mu"].__setitem__(0, -1.0), "mu >= 0"),
    ],
)
def test_bad_truth_is_a_clear_error(change, message: str) -> None:
    truth = toy_truth(10)
    change(truth)
    with pytest.raises(DataError, match=message):
        ph.smear_photons(truth, rng=0)


def test_bad_scenario_settings() -> None:
    truth = toy_truth(10)
    with pytest.raises(ConfigError, match="scenario"):
        ph.smear_photons(truth, scenario="correlated")
    with pytest.raises(ConfigError, match="rho"):
        ph.smear_photons(truth, scenario="correlation", rho=1.5)
    with pytest.raises(ConfigError, match="tail_observables"):
        ph.smear_photons(truth, scenario="asymmetric", tail_observables=("pt",))


# --------------------------------------------------------------------------------- Pythia truth


def test_pythia_truth_selection_and_ordering() -> None:
    table, info = ph.simulate_photons(300, seed=3, workers=1)
    assert set(table) == set(ph.TRUTH_COLUMNS) | set(ph.RECO_COLUMNS) | set(ph.RESPONSE_COLUMNS)
    assert all(len(v) == 300 for v in table.values())
    assert np.all(table["et2"] > ph.ET_MIN_GEV) and np.all(table["et1"] >= table["et2"])
    assert np.all(np.abs(table["eta1"]) < ph.ETA_MAX) and np.all(np.abs(table["eta2"]) < ph.ETA_MAX)
    assert np.all((table["mu"] >= 0) & (table["mu"] < 40))
    assert info["events_generated"] == 300 + info["events_rejected"]
    assert info["events_rejected"] > 0  # the acceptance cuts remove some events
    # the two photons come from a 125 GeV Higgs
    m2 = 2 * table["et1"] * table["et2"] * (np.cosh(table["eta1"] - table["eta2"])
                                             - np.cos(table["phi1"] - table["phi2"]))
    assert np.median(np.sqrt(m2)) == pytest.approx(125.0, abs=0.5)


def test_pythia_seeding_reproducible() -> None:
    a, _ = ph.generate_truth(200, seed=11, workers=1)
    b, _ = ph.generate_truth(200, seed=11, workers=1)
    c, _ = ph.generate_truth(200, seed=12, workers=1)
    assert all(np.array_equal(a[k], b[k]) for k in ph.TRUTH_COLUMNS)
    assert not np.array_equal(a["et1"], c["et1"])


def test_sharding_is_independent_of_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ph, "SHARD_EVENTS", 100)
    one, info_one = ph.simulate_photons(250, seed=5, workers=1, scenario="asymmetric")
    two, info_two = ph.simulate_photons(250, seed=5, workers=2, scenario="asymmetric")
    assert info_one["shards"] == 3 and info_one == info_two
    assert all(np.array_equal(one[k], two[k]) for k in one)
    # shards are different Pythia streams
    assert not np.array_equal(one["et1"][:100], one["et1"][100:200])


def test_cli_simulate_photons(tmp_path) -> None:
    out = tmp_path / "photons.parquet"
    assert main(["--no-progress", "simulate", "photons", "--n", "120", "--scenario", "correlation", "--rho", "1.0",
                 "--workers", "1", "--seed", "2", "-o", str(out)]) == 0
    table = read_table(out)
    assert len(table["d_et1"]) == 120
    np.testing.assert_allclose(table["d_et2"] / ph.resolution_et(table["et2"], table["eta2"], table["mu"]),
                               table["d_et1"] / ph.resolution_et(table["et1"], table["eta1"], table["mu"]),
                               rtol=1e-9)
    with pytest.raises(SystemExit):
        main(["simulate", "photons", "--n", "10", "--scenario", "nope", "-o", str(out)])


def test_missing_pythia_is_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pythia8mc", None)  # makes `import pythia8mc` raise ImportError
    with pytest.raises(ConfigError, match=r"detgen\[pythia\]"):
        ph.generate_truth(10, workers=1)
