from __future__ import annotations

import numpy as np
import pytest
import torch

from detgen.errors import DataError
from detgen.preprocessing import Preprocessor, category_codes

from conftest import toy_table


def fitted(**kwargs) -> tuple[Preprocessor, dict]:
    table = toy_table(2000)
    pre = Preprocessor.fit(
        table, conditions=kwargs.get("conditions", ["p", "theta", "nhits"]), targets=["dedx"],
        transforms={"p": "log", "dedx": "log", "theta": "minmax"}, categorical=kwargs.get("categorical", ()),
        group_by=kwargs.get("group_by"),
    )
    return pre, table


def test_targets_round_trip_and_are_standardised() -> None:
    pre, table = fitted()
    x = torch.tensor(table["dedx"], dtype=torch.float64).float().unsqueeze(1)
    y = pre.encode_targets(x)
    assert abs(float(y.mean())) < 1e-3 and abs(float(y.std()) - 1) < 1e-2
    assert torch.allclose(pre.decode_targets(y), x, rtol=1e-5)


def test_log_det_matches_autograd() -> None:
    pre, _ = fitted()
    y = torch.randn(5, 1, requires_grad=True)
    x = pre.decode_targets(y)
    (grad,) = torch.autograd.grad(x.sum(), y)
    assert torch.allclose(pre.targets.log_abs_det_inverse(y.detach()), grad.log().squeeze(1), atol=1e-5)


def test_minmax_maps_training_range_to_unit_interval() -> None:
    pre, table = fitted()
    raw = torch.from_numpy(pre.condition_array(table, source="t")).float()
    encoded = pre.encode_conditions(raw)
    assert float(encoded[:, 1].min()) == pytest.approx(-1, abs=1e-5)
    assert float(encoded[:, 1].max()) == pytest.approx(1, abs=1e-5)


def test_onehot_and_group_layout() -> None:
    pre, table = fitted(conditions=["species", "p"], categorical=["species"])
    assert pre.input_columns == ["species", "p"] and pre.n_condition_features == 3
    raw = torch.from_numpy(pre.condition_array(table, source="t")).float()
    enc = pre.encode_conditions(raw)
    assert torch.equal(enc[:, :2].sum(1), torch.ones(len(raw)))
    grouped, table = fitted(group_by="species")
    raw = torch.from_numpy(grouped.condition_array(table, source="t")).float()
    assert grouped.input_columns[0] == "species"
    assert torch.equal(grouped.encode_conditions(raw)[:, 0], raw[:, 0])  # the routing code passes through


def test_json_round_trip_gives_identical_transform() -> None:
    pre, table = fitted()
    again = Preprocessor.from_json(pre.to_json())
    raw = torch.from_numpy(pre.condition_array(table, source="t")).float()
    assert torch.equal(pre.encode_conditions(raw), again.encode_conditions(raw))


def test_bad_values_are_named() -> None:
    table = toy_table(100)
    table["dedx"][3] = -1.0
    with pytest.raises(DataError, match="'dedx' has 1 value"):
        Preprocessor.fit(table, conditions=["p"], targets=["dedx"], transforms={"dedx": "log"}, source="f.parquet")
    with pytest.raises(DataError, match=r"f.parquet: column 'species' has unknown label\(s\) 'X\+'"):
        category_codes(np.array(["pi+", "X+"], dtype=object), ["K+", "pi+"], "species", "f.parquet")
