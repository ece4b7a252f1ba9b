"""The GAN's zero-suppressing output layer (``model.output: threshold``) and the shower-level validation metric.

Properties: a generated crystal is either exactly 0 or at least the 0.5 MeV readout threshold after decoding
(the threshold follows the momentum normalisation row by row); in training the critic's gradient reaches
crystals below the cut (straight-through, or the smooth gate); the forward pass at sampling equals the training
forward (straight-through); save/load and ONNX export reproduce the sampler.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from detgen.config import GANConfig, config_from_dict
from detgen.errors import ConfigError
from detgen.export import export_onnx
from detgen.io import read_table, write_table
from detgen.models.gan import ConditionalGAN, _image_observables
from detgen.runs import load_run
from detgen.training import train
from detgen.validation.metrics import separation_in_truth_range as _separation
from test_gan import TINY_GAN, one_thread, quiet, raw_config, toy_showers  # noqa: F401 (autouse fixture)

THRESHOLD_MEV = 0.5
TINY_THRESHOLD = {**TINY_GAN, "output": "threshold", "zero_suppression": THRESHOLD_MEV, "log_epsilon": 1e-5}


@pytest.fixture(scope="module")
def shower_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("threshold") / "showers.h5"
    write_table(path, toy_showers(400, seed=5))
    return path


@pytest.fixture(scope="module")
def threshold_run(tmp_path_factory: pytest.TempPathFactory, shower_file: Path) -> Path:
    raw = raw_config({**TINY_THRESHOLD, "validation": "showers"}, epochs=1, best_metric="val_loss")
    return train(config_from_dict(raw), shower_file, tmp_path_factory.mktemp("run") / "gan", progress=False,
                 log=quiet)


def spread_outputs(gan: ConditionalGAN, seed: int = 0) -> None:
    """Give the last convolution a bias and weights that put the pre-activations on both sides of the cut."""
    torch.manual_seed(seed)
    last = gan.generator_net.convolutions[-1]
    with torch.no_grad():
        last.weight.normal_(0.0, 1.0)
        last.bias.fill_(0.5)


def test_threshold_follows_the_momentum_normalisation(threshold_run: Path, shower_file: Path) -> None:
    run = load_run(threshold_run)
    truth = read_table(shower_file)
    raw = torch.from_numpy(run.preprocessor.condition_array(truth, source="t")).float()
    t = run.model.generator_net.threshold(run.preprocessor.encode_conditions(raw))
    # model units are fractions of 1000 * mom (MeV per GeV/c): the 0.5 MeV cut is 0.5 / (1000 mom)
    torch.testing.assert_close(t.squeeze(1), THRESHOLD_MEV / (1000.0 * raw[:, 0]), rtol=1e-5, atol=0.0)


def test_generated_crystals_are_zero_or_above_threshold_in_mev(threshold_run: Path, shower_file: Path) -> None:
    run = load_run(threshold_run)
    spread_outputs(run.model)  # type: ignore[arg-type]
    sampler = run.sampler()
    truth = read_table(shower_file)
    raw = torch.from_numpy(run.preprocessor.condition_array(truth, source="t")).float()
    with torch.no_grad():
        maps = sampler(torch.randn(len(raw), sampler.noise_dim), raw)
    kept = maps > 0
    assert 0.05 < float(kept.float().mean()) < 0.95  # both sides of the cut are populated
    assert float(maps[kept].min()) >= THRESHOLD_MEV * (1 - 1e-5)  # float32 rounding of t exp(0) * 1000 mom
    assert int((maps < 0).sum()) == 0
    # crystals just above the cut exist (the cut is where the spectrum starts, not a gap above it)
    assert float(maps[kept].min()) < 2 * THRESHOLD_MEV


def test_training_gradient_reaches_crystals_below_the_cut() -> None:
    torch.manual_seed(1)
    results = {}
    for temperature in (0.0, 0.3):
        config = GANConfig(**{**TINY_THRESHOLD, "gate_temperature": temperature})
        gan = ConditionalGAN(n_targets=121, n_conditions=6, config=config)
        gan.generator_net._threshold_map = (-1, 0.0, 1.0, False, 1000.0)  # normalise: none, scale 1000
        spread_outputs(gan, seed=2)
        net = gan.generator_net
        noise, conditions = torch.randn(32, 8), torch.randn(32, 6)
        net.eval()
        with torch.no_grad():
            sampled = net(noise, conditions)
        zero = sampled == 0
        assert zero.any() and (~zero).any()
        assert float(sampled[~zero].min()) >= THRESHOLD_MEV / 1000.0 * (1 - 1e-6)
        net.train()
        images = net(noise, conditions)
        if temperature == 0:  # straight-through: the training forward is the sampling forward
            assert torch.equal(images.detach(), sampled)
        else:  # the smooth gate: values inside (0, t) exist in training only
            assert bool(((images[zero] > 0) & (images[zero] < THRESHOLD_MEV / 1000.0)).any())
        net.zero_grad()
        (images * zero).sum().backward()  # a loss only the crystals below the cut feel
        results[temperature] = net.dense.weight.grad.abs().sum().item()
    assert results[0.0] > 0.0 and results[0.3] > 0.0


def test_save_load_round_trip_and_export_agree(threshold_run: Path, shower_file: Path, tmp_path: Path) -> None:
    first, second = load_run(threshold_run), load_run(threshold_run)
    for (key, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), key
    truth = read_table(shower_file)
    raw = torch.from_numpy(first.preprocessor.condition_array(truth, source="t")).float()[:100]
    noise = torch.randn(100, first.sampler().noise_dim)
    with torch.no_grad():
        torch.testing.assert_close(first.sampler()(noise, raw), second.sampler()(noise, raw), rtol=0, atol=0)
    check = export_onnx(threshold_run, tmp_path / "gan.onnx")
    assert check["max_rel_diff"] < 1e-3


def test_shower_metric_is_the_validation_loss(threshold_run: Path) -> None:
    with open(threshold_run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert 0.0 <= float(rows[0]["val_loss"]) <= 1.0
    # known answers of the pieces: identical samples -> 0, disjoint -> 1
    rng = np.random.default_rng(0)
    images = rng.exponential(3.0, size=(500, 11, 11))
    a = _image_observables(images, THRESHOLD_MEV)
    for key, values in a.items():
        assert _separation(values, values, discrete=key == "n_hits") == 0.0, key
    brighter = _image_observables(images * 1e3, THRESHOLD_MEV)
    # disjoint: all generated rows land in the last bin (overflow), which holds the truth's top 0.1-3%
    assert _separation(a["log_total"], brighter["log_total"], discrete=False) > 0.97
    assert (a["n_hits"] == (images >= THRESHOLD_MEV).sum((1, 2))).all()


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ({**TINY_THRESHOLD, "zero_suppression": 0.0}, {}, "needs model.zero_suppression > 0"),
        (TINY_THRESHOLD, {"transform": "log"}, "needs data.image.transform none"),
        ({**TINY_THRESHOLD, "output_leak": 0.1}, {}, "output_leak is for output relu"),
        ({**TINY_GAN, "output": "softplus"}, {}, r"model.output = 'softplus'"),
        ({**TINY_GAN, "validation": "energy"}, {}, r"model.validation = 'energy'"),
        ({**TINY_THRESHOLD, "gate_temperature": -1.0}, {}, "gate_temperature"),
    ],
)
def test_config_errors(model: dict, data: dict, message: str) -> None:
    raw = raw_config(model)
    raw["data"]["image"].update(data)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, source="emc.yaml")


def test_relu_output_is_unchanged_by_default() -> None:
    assert GANConfig().output == "relu"  # run dirs written before the option load as they were trained
    gan = ConditionalGAN(n_targets=121, n_conditions=6, config=dataclasses.replace(GANConfig(), **TINY_GAN))
    images = gan.generator()(torch.randn(4, 8), torch.randn(4, 6))
    assert bool((images >= 0).all())


def test_coarse_convolutions_make_a_cheaper_generator() -> None:
    """coarse_channels: convolutions at 4 x 4 before the upsampling; with a short stack at 12 x 12 the generator
    costs several times fewer multiply-adds per shower than the seed's layout, and still makes 11 x 11 maps."""

    def multiply_adds(config: GANConfig) -> int:
        gan = ConditionalGAN(n_targets=121, n_conditions=6, config=config)
        total = 0

        def count(module: torch.nn.Module, _: object, output: torch.Tensor) -> None:
            nonlocal total
            if isinstance(module, torch.nn.Conv2d):
                total += output[0].numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

        for module in gan.generator_net.modules():
            module.register_forward_hook(count)
        images = gan.generator()(torch.randn(1, gan.noise_dim), torch.zeros(1, 6))
        assert images.shape == (1, 121)
        return total

    seed = GANConfig()
    cheap = dataclasses.replace(seed, coarse_channels=[16, 16], generator_channels=[8, 1])
    assert multiply_adds(seed) > 4 * multiply_adds(cheap)
    assert not any(k.startswith("generator_net.coarse") for k in ConditionalGAN(
        n_targets=121, n_conditions=6, config=seed).state_dict())  # old run dirs load unchanged
    with pytest.raises(ConfigError, match="coarse_channels"):
        config_from_dict(raw_config({**TINY_GAN, "coarse_channels": [0]}), source="emc.yaml")


