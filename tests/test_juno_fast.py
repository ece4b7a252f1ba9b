"""JUNO fast simulation: tables, exact pruning, first-hit sampling, bad input, and the juno_muon family end to end."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from detgen.config import config_from_dict
from detgen.errors import ConfigError, DataError
from detgen.io import read_table, write_table
from detgen.simulators.juno import JunoDetector, sample_muon_tracks, simulate_points, write_point_tables
from detgen.simulators.juno_fast import (
    QUANTILE_Z_MAX,
    FastMuonSimulator,
    ResponseTables,
    calibrate_time_quantiles,
    generate_muons,
    grid_nodes,
    tabulate_response,
)

SMALL = JunoDetector(n_pmt=300)
SIGMA_NS = 3.0


def _mean_per_mev(r: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return 0.05 + 0.02 * (r / 17.7) * np.cos(theta) ** 2


def _time_mean(r: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return 60.0 + 2.0 * r * np.cos(theta)


def _known_tables(r_nodes: int = 40, theta_nodes: int = 61, quantile_nodes: int = 48) -> ResponseTables:
    """Tables of a known response: npe mean per MeV and Gaussian hit times (mean _time_mean, width SIGMA_NS)."""
    tables = ResponseTables(r_nodes=r_nodes, theta_nodes=theta_nodes, quantile_nodes=quantile_nodes, r_max_m=17.7)
    r, theta = grid_nodes(r_nodes, theta_nodes, 17.7)
    rr, tt = np.meshgrid(r, theta, indexing="ij")
    z = np.linspace(-QUANTILE_Z_MAX, QUANTILE_Z_MAX, quantile_nodes)
    tables.npe_per_mev.copy_(torch.from_numpy(_mean_per_mev(rr, tt)))
    tables.time_quantiles.copy_(torch.from_numpy(_time_mean(rr, tt)[..., None] + SIGMA_NS * z))
    return tables


def test_table_lookup_interpolates_a_smooth_response() -> None:
    tables = _known_tables()
    g = np.random.default_rng(0)
    r, theta = g.uniform(0, 17.7, 2000), g.uniform(0, math.pi, 2000)
    per_mev, earliest = tables.lookup(torch.from_numpy(r).float(), torch.from_numpy(theta).float())
    np.testing.assert_allclose(per_mev.numpy(), _mean_per_mev(r, theta), rtol=0.01)
    np.testing.assert_allclose(earliest.numpy(), _time_mean(r, theta) - SIGMA_NS * QUANTILE_Z_MAX, atol=0.05)
    z = torch.from_numpy(g.normal(size=2000)).float()
    t = tables.time_quantile(torch.from_numpy(r).float(), torch.from_numpy(theta).float(), z)
    np.testing.assert_allclose(t.numpy(), _time_mean(r, theta) + SIGMA_NS * z.numpy(), atol=0.05)


def test_pair_sampling_matches_a_direct_poisson_process() -> None:
    """Count and first-hit time of one pair (mean 3 p.e., Gaussian times) against brute-force simulation."""
    sim = FastMuonSimulator(_known_tables(), detector=SMALL)
    n_pairs, lam = 40000, 3.0
    r, theta = torch.full((n_pairs,), 10.0), torch.full((n_pairs,), 0.5)
    t, rest = sim._sample_pairs(torch.full((n_pairs,), lam), r, theta, torch.zeros(n_pairs),
                                torch.Generator().manual_seed(0))
    count = torch.isfinite(t).double() + torch.poisson(rest.double(), torch.Generator().manual_seed(1))
    rng = np.random.default_rng(2)
    n = rng.poisson(lam, n_pairs)
    mu = float(_time_mean(np.array(10.0), np.array(0.5)))
    direct = np.array([rng.normal(mu, SIGMA_NS, k).min() if k else np.inf for k in n])
    assert float(count.mean()) == pytest.approx(n.mean(), abs=0.04)
    assert float(count.var()) == pytest.approx(n.var(), rel=0.05)
    fast_t, hit = t.numpy(), np.isfinite(direct)
    assert np.isfinite(fast_t).mean() == pytest.approx(hit.mean(), abs=0.01)
    assert np.median(fast_t[np.isfinite(fast_t)]) == pytest.approx(np.median(direct[hit]), abs=0.1)
    # the joint law: more p.e. -> earlier first hit, with the brute-force strength
    many = count.numpy() >= 5
    assert fast_t[many].mean() == pytest.approx(direct[n >= 5].mean(), abs=0.1)


def test_points_give_poisson_counts_and_tabulated_times() -> None:
    sim = FastMuonSimulator(_known_tables(), detector=SMALL)
    r = np.full(400, 12.0)
    tables = sim.points(r, energy_mev=10.0, generator=torch.Generator().manual_seed(1))
    pmt, hits = tables["pmt"], tables["hits"]
    expected = 10.0 * _mean_per_mev(pmt["r_m"].astype(float), pmt["theta"].astype(float))
    total = pmt["npe"].reshape(400, -1).sum(1)
    assert total.mean() == pytest.approx(expected.reshape(400, -1).sum(1).mean(), rel=0.01)
    assert total.var() == pytest.approx(total.mean(), rel=0.2)  # Poisson
    assert len(hits["time_ns"]) == pmt["npe"].sum()
    pull = (hits["time_ns"] - _time_mean(hits["r_m"].astype(float), hits["theta"].astype(float))) / SIGMA_NS
    assert pull.mean() == pytest.approx(0.0, abs=0.03) and pull.std() == pytest.approx(1.0, abs=0.03)
    has = pmt["npe"] > 0
    assert (pmt["first_hit_ns"][~has] == -1).all() and (pmt["first_hit_ns"][has] > 0).all()


def test_pruning_is_exact_in_distribution() -> None:
    """response_pairwise: first-hit times and counts with pruning (1 candidate per PMT) match sampling every pair."""
    tables = _known_tables()
    entry, direction = np.array([0.0, 5.0, 16.9]), np.array([0.3, -0.2, -1.0])
    results = {}
    for k in (1, 10_000):
        sim = FastMuonSimulator(tables, detector=SMALL, step_m=0.5, first_candidates=k)
        g = torch.Generator().manual_seed(7)
        deposits = sim.deposits(entry, direction / np.linalg.norm(direction))
        runs = [sim.response_pairwise(*deposits, g) for _ in range(60)]
        results[k] = (np.stack([r[0].numpy() for r in runs]), np.stack([r[1].numpy() for r in runs]))
    (npe_a, first_a), (npe_b, first_b) = results[1], results[10_000]
    assert npe_a.mean() == pytest.approx(npe_b.mean(), rel=0.02)
    hit = (npe_a > 0) & (npe_b > 0)
    assert first_a[hit].mean() == pytest.approx(first_b[hit].mean(), abs=0.15)
    assert np.median(first_a[hit]) == pytest.approx(np.median(first_b[hit]), abs=0.2)


def test_bad_inputs_are_clear_errors_or_counted(tmp_path: Path) -> None:
    sim = FastMuonSimulator(_known_tables(), detector=SMALL, step_m=0.5)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(DataError, match="r_m outside"):
        sim.points(np.array([18.5]), energy_mev=1.0, generator=g)
    with pytest.raises(DataError, match="energy_mev"):
        sim.points(np.array([1.0]), energy_mev=-1.0, generator=g)
    positions = torch.tensor([[0.0, 0.0, 1.0]])
    with pytest.raises(DataError, match="energies"):
        sim.response(positions, torch.tensor([-2.0]), torch.zeros(1), g)
    with pytest.raises(DataError, match="misses the LS sphere"):
        sim.muon(np.array([0.0, 18.0, 0.0]), np.array([1.0, 0.0, 0.0]), g)
    from detgen.simulators.juno_fast import check_point_inputs

    with pytest.raises(DataError, match="theta outside"):
        check_point_inputs(torch.tensor([1.0]), torch.tensor([3.5]), 17.7, "x")
    # a file of tracks: a missing one is counted and left out, the rest are simulated
    entry, direction = sample_muon_tracks(2, np.random.default_rng(0), detector=SMALL)
    entry = np.vstack([entry, [[0.0, 18.0, 0.0]]])
    direction = np.vstack([direction, [[1.0, 0.0, 0.0]]])
    columns = dict(zip(("x0", "y0", "z0"), entry.T)) | dict(zip(("dx", "dy", "dz"), direction.T))
    write_table(tmp_path / "tracks.h5", columns)
    notes: list[str] = []
    info = generate_muons(sim, tmp_path / "tracks.h5", tmp_path / "fast.h5", progress=False, log=notes.append)
    assert info["excluded_missing_ls"] == 1 and info["rows"] == 2 and "miss the LS" in notes[0]
    out = read_table(tmp_path / "fast.h5")
    assert out["npe"].shape == (2, SMALL.n_pmt) and list(out["muon_index"]) == [0, 1]
    write_table(tmp_path / "all_miss.h5", {k: v[2:] for k, v in columns.items()})
    with pytest.raises(DataError, match="all 1 tracks miss"):
        generate_muons(sim, tmp_path / "all_miss.h5", tmp_path / "none.h5", progress=False, log=notes.append)
    assert not (tmp_path / "none.h5").exists()


class _GaussianTime(nn.Module):
    noise_dim = 1

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:  # conditions: (r_m, theta)
        return 50.0 + 1.5 * conditions[:, :1] + 4.0 * noise


class _PoissonLike(nn.Module):
    noise_dim = 1

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:  # counts 0, 1, 2 with known probabilities
        u = torch.special.ndtr(noise)
        return (u > 0.7).float() + (u > 0.9).float()


def _stub_run(sampler: nn.Module, target: str) -> SimpleNamespace:
    return SimpleNamespace(path="stub", sampler=lambda: sampler,
                           preprocessor=SimpleNamespace(input_columns=["r_m", "theta"], target_columns=[target]))


def test_tabulation_reproduces_the_network_distribution() -> None:
    tables = tabulate_response(_stub_run(_PoissonLike(), "npe"), _stub_run(_GaussianTime(), "time_ns"),
                               r_nodes=5, theta_nodes=4, noise_draws=512, quantile_nodes=32,
                               point_energy_mev=2.0, r_max_m=17.7)
    np.testing.assert_allclose(tables["npe_per_mev"].numpy(), (0.2 * 1 + 0.1 * 2) / 2.0, rtol=0.01)
    r, _ = grid_nodes(5, 4, 17.7)
    z = np.linspace(-QUANTILE_Z_MAX, QUANTILE_Z_MAX, 32)
    expected = 50.0 + 1.5 * r[:, None, None] + 4.0 * z[None, None, :]
    np.testing.assert_allclose(tables["time_quantiles"].numpy(), np.broadcast_to(expected, (5, 4, 32)), atol=0.1)
    with pytest.raises(ConfigError, match="expected exactly r_m and theta"):
        bad = _stub_run(_GaussianTime(), "time_ns")
        bad.preprocessor.input_columns = ["r_m"]
        tabulate_response(_stub_run(_PoissonLike(), "npe"), bad, r_nodes=2, theta_nodes=2, noise_draws=4,
                          quantile_nodes=2, point_energy_mev=1.0, r_max_m=17.7)


class _SkewedTime(nn.Module):
    """A hit-time quantile function convex in z (sharp rise, long tail), like the real spectra."""

    noise_dim = 1

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        return 100.0 + 20.0 * torch.exp(0.8 * noise)


def test_tabulated_quantiles_have_no_interpolation_bias() -> None:
    """Plain node values put the linear interpolant of a convex quantile function above it everywhere; the
    least-squares node values leave an error of either sign with zero mean in every node interval."""
    q = 16
    tables = tabulate_response(_stub_run(_PoissonLike(), "npe"), _stub_run(_SkewedTime(), "time_ns"),
                               r_nodes=2, theta_nodes=2, noise_draws=2048, quantile_nodes=q,
                               point_energy_mev=1.0, r_max_m=17.7)
    nodes = tables["time_quantiles"].numpy()[0, 0].astype(np.float64)
    assert np.all(np.diff(nodes) >= 0)
    z_nodes = np.linspace(-QUANTILE_Z_MAX, QUANTILE_Z_MAX, q)
    z = np.linspace(-3.0, 3.0, 6001)
    truth = 100.0 + 20.0 * np.exp(0.8 * z)
    plain = np.interp(z, z_nodes, 100.0 + 20.0 * np.exp(0.8 * z_nodes)) - truth
    fitted = np.interp(z, z_nodes, nodes) - truth
    assert plain.min() > -1e-9 and plain.mean() > 0.1  # the old table: late everywhere
    assert abs(fitted.mean()) < 0.05 * plain.mean() and fitted.min() < 0 < fitted.max()
    assert np.abs(fitted).max() < plain.max()
    # the median of the tabulated law (z = 0 by symmetry of the z grid) is closer too
    assert abs(fitted[3000]) < 0.5 * plain[3000]


MU_NPE = 0.07  # mean count of the smeared dequantised stubs below (a PMT's ~0.07 p.e. per MeV in JUNO)


class _SmearedDequantized(nn.Module):
    """A smooth model of npe + U(0,1) as trained networks give it: N(MU_NPE + 1/2, 0.4^2).

    Its mean is exactly that of npe + U(0,1) with E[npe] = MU_NPE, but its density has no step at 1, so
    E[floor(max(0, x))] = P(x >= 1) + ... ~ 0.14, twice MU_NPE (the bias every trained JUNO model showed).
    """

    noise_dim = 1
    discrete = True

    def continuous(self, noise: Tensor, conditions: Tensor) -> Tensor:
        return MU_NPE + 0.5 + 0.4 * noise

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        return torch.floor(self.continuous(noise, conditions))


def test_tabulated_mean_of_dequantized_counts_is_unbiased() -> None:
    """Regression: the table took E[floor(draw)] of dequantised-count networks, doubling the mean npe."""
    from scipy.special import ndtr

    from detgen.simulators.juno_fast import npe_moments

    time_run = _stub_run(_GaussianTime(), "time_ns")
    kwargs = dict(r_nodes=3, theta_nodes=4, noise_draws=512, quantile_nodes=8, point_energy_mev=1.0, r_max_m=17.7)
    stub = _SmearedDequantized()
    floor_mean = sum(float(ndtr((MU_NPE + 0.5 - k) / 0.4)) for k in range(1, 10))  # E[floor(max(0, x))]
    assert floor_mean > 1.8 * MU_NPE  # the floor of this smooth density really is biased
    flow_run = _stub_run(_Continuous(stub), "npe_dequantized")  # a flow on npe + U(0,1): continuous draws
    mlp_run = _stub_run(stub, "npe")  # a discrete noise_mlp: its sampler floors; the table must not
    mlp_run.model = SimpleNamespace(generator=lambda: stub, noise_dim=1)
    mlp_run.preprocessor.encode_conditions = lambda c: c
    mlp_run.preprocessor.decode_targets = lambda y, c: y
    for run in (flow_run, mlp_run):
        tables = tabulate_response(run, time_run, **kwargs)  # type: ignore[arg-type]
        np.testing.assert_allclose(tables["npe_per_mev"].numpy(), MU_NPE, rtol=0.01)
        np.testing.assert_allclose(tables["npe_variance"].numpy(), 0.16 - 1.0 / 12.0, rtol=0.01)
    # draws that are counts (no dequantisation) are still floored and averaged
    tables = tabulate_response(_stub_run(stub, "npe"), time_run, **kwargs)  # type: ignore[arg-type]
    np.testing.assert_allclose(tables["npe_per_mev"].numpy(), floor_mean, rtol=0.05)
    draws = np.array([[0.2, 0.9, 1.4, 1.5]])
    mean, var = npe_moments(draws, np.full(4, 0.25), dequantized=True)
    np.testing.assert_allclose(mean, [0.5])
    np.testing.assert_allclose(var, [np.var(draws) - 1.0 / 12.0])


class _Continuous(nn.Module):
    noise_dim = 1

    def __init__(self, inner: _SmearedDequantized):
        super().__init__()
        self.inner = inner

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        return self.inner.continuous(noise, conditions)


def test_juno_muon_family_train_and_generate(tmp_path: Path) -> None:
    """detgen train builds the tables from two (tiny) runs; detgen generate simulates a muon file."""
    from detgen.cli import main

    torch.set_num_threads(1)
    tables, _ = simulate_points(3, seed=0)
    write_point_tables(tmp_path / "points.h5", tables)
    small = {"max_train_rows": 2000, "split": [0.5, 0.5, 0.0]}
    npe_cfg = {"name": "npe", "data": {"key": "pmt", "conditions": ["r_m", "theta"], "targets": ["npe"],
                                       "transforms": {"npe": "identity"}, **small},
               "model": {"family": "noise_mlp", "hidden": [16], "output_activation": "relu", "discrete": True},
               "training": {"epochs": 1, "batch_size": 512, "metric_rows": 1000}}
    time_cfg = {"name": "time", "data": {"key": "hits", "conditions": ["r_m", "theta"], "targets": ["time_ns"],
                                         "transforms": {"time_ns": "identity"}, **small},
                "model": {"family": "noise_mlp", "hidden": [16], "output_activation": "elu1", "output_scale": 100.0,
                          "split": {"column": "r_m", "at": 15.0, "hidden": [8]}},
                "training": {"epochs": 1, "batch_size": 512, "metric_rows": 1000}}
    from detgen.training import train

    for name, raw in (("npe", npe_cfg), ("time", time_cfg)):
        train(config_from_dict(raw), tmp_path / "points.h5", tmp_path / name, progress=False, log=lambda s: None)
    muon_cfg = {"name": "muon", "data": {"key": "pmt", "conditions": ["r_m", "theta"], "targets": ["npe"],
                                         "transforms": {"npe": "identity"}, **small},
                "model": {"family": "juno_muon", "npe_run": str(tmp_path / "npe"), "time_run": str(tmp_path / "time"),
                          "r_nodes": 6, "theta_nodes": 7, "noise_draws": 16, "quantile_nodes": 8, "step_m": 1.0},
                "training": {"metric_rows": 2000}}
    train(config_from_dict(muon_cfg), tmp_path / "points.h5", tmp_path / "muon", progress=False, log=lambda s: None)
    entry, direction = sample_muon_tracks(2, np.random.default_rng(1))
    write_table(tmp_path / "tracks.h5", dict(zip(("x0", "y0", "z0"), entry.T)) | dict(zip(("dx", "dy", "dz"), direction.T)))
    code = main(["--no-progress", "generate", str(tmp_path / "muon"), "--conditions", str(tmp_path / "tracks.h5"),
                 "-o", str(tmp_path / "fast.h5"), "--seed", "3"])
    assert code == 0
    out = read_table(tmp_path / "fast.h5")
    assert out["npe"].shape == (2, 17612) and out["npe"].dtype == np.int32
    assert (out["npe"] >= 0).all() and np.array_equal(out["total_pe"], out["npe"].sum(1))
    assert ((out["first_hit_ns"] == -1) == (out["npe"] == 0)).all()
    # the same seed reproduces the file
    main(["--no-progress", "generate", str(tmp_path / "muon"), "--conditions", str(tmp_path / "tracks.h5"),
          "-o", str(tmp_path / "again.h5"), "--seed", "3"])
    assert np.array_equal(read_table(tmp_path / "again.h5")["npe"], out["npe"])
    # the time table was calibrated on the time run's training hits (its split's first half of the file's hits)
    import json

    fit_info = json.loads((tmp_path / "muon" / "meta.json").read_text())["fit_info"]
    n_hits = len(read_table(tmp_path / "points.h5", key="hits")["time_ns"])
    assert 0 < fit_info["time_calibration_hits"] <= n_hits // 2 + 1
    # ... which needs the time run's own file: a changed file is refused, with time_calibration_rows: 0 it is skipped
    tables["hits"]["time_ns"] = tables["hits"]["time_ns"] + 1.0
    write_point_tables(tmp_path / "points.h5", tables)
    from detgen.errors import SchemaError

    with pytest.raises(SchemaError, match="sha256 differs"):
        train(config_from_dict(muon_cfg), tmp_path / "points.h5", tmp_path / "muon2", progress=False,
              log=lambda s: None)
    assert not (tmp_path / "muon2" / "model.safetensors").exists()
    muon_cfg["model"]["time_calibration_rows"] = 0  # type: ignore[index]
    train(config_from_dict(muon_cfg), tmp_path / "points.h5", tmp_path / "muon3", progress=False, log=lambda s: None)
    fit_info = json.loads((tmp_path / "muon3" / "meta.json").read_text())["fit_info"]
    assert "time_calibration_hits" not in fit_info


def test_juno_muon_config_checks() -> None:
    raw = {"name": "m", "data": {"key": "pmt", "conditions": ["r_m", "theta"], "targets": ["npe"]},
           "model": {"family": "juno_muon", "npe_run": "a", "time_run": "b"}}
    with pytest.raises(ConfigError, match="data.transforms.npe must be identity"):
        config_from_dict(raw)
    raw["data"]["transforms"] = {"npe": "identity"}  # type: ignore[index]
    raw["model"]["time_run"] = ""  # type: ignore[index]
    with pytest.raises(ConfigError, match="time_run"):
        config_from_dict(raw)


class _PoissonMeanStub(nn.Module):
    """A ``loss: poisson`` NN_npe as the tabulation sees it: ``mean`` is a known lambda(R, theta); its draws
    (``forward``) are deliberately not that mean, so a table built from draws would fail."""

    noise_dim = 1
    poisson = True

    def mean(self, conditions: Tensor) -> Tensor:
        r, theta = conditions[:, 0].double().numpy(), conditions[:, 1].double().numpy()
        return torch.from_numpy(2.0 * _mean_per_mev(r, theta)).float().unsqueeze(1)

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        return torch.full((len(conditions), 1), 5.0)


def test_tabulation_of_a_poisson_mean_network_uses_its_mean() -> None:
    from detgen.config import NoiseMLPConfig
    from detgen.models.noise_mlp import NoiseMLP
    from detgen.simulators.juno_fast import poisson_mean_sampler

    stub = _PoissonMeanStub()
    run = _stub_run(stub, "npe")
    run.model = SimpleNamespace(generator=lambda: stub, noise_dim=1)
    run.preprocessor.encode_conditions = lambda c: c
    run.preprocessor.decode_targets = lambda y, c: y
    tables = tabulate_response(run, _stub_run(_GaussianTime(), "time_ns"), r_nodes=6, theta_nodes=5,  # type: ignore[arg-type]
                               noise_draws=64, quantile_nodes=8, point_energy_mev=2.0, r_max_m=17.7)
    r, theta = grid_nodes(6, 5, 17.7)
    rr, tt = np.meshgrid(r, theta, indexing="ij")
    np.testing.assert_allclose(tables["npe_per_mev"].numpy(), _mean_per_mev(rr, tt), rtol=1e-5)  # lambda / 2 MeV
    np.testing.assert_allclose(tables["npe_variance"].numpy(), 2.0 * _mean_per_mev(rr, tt), rtol=1e-5)  # Poisson
    # a real poisson noise_mlp is recognised; a flow-like run and a two-sample noise_mlp are not
    real = SimpleNamespace(model=NoiseMLP(n_targets=1, n_conditions=2, config=NoiseMLPConfig(hidden=[4], loss="poisson")),
                           preprocessor=run.preprocessor)
    assert poisson_mean_sampler(real) is not None
    real.model = NoiseMLP(n_targets=1, n_conditions=2, config=NoiseMLPConfig(hidden=[4]))
    assert poisson_mean_sampler(real) is None
    assert poisson_mean_sampler(_stub_run(_PoissonLike(), "npe")) is None


# ---- the split sampler (FastMuonSimulator.response) and its factorised table lookups
def _exact_interpolation(table: np.ndarray, r: np.ndarray, theta: np.ndarray, z: np.ndarray | None = None
                         ) -> np.ndarray:
    """Float64 (bi/tri)linear interpolation of a (R, theta[, Q]) table at (s(R), theta[, z]), border-clamped."""
    from detgen.simulators.juno import radius_s

    def split(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.clip(x, 0, n - 1)
        i = np.minimum(np.floor(x), n - 2).astype(int)
        return i, x - i

    i, a = split(radius_s(r.astype(np.float64), 17.7) * (table.shape[0] - 1), table.shape[0])
    j, b = split(theta.astype(np.float64) / math.pi * (table.shape[1] - 1), table.shape[1])
    t = table.astype(np.float64)
    if z is None:
        corner = lambda di, dj: t[i + di, j + dj]  # noqa: E731
    else:
        k, c = split((z.astype(np.float64) + QUANTILE_Z_MAX) / (2 * QUANTILE_Z_MAX) * (table.shape[2] - 1),
                     table.shape[2])
        corner = lambda di, dj: t[i + di, j + dj, k] * (1 - c) + t[i + di, j + dj, k + 1] * c  # noqa: E731
    return ((1 - a) * ((1 - b) * corner(0, 0) + b * corner(0, 1)) + a * ((1 - b) * corner(1, 0) + b * corner(1, 1)))


def test_deposit_rows_equal_the_bilinear_interpolation() -> None:
    """The per-deposit (gather) lookups give the exact (float64) bilinear / trilinear interpolation of the
    tables, and grid_sample's (lookup, time_quantile), to float32 rounding of the theta coordinate (x up to 90
    bins has an ulp of 7.6e-6 bins): 5e-6 of the table's scale, where a wrong node or weight errs by ~1e-2."""
    from scipy.special import ndtri

    tol = 5e-6
    g = np.random.default_rng(3)
    tables = _known_tables()
    tables.time_quantiles.add_(torch.from_numpy(g.normal(0, 0.5, tables.time_quantiles.shape)).float().cumsum(-1).abs())
    tables.npe_per_mev.mul_(torch.from_numpy(g.uniform(0.5, 1.5, tables.npe_per_mev.shape)).float())
    r = torch.from_numpy(np.concatenate([[0.0, 17.7], g.uniform(0, 17.7, 30)])).float()
    cos = torch.from_numpy(np.concatenate([[1.0, -1.0], g.uniform(-1, 1, 400)])).float()
    rows = tables.deposit_rows(r)
    index, weight = rows.theta_bin(cos[None, :].expand(len(r), -1).contiguous())
    theta = torch.acos(cos)[None, :].expand(len(r), -1)
    rr = r[:, None].expand_as(theta)
    npe_scale, time_scale = float(tables.npe_per_mev.abs().max()), float(tables.time_quantiles.abs().max())
    exact = _exact_interpolation(tables.npe_per_mev.numpy(), rr.numpy(), theta.numpy())
    got = rows.npe_per_mev(index, weight).numpy()
    np.testing.assert_allclose(got, exact, rtol=0, atol=tol * npe_scale)
    np.testing.assert_allclose(got, tables.lookup(rr, theta)[0].numpy(), rtol=0, atol=tol * npe_scale)
    n_q = tables.time_quantiles.shape[-1]
    for node in (0, 17, n_q - 1):
        z = np.full(theta.shape, -QUANTILE_Z_MAX + node * 2 * QUANTILE_Z_MAX / (n_q - 1))
        got = rows.time_at_node(index, weight, torch.tensor(node, dtype=torch.int32)).numpy()
        exact = _exact_interpolation(tables.time_quantiles.numpy(), rr.numpy(), theta.numpy(), z)
        np.testing.assert_allclose(got, exact, rtol=0, atol=tol * time_scale)
    u = g.uniform(1e-7, 1 - 1e-7, theta.shape)  # float64 quantile levels, clamped tails included
    z = ndtri(u)
    at_z = rows.time_at(index.reshape(-1), weight.reshape(-1), torch.from_numpy(z).reshape(-1)).reshape(theta.shape)
    exact = _exact_interpolation(tables.time_quantiles.numpy(), rr.numpy(), theta.numpy(), z)
    np.testing.assert_allclose(at_z.numpy(), exact, rtol=0, atol=tol * time_scale)
    grid = tables.time_quantile(rr, theta, torch.from_numpy(z).float()).numpy()
    np.testing.assert_allclose(at_z.numpy(), grid, rtol=0, atol=tol * time_scale)


