"""Validation of an image regressor run (``family: regressor``): how well it reads its conditions back.

The GAN's regressor term is only as good as the regressor, so it is validated on its own, on held-out truth
images (by default the run's own test split): per predicted condition the bias, mean absolute error, RMS and
the resolution (half the 16-84% width of the residual), in the condition's physical units, overall and in bins
of the first predicted condition (the momentum for the EMC). Written as flat keys to a dict (and metrics.json).

Example:
    detgen train configs/emc_regressor.yaml --data emc.h5 -o runs/emc_regressor
    python -c "from detgen.validation.regressor import validate_regressor; print(validate_regressor('runs/emc_regressor', 'emc.h5'))"
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detgen.dataset import read_training_table, split_table, to_tensors
from detgen.errors import ConfigError
from detgen.runs import load_run


def _decode(values: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Encoded (standardised) condition values -> physical units."""
    x = values * spec["scale"] + spec["shift"]
    return np.exp(x) if spec["kind"] == "log" else x


def validate_regressor(
    run_dir: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    *,
    split: str = "test",
    bins: int = 6,
    out_dir: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """Residuals of a regressor run on the ``split`` rows of ``data_path`` (the file it was trained on, or any
    file with the same columns when ``split`` is "all"); writes ``metrics.json`` into ``out_dir`` if given.

    Keys: ``l1_encoded`` (the training loss's scale), and per predicted column c: ``c_bias``, ``c_mae``,
    ``c_rms``, ``c_resolution`` (physical units), and ``c_resolution_bin{k}`` in ``bins`` equal-population bins
    of the first predicted column (edges in ``<first>_bin_edges``).
    """
    run = load_run(run_dir)
    if run.config.model.family != "regressor":
        raise ConfigError(f"{run_dir}: a {run.config.model.family!r} run; expected family regressor")
    table, _ = read_training_table(Path(data_path), run.config.data)
    if split != "all":
        parts = dict(zip(("train", "val", "test"), split_table(table, run.config.data)))
        if split not in parts:
            raise ConfigError(f"split {split!r}: expected train, val, test or all")
        table = parts[split]
    targets, conditions = to_tensors(table, run.preprocessor, source=str(data_path))
    with torch.no_grad():
        residual = torch.cat([run.model.residuals(targets[s : s + 8192], conditions[s : s + 8192])  # type: ignore[operator]
                              for s in range(0, len(targets), 8192)]).numpy()
    specs = {s["column"]: s for s in run.preprocessor.condition_specs}
    predict = list(run.config.model.predict)
    index: list[int] = run.model.predict_index  # type: ignore[assignment]
    metrics: dict[str, Any] = {"rows": len(targets), "l1_encoded": float(np.abs(residual).sum(1).mean())}
    first_true = _decode(conditions[:, index[0]].numpy(), specs[predict[0]])
    edges = np.quantile(first_true, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, first_true, side="right") - 1, 0, bins - 1)
    metrics[f"{predict[0]}_bin_edges"] = [float(e) for e in edges]
    for j, column in enumerate(predict):
        true = _decode(conditions[:, index[j]].numpy(), specs[column])
        predicted = _decode(conditions[:, index[j]].numpy() + residual[:, j], specs[column])
        r = predicted - true
        metrics[f"{column}_bias"] = float(r.mean())
        metrics[f"{column}_mae"] = float(np.abs(r).mean())
        metrics[f"{column}_rms"] = float(np.sqrt((r**2).mean()))
        metrics[f"{column}_resolution"] = float(np.diff(np.quantile(r, [0.16, 0.84]))[0] / 2)
        for k in range(bins):
            rows = r[which == k]
            if rows.size:
                metrics[f"{column}_resolution_bin{k}"] = float(np.diff(np.quantile(rows, [0.16, 0.84]))[0] / 2)
    if out_dir is not None:
        from detgen.validation.report import write_metrics

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_metrics(Path(out_dir) / "metrics.json", metrics)
    return metrics