def test_log_critic_input_scales_crystals_by_the_threshold(shower_file: Path, tmp_path: Path) -> None:
    config = GANConfig(**{**TINY_THRESHOLD, "critic_input": "log", "log_epsilon": 0.0, "sparsity_scale": 0.3})
    gan = ConditionalGAN(n_targets=121, n_conditions=6, config=config)
    gan.generator_net._threshold_map = (-1, 0.0, 1.0, False, 1000.0)  # t = 0.5 / 1000 for every row
    t = THRESHOLD_MEV / 1000.0
    images = torch.tensor([[0.0, t, 3.0 * t] + [0.0] * 118])
    view = gan.critic_view(images, torch.zeros(1, 6))
    torch.testing.assert_close(view[0, :3], torch.log(torch.tensor([1.0, 2.0, 4.0])))
    assert gan.critic.total_of is None  # critic_total: log, the sum of the view
    energy = ConditionalGAN(n_targets=121, n_conditions=6, config=dataclasses.replace(config, critic_total="energy"))
    energy.generator_net._threshold_map = gan.generator_net._threshold_map
    decoded = energy.critic.total_of(view, torch.zeros(1, 6))  # the energy sum's pixels, back from the view
    torch.testing.assert_close(decoded, images, rtol=1e-5, atol=1e-9)
    # a crystal at the cut and the core differ by ~ln(E / t), not by 4 orders of magnitude
    raw = raw_config({**TINY_THRESHOLD, "critic_input": "log", "log_epsilon": 0.0, "sparsity_scale": 0.3},
                     epochs=1)
    run_dir = train(config_from_dict(raw), shower_file, tmp_path / "gan", progress=False, log=quiet)
    with open(run_dir / "history.csv") as f:
        row = next(csv.DictReader(f))
    assert np.isfinite(float(row["train_loss"])) and float(row["train_gradient_penalty"]) >= 0
    with pytest.raises(ConfigError, match="critic_input log needs model.output threshold"):
        config_from_dict(raw_config({**TINY_GAN, "critic_input": "log"}), source="emc.yaml")


