from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from detgen.config import config_from_dict
from detgen.export import export_onnx
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
