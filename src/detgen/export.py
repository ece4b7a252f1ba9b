"""Export the sampler graph to ONNX (how a trained model reaches C++ frameworks) and check it.

The exported graph has inputs ``noise`` (N, noise_dim) and ``conditions`` (N, n_inputs) in physical units
(label columns as integer codes, in the order stored in the graph's metadata) and output ``targets``
(N, n_targets) in physical units. After export, onnxruntime runs the file and its output is compared with torch's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detgen.errors import DetgenError
from detgen.files import atomic_path
from detgen.runs import load_run


def _example_conditions(run: Any, n: int, generator: torch.Generator) -> torch.Tensor:
    """Conditions spread over the training range (codes for label columns)."""
    p = run.preprocessor
    columns = []
    for name in p.input_columns:
        cats = p.categories.get(name)
        if cats is not None:
            columns.append(torch.randint(len(cats), (n,), generator=generator).float())
            continue
        spec = next(s for s in p.condition_specs if s["column"] == name)
        u = torch.rand(n, generator=generator)
        columns.append(spec["min"] + (spec["max"] - spec["min"]) * u)
    return torch.stack(columns, 1)


def export_onnx(
    run_dir: str | Path, out: str | Path, *, opset: int = 18, check_rows: int = 4096, tolerance: float = 1e-3
) -> dict[str, Any]:
    """Write ``out`` (.onnx) and return the agreement check {max_abs_diff, max_rel_diff, rows}."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DetgenError("export needs onnxruntime and onnx: pip install 'detgen[export]'") from exc
    run = load_run(run_dir)
    sampler = run.sampler()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(check_rows, sampler.noise_dim, generator=gen)
    conditions = _example_conditions(run, check_rows, gen)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".onnx") as temporary:
        tmp = str(temporary)
        with warnings.catch_warnings():
            # the tracer warns about shape-specialised Python loops inside zuko's transforms; the agreement
            # check below (and the tests, at another batch size) are what verify the graph
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            torch.onnx.export(
                sampler, (noise, conditions), tmp,
                input_names=["noise", "conditions"], output_names=["targets"],
                dynamic_axes={"noise": {0: "batch"}, "conditions": {0: "batch"}, "targets": {0: "batch"}},
                opset_version=opset, dynamo=False,
            )
        _attach_metadata(tmp, run)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        (onnx_out,) = session.run(None, {"noise": noise.numpy(), "conditions": conditions.numpy()})
        with torch.no_grad():
            torch_out = sampler(noise, conditions).numpy()
        diff = np.abs(onnx_out - torch_out)
        # relative to |value|, floored at 1e-2 of the column's largest |value|: float32 rounding on values
        # near zero (an image's empty crystals, exactly 0 after a ReLU in one runtime and 1e-4 MeV in the
        # other) is not a disagreement
        floor = np.maximum(1e-2 * np.abs(torch_out).max(axis=0, keepdims=True), 1e-12)
        check = {"rows": check_rows, "max_abs_diff": float(diff.max()),
                 "max_rel_diff": float((diff / np.maximum(np.abs(torch_out), floor)).max())}
        if not check["max_rel_diff"] < tolerance:
            raise DetgenError(f"{out}: onnxruntime disagrees with torch (max relative difference {check['max_rel_diff']:.2e})")
    return check


def _attach_metadata(path: str, run: Any) -> None:
    import onnx

    model = onnx.load(path)
    p = run.preprocessor
    entries = {
        "detgen.input_columns": json.dumps(p.input_columns),
        "detgen.target_columns": json.dumps(p.target_columns),
        "detgen.target_shapes": json.dumps(p.target_shapes),  # image columns are flattened in the output
        "detgen.categories": json.dumps(p.categories),
        "detgen.noise": "standard normal, shape (N, noise_dim)",
    }
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, path)