def test_critic_hit_spectrum_counts_crystals_above_each_level(shower_file: Path, tmp_path: Path) -> None:
    """The critic's hit-spectrum feature is the fraction of crystals with E / t above each level (soft steps),
    and it trains; it needs the log critic input."""
    log_critic = {**TINY_THRESHOLD, "critic_input": "log", "log_epsilon": 0.0, "sparsity_scale": 0.3}
    config = GANConfig(**{**log_critic, "critic_hit_levels": [0.5, 2.0, 8.0], "critic_hit_softness": 0.01})
    gan = ConditionalGAN(n_targets=121, n_conditions=6, config=config)
    ratio = torch.tensor([[0.0, 1.0, 1.5, 3.0, 10.0] + [0.0] * 116])  # E / t of each crystal
    got = gan.critic.hit_spectrum(torch.log1p(ratio))
    torch.testing.assert_close(got, torch.tensor([[4 / 121, 2 / 121, 1 / 121]]), atol=1e-6, rtol=0)
    # a crystal moving across a level moves the feature by 1 / 121 (and the score is finite and differentiable)
    shifted = ratio.clone()
    shifted[0, 2] = 2.5
    assert float(gan.critic.hit_spectrum(torch.log1p(shifted))[0, 1] - got[0, 1]) == pytest.approx(1 / 121, abs=1e-6)
    view = torch.log1p(ratio).requires_grad_(True)
    gan.critic(view, torch.zeros(1, 6)).sum().backward()
    assert view.grad is not None and torch.isfinite(view.grad).all()
    run_dir = train(config_from_dict(raw_config({**log_critic, "critic_hit_levels": [0.5, 4.0]}, epochs=1)),
                    shower_file, tmp_path / "gan", progress=False, log=quiet)
    assert load_run(run_dir).model.critic.hit_levels == pytest.approx([np.log(1.5), np.log(5.0)])
    with pytest.raises(ConfigError, match="critic_hit_levels needs model.critic_input log"):
        config_from_dict(raw_config({**TINY_THRESHOLD, "critic_hit_levels": [1.0]}), source="emc.yaml")
    with pytest.raises(ConfigError, match="critic_hit_levels"):
        config_from_dict(raw_config({**log_critic, "critic_hit_levels": [0.0]}), source="emc.yaml")


