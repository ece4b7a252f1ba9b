"""The conditional GAN family and its image regressor: shapes, the WGAN-GP terms, training, resume, save/load."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detgen.config import GANConfig, RegressorConfig, config_from_dict
from detgen.errors import ConfigError, DataError
from detgen.export import export_onnx
from detgen.generation import generate
from detgen.io import read_table, write_table
from detgen.models.gan import ConditionalGAN, ImageRegressor, MinibatchDiscrimination, gradient_penalty
from detgen.runs import load_run
from detgen.training import train

CONDITIONS = ["mom", "dtheta_mom", "dphi_mom", "dz_pos", "dphi_pos", "z"]
TINY_GAN = {"family": "gan", "noise_dim": 8, "dense_shape": [4, 4, 4], "generator_channels": [4, 1],
            "critic_channels": [4, 4], "critic_features": 8, "minibatch_kernels": 4, "minibatch_kernel_dim": 2,
            "n_critic": 2}
TINY_REGRESSOR = {"family": "regressor", "conv_channels": [8, 8], "hidden": [16]}


def quiet(_: str) -> None:
    pass


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: one thread is faster, and on a loaded machine two spinning OpenMP threads crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_showers(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Gaussian blobs (MeV) holding 90% of 1000 * mom, centred by dz_pos/dphi_pos, widened by |dtheta_mom|."""
    rng = np.random.default_rng(seed)
    table = {"mom": rng.uniform(0.2, 3.0, n), "dtheta_mom": rng.uniform(-0.2, 0.2, n),
             "dphi_mom": rng.uniform(-0.2, 0.2, n), "dz_pos": rng.uniform(-1, 1, n),
             "dphi_pos": rng.uniform(-1, 1, n), "z": rng.uniform(-100, 100, n)}
    axis = np.arange(11) - 5.0
    width = 0.8 + 3 * np.abs(table["dtheta_mom"])
    gz = np.exp(-0.5 * ((axis[None] - table["dz_pos"][:, None]) / width[:, None]) ** 2)
    gp = np.exp(-0.5 * ((axis[None] - table["dphi_pos"][:, None]) / width[:, None]) ** 2)
    blob = gz[:, :, None] * gp[:, None, :]
    blob /= blob.sum((1, 2), keepdims=True)
    maps = blob * (900 * table["mom"])[:, None, None] * rng.normal(1, 0.03, (n, 1, 1))
    maps[maps < 0.5] = 0.0
    return {"map": maps.astype(np.float32), **table}


@pytest.fixture(scope="module")
def shower_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gan") / "showers.h5"
    write_table(path, toy_showers(500))
    return path


def raw_config(model: dict, **training: object) -> dict:
    return {
        "name": "tiny-gan",
        "data": {"conditions": CONDITIONS, "targets": ["map"],
                 "image": {"normalise": "condition", "condition": "mom", "scale": 1000.0}},
        "model": model,
        "training": {"epochs": 2, "batch_size": 64, "lr": 1e-3, "metric_rows": 200, **training},
    }


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


# ------------------------------------------------------------------------------------------ networks
def test_shapes_and_non_negative_images() -> None:
    gan = ConditionalGAN(n_targets=121, n_conditions=6, config=GANConfig())
    images = gan.generator()(torch.randn(5, gan.noise_dim), torch.randn(5, 6))
    assert images.shape == (5, 121) and bool((images >= 0).all())
    assert gan.critic(images, torch.randn(5, 6)).shape == (5,)
    noise, conditions = torch.randn(600, gan.noise_dim), torch.randn(600, 6)
    with torch.no_grad():
        chunked = gan.generator()(noise, conditions)  # eager passes of chunk_rows rows
        torch.testing.assert_close(chunked, gan.generator_net._images(noise, conditions))
    regressor = ImageRegressor(n_targets=121, n_conditions=6, config=RegressorConfig())
    assert regressor.net(images).shape == (5, 3)
    with pytest.raises(ConfigError, match=r"targets have 122 features .* 121 pixels"):
        ConditionalGAN(n_targets=122, n_conditions=6, config=GANConfig())


