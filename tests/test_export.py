from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from detgen.config import config_from_dict
from detgen.export import agreement, export_onnx
from detgen.runs import load_run
from detgen.training import train

from conftest import toy_config, toy_table


@pytest.mark.parametrize("family", ["rqs", "affine"])
def test_onnx_sampler_agrees_with_torch(tmp_path: Path, toy_file: Path, family: str) -> None:
    raw = toy_config(model={"family": "flow", "transform": family, "blocks": 2, "hidden": [16, 16]})
    run_dir = train(config_from_dict(raw), toy_file, tmp_path / "run", epochs=1, progress=False, log=lambda _: None)
    out = tmp_path / "model.onnx"
    check = export_onnx(run_dir, out)
    assert check["max_rel_diff"] < 1e-3
    # an independent check on real conditions, every species code present
    run = load_run(run_dir)
    table = toy_table(1000, seed=11)
    c = torch.from_numpy(run.preprocessor.condition_array(table, source="t")).float()
    z = torch.randn(1000, 1)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"noise": z.numpy(), "conditions": c.numpy()})
    with torch.no_grad():
        torch_out = run.sampler()(z, c).numpy()
    assert np.allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-3)
    meta = {p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
    assert meta["detgen.input_columns"] == '["species", "p", "theta", "nhits"]'


def test_one_group_exports_alone_and_equals_the_full_sampler(tmp_path: Path, toy_file: Path) -> None:
    raw = toy_config(model={"family": "flow", "blocks": 2, "hidden": [16, 16]})
    run_dir = train(config_from_dict(raw), toy_file, tmp_path / "run", epochs=1, progress=False, log=lambda _: None)
    run = load_run(run_dir)
    groups = run.preprocessor.group["categories"]
    table = toy_table(600, seed=5)
    c = torch.from_numpy(run.preprocessor.condition_array(table, source="t")).float()
    z = torch.randn(600, 1)
    with torch.no_grad():
        full = run.sampler()(z, c).numpy()
    outputs = []
    for code, group in enumerate(groups):
        out = tmp_path / f"{group}.onnx"
        assert export_onnx(run_dir, out, group=group)["max_rel_diff"] < 1e-3
        meta = {p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
        assert meta["detgen.input_columns"] == '["p", "theta", "nhits"]'
        assert meta["detgen.group"] == f'{{"species": "{group}"}}'
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (member_out,) = session.run(None, {"noise": z.numpy(), "conditions": c[:, 1:].numpy()})
        rows = (c[:, 0] == code).numpy()
        assert rows.any()
        # the member's graph reproduces the full sampler on that group's rows ...
        assert np.allclose(member_out[rows], full[rows], rtol=1e-4, atol=1e-3)
        outputs.append(member_out)
    # ... and the members differ from each other (each file is its own species)
    assert not np.allclose(outputs[0], outputs[1], atol=1e-3)


def test_group_export_refuses_unknown_groups_and_ungrouped_runs(tmp_path: Path, toy_file: Path) -> None:
    from detgen.errors import DetgenError

    grouped = train(config_from_dict(toy_config(model={"family": "flow", "blocks": 1, "hidden": [8]})), toy_file,
                    tmp_path / "g", epochs=1, progress=False, log=lambda _: None)
    with pytest.raises(DetgenError, match="no such group.*expected one of"):
        export_onnx(grouped, tmp_path / "x.onnx", group="electron")
    raw = toy_config(model={"family": "flow", "blocks": 1, "hidden": [8]})
    raw["data"] = {**raw["data"], "group_by": None, "select": {"species": ["pi+"]}}
    plain = train(config_from_dict(raw), toy_file, tmp_path / "p", epochs=1, progress=False, log=lambda _: None)
    with pytest.raises(DetgenError, match="not grouped"):
        export_onnx(plain, tmp_path / "y.onnx", group="pi+")
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_agreement_allows_rare_rounding_but_not_a_wrong_graph() -> None:
    rng = np.random.default_rng(0)
    reference = rng.uniform(1.0, 2.0, (4096, 121)).astype(np.float32)
    assert agreement(reference.copy(), reference, 1e-3)["agrees"]
    one = reference.copy()
    one[7, 3] *= 1.005  # one value in 495k off by 0.5 %: exp-amplified float32 rounding
    check = agreement(one, reference, 1e-3)
    assert check["agrees"] and check["max_rel_diff"] == pytest.approx(0.005, rel=1e-3)
    many = reference.copy()
    many[:, 0] *= 1.002  # a whole column off by 0.2 %: a real disagreement
    assert not agreement(many, reference, 1e-3)["agrees"]
    far = reference.copy()
    far[7, 3] *= 1.02  # one value 2 % off: beyond 10 x the tolerance
    assert not agreement(far, reference, 1e-3)["agrees"]
    empty = reference.copy()
    empty[:, 9] = 0.0
    empty[0, 9] = 1.0  # a column of empty crystals but one
    rounded = empty.copy()
    rounded[1:, 9] = 1e-6  # 0 in one runtime, 1e-6 in the other: relative to 1e-2 of the column max, 1e-4
    assert agreement(rounded, empty, 1e-3)["agrees"]