def test_output_knots_are_a_learned_monotone_map_of_the_log_energy(shower_file: Path, tmp_path: Path) -> None:
    """``model.output_knots``: E = t exp(phi(u)), phi piecewise linear with learned slopes: the identity at the
    start, phi(0) = 0 (the cut stays at t), monotone, and a steep segment opens a gap in the spectrum."""
    config = GANConfig(**{**TINY_THRESHOLD, "output_knots": 4, "output_knot_range": 2.0})
    gan = ConditionalGAN(n_targets=121, n_conditions=6, config=config)
    net = gan.generator_net
    u = torch.linspace(-3.0, 6.0, 901).reshape(1, -1)
    torch.testing.assert_close(net.output_map(u), u)  # identity before training
    with torch.no_grad():  # slopes 0.2, 8, 1, 1 on [0, 0.5), [0.5, 1), [1, 1.5), [1.5, 2); 3 beyond; 0.2 below 0
        net.knot_slopes.copy_(torch.log(torch.tensor([0.2, 8.0, 1.0, 1.0, 3.0])) / net.KNOT_GAIN)
    with torch.no_grad():
        phi = net.output_map(u)[0]
    x = u[0].double()
    expected = torch.where(x < 0.5, 0.2 * x, torch.where(x < 1.0, 0.1 + 8 * (x - 0.5), 4.1 + (x - 1.0)))
    expected = torch.where(x >= 2.0, 5.1 + 3 * (x - 2.0), expected)
    torch.testing.assert_close(phi.double(), expected, rtol=0, atol=1e-5)
    assert bool((phi.diff() > 0).all()) and float(net.output_map(torch.zeros(1, 1)).detach()) == 0.0
    # uniform u in [0, 1.5): phi in (0.6, 3.6) takes u in (0.5625, 0.9375), a quarter of the rows (0.6 without
    # the map): the steep segment thins out the spectrum there, a dip in E / t between e^0.6 and e^3.6
    uniform = torch.rand(1, 100_000, generator=torch.Generator().manual_seed(0)) * 1.5
    with torch.no_grad():
        ratio = torch.exp(net.output_map(uniform))
    dip = ((ratio > np.exp(0.6)) & (ratio < np.exp(3.6))).float().mean()
    assert abs(float(dip) - 0.25) < 0.005
    # trains (the slopes move), saves, loads and exports
    raw = raw_config({**TINY_THRESHOLD, "output_knots": 8, "total_energy": "head"}, epochs=1)
    run_dir = train(config_from_dict(raw), shower_file, tmp_path / "gan", progress=False, log=quiet)
    run = load_run(run_dir)
    slopes = run.model.generator_net.knot_slopes
    assert slopes is not None and not torch.allclose(slopes, torch.zeros_like(slopes))
    assert export_onnx(run_dir, tmp_path / "gan.onnx")["max_rel_diff"] < 1e-3
    with pytest.raises(ConfigError, match="output_knots needs model.output threshold"):
        config_from_dict(raw_config({**TINY_GAN, "output_knots": 4}), source="emc.yaml")
    with pytest.raises(ConfigError, match="output_knot_range > 0"):
        config_from_dict(raw_config({**TINY_THRESHOLD, "output_knots": 4, "output_knot_range": 0.0}), source="e.yaml")