def test_generator_parameter_count_is_the_seeds() -> None:
    # the seed's generator has about 46k parameters (PHYSICS.md sec. 2); see docs/emc_gan.md for the noise width
    gan = ConditionalGAN(n_targets=121, n_conditions=6, config=GANConfig())
    n = sum(p.numel() for p in gan.generator_net.parameters())
    assert 0.9 * 46_000 < n < 1.1 * 46_000


@pytest.mark.parametrize("channels", [[6, 3, 1], [6, 1]])
@pytest.mark.parametrize(("upsample", "kernel", "coarse"), [(3, 3, 4), (2, 3, 6), (3, 5, 4), (4, 3, 3), (2, 7, 6),
                                                            (2, 3, 7)])
def test_the_convolution_after_the_upsampling_runs_on_the_coarse_map_unchanged(upsample: int, kernel: int,
                                                                              coarse: int, channels: list[int]) -> None:
    """Nearest upsampling then a k x k convolution == one convolution of the coarse map (r^2 x the channels,
    folded weights) then a pixel shuffle; with two layers the valid one is folded too (run before the shuffle,
    then cropped): same images, same gradients, same saved weights."""
    config = GANConfig(**{**TINY_GAN, "dense_shape": [5, coarse, coarse], "upsample": upsample,
                          "kernel_size": kernel, "generator_channels": channels})
    torch.manual_seed(0)
    net = ConditionalGAN(n_targets=121, n_conditions=6, config=config).generator_net.double()  # exact comparison
    assert net.fold_first and net.fold_last == (len(channels) == 2)
    assert not {"upsample_fold", "shuffle_fold", "shuffle_fold_x"} & set(net.state_dict())
    with torch.no_grad():  # biases and weights of every sign
        for parameter in net.parameters():
            parameter.normal_(0.0, 0.5)
    noise, conditions = torch.randn(64, 8, dtype=torch.float64), torch.randn(64, 6, dtype=torch.float64)
    outputs, gradients = [], []
    for fold in (True, False):
        net.fold_first = fold  # False: upsampling, convolutions, as written in the config
        net.zero_grad()
        out = net(noise, conditions)
        (out * torch.linspace(-1, 1, 121, dtype=torch.float64)).sum().backward()
        outputs.append(out.detach())
        gradients.append(torch.cat([p.grad.flatten() for p in net.convolutions.parameters()]))  # type: ignore[union-attr]
    assert float((outputs[1] > 0).float().mean()) > 0.2  # a live map, not all zeros
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-10, atol=1e-12)
    single = GANConfig(**{**TINY_GAN, "generator_channels": [1]})  # only the valid convolution: nothing to fold
    assert not ConditionalGAN(n_targets=121, n_conditions=6, config=single).generator_net.fold_first


def test_output_leak_changes_only_the_training_gradient() -> None:
    """output_leak: the same ReLU images in train and eval mode, but in training a crystal the generator left at
    zero still receives the critic's gradient (a plain ReLU gives it none)."""
    torch.manual_seed(3)
    leaky = ConditionalGAN(n_targets=121, n_conditions=6, config=GANConfig(**{**TINY_GAN, "output_leak": 0.2}))
    plain = ConditionalGAN(n_targets=121, n_conditions=6, config=GANConfig(**TINY_GAN))
    plain.generator_net.load_state_dict(leaky.generator_net.state_dict())
    noise, conditions = torch.randn(16, 8), torch.randn(16, 6)
    gradients = {}
    for name, gan in (("leaky", leaky), ("plain", plain)):
        net = gan.generator_net
        net.eval()
        with torch.no_grad():
            evaluated = net(noise, conditions)
        net.train()
        images = net(noise, conditions)
        assert torch.equal(images, evaluated)  # forward unchanged, and the same in both modes
        zero = images.detach() == 0
        assert zero.any() and (~zero).any()
        net.zero_grad()
        (images * zero).sum().backward()  # a loss that only the zero crystals feel
        gradients[name] = net.dense.weight.grad.abs().sum().item()
    assert torch.equal(leaky.generator_net(noise, conditions), plain.generator_net(noise, conditions))
    assert gradients["plain"] == 0.0
    assert gradients["leaky"] > 0.0


