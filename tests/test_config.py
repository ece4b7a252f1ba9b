from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detgen.config import FlowConfig, HistogramConfig, config_from_dict, dump_config, load_config
from detgen.errors import ConfigError

from conftest import toy_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path: Path) -> None:
    config = load_config(path)
    assert config_from_dict(yaml.safe_load(dump_config(config))) == config


def test_seed_config_is_the_seed_paper_model() -> None:
    config = load_config(Path(__file__).parents[1] / "configs" / "dedx_besiii.yaml")
    assert isinstance(config.model, FlowConfig)
    assert (config.model.transform, config.model.blocks, config.model.hidden, config.model.bins) == ("rqs", 6, [64, 64, 64], 8)
    assert (config.training.lr, config.training.batch_size, config.training.epochs) == (1e-3, 128, 100)
    assert (config.training.schedule.kind, config.training.schedule.step_epochs, config.training.schedule.factor) == ("step", 10, 0.5)
    assert config.data.group_by == "species" and set(config.data.groups or []) == {"pi+", "pi-", "K+", "K-", "p", "pbar"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": {"family": "flow", "bocks": 3}}, "unknown key model.bocks (did you mean 'blocks'?)"),
        ({"model": {"family": "histogram", "blocks": 3}}, "unknown key model.blocks"),
        ({"model": {"family": "gann"}}, "model.family = 'gann' is unknown"),
        ({"training__epochs": "many"}, "training.epochs = 'many' has the wrong type"),
        ({"training__lr_schedule": 1}, "unknown key training.lr_schedule"),
        ({"data__split": [0.5, 0.1, 0.1]}, "must be three fractions summing to 1"),
        ({"data__transforms": {"p": "sqrt"}}, "data.transforms.p = 'sqrt'"),
    ],
)
def test_bad_configs_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        config_from_dict(toy_config(**overrides), source="my.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("my.yaml:")


def test_setting_a_family_does_not_use_is_an_error() -> None:
    assert isinstance(config_from_dict(toy_config(model={"family": "histogram"})).model, HistogramConfig)
    with pytest.raises(ConfigError, match="bins"):
        config_from_dict(toy_config(model={"family": "histogram", "bins": 8}))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
