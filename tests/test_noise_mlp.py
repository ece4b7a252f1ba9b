"""The noise_mlp family: two-sample statistics, learning a known conditional toy, discrete counts, split routing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from detgen.config import NoiseMLPConfig, NoiseMLPSplit, config_from_dict
from detgen.errors import ConfigError
from detgen.io import write_table
from detgen.models.noise_mlp import NoiseMLP, energy_distance, mmd, sliced_wasserstein
from detgen.preprocessing import Preprocessor
from detgen.runs import load_run
from detgen.training import train

STATISTICS = {
    "energy": lambda x, y: energy_distance(x, y),
    "mmd": lambda x, y: mmd(x, y, bandwidths=[0.2, 0.5, 1.0, 2.0]),
    "sliced": lambda x, y: sliced_wasserstein(x, y, projections=32, generator=torch.Generator().manual_seed(3)),
}


@pytest.mark.parametrize("name", list(STATISTICS))
def test_two_sample_statistic_properties(name: str) -> None:
    statistic = STATISTICS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 3, generator=g)
    y = torch.randn(2000, 3, generator=g)
    shifted = y + torch.tensor([0.5, 0.0, 0.0])
    assert float(statistic(x, x)) == pytest.approx(0.0, abs=1e-5)
    same, shift = float(statistic(x, y)), float(statistic(x, shifted))
    assert same >= -1e-6 and shift >= 0
    assert float(statistic(y, x)) == pytest.approx(same, rel=1e-4, abs=1e-6)  # symmetric
    assert shift > 5 * same  # detects a half-sigma mean shift far above the same-distribution value
    bigger = float(statistic(x, y + torch.tensor([1.0, 0.0, 0.0])))
    assert bigger > shift  # grows with the shift


def test_energy_distance_gradient_finite_at_identical_points() -> None:
    x = torch.zeros(4, 2, requires_grad=True)
    energy_distance(x, torch.zeros(4, 2)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _toy(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1.0, 1.0, n)
    return {"c": c, "y": 2.0 * c + 0.5 * rng.standard_normal(n)}


@pytest.mark.parametrize("loss", ["energy", "sliced"])
def test_learns_known_conditional_toy_and_round_trips(tmp_path: Path, loss: str) -> None:
    """y ~ N(2c, 0.5): the trained sampler's mean and width at fixed c match, after save/load."""
    torch.set_num_threads(1)
    write_table(tmp_path / "toy.parquet", _toy(6000, 0))
    raw = {"name": "toy", "data": {"conditions": ["c"], "targets": ["y"]},
           "model": {"family": "noise_mlp", "hidden": [32, 32], "activation": "relu", "loss": loss},
           "training": {"epochs": 8, "batch_size": 512, "lr": 3e-3, "best_metric": "val_loss", "metric_rows": 2000,
                        "schedule": {"kind": "constant"}}}
    run_dir = train(config_from_dict(raw), tmp_path / "toy.parquet", tmp_path / "run", progress=False, log=lambda s: None)
    run = load_run(run_dir)
    sampler = run.sampler()
    g = torch.Generator().manual_seed(1)
    for c in (-0.8, 0.0, 0.8):
        noise = torch.randn(20000, 1, generator=g)
        y = sampler(noise, torch.full((20000, 1), c)).detach().numpy()[:, 0]
        assert y.mean() == pytest.approx(2 * c, abs=0.15)
        assert y.std() == pytest.approx(0.5, abs=0.1)
    # save/load round trip: the reloaded sampler is the trained function
    again = load_run(run_dir).sampler()
    noise, cond = torch.randn(64, 1), torch.rand(64, 1)
    assert torch.equal(again(noise, cond), sampler(noise, cond))