def test_gradient_penalty_on_toy_critics() -> None:
    torch.manual_seed(0)
    real, fake, cond = torch.randn(16, 5), torch.randn(16, 5), torch.zeros(16, 1)
    w = torch.tensor([0.3, -2.0, 0.5, 1.0, 0.0])

    def linear(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x @ w

    # a linear critic has gradient w everywhere
    expected = (w.norm() - 1) ** 2
    torch.testing.assert_close(gradient_penalty(linear, real, fake, cond), expected)  # type: ignore[arg-type]

    def quadratic(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x**2).sum(1)

    # D = |x|^2 / 2 has gradient x_hat: the penalty is the mean of (|x_hat| - 1)^2 at the interpolates
    alpha = torch.rand(16, 1)
    mixed = alpha * real + (1 - alpha) * fake
    expected = ((mixed.norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(gradient_penalty(quadratic, real, fake, cond, alpha=alpha), expected)  # type: ignore[arg-type]


def test_minibatch_discrimination_measures_closeness_to_the_batch() -> None:
    layer = MinibatchDiscrimination(3, kernels=2, kernel_dim=4)
    same = torch.ones(6, 3)
    torch.testing.assert_close(layer(same), torch.ones(6, 2))  # every other row is identical: exp(0) = 1
    with torch.no_grad():
        assert float(layer(torch.eye(3) * 1e4).max()) < 1e-6
    # the mean over other rows does not grow with the batch size
    torch.testing.assert_close(layer(torch.ones(60, 3)), torch.ones(60, 2))


# ------------------------------------------------------------------------------------------ training
def trained_with_resume(config: Any, shower_file: Path, tmp_path: Path) -> Path:
    """Train 2 epochs in one go and 1 + 1 with a resume; assert both give bitwise-equal weights, checkpoints and
    histories; return the first run dir."""
    full = train(config, shower_file, tmp_path / "full", progress=False, log=quiet)
    part = train(config, shower_file, tmp_path / "part", epochs=1, progress=False, log=quiet)
    train(config, shower_file, part, epochs=2, resume=True, progress=False, log=quiet)
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        assert (full / name).read_bytes() == (part / name).read_bytes(), name
    assert history(full) == history(part)
    return full


def test_gan_trains_and_resumes_exactly(tmp_path: Path, shower_file: Path) -> None:
    full = trained_with_resume(config_from_dict(raw_config(TINY_GAN)), shower_file, tmp_path)
    rows = history(full)
    assert {"train_loss", "train_gradient_penalty", "train_generator", "train_regression_l1"} <= set(rows[0])
    saved = json.loads((full / "checkpoints" / "last.json").read_text())
    assert set(saved["optimizers"]) == {"generator", "critic"}
    assert json.loads((full / "meta.json").read_text())["schema"]["target_shapes"] == {"map": [11, 11]}


def test_saved_gan_generates_maps_in_mev(tmp_path: Path, shower_file: Path) -> None:
    run_dir = train(config_from_dict(raw_config(TINY_GAN, epochs=1)), shower_file, tmp_path / "run",
                    progress=False, log=quiet)
    run = load_run(run_dir)
    sampler = run.sampler()
    truth = read_table(shower_file)
    raw = torch.from_numpy(run.preprocessor.condition_array(truth, source="t")).float()[:50]
    noise = torch.randn(50, sampler.noise_dim)
    with torch.no_grad():
        model_space = run.model.generator()(noise, run.preprocessor.encode_conditions(raw))
        maps = sampler(noise, raw)
    # the sampler is the generator followed by the inverse preprocessing: fractions of 1000 * mom, in MeV
    torch.testing.assert_close(maps, model_space * raw[:, :1] * 1000.0)
    out = tmp_path / "generated.h5"
    generate(run_dir, shower_file, out, seed=3, progress=False, log=quiet)
    generated = read_table(out)
    assert generated["map"].shape == truth["map"].shape and generated["map"].dtype == np.float32
    assert bool((generated["map"] >= 0).all())
    np.testing.assert_array_equal(generated["mom"], truth["mom"])
    check = export_onnx(run_dir, tmp_path / "gan.onnx")  # the same sampler graph, checked against onnxruntime
    assert check["max_rel_diff"] < 1e-3
    again = tmp_path / "again.h5"
    generate(run_dir, shower_file, again, seed=3, progress=False, log=quiet)
    np.testing.assert_array_equal(read_table(again)["map"], generated["map"])


def test_regressor_learns_a_linear_toy(tmp_path: Path) -> None:
    # pixel i holds mom * P_i + dz_pos * Q_i (+ an offset): the conditions are a linear function of the image
    rng = np.random.default_rng(4)
    n = 1500
    table = toy_showers(n, seed=4)
    pattern_p, pattern_q = rng.uniform(0, 1, 121), rng.uniform(0, 1, 121)
    maps = 100.0 * (table["mom"][:, None] * pattern_p + (table["dz_pos"][:, None] + 1) * pattern_q)
    table["map"] = maps.reshape(n, 11, 11).astype(np.float32)
    path = tmp_path / "linear.h5"
    write_table(path, table)
    raw = raw_config({**TINY_REGRESSOR, "predict": ["mom", "dz_pos"]}, epochs=8, batch_size=50, lr=3e-3,
                     best_metric="val_loss")
    raw["data"]["image"] = {"scale": 100.0}
    run_dir = train(config_from_dict(raw), path, tmp_path / "regressor", progress=False, log=quiet)
    losses = [float(r["val_loss"]) for r in history(run_dir)]
    # predicting the mean gives an L1 of about 0.87 per standardised uniform variable (1.73 for two)
    assert losses[-1] < 0.2 < 1.5 < losses[0] + 1.5
    assert losses[-1] < losses[0]
    # a regressor run is a partner model: generating from it is a clear error, not a file of NaN maps
    from detgen.errors import SchemaError
    from detgen.generation import generate

    with pytest.raises(SchemaError, match="generates no samples"):
        generate(run_dir, path, tmp_path / "gen.h5", progress=False, log=quiet)
    assert not (tmp_path / "gen.h5").exists()


def test_gan_with_a_frozen_regressor(tmp_path: Path, shower_file: Path) -> None:
    regressor_raw = raw_config(TINY_REGRESSOR, epochs=1, best_metric="val_loss")
    regressor_raw["data"]["image"] = {"scale": 1000.0}  # the map in GeV; the GAN's are fractions of 1000 * mom
    regressor_run = train(config_from_dict(regressor_raw), shower_file, tmp_path / "reg", progress=False, log=quiet)
    before = (regressor_run / "model.safetensors").read_bytes()
    model = {**TINY_GAN, "regressor_run": str(regressor_run), "regressor_weight": 0.5}
    run_dir = train(config_from_dict(raw_config(model, epochs=1)), shower_file, tmp_path / "gan",
                    progress=False, log=quiet)
    assert float(history(run_dir)[0]["train_regression_l1"]) > 0
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["regressor"]["predict"] == ["mom", "dtheta_mom", "dphi_mom"]
    assert (regressor_run / "model.safetensors").read_bytes() == before  # frozen, never written
    # the GAN run holds only generator and critic weights; it loads without the regressor
    assert not any(k.startswith("_regressor") for k in load_run(run_dir).model.state_dict())
    # the regressor may see the map in its own units: images pass through MeV into its preprocessing
    gan = load_run(run_dir).model
    truth = read_table(shower_file)
    pre = load_run(run_dir).preprocessor
    raw = torch.from_numpy(pre.condition_array(truth, source="t")).float()[:200]
    images = pre.encode_targets(torch.from_numpy(pre.target_array(truth, source="t"))[:200], raw)
    gan.prepare_training(pre, (images, pre.encode_conditions(raw)), (images, pre.encode_conditions(raw)), quiet)
    regressor = load_run(regressor_run)
    theirs = regressor.preprocessor
    their_images = theirs.encode_targets(torch.from_numpy(theirs.target_array(truth, source="t"))[:200], raw)
    assert not torch.allclose(their_images, images)
    with torch.no_grad():
        direct = regressor.model.loss(their_images, theirs.encode_conditions(raw))
        torch.testing.assert_close(gan.regression_l1(images, pre.encode_conditions(raw)), direct)
    # a regressor reading other columns is refused
    other_raw = raw_config(TINY_REGRESSOR, epochs=1, best_metric="val_loss")
    other_raw["data"]["conditions"] = CONDITIONS[:3]
    other_run = train(config_from_dict(other_raw), shower_file, tmp_path / "reg2", progress=False, log=quiet)
    other = raw_config({**model, "regressor_run": str(other_run)}, epochs=1)
    with pytest.raises(ConfigError, match=r"its columns \['mom', 'dtheta_mom', 'dphi_mom'\] -> \['map'\] differ"):
        train(config_from_dict(other), shower_file, tmp_path / "gan2", progress=False, log=quiet)


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ({**TINY_GAN, "generator_channels": [4, 2]}, {}, "must end with 1"),
        ({**TINY_GAN, "dense_shape": [4, 3, 3]}, {}, r"upsampled x3 is 9 x 9, smaller than"),
        ({**TINY_GAN, "regressor_weight": 1.0}, {}, "regressor_run and model.regressor_weight go together"),
        (TINY_GAN, {"image": {"normalise": "total"}}, "needs data.image.normalise none or condition"),
        ({**TINY_REGRESSOR, "predict": ["energy"]}, {}, "model.predict names 'energy'"),
        ({**TINY_REGRESSOR, "loss": "huber"}, {}, "model.loss = 'huber'"),
    ],
)
def test_config_errors(model: dict, data: dict, message: str) -> None:
    raw = raw_config(model)
    raw["data"].update(data)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, source="emc.yaml")


