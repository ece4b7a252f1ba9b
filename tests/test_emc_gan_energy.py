"""The GAN's total-energy head (``model.total_energy: head``): the map is rescaled to a separately drawn total.

Properties: generated images sum to the head's total (up to the crystals the cut moves) and stay zero-suppressed;
the energy score (CRPS) teaches the head a known conditional law of the total; training resumes exactly; save/load
and ONNX export reproduce the sampler; bad settings are config errors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from detgen.config import GANConfig, config_from_dict
from detgen.errors import ConfigError
from detgen.export import export_onnx
from detgen.io import read_table, write_table
from detgen.models.gan import ConditionalGAN
from detgen.runs import load_run
from detgen.training import train
from test_gan import (  # noqa: F401 (one_thread: autouse fixture)
    TINY_GAN,
    history,
    one_thread,
    quiet,
    raw_config,
    toy_showers,
    trained_with_resume,
)

HEAD = {**TINY_GAN, "output": "threshold", "zero_suppression": 0.5, "log_epsilon": 1e-5, "total_energy": "head",
        "energy_hidden": [16], "energy_noise": 2}


@pytest.fixture(scope="module")
def shower_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("energy") / "showers.h5"
    write_table(path, toy_showers(400, seed=7))
    return path


@pytest.fixture(scope="module")
def head_run(tmp_path_factory: pytest.TempPathFactory, shower_file: Path) -> Path:
    return train(config_from_dict(raw_config(HEAD, epochs=1)), shower_file, tmp_path_factory.mktemp("run") / "gan",
                 progress=False, log=quiet)


def test_images_sum_to_the_heads_total_and_stay_zero_suppressed(head_run: Path, shower_file: Path) -> None:
    run = load_run(head_run)
    net = run.model.generator_net
    truth = read_table(shower_file)
    raw = torch.from_numpy(run.preprocessor.condition_array(truth, source="t")).float()
    conditions = run.preprocessor.encode_conditions(raw)
    noise = torch.randn(len(raw), run.model.noise_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images = net(noise, conditions)
        wanted = net.total(noise, conditions)[:, 0]
        threshold = net.threshold(conditions)
    made = images.sum(1)
    relative = ((made - wanted) / wanted).abs()
    assert float(relative.median()) < 1e-3 and float(relative.quantile(0.95)) < 0.02
    assert bool(((images == 0) | (images >= threshold * (1 - 1e-5))).all())  # still exactly zero or >= the cut
    # the head was set up on the training totals (model units: fraction of 1000 * mom) before training
    totals = truth["map"].reshape(len(raw), -1).sum(1) / (1000 * truth["mom"])
    assert run.meta["energy_head"]["location"] == pytest.approx(float(net.energy_location))
    assert abs(float(net.energy_location) - totals.mean()) < 0.01
    assert abs(float(net.energy_scale) / totals.std() - 1) < 0.2


def test_energy_score_teaches_the_head_a_known_law() -> None:
    """CRPS training of the head alone: totals ~ N(0.9 + 0.05 c0, (0.03 + 0.015 c1)^2) are learnt."""
    torch.manual_seed(0)
    config = dataclasses.replace(GANConfig(), **{k: v for k, v in HEAD.items() if k != "family"} | {
        "energy_hidden": [32, 32]})
    gan = ConditionalGAN(n_targets=121, n_conditions=6, config=config)
    net = gan.generator_net
    net.energy_location.fill_(0.9)
    net.energy_scale.fill_(0.05)
    optimizer = torch.optim.Adam(net.energy_head.parameters(), lr=3e-3)  # type: ignore[union-attr]
    rng = torch.Generator().manual_seed(1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        conditions = torch.rand(n, 6, generator=rng) * 2 - 1
        totals = 0.9 + 0.05 * conditions[:, 0] + (0.03 + 0.015 * conditions[:, 1]) * torch.randn(n, generator=rng)
        targets = torch.zeros(n, 121)
        targets[:, 60] = totals  # only the sum matters
        return targets, conditions

    for _ in range(1500):
        loss = gan.energy_score(*batch(512))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for c0, c1 in ((-0.8, 0.0), (0.0, 0.9), (0.7, -0.5)):
        conditions = torch.tensor([[c0, c1, 0.0, 0.0, 0.0, 0.0]]).repeat(20000, 1)
        with torch.no_grad():
            drawn = net.total(torch.randn(20000, gan.noise_dim), conditions)[:, 0]
        assert abs(float(drawn.mean()) - (0.9 + 0.05 * c0)) < 0.004
        assert abs(float(drawn.std()) / (0.03 + 0.015 * c1) - 1) < 0.15


def test_head_trains_resumes_exactly_and_exports(tmp_path: Path, shower_file: Path, head_run: Path) -> None:
    full = trained_with_resume(config_from_dict(raw_config(HEAD)), shower_file, tmp_path)
    assert "train_energy_score" in history(full)[0]
    check = export_onnx(head_run, tmp_path / "head.onnx")  # the sampler graph with the head, against onnxruntime
    assert check["max_rel_diff"] < 1e-3


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({**HEAD, "output": "relu", "log_epsilon": 1e-5, "critic_input": "linear"}, "needs model.output threshold"),
        ({**HEAD, "energy_noise": 9}, r"energy_noise must be in \[1, noise_dim = 8\]"),
        ({**HEAD, "total_energy": "fixed"}, "model.total_energy = 'fixed'"),
    ],
)
def test_config_errors(model: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw_config(model), source="emc.yaml")
