"""Export the sampler graph to ONNX (how a trained model reaches C++ frameworks) and check it.

The exported graph has inputs ``noise`` (N, noise_dim) and ``conditions`` (N, n_inputs) in physical units
(label columns as integer codes, in the order stored in the graph's metadata) and output ``targets``
(N, n_targets) in physical units. After export, onnxruntime runs the file and its output is compared with torch's.

A grouped model (one member per species, ``data.group_by``) exports as one graph that evaluates every member
per row and selects by the code (a static graph), i.e. N_groups times the compute; ``group=NAME`` exports one
member alone, whose graph takes the conditions without the group column.
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


class GroupMemberSampler(torch.nn.Module):
    """One member of a grouped run's sampler: ``forward(noise, conditions without the group column)``.

    Equals the full sampler with the group code set to ``code`` (tested), but evaluates only that member.
    """

    def __init__(self, sampler: Any, code: int):
        super().__init__()
        self.preprocessor = sampler.preprocessor
        self.member = sampler.generator.members[code]
        self.code = code
        self.noise_dim = sampler.noise_dim

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        full = torch.cat([torch.full_like(conditions[:, :1], float(self.code)), conditions], dim=1)
        encoded = self.preprocessor.encode_conditions(full)
        return self.preprocessor.decode_targets(self.member(noise, encoded[:, 1:]), full)


def group_member_sampler(run: Any, group: str) -> GroupMemberSampler:
    """The sampler of ``group``'s member of a grouped run (DetgenError naming the run and the valid groups)."""
    p = run.preprocessor
    if not p.group:
        raise DetgenError(f"{run.path}: --group {group}: this run is not grouped (no data.group_by); export it whole")
    categories = list(p.group["categories"])
    if group not in categories:
        raise DetgenError(f"{run.path}: --group {group}: no such group in column {p.group['column']!r}; "
                          f"expected one of {categories}")
    return GroupMemberSampler(run.sampler(), categories.index(group)).eval()


def _example_conditions(run: Any, n: int, generator: torch.Generator, *, skip_group: bool = False) -> torch.Tensor:
    """Conditions spread over the training range (codes for label columns); without the group column if asked."""
    p = run.preprocessor
    columns = []
    for name in p.input_columns[1:] if skip_group else p.input_columns:
        cats = p.categories.get(name)
        if cats is not None:
            columns.append(torch.randint(len(cats), (n,), generator=generator).float())
            continue
        spec = next(s for s in p.condition_specs if s["column"] == name)
        u = torch.rand(n, generator=generator)
        columns.append(spec["min"] + (spec["max"] - spec["min"]) * u)
    return torch.stack(columns, 1)


def export_onnx(
    run_dir: str | Path, out: str | Path, *, opset: int = 18, check_rows: int = 4096, tolerance: float = 1e-3,
    group: str | None = None,
) -> dict[str, Any]:
    """Write ``out`` (.onnx) and return the agreement check {max_abs_diff, max_rel_diff, rows}.

    ``group``: export only that member of a grouped run (its graph takes the conditions without the group column).
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DetgenError("export needs onnxruntime and onnx: pip install 'detgen[export]'") from exc
    run = load_run(run_dir)
    sampler = run.sampler() if group is None else group_member_sampler(run, group)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(check_rows, sampler.noise_dim, generator=gen)
    conditions = _example_conditions(run, check_rows, gen, skip_group=group is not None)
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
        _attach_metadata(tmp, run, group)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        (onnx_out,) = session.run(None, {"noise": noise.numpy(), "conditions": conditions.numpy()})
        with torch.no_grad():
            torch_out = sampler(noise, conditions).numpy()
        check = {"rows": check_rows, **agreement(onnx_out, torch_out, tolerance)}
        if not check["agrees"]:
            raise DetgenError(f"{out}: onnxruntime disagrees with torch (max relative difference "
                              f"{check['max_rel_diff']:.2e}, {check['fraction_above_tolerance']:.1e} of the values "
                              f"beyond {tolerance:g})")
    return check


def agreement(onnx_out: np.ndarray, torch_out: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Compare the two runtimes' outputs: they agree when at most 1e-4 of the values differ by more than
    ``tolerance`` (relative) and none by 10 x ``tolerance`` or more.

    Relative to |value|, floored at 1e-2 of the column's largest |value|: float32 rounding on values near zero
    (an image's empty crystals, exactly 0 after a ReLU in one runtime and 1e-4 MeV in the other) is not a
    disagreement. The few values allowed beyond ``tolerance``: the threshold GAN's E = t exp(log_gain * h)
    multiplies the convolutions' float32 rounding (summation order differs between runtimes) by log_gain times
    the knot slope, so single crystals of a 4096-shower check differ by up to ~0.2 % (1 in 80,000 of the values
    beyond 1e-3, session 8's seed-layout run) while every shower's total agrees to ~1e-6.
    """
    diff = np.abs(onnx_out - torch_out)
    floor = np.maximum(1e-2 * np.abs(torch_out).max(axis=0, keepdims=True), 1e-12)
    relative = diff / np.maximum(np.abs(torch_out), floor)
    worst, above = float(relative.max()), float(np.mean(relative >= tolerance))
    return {"max_abs_diff": float(diff.max()), "max_rel_diff": worst, "fraction_above_tolerance": above,
            "agrees": bool(worst < 10 * tolerance and above <= 1e-4)}


def _attach_metadata(path: str, run: Any, group: str | None = None) -> None:
    import onnx

    model = onnx.load(path)
    p = run.preprocessor
    entries = {
        "detgen.input_columns": json.dumps(p.input_columns if group is None else p.input_columns[1:]),
        "detgen.target_columns": json.dumps(p.target_columns),
        "detgen.target_shapes": json.dumps(p.target_shapes),  # image columns are flattened in the output
        "detgen.categories": json.dumps(p.categories),
        "detgen.noise": "standard normal, shape (N, noise_dim)",
    }
    if group is not None:
        entries["detgen.group"] = json.dumps({p.group["column"]: group})
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, path)