def test_negative_energies_and_nan_maps_are_refused(tmp_path: Path) -> None:
    table = toy_showers(300)
    table["map"][:30, 4, 4] = -3.0  # MeV, far below the 0.2 MeV noise; some of these rows are training rows
    path = tmp_path / "negative.h5"
    write_table(path, table)
    config = config_from_dict(raw_config(TINY_GAN, epochs=1))
    with pytest.raises(DataError, match=r"\d+ training image\(s\) have a pixel below model.min_pixel = -1.0"):
        train(config, path, tmp_path / "run", progress=False, log=quiet)
    table["map"][:30, 4, 4] = 0.0
    table["map"][17, 4, 4] = np.nan
    write_table(path, table)
    with pytest.raises(DataError, match=r"negative\.h5: column 'map' has 1 NaN .* \(first at row 17, element \(4, 4\)\)"):
        train(config, path, tmp_path / "run2", progress=False, log=quiet)
    assert not (tmp_path / "run2").exists()


def test_regressor_needs_val_loss_as_best_metric(tmp_path: Path, shower_file: Path) -> None:
    with pytest.raises(ConfigError, match="best_metric: val_loss"):
        train(config_from_dict(raw_config(TINY_REGRESSOR)), shower_file, tmp_path / "r", progress=False, log=quiet)
