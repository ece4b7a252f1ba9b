"""The run dir: a trained model, complete and self-describing.

    config.yaml          the fully resolved config
    model.safetensors    weights of the best epoch (never pickle)
    preprocessing.json   the fitted per-column transforms
    meta.json            versions, column schema, sha256 of the training data, seed, timestamps, best epoch
    history.csv          one row per epoch
    checkpoints/         last.safetensors + last.json: the full training state for --resume

Every file is written to a temporary name and renamed, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import detgen
from detgen.config import Config, config_from_dict, dump_config
from detgen.device import resolve_device
from detgen.errors import SchemaError
from detgen.files import atomic_path, write_text_atomic
from detgen.models import Sampler, build_model
from detgen.models.base import ModelFamily
from detgen.preprocessing import Preprocessor

RUN_FORMAT = 1


# ------------------------------------------------------------------------------------------ atomic writes
def write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise SchemaError(f"{path}: cannot read safetensors file ({exc})") from exc


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buffer.getvalue())


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


def versions() -> dict[str, str]:
    import zuko

    return {"detgen": detgen.__version__, "torch": torch.__version__, "zuko": zuko.__version__}


# ------------------------------------------------------------------------------------------ loading
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise SchemaError(f"{path.parent}: not a detgen run dir ({path.name} missing)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: corrupt JSON ({exc})") from exc


@dataclass
class Run:
    """A loaded run dir."""

    path: Path
    config: Config
    preprocessor: Preprocessor
    model: ModelFamily
    meta: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def sampler(self) -> Sampler:
        """The physical-units sampler graph, in eval mode, on the model's device."""
        if not self.model.generates:
            raise SchemaError(f"{self.path}: a {self.config.model.family!r} run generates no samples (it is a partner "
                              "model, e.g. the regressor a GAN config names); generate with the model that uses it")
        return Sampler(self.model.generator(), self.preprocessor, self.model.noise_dim).eval()


def build_run_model(config: Config, preprocessor: Preprocessor) -> ModelFamily:
    groups = preprocessor.group["categories"] if preprocessor.group else None
    model = build_model(
        config.model,
        n_targets=preprocessor.n_target_features,
        n_conditions=preprocessor.n_condition_features,
        groups=groups,
    )
    # a family that works with physical thresholds (e.g. noise_mlp's split at R = 15 m) gets the preprocessing
    for member in [model, *getattr(model, "members", {}).values()]:
        bind = getattr(member, "bind_preprocessor", None)
        if bind is not None:
            bind(preprocessor)
    return model


def load_run(path: str | os.PathLike[str], *, device: str | None = None) -> Run:
    """Load a run dir, checking format, schema and weights; version differences become ``notes``."""
    path = Path(path)
    if not path.is_dir():
        raise SchemaError(f"{path}: run dir not found")
    meta = _read_json(path / "meta.json")
    if meta.get("run_format") != RUN_FORMAT:
        raise SchemaError(f"{path}/meta.json: run_format {meta.get('run_format')!r}, this detgen reads {RUN_FORMAT}")
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise SchemaError(f"{path}: not a detgen run dir (config.yaml missing)")
    config = config_from_dict(yaml.safe_load(config_path.read_text()), source=str(config_path))
    preprocessor = Preprocessor.from_json(_read_json(path / "preprocessing.json"))
    schema = meta.get("schema", {})
    if schema.get("input_columns") != preprocessor.input_columns or schema.get(
        "target_columns"
    ) != preprocessor.target_columns:
        raise SchemaError(
            f"{path}: meta.json schema {schema.get('input_columns')} -> {schema.get('target_columns')} does not "
            f"match preprocessing.json {preprocessor.input_columns} -> {preprocessor.target_columns}"
        )
    model = build_run_model(config, preprocessor)
    weights_path = path / "model.safetensors"
    if not weights_path.is_file():
        raise SchemaError(f"{path}: model.safetensors missing (training never finished an epoch?)")
    weights = read_tensors(weights_path)
    missing, unexpected = _compare_keys(model.state_dict(), weights)
    if missing or unexpected:
        raise SchemaError(
            f"{weights_path}: weights do not fit the config's model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise SchemaError(f"{weights_path}: weights do not fit the config's model ({str(exc).splitlines()[-1]})") from exc
    notes = [
        f"run made with {name} {made}, running {name} {now}"
        for name, now in versions().items()
        if (made := meta.get("versions", {}).get(name)) not in (None, now)
    ]
    torch_device = resolve_device(device)
    model.to(torch_device).eval()
    preprocessor.to(torch_device)  # the sampler graph holds both
    return Run(path=path, config=config, preprocessor=preprocessor, model=model, meta=meta, notes=notes)


def _compare_keys(expected: dict[str, Any], found: dict[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(found)), sorted(set(found) - set(expected))


def write_run_files(path: Path, config: Config, preprocessor: Preprocessor, meta: dict[str, Any]) -> None:
    write_text(path / "config.yaml", dump_config(config))
    write_json(path / "preprocessing.json", preprocessor.to_json())
    write_json(path / "meta.json", meta)


def read_config_of_run(path: Path) -> Config:
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise SchemaError(f"{path}: not a detgen run dir (config.yaml missing)")
    return config_from_dict(yaml.safe_load(config_path.read_text()), source=str(config_path))
