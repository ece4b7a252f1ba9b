from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from detgen.config import config_from_dict
from detgen.io import write_table

TOY_MEAN_SLOPE = 0.8  # y = exp(slope * ln p + 0.1 * (nhits - 30) / 10) * (1 + RESOLUTION * N(0,1))
TOY_RESOLUTION = 0.07


def toy_table(n: int, seed: int = 0, species: tuple[str, ...] = ("pi+", "K+")) -> dict[str, np.ndarray]:
    """A known-truth toy: log-normal-ish 'dedx' whose mean depends on p and nhits, offset per species."""
    rng = np.random.default_rng(seed)
    sp = rng.choice(np.array(species, dtype=object), n)
    offset = np.array([species.index(s) for s in sp], dtype=float)
    p = rng.uniform(0.2, 2.0, n)
    theta = np.arccos(rng.uniform(-0.9, 0.9, n))
    nhits = rng.integers(10, 44, n)
    mean = np.exp(-TOY_MEAN_SLOPE * np.log(p) + 0.1 * (nhits - 30) / 10 + 0.5 * offset) * 500
    dedx = mean * (1 + TOY_RESOLUTION * rng.standard_normal(n))
    return {"species": sp, "p": p, "theta": theta, "cos_theta": np.cos(theta), "nhits": nhits, "dedx": dedx}


def toy_config(**overrides: object) -> dict:
    raw = {
        "name": "toy",
        "data": {"conditions": ["p", "theta", "nhits"], "targets": ["dedx"], "group_by": "species",
                 "transforms": {"p": "log", "dedx": "log"}},
        "model": {"family": "flow", "blocks": 2, "hidden": [16, 16], "bins": 6, "bound": 5.0},
        "training": {"epochs": 3, "batch_size": 256, "metric_rows": 2000},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            raw[section][name] = value
        else:
            raw[section] = value
    return raw


@pytest.fixture(scope="session")
def toy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("toy") / "toy.parquet"
    write_table(path, toy_table(4000))
    return path


@pytest.fixture()
def write_config(tmp_path: Path):
    def write(raw: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        config_from_dict(raw)  # fail early in the test, not in the code under test
        return path

    return write
