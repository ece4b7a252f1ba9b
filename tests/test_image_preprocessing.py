"""Image targets (array columns) in the preprocessing: invertibility, the sampler graph, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detgen.config import ImageConfig, config_from_dict
from detgen.dataset import to_tensors
from detgen.errors import ConfigError, DataError
from detgen.preprocessing import Preprocessor


def emc_like(n: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """Maps (MeV) whose total is a fraction of the momentum (GeV/c), with empty crystals, and conditions."""
    rng = np.random.default_rng(seed)
    mom = rng.uniform(0.2, 3.0, n)
    shape = rng.dirichlet(np.full(121, 0.3), size=n).reshape(n, 11, 11)
    maps = shape * (0.9 * 1000 * mom)[:, None, None]
    maps[maps < 0.5] = 0.0  # the 0.5 MeV threshold: many empty crystals
    return {"map": maps.astype(np.float32), "mom": mom, "z": rng.uniform(-1, 1, n), "e": rng.uniform(1, 2, n)}


def fitted(image: ImageConfig, targets: tuple[str, ...] = ("map",), n: int = 300) -> tuple[Preprocessor, dict]:
    table = emc_like(n)
    spec = Preprocessor.fit(table, conditions=["mom", "z"], targets=list(targets), image=image, source="t.h5")
    return Preprocessor.from_json(spec.to_json()), table


CASES = [
    ImageConfig(),
    ImageConfig(transform="log"),
    ImageConfig(normalise="condition", condition="mom", scale=1000.0),
    ImageConfig(normalise="condition", condition="mom", scale=1000.0, transform="logit"),
    ImageConfig(normalise="condition", condition="mom", scale=1000.0, transform="log", epsilon=1e-4),
    ImageConfig(normalise="total", transform="log"),
    ImageConfig(normalise="total", transform="logit"),
]


@pytest.mark.parametrize("image", CASES, ids=lambda c: f"{c.normalise}-{c.transform}")
def test_image_transform_is_invertible(image: ImageConfig) -> None:
    pre, table = fitted(image)
    assert pre.target_shapes == {"map": [11, 11]}
    width = 121 + (1 if image.normalise == "total" else 0)
    assert pre.n_target_features == width
    raw_c = torch.from_numpy(pre.condition_array(table, source="t")).float()
    raw_x = torch.from_numpy(pre.target_array(table, source="t"))
    y = pre.encode_targets(raw_x, raw_c)
    assert y.shape == (300, width) and torch.isfinite(y).all()
    back = pre.decode_targets(y, raw_c)
    torch.testing.assert_close(back, raw_x, rtol=2e-4, atol=2e-3)  # MeV; float32 through exp/log
    columns = pre.split_targets(back.numpy())
    assert columns["map"].shape == (300, 11, 11) and columns["map"].dtype == np.float32


def test_condition_normalisation_gives_the_deposited_fraction() -> None:
    pre, table = fitted(ImageConfig(normalise="condition", condition="mom", scale=1000.0))
    y, _ = to_tensors(table, pre, source="t.h5")
    # each map holds (up to the threshold) 90% of 1000 * mom MeV: the features sum to just below 0.9
    sums = y.sum(1).numpy()
    assert np.all(sums <= 0.9 + 1e-4) and np.all(sums > 0.8)


def test_mixed_numeric_and_image_targets_keep_their_order() -> None:
    pre, table = fitted(ImageConfig(transform="log"), targets=("e", "map"))
    raw_c = torch.from_numpy(pre.condition_array(table, source="t")).float()
    raw_x = torch.from_numpy(pre.target_array(table, source="t"))
    assert raw_x.shape == (300, 122)
    y = pre.encode_targets(raw_x, raw_c)
    torch.testing.assert_close(y[:, 0], (raw_x[:, 0] - pre.target_specs[0]["shift"]) / pre.target_specs[0]["scale"])
    torch.testing.assert_close(pre.decode_targets(y, raw_c), raw_x, rtol=2e-4, atol=2e-3)
    columns = pre.split_targets(raw_x.numpy())
    assert columns["e"].dtype == np.float64 and columns["map"].shape == (300, 11, 11)


def test_bad_images_are_refused_with_the_row() -> None:
    pre, table = fitted(ImageConfig(transform="log"))
    table["map"][7, 3, 3] = -2.0
    with pytest.raises(DataError, match=r"t\.h5: 1 row\(s\) of 'map' have negative pixels \(first at row 7"):
        to_tensors(table, pre, source="t.h5")
    pre, table = fitted(ImageConfig(normalise="condition", condition="mom", scale=1000.0, transform="logit"))
    table["map"][5, 0, 0] = 5000.0 * table["mom"][5]
    with pytest.raises(DataError, match=r"normalised pixels above 1 \(first at row 5"):
        to_tensors(table, pre, source="t.h5")
    pre, table = fitted(ImageConfig(normalise="total", transform="log"))
    table["map"][9] = 0.0
    with pytest.raises(DataError, match=r"1 row\(s\) of 'map' have the image sum <= 0 \(first at row 9"):
        to_tensors(table, pre, source="t.h5")
    pre, table = fitted(ImageConfig())
    table["map"] = table["map"][:, :9, :9]
    with pytest.raises(DataError, match=r"'map' has rows of shape \(9, 9\); expected \(11, 11\)"):
        to_tensors(table, pre, source="t.h5")


def test_array_columns_cannot_be_conditions_or_take_1d_transforms() -> None:
    table = emc_like(20)
    with pytest.raises(DataError, match=r"condition column 'map' has shape \(20, 11, 11\)"):
        Preprocessor.fit(table, conditions=["map"], targets=["mom"], source="t.h5")
    with pytest.raises(DataError, match=r"data\.transforms\.map is set, but 'map' is an array column"):
        Preprocessor.fit(table, conditions=["mom"], targets=["map"], transforms={"map": "log"}, source="t.h5")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ({"normalise": "sum"}, r"data\.image\.normalise = 'sum'"),
        ({"transform": "sqrt"}, r"data\.image\.transform = 'sqrt'"),
        ({"normalise": "condition"}, r"data\.image\.condition names the column"),
        ({"normalise": "condition", "condition": "p"}, r"data\.image\.condition = 'p' is not a numeric condition"),
        ({"normalise": "total", "scale": 1000.0}, r"data\.image\.scale is not used with normalise: total"),
        ({"epsilon": 0.0}, r"epsilon in \(0, 0\.5\)"),
        ({"eps": 1e-3}, r"unknown key data\.image\.eps \(did you mean 'epsilon'\?\)"),
    ],
)
def test_image_config_errors(image: dict, message: str) -> None:
    raw = {"data": {"conditions": ["mom"], "targets": ["map"], "image": image}, "model": {"family": "flow"}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, source="emc.yaml")
