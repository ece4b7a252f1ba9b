"""Model families. Each one implements :class:`detgen.models.base.ModelFamily`.

``FAMILIES`` maps a family name (``model.family`` in a config) to ``module:Class``; the class is built as
``Class(n_targets=..., n_conditions=..., config=model_config)`` and imported only when used.
"""

from __future__ import annotations

import importlib

from detgen.errors import ConfigError
from detgen.models.base import GroupedModel, ModelFamily, Sampler

FAMILIES: dict[str, str] = {
    "flow": "detgen.models.flows:ConditionalFlow",
    "histogram": "detgen.models.histogram:HistogramSampling",
    "flow_student": "detgen.models.student:FlowStudent",
    "smearing": "detgen.models.smearing:GaussianSmearing",
    "noise_mlp": "detgen.models.noise_mlp:NoiseMLP",
    "juno_muon": "detgen.simulators.juno_fast:JunoMuonFastSim",
    "gan": "detgen.models.gan:ConditionalGAN",
    "regressor": "detgen.models.gan:ImageRegressor",
}


def build_family(model_config: object, *, n_targets: int, n_conditions: int) -> ModelFamily:
    """One model of the configured family (no grouping)."""
    family = getattr(model_config, "family", None)
    if family not in FAMILIES:
        raise ConfigError(f"no model family {family!r} (known: {', '.join(FAMILIES)})")
    module, name = FAMILIES[family].split(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(n_targets=n_targets, n_conditions=n_conditions, config=model_config)  # type: ignore[no-any-return]


def build_model(
    model_config: object, *, n_targets: int, n_conditions: int, groups: list[str] | None = None
) -> ModelFamily:
    """The model a run trains: one family instance, or one per group when the data are grouped."""
    if groups:
        members = {g: build_family(model_config, n_targets=n_targets, n_conditions=n_conditions) for g in groups}
        return GroupedModel(members)
    return build_family(model_config, n_targets=n_targets, n_conditions=n_conditions)


__all__ = ["FAMILIES", "GroupedModel", "ModelFamily", "Sampler", "build_family", "build_model"]
