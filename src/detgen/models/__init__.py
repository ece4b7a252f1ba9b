"""Model families. Each one implements :class:`detgen.models.base.ModelFamily`."""

from __future__ import annotations

from detgen.config import FlowConfig, HistogramConfig
from detgen.errors import ConfigError
from detgen.models.base import GroupedModel, ModelFamily, Sampler


def build_family(model_config: object, *, n_targets: int, n_conditions: int) -> ModelFamily:
    """One model of the configured family (no grouping)."""
    if isinstance(model_config, FlowConfig):
        from detgen.models.flows import ConditionalFlow

        return ConditionalFlow(n_targets=n_targets, n_conditions=n_conditions, config=model_config)
    if isinstance(model_config, HistogramConfig):
        from detgen.models.histogram import HistogramSampling

        return HistogramSampling(n_targets=n_targets, n_conditions=n_conditions, config=model_config)
    raise ConfigError(f"no model family for config {type(model_config).__name__}")


def build_model(
    model_config: object, *, n_targets: int, n_conditions: int, groups: list[str] | None = None
) -> ModelFamily:
    """The model a run trains: one family instance, or one per group when the data are grouped."""
    if groups:
        members = {g: build_family(model_config, n_targets=n_targets, n_conditions=n_conditions) for g in groups}
        return GroupedModel(members)
    return build_family(model_config, n_targets=n_targets, n_conditions=n_conditions)


__all__ = ["GroupedModel", "ModelFamily", "Sampler", "build_family", "build_model"]