def test_discrete_counts_are_non_negative_integers(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    r = rng.uniform(0.0, 17.7, 5000)
    npe = rng.poisson(0.2 + 0.15 * r)
    write_table(tmp_path / "pe.parquet", {"r_m": r, "npe": npe})
    raw = {"name": "pe", "data": {"conditions": ["r_m"], "targets": ["npe"], "transforms": {"npe": "identity"}},
           "model": {"family": "noise_mlp", "hidden": [32, 32], "output_activation": "relu", "discrete": True},
           "training": {"epochs": 30, "batch_size": 512, "lr": 5e-3, "metric_rows": 2000, "best_metric": "val_loss"}}
    run = load_run(train(config_from_dict(raw), tmp_path / "pe.parquet", tmp_path / "run", progress=False,
                         log=lambda s: None))
    for r_m in (8.0, 15.0):
        y = run.sampler()(torch.randn(20000, 1), torch.full((20000, 1), r_m)).detach().numpy()[:, 0]
        assert (y >= 0).all() and np.array_equal(y, np.round(y))
        assert y.mean() == pytest.approx(0.2 + 0.15 * r_m, rel=0.15)  # Poisson mean of the toy


def test_discrete_needs_identity_transform_and_positive_output() -> None:
    base = {"name": "x", "data": {"conditions": ["r_m"], "targets": ["npe"]},
            "model": {"family": "noise_mlp", "output_activation": "relu", "discrete": True}}
    with pytest.raises(ConfigError, match="data.transforms.npe"):
        config_from_dict(base)
    base["data"]["transforms"] = {"npe": "identity"}  # type: ignore[index]
    base["model"]["output_activation"] = "identity"  # type: ignore[index]
    with pytest.raises(ConfigError, match="non-negative output_activation"):
        config_from_dict(base)
    base["model"] = {"family": "noise_mlp", "loss": "knn"}
    with pytest.raises(ConfigError, match="model.loss"):
        config_from_dict(base)
    base["model"] = {"family": "noise_mlp", "split": {"column": "theta", "at": 1.0}}
    with pytest.raises(ConfigError, match="split.column"):
        config_from_dict(base)


def test_split_routes_rows_by_physical_threshold() -> None:
    config = NoiseMLPConfig(hidden=[8], activation="relu", split=NoiseMLPSplit(column="r_m", at=15.0, hidden=[16, 16]))
    table = {"theta": np.linspace(0, 3, 100), "r_m": np.linspace(0, 17.7, 100), "t": np.linspace(1, 2, 100)}
    pre = Preprocessor.fit(table, conditions=["theta", "r_m"], targets=["t"])
    model = NoiseMLP(n_targets=1, n_conditions=2, config=config)
    model.bind_preprocessor(pre)
    assert int(model.net.split_index) == 1
    r = torch.tensor([0.0, 14.99, 15.01, 17.0], dtype=torch.float32)
    raw = torch.stack([torch.ones(4), r], 1)
    encoded = pre.encode_conditions(raw)
    noise = torch.randn(4, 1)
    out = model.generator()(noise, encoded)
    x = torch.cat([encoded, noise], 1)
    expected = torch.cat([model.net.low(x[:2]), model.net.high(x[2:])])  # type: ignore[misc]
    torch.testing.assert_close(out, expected)
    # both networks receive gradient from one batch holding rows on both sides
    model.loss(torch.randn(4, 1), encoded).backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------- loss: poisson
def test_poisson_nll_gradient_and_minimum() -> None:
    """d NLL / d log(lambda) = lambda - n per row; over a free constant the minimum is log(mean count)."""
    from scipy.stats import poisson

    from detgen.models.noise_mlp import poisson_nll

    counts = torch.tensor([0.0, 0.0, 1.0, 3.0, 0.0, 2.0], dtype=torch.float64)
    log_mean = torch.tensor([-2.0, 0.1, 0.5, 1.0, -0.3, 0.7], dtype=torch.float64, requires_grad=True)
    nll = poisson_nll(log_mean, counts)
    expected = -poisson.logpmf(counts.numpy(), np.exp(log_mean.detach().numpy())).mean()
    assert float(nll.detach()) == pytest.approx(expected, rel=1e-12)  # the full NLL, including log(n!)
    nll.backward()
    assert log_mean.grad is not None
    torch.testing.assert_close(log_mean.grad, (torch.exp(log_mean) - counts).detach() / len(counts))
    grid = torch.linspace(-3.0, 1.0, 4001, dtype=torch.float64)
    values = torch.stack([poisson_nll(v.expand(6), counts) for v in grid])
    assert float(grid[values.argmin()]) == pytest.approx(math.log(counts.mean()), abs=1e-3)


def test_poisson_inverse_cdf_is_the_poisson_distribution() -> None:
    from scipy.stats import poisson

    from detgen.models.noise_mlp import poisson_inverse_cdf

    u = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000  # a fine uniform grid: exact frequencies
    for lam in (0.07, 1.3, 9.0):
        counts = poisson_inverse_cdf(torch.full_like(u, lam), u).numpy()
        assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
        frequencies = np.bincount(counts.astype(int), minlength=30)[:30] / len(u)
        np.testing.assert_allclose(frequencies, poisson.pmf(np.arange(30), lam), atol=2e-5)
    assert float(poisson_inverse_cdf(torch.tensor([500.0]), torch.tensor([0.5]), max_count=64)) == 64.0  # capped


def test_poisson_loss_recovers_exponential_mean(tmp_path: Path) -> None:
    """lambda(c) = exp(0.3 + 1.2 c): the trained network's mean matches to a few %, its draws are Poisson counts."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    c = rng.uniform(-1.0, 1.0, 40000)
    write_table(tmp_path / "pe.parquet", {"c": c, "npe": rng.poisson(np.exp(0.3 + 1.2 * c))})
    raw = {"name": "pe", "data": {"conditions": ["c"], "targets": ["npe"], "transforms": {"npe": "identity"}},
           "model": {"family": "noise_mlp", "loss": "poisson", "hidden": [16, 16], "activation": "tanh"},
           "training": {"epochs": 6, "batch_size": 1024, "lr": 1e-2, "metric_rows": 2000, "best_metric": "val_loss",
                        "schedule": {"kind": "constant"}}}
    run = load_run(train(config_from_dict(raw), tmp_path / "pe.parquet", tmp_path / "run", progress=False,
                         log=lambda s: None))
    net = run.model.generator()
    for value in (-0.8, 0.0, 0.8):
        cond = run.preprocessor.encode_conditions(torch.full((1, 1), value))
        lam = float(net.mean(cond).detach())
        assert lam == pytest.approx(math.exp(0.3 + 1.2 * value), rel=0.04)
        y = run.sampler()(torch.randn(40000, 1), torch.full((40000, 1), value)).detach().numpy()[:, 0]
        assert y.min() >= 0 and np.array_equal(y, np.round(y))  # the generator draws counts
        assert y.mean() == pytest.approx(lam, rel=0.03) and y.var() == pytest.approx(lam, rel=0.06)
        # deterministic given the noise (plain tensor ops: an inverse CDF of Phi(noise))
        z = torch.randn(16, 1)
        assert torch.equal(run.sampler()(z, torch.full((16, 1), value)), run.sampler()(z, torch.full((16, 1), value)))


def test_poisson_ignores_noise_in_the_mean_and_config_errors() -> None:
    model = NoiseMLP(n_targets=1, n_conditions=2, config=NoiseMLPConfig(hidden=[8], loss="poisson"))
    assert model.net.low[0].in_features == 2  # conditions only
    cond = torch.randn(5, 2)
    torch.testing.assert_close(model.net.continuous(torch.randn(5, 1), cond), model.net.continuous(torch.randn(5, 1), cond))
    base = {"name": "x", "data": {"conditions": ["r_m"], "targets": ["npe"], "transforms": {"npe": "identity"}},
            "model": {"family": "noise_mlp", "loss": "poisson", "discrete": True, "output_activation": "relu"}}
    with pytest.raises(ConfigError, match="loss poisson"):
        config_from_dict(base)
    base["model"] = {"family": "noise_mlp", "loss": "poisson", "output_activation": "softplus"}
    with pytest.raises(ConfigError, match="output_activation identity"):
        config_from_dict(base)
    base["model"] = {"family": "noise_mlp", "loss": "poisson"}
    base["data"]["transforms"] = {"npe": "standard"}  # type: ignore[index]
    with pytest.raises(ConfigError, match="data.transforms.npe"):
        config_from_dict(base)


@pytest.mark.parametrize("split", [False, True])
def test_poisson_scale_is_refitted_exactly_after_training(tmp_path: Path, split: bool) -> None:
    """After training, sum lambda = sum n on the training rows (per network of a split): the likelihood's
    maximum in the last bias; the refit is saved with the run, recorded in meta.json and idempotent."""
    import json

    torch.set_num_threads(1)
    rng = np.random.default_rng(4)
    c = rng.uniform(-1.0, 1.0, 20000)
    write_table(tmp_path / "pe.parquet", {"c": c, "npe": rng.poisson(np.exp(0.3 + 1.2 * c))})
    model = {"family": "noise_mlp", "loss": "poisson", "hidden": [8], "activation": "tanh"}
    if split:
        model["split"] = {"column": "c", "at": 0.2}
    raw = {"name": "pe", "data": {"conditions": ["c"], "targets": ["npe"], "transforms": {"npe": "identity"}},
           "model": model,
           "training": {"epochs": 1, "batch_size": 4096, "lr": 1e-3, "metric_rows": 2000, "best_metric": "val_loss",
                        "schedule": {"kind": "constant"}}}  # one slow epoch: far from the maximum
    messages: list[str] = []
    run_dir = train(config_from_dict(raw), tmp_path / "pe.parquet", tmp_path / "run", progress=False,
                    log=messages.append)
    meta = json.loads((run_dir / "meta.json").read_text())
    keys = ["poisson_scale_refit_low", "poisson_scale_refit_high"] if split else ["poisson_scale_refit"]
    assert all(k in meta for k in keys) and any(abs(meta[k] - 1) > 0.01 for k in keys)  # it had something to fix
    assert any("Poisson scale refit" in m for m in messages)
    from detgen.dataset import prepare

    run = load_run(run_dir)
    counts, conditions = prepare(tmp_path / "pe.parquet", run.config.data, preprocessor=run.preprocessor).train
    with torch.no_grad():  # the saved run's lambda on the trainer's training rows
        lam = run.model.generator().mean(conditions).double()[:, 0]
    counts = counts.double()[:, 0]
    upper = conditions[:, 0] >= run.model.net.split_threshold
    for rows in ((~upper, upper) if split else (torch.ones_like(upper),)):
        assert float(lam[rows].sum()) == pytest.approx(float(counts[rows].sum()), rel=1e-5)
    # idempotent: a second refit changes nothing
    again = run.model.finish_training((counts[:, None].float(), conditions), lambda s: None)
    assert again and all(v == pytest.approx(1.0, abs=1e-5) for v in again.values())