def test_readout_noise_adds_the_noise_hits_of_empty_crystals(shower_file: Path, tmp_path: Path) -> None:
    """``model.readout_noise``: empty crystals get N(0, sigma) and are kept where that passes the cut (sigma 0.2,
    cut 0.5 MeV: P(z >= 2.5) = 0.62 %, mean 0.56 MeV); filled crystals are unchanged; the normals are noise inputs."""
    config = GANConfig(**{**TINY_THRESHOLD, "readout_noise": 0.2})
    gan = ConditionalGAN(n_targets=121, n_conditions=6, config=config)
    assert gan.noise_dim == 8 + 121
    net = gan.generator_net.eval()
    net._threshold_map = (-1, 0.0, 1.0, False, 1000.0)  # normalise: none, scale 1000: E (MeV) = 1000 x
    spread_outputs(gan, seed=4)
    rows = 4000
    noise = torch.randn(rows, gan.noise_dim, generator=torch.Generator().manual_seed(1))
    conditions = torch.randn(rows, 6, generator=torch.Generator().manual_seed(2))
    silent = noise.clone()
    silent[:, 8:] = 0.0  # no readout noise
    with torch.no_grad():
        maps, bare = net(noise, conditions) * 1000.0, net(silent, conditions) * 1000.0
    empty = bare == 0
    assert 0.05 < float(empty.float().mean()) < 0.95
    torch.testing.assert_close(maps[~empty], bare[~empty], rtol=0, atol=0)  # filled crystals untouched
    hits = maps[empty]
    rate = float((hits > 0).float().mean())
    expected = 0.5 * math.erfc(2.5 / math.sqrt(2))  # P(0.2 z >= 0.5)
    n_empty = int(empty.sum())
    assert abs(rate - expected) < 4 * math.sqrt(expected / n_empty)
    kept = hits[hits > 0]
    assert float(kept.min()) >= 0.5 * (1 - 1e-5)
    # mean of 0.2 z given z >= 2.5: 0.2 phi(2.5) / Q(2.5) = 0.566 MeV
    truncated_mean = 0.2 * math.exp(-2.5**2 / 2) / math.sqrt(2 * math.pi) / expected
    assert abs(float(kept.mean()) - truncated_mean) < 4 * 0.2 * 0.37 / math.sqrt(len(kept))
    torch.testing.assert_close(net(noise[:50], conditions[:50]) * 1000.0, maps[:50])  # deterministic given noise
    raw = raw_config({**TINY_THRESHOLD, "readout_noise": 0.2, "total_energy": "head"}, epochs=1)
    run_dir = train(config_from_dict(raw), shower_file, tmp_path / "gan", progress=False, log=quiet)
    assert load_run(run_dir).sampler().noise_dim == 8 + 121
    assert export_onnx(run_dir, tmp_path / "gan.onnx")["max_rel_diff"] < 1e-3
    with pytest.raises(ConfigError, match="readout_noise"):
        config_from_dict(raw_config({**TINY_GAN, "readout_noise": 0.2}), source="emc.yaml")


@pytest.mark.parametrize("offset", [0.0, 15.0, -3.0])
def test_sampling_rescales_e_over_t_as_the_training_formula_does(offset: float) -> None:
    """With the energy head (and knots, readout noise) the sampler rescales x = E / t by products and sums; the
    training branch does it with log-sum-exps of u = ln x. Same maps, same kept crystals, whatever the overall
    level of u, which the rescale removes: trained generators drift to u > 100 (offset 15 here: u ~ 120, where
    exp(u) overflows float32) or keep every crystal below the cut (offset -3: u ~ -24). log_gain 8 as in the config
    (with a narrow spread of u many crystals sit at the cut after the rescale, and the second rescale's sum
    then hinges on rounding)."""
    config = GANConfig(**{**TINY_THRESHOLD, "output_knots": 4, "readout_noise": 0.2, "total_energy": "head",
                          "log_gain": 8.0})
    gan = ConditionalGAN(n_targets=121, n_conditions=6, config=config)
    net = gan.generator_net.eval()
    net._threshold_map = (-1, 0.0, 1.0, False, 1000.0)
    spread_outputs(gan, seed=2)
    with torch.no_grad():
        net.convolutions[-1].bias.add_(offset)  # type: ignore[operator]
    torch.manual_seed(3)
    with torch.no_grad():
        net.energy_location.fill_(0.05)  # totals of ~50 MeV against a 0.5 MeV cut
        net.energy_scale.fill_(0.01)
    noise, conditions = torch.randn(2000, gan.noise_dim), torch.randn(2000, 6)
    with torch.no_grad():
        fast = net(noise, conditions)
        net.sample_by_scaling = False  # the training branch's form, in float64 (in float32 it loses ~1e-5 of
        slow = net.double()(noise.double(), conditions.double()).float()  # ln x per unit of u: 3 % at u ~ 120)
    kept = slow > 0
    assert 0.05 < float(kept.float().mean()) < 0.95
    assert float((fast > 0).ne(kept).float().mean()) < 1e-4  # a crystal within rounding of the cut may flip
    same = (fast > 0) == kept
    torch.testing.assert_close(fast[same], slow[same], rtol=1e-4, atol=1e-9)