def test_inverse_cdf_draws_rows_in_proportion_to_their_increments() -> None:
    from detgen.simulators.juno_fast import _inverse_cdf

    g = np.random.default_rng(0)
    for n_rows in (1, 2, 5, 54, 64, 65):
        increments = g.uniform(0, 2, (n_rows, 7)) * (g.random((n_rows, 7)) > 0.3)  # some rows of zero mass
        increments[0] = 0.0  # a first row of zero mass
        increments[-1] += 0.5  # every column has some mass
        cumulative = torch.from_numpy(np.cumsum(increments, axis=0))
        column = torch.from_numpy(g.integers(0, 7, 5000))
        value = torch.from_numpy(g.random(5000)) * cumulative[-1].index_select(0, column)
        flat = _inverse_cdf(cumulative, column, value).numpy()
        np.testing.assert_array_equal(flat % 7, column.numpy())
        row = flat // 7
        # the same as numpy's searchsorted (side right) column by column, and never a row of zero mass
        expected = np.array([np.searchsorted(cumulative[:, c].numpy(), v, side="right")
                             for c, v in zip(column.numpy(), value.numpy())])
        np.testing.assert_array_equal(row, expected)
        assert (increments[row, column.numpy()] > 0).all()


def _every_pe(sim: FastMuonSimulator, deposits: tuple[Tensor, Tensor, Tensor], generator: torch.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Brute force with grid_sample lookups: every p.e. of every (PMT, deposit) pair gets its own hit time."""
    positions, energies, times = deposits
    r = positions.norm(dim=1)
    theta = torch.acos((sim.pmt_unit @ (positions / r[:, None]).t()).clamp(-1, 1))  # (P, M)
    rr = r[None, :].expand_as(theta)
    per_mev, _ = sim.tables.lookup(rr, theta)
    counts = torch.poisson((per_mev.clamp_min(0) * energies).contiguous(), generator).long()
    pair = torch.repeat_interleave(torch.arange(counts.numel()), counts.reshape(-1))
    z = torch.randn(pair.shape, generator=generator)
    t = sim.tables.time_quantile(rr.reshape(-1)[pair], theta.reshape(-1)[pair], z) + times[pair % len(r)]
    first = torch.full((theta.shape[0],), math.inf).scatter_reduce(0, pair // len(r), t, reduce="amin")
    npe = counts.sum(1)
    return npe.numpy(), torch.where(npe > 0, first, torch.full_like(first, -1.0)).numpy()


@pytest.mark.parametrize("early_pe", [None, 0.3, 40.0])
def test_split_sampler_matches_every_pe_brute_force(early_pe: float | None) -> None:
    """Counts and first-hit times of response (any early_pe: few early p.e. and many late pairs, or the
    reverse) have the law of sampling every single p.e.: Poisson counts, the same first-hit distribution
    (two-sample KS over PMTs and repeats) and the same count / first-hit correlation."""
    from scipy.stats import ks_2samp

    tables = _known_tables()
    sim = FastMuonSimulator(tables, detector=SMALL, step_m=0.5, early_pe=early_pe)
    entry, direction = np.array([0.0, 5.0, 16.9]), np.array([0.3, -0.2, -1.0])
    deposits = sim.deposits(entry, direction / np.linalg.norm(direction))
    g = torch.Generator().manual_seed(11)
    fast = [sim.response(*deposits, g) for _ in range(40)]
    npe_f = np.stack([f[0].numpy() for f in fast]).astype(np.int64)
    first_f = np.stack([f[1].numpy() for f in fast])
    brute = [_every_pe(sim, deposits, g) for _ in range(40)]
    npe_b, first_b = np.stack([b[0] for b in brute]), np.stack([b[1] for b in brute])
    assert npe_f.mean() == pytest.approx(npe_b.mean(), rel=0.01)
    assert npe_f.var(axis=0).mean() == pytest.approx(npe_f.mean(axis=0).mean(), rel=0.15)  # Poisson per PMT
    assert ((first_f == -1) == (npe_f == 0)).all()
    # per PMT in the detector's numbering (the sampler visits PMTs in its own order): the same mean count
    # (chi2 per PMT of the two means, 1 on average) and the same mean first hit (which varies with geometry)
    chi2 = (npe_f.mean(0) - npe_b.mean(0)) ** 2 / ((npe_f.mean(0) + npe_b.mean(0)) / len(npe_f))
    assert chi2.mean() < 1.3
    assert np.corrcoef(first_f.mean(0), first_b.mean(0))[0, 1] > 0.98
    hit_f, hit_b = first_f[npe_f > 0], first_b[npe_b > 0]
    assert ks_2samp(hit_f, hit_b).pvalue > 1e-3
    assert hit_f.mean() == pytest.approx(hit_b.mean(), abs=0.1)
    # per PMT, the first hit minus its mean over repeats (removes geometry): spread and tail agree
    dev_f = first_f - first_f.mean(0)
    dev_b = first_b - first_b.mean(0)
    assert dev_f.std() == pytest.approx(dev_b.std(), rel=0.05)
    assert np.corrcoef(npe_f.ravel(), dev_f.ravel())[0, 1] == pytest.approx(
        np.corrcoef(npe_b.ravel(), dev_b.ravel())[0, 1], abs=0.05)


@pytest.mark.parametrize("early_pe", [None, 0.3])
def test_split_sampler_counts_and_times_at_low_light(early_pe: float | None) -> None:
    """Low light (mean ~1 p.e. per PMT): PMTs without p.e. and the clamped quantile tails happen; the law still
    matches brute force. With the default early_pe (>= 2) nearly every p.e. is early at this light; with 0.3
    most are late, so the late pairs of PMTs with no early p.e. carry the first hits."""
    tables = _known_tables()
    tables.npe_per_mev.mul_(0.004)
    sim = FastMuonSimulator(tables, detector=SMALL, step_m=0.5, early_pe=early_pe)
    entry, direction = np.array([0.0, 5.0, 16.9]), np.array([0.3, -0.2, -1.0])
    deposits = sim.deposits(entry, direction / np.linalg.norm(direction))
    g = torch.Generator().manual_seed(5)
    fast = [sim.response(*deposits, g) for _ in range(200)]
    brute = [_every_pe(sim, deposits, g) for _ in range(200)]
    npe_f = np.stack([f[0].numpy() for f in fast])
    npe_b = np.stack([b[0] for b in brute])
    assert 0.5 < npe_b.mean() < 2.0
    assert (npe_f == 0).mean() == pytest.approx((npe_b == 0).mean(), abs=0.01)
    first_f = np.stack([f[1].numpy() for f in fast])[npe_f > 0]
    first_b = np.stack([b[1] for b in brute])[npe_b > 0]
    # within 4 standard errors (the first hits' spread is ~30 ns, so ~0.2 ns with ~46k hits each)
    error = math.sqrt(first_f.var() / first_f.size + first_b.var() / first_b.size)
    assert first_f.mean() == pytest.approx(first_b.mean(), abs=4 * error)
    assert np.median(first_f) == pytest.approx(np.median(first_b), abs=4 * 1.26 * error)


def test_non_monotone_time_table_is_refused() -> None:
    tables = _known_tables()
    tables.time_quantiles[3, 4, 10] += 100.0
    with pytest.raises(DataError, match="non-decreasing"):
        FastMuonSimulator(tables, detector=SMALL)
    with pytest.raises(DataError, match="early_pe"):
        FastMuonSimulator(_known_tables(), detector=SMALL, early_pe=0.0)


def _calibration_case(hits: int, *, distort: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true table, table to calibrate, calibrated table): hits drawn from the true (interpolated) table."""
    truth = _known_tables(r_nodes=8, theta_nodes=9, quantile_nodes=48)
    rng = np.random.default_rng(seed)
    from detgen.simulators.juno import radius_from_s

    r = radius_from_s(rng.uniform(0, 1, hits), 17.7)
    theta = rng.uniform(0, math.pi, hits)
    z = np.clip(rng.standard_normal(hits), -QUANTILE_Z_MAX, QUANTILE_Z_MAX)
    with torch.no_grad():
        t = truth.time_quantile(*(torch.from_numpy(a).float() for a in (r, theta, z))).double().numpy()
    true_q = truth.time_quantiles.double().numpy()
    given = true_q.copy()
    if distort:  # a network that is late by 0..0.4 sigma (varying with theta) and 15 % too wide
        _, theta_nodes = grid_nodes(8, 9, 17.7)
        mean = true_q[..., true_q.shape[2] // 2 - 1 : true_q.shape[2] // 2 + 1].mean(2, keepdims=True)
        given = mean + 1.15 * (true_q - mean) + 0.2 * SIGMA_NS * (1 + np.cos(theta_nodes))[None, :, None]
    calibrated, info = calibrate_time_quantiles(given, r, theta, t, r_max_m=17.7)
    assert info["time_calibration_hits"] == hits
    return true_q, given, calibrated


def _within_levels(table: np.ndarray, z_max: float = 2.5) -> np.ndarray:
    z = np.linspace(-QUANTILE_Z_MAX, QUANTILE_Z_MAX, table.shape[2])
    return table[..., np.abs(z) <= z_max]


def test_time_calibration_corrects_a_miscalibrated_table() -> None:
    """Hits from a known hit-time law pull a table that is late and too wide back onto it (|z| <= 2.5)."""
    true_q, given, calibrated = _calibration_case(600_000, distort=True)
    before = np.abs(_within_levels(given - true_q))
    after = np.abs(_within_levels(calibrated - true_q))
    assert before.max() > 0.7 * SIGMA_NS and np.median(before) > 0.2 * SIGMA_NS  # the distortion is large ...
    # ... and is removed to the hits' statistical precision (~8,000 hits per cell: a quantile at z = +-2.5 is
    # known to ~0.05 sigma, and the worst of 72 cells x 26 levels is a few times that)
    assert np.median(after) < 0.02 * SIGMA_NS
    assert after.max() < 0.25 * SIGMA_NS
    assert np.all(np.diff(calibrated, axis=2) >= 0)  # still quantile functions


def test_time_calibration_keeps_a_right_table_and_shrinks_sparse_cells() -> None:
    """A table that is already right moves only by the hits' noise; with few hits per cell it barely moves."""
    true_q, _, calibrated = _calibration_case(600_000, distort=False)
    moved = np.abs(_within_levels(calibrated - true_q))
    assert np.median(moved) < 0.02 * SIGMA_NS and moved.max() < 0.2 * SIGMA_NS
    _, given, calibrated = _calibration_case(300, distort=True, seed=1)  # ~4 hits per cell, prior 1000 hits
    assert np.abs(calibrated - given).max() < 0.05 * SIGMA_NS


def test_time_calibration_refuses_hits_outside_the_grid() -> None:
    table = _known_tables(r_nodes=4, theta_nodes=5, quantile_nodes=8).time_quantiles.double().numpy()
    with pytest.raises(DataError, match=r"hits.h5: 1 hit\(s\) outside R"):
        calibrate_time_quantiles(table, np.array([1.0, 18.5]), np.array([0.5, 0.5]), np.array([60.0, 61.0]),
                                 r_max_m=17.7, source="hits.h5")
    with pytest.raises(DataError, match="outside"):
        calibrate_time_quantiles(table, np.array([1.0]), np.array([-0.1]), np.array([60.0]), r_max_m=17.7)
