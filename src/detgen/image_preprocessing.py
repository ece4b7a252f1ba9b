"""Invertible preprocessing of image targets: array columns such as the 11 x 11 EMC crystal energy map.

An image target (a table column of shape ``(N, ...)``, energies in MeV) reaches the model flattened, one
feature per pixel, after two steps that are both inverted inside the sampler graph:

1. **Energy normalisation** (``normalise``)
     none        x / scale
     condition   x / (scale * c)             c: a positive condition column, e.g. the incident momentum
                                             ``mom`` in GeV/c with ``scale = 1000`` (MeV per GeV): pixels become
                                             the fraction of the incident energy deposited in each crystal
     total       x / E,  E = sum of pixels   the image's shape; ``(ln E - mean) / std`` is appended as one
                                             more model feature (after the pixels), so the model learns E too
2. **Pixel transform** (``transform``), with ``eps = epsilon``
     none        u = x_n
     log         u = ln(x_n + eps)                        inverse x_n = max(exp(u) - eps, 0)
     logit       u = logit(eps + (1 - 2 eps) x_n)         inverse x_n = clamp((sigmoid(u) - eps) / (1 - 2 eps), 0, 1)
   ``eps`` keeps empty pixels (x_n = 0) finite: ln(eps) and logit(eps) are where an empty crystal sits. The clamps
   in the inverses only act on generated values within eps of the physical boundary (energies >= 0, fractions
   <= 1); input data outside the transform's domain is a DataError (see :func:`check_image_values`), never clipped.

The spec of a fitted image column is JSON (stored in ``preprocessing.json`` with the other columns).

Example:
    >>> import numpy as np, torch
    >>> images = np.random.default_rng(0).exponential(5.0, size=(100, 11, 11)).astype(np.float32)
    >>> spec = fit_image_column(images, "map", ImageOptions(normalise="total", transform="log"), source="demo")
    >>> column = ImageColumn(spec, input_columns=[])
    >>> x = torch.from_numpy(images.reshape(100, -1))
    >>> bool(torch.allclose(column.inverse(column(x)), x, rtol=1e-4, atol=1e-4))
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detgen.errors import DataError

NORMALISATIONS = ("none", "condition", "total")
PIXEL_TRANSFORMS = ("none", "log", "logit")


@dataclass(frozen=True)
class ImageOptions:
    """How image targets are preprocessed (the fields of the ``data.image`` config section)."""

    normalise: str = "none"
    condition: str | None = None
    scale: float = 1.0
    transform: str = "none"
    epsilon: float = 1e-6


def image_options(options: Any) -> ImageOptions:
    """ImageOptions from any object with the same attributes (e.g. ``detgen.config.ImageConfig``) or None."""
    if options is None:
        return ImageOptions()
    return ImageOptions(**{name: getattr(options, name) for name in ImageOptions.__dataclass_fields__})


def _normaliser(
    images: np.ndarray, spec: dict[str, Any], conditions: dict[str, np.ndarray] | None
) -> np.ndarray | None:
    """Per-row divisor (float64) of the normalisation, or None for ``normalise: none`` (divisor = scale)."""
    if spec["normalise"] == "condition":
        assert conditions is not None
        return np.asarray(conditions[spec["condition"]], dtype=np.float64) * spec["scale"]
    if spec["normalise"] == "total":
        return np.asarray(images, dtype=np.float64).reshape(len(images), -1).sum(axis=1)
    return None


def check_image_values(
    images: np.ndarray, spec: dict[str, Any], conditions: dict[str, np.ndarray] | None, *, source: str
) -> None:
    """DataError for images the transforms cannot take: a non-positive normaliser, negative pixels under
    log/logit, fractions above 1 under logit. Counts the bad rows and names the first."""
    column = spec["column"]
    shape = tuple(spec["shape"])
    if tuple(images.shape[1:]) != shape:
        raise DataError(
            f"{source}: column {column!r} has rows of shape {tuple(images.shape[1:])}; expected {shape} "
            "(the image shape the preprocessing was fitted on)"
        )
    n = len(images)
    flat = np.asarray(images, dtype=np.float64).reshape(n, -1)
    divisor = _normaliser(images, spec, conditions)
    if divisor is not None:
        bad = np.flatnonzero(~(divisor > 0))
        if bad.size:
            what = f"condition {spec['condition']!r}" if spec["normalise"] == "condition" else "the image sum"
            raise DataError(
                f"{source}: {bad.size} row(s) of {column!r} have {what} <= 0 (first at row {bad[0]}: "
                f"{divisor[bad[0]] / spec['scale']:.6g}); normalise: {spec['normalise']} divides by it"
            )
    if spec["transform"] in ("log", "logit"):
        negative = (flat < 0).any(axis=1)
        if negative.any():
            first = int(np.flatnonzero(negative)[0])
            raise DataError(
                f"{source}: {int(negative.sum())} row(s) of {column!r} have negative pixels (first at row {first}, "
                f"minimum {flat[first].min():.6g}); transform {spec['transform']} needs energies >= 0"
            )
    if spec["transform"] == "logit":
        fraction = flat / (spec["scale"] if divisor is None else divisor[:, None])
        above = (fraction > 1).any(axis=1)
        if above.any():
            first = int(np.flatnonzero(above)[0])
            raise DataError(
                f"{source}: {int(above.sum())} row(s) of {column!r} have normalised pixels above 1 (first at row "
                f"{first}: {fraction[first].max():.6g}); transform logit needs fractions in [0, 1]"
            )


def fit_image_column(
    images: np.ndarray,
    column: str,
    options: ImageOptions,
    *,
    source: str,
    conditions: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fit the preprocessing of one image column on the training rows; returns its JSON spec.

    Args:
        images: shape (N, ...), energies (MeV for the EMC map).
        column: the column name.
        options: normalisation and pixel transform.
        source: the data file, for messages.
        conditions: the condition columns (physical units), needed for ``normalise: condition``.
    """
    if options.normalise not in NORMALISATIONS:
        raise DataError(f"{source}: image normalise {options.normalise!r}; expected one of {', '.join(NORMALISATIONS)}")
    if options.transform not in PIXEL_TRANSFORMS:
        raise DataError(f"{source}: image transform {options.transform!r}; expected one of {', '.join(PIXEL_TRANSFORMS)}")
    spec: dict[str, Any] = {
        "column": column,
        "kind": "image",
        "shape": [int(n) for n in images.shape[1:]],
        "dtype": str(images.dtype),
        "normalise": options.normalise,
        "condition": options.condition,
        "scale": float(options.scale),
        "transform": options.transform,
        "epsilon": float(options.epsilon),
        "total_shift": 0.0,
        "total_scale": 1.0,
        "min": float(np.min(images)),
        "max": float(np.max(images)),
    }
    check_image_values(images, spec, conditions, source=source)
    if options.normalise == "total":
        log_total = np.log(_normaliser(images, spec, None))  # type: ignore[arg-type]
        spread = float(log_total.std())
        spec["total_shift"] = float(log_total.mean())
        spec["total_scale"] = spread if np.isfinite(spread) and spread > 0 else 1.0
    return spec


def image_features(spec: dict[str, Any]) -> int:
    """Model-space width of an image column: one feature per pixel (+ ln E for ``normalise: total``)."""
    return math.prod(spec["shape"]) + (1 if spec["normalise"] == "total" else 0)


class ImageColumn(nn.Module):
    """One image target: physical (N, n_pixels) <-> model space (N, n_pixels [+ 1]), plain tensor ops.

    Args:
        spec: the fitted JSON spec (:func:`fit_image_column`).
        input_columns: the sampler's raw condition columns; ``normalise: condition`` reads its column there.
    """

    def __init__(self, spec: dict[str, Any], input_columns: Sequence[str]):
        super().__init__()
        self.n_pixels = math.prod(spec["shape"])
        self.normalise = spec["normalise"]
        self.transform = spec["transform"]
        self.epsilon = float(spec["epsilon"])
        self.scale = float(spec["scale"])
        self.total_shift = float(spec["total_shift"])
        self.total_scale = float(spec["total_scale"])
        self.condition_index = -1
        if self.normalise == "condition":
            if spec["condition"] not in input_columns:
                raise DataError(
                    f"image column {spec['column']!r} is normalised by {spec['condition']!r}, which is not a "
                    f"condition (conditions: {', '.join(input_columns)})"
                )
            self.condition_index = list(input_columns).index(spec["condition"])

    def _divisor(self, x: Tensor, conditions: Tensor | None) -> Tensor | None:
        if self.normalise == "condition":
            if conditions is None:
                raise ValueError("normalise: condition needs the raw conditions")
            return conditions[:, self.condition_index : self.condition_index + 1] * self.scale
        return None

    def forward(self, x: Tensor, conditions: Tensor | None = None) -> Tensor:
        """Physical pixels (N, n_pixels) -> model features."""
        extra: list[Tensor] = []
        if self.normalise == "total":
            total = x.sum(dim=1, keepdim=True)
            x = x / total
            extra.append((torch.log(total) - self.total_shift) / self.total_scale)
        elif self.normalise == "condition":
            divisor = self._divisor(x, conditions)
            assert divisor is not None
            x = x / divisor
        else:
            x = x / self.scale
        eps = self.epsilon
        if self.transform == "log":
            x = torch.log(x + eps)
        elif self.transform == "logit":
            x = eps + (1 - 2 * eps) * x
            x = torch.log(x) - torch.log1p(-x)
        return torch.cat([x, *extra], dim=1) if extra else x

    def inverse(self, y: Tensor, conditions: Tensor | None = None) -> Tensor:
        """Model features -> physical pixels (N, n_pixels)."""
        x = y[:, : self.n_pixels]
        eps = self.epsilon
        if self.transform == "log":
            x = torch.clamp(torch.exp(x) - eps, min=0.0)
        elif self.transform == "logit":
            x = torch.clamp((torch.sigmoid(x) - eps) / (1 - 2 * eps), min=0.0, max=1.0)
        if self.normalise == "total":
            total = torch.exp(y[:, self.n_pixels : self.n_pixels + 1] * self.total_scale + self.total_shift)
            return x * total
        if self.normalise == "condition":
            divisor = self._divisor(x, conditions)
            assert divisor is not None
            return x * divisor
        return x * self.scale
