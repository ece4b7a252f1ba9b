"""Invertible per-column transforms, fitted on the training split, saved as ``preprocessing.json``.

The transforms are torch modules made of plain tensor ops, so they sit inside the sampler graph that
generation and ONNX export share: the sampler takes conditions in physical units (category codes for label
columns) and returns targets in physical units.

Column kinds:
    standard  (x - mean) / std
    log       (ln x - mean) / std            (x must be > 0)
    minmax    (x - mid) / half_range         (maps the training range onto [-1, 1])
    scale:S   x / S                          (a fixed scale S in the column's units, fitted on nothing;
                                              e.g. ``scale:20`` for a photon ET response in GeV)
    identity  x
    onehot    category code -> one-hot vector (condition label columns such as species)
    image     an array-column target (e.g. the 11 x 11 EMC map), flattened to one feature per pixel after an
              energy normalisation and a log/logit transform (``detgen.image_preprocessing``, ``data.image``)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detgen.errors import DataError, SchemaError
from detgen.image_preprocessing import (
    ImageColumn,
    check_image_values,
    fit_image_column,
    image_features,
    image_options,
)

NUMERIC_KINDS = ("standard", "log", "minmax", "identity")


def fit_column(values: np.ndarray, kind: str, column: str, source: str) -> dict[str, Any]:
    """Fit one numeric column transform on training values; returns its JSON description."""
    x = np.asarray(values, dtype=np.float64)
    if kind == "log":
        bad = int(np.count_nonzero(x <= 0))
        if bad:
            raise DataError(f"{source}: column {column!r} has {bad} value(s) <= 0 but its transform is 'log'")
        x = np.log(x)
    if kind in ("standard", "log"):
        shift, scale = float(x.mean()), float(x.std())
    elif kind == "minmax":
        lo, hi = float(x.min()), float(x.max())
        shift, scale = (hi + lo) / 2, (hi - lo) / 2
    elif kind == "identity":
        shift, scale = 0.0, 1.0
    elif (fixed := fixed_scale(kind)) is not None:
        shift, scale = 0.0, fixed
    else:
        raise SchemaError(f"{source}: unknown transform {kind!r} for column {column!r}")
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0  # a constant column: keep it, centred
    raw = np.asarray(values, dtype=np.float64)
    return {"column": column, "kind": kind, "shift": shift, "scale": scale,
            "min": float(raw.min()), "max": float(raw.max())}


def fixed_scale(kind: str) -> float | None:
    """The S of a ``scale:S`` transform spec (a positive finite number), or None for any other spec."""
    if not kind.startswith("scale:"):
        return None
    try:
        value = float(kind[len("scale:"):])
    except ValueError:
        return None
    return value if np.isfinite(value) and value > 0 else None


def category_codes(values: np.ndarray, categories: Sequence[str], column: str, source: str) -> np.ndarray:
    """Map label strings to integer codes; DataError naming unknown labels."""
    lookup = {label: i for i, label in enumerate(categories)}
    labels = np.asarray(values).astype(str)
    unique = np.unique(labels)
    unknown = [str(u) for u in unique if u not in lookup]
    if unknown:
        raise DataError(
            f"{source}: column {column!r} has unknown label(s) {', '.join(map(repr, unknown[:5]))} "
            f"(expected one of {', '.join(categories)})"
        )
    table = np.array([lookup[u] for u in unique], dtype=np.int64)
    return table[np.searchsorted(unique, labels)]


class NumericColumns(nn.Module):
    """A block of numeric columns with per-column affine(log(x)) transforms."""

    shift: Tensor
    scale: Tensor
    is_log: Tensor

    def __init__(self, specs: Sequence[dict[str, Any]]):
        super().__init__()
        self.specs = [dict(s) for s in specs]
        self.register_buffer("shift", torch.tensor([s["shift"] for s in specs], dtype=torch.float32))
        self.register_buffer("scale", torch.tensor([s["scale"] for s in specs], dtype=torch.float32))
        self.register_buffer("is_log", torch.tensor([s["kind"] == "log" for s in specs], dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.where(self.is_log, torch.log(torch.where(self.is_log, x, torch.ones_like(x))), x)
        return (x - self.shift) / self.scale

    def inverse(self, y: Tensor) -> Tensor:
        x = y * self.scale + self.shift
        return torch.where(self.is_log, torch.exp(x), x)

    def log_abs_det_inverse(self, y: Tensor) -> Tensor:
        """log |d x / d y| summed over columns (for densities in physical units)."""
        x = y * self.scale + self.shift
        per_column = torch.log(self.scale) + torch.where(self.is_log, x, torch.zeros_like(x))
        return per_column.sum(-1)


class Preprocessor(nn.Module):
    """Conditions (physical) -> model features; targets physical <-> model space.

    Sampler condition input layout: ``input_columns`` = [group column (code)] + conditions (codes for label
    columns). The encoded conditions keep the group code as their first feature (the grouped model routes on
    it), followed by every condition, label columns expanded to one-hot.
    """

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.group = spec.get("group")
        self.condition_specs: list[dict[str, Any]] = spec["conditions"]
        self.target_specs: list[dict[str, Any]] = spec["targets"]
        numeric = [s for s in self.condition_specs if s["kind"] != "onehot"]
        self.numeric_conditions = NumericColumns(numeric) if numeric else None
        self.targets = NumericColumns([s for s in self.target_specs if s["kind"] != "image"])
        # image targets (array columns), each with its own invertible transform; none for 1-D targets
        self.images = nn.ModuleList(
            ImageColumn(s, self.input_columns) for s in self.target_specs if s["kind"] == "image"
        )
        # where each input column goes (positions in the raw condition input)
        offset = 1 if self.group else 0
        self.numeric_index = [offset + i for i, s in enumerate(self.condition_specs) if s["kind"] != "onehot"]
        self.onehot = [
            (offset + i, len(s["categories"])) for i, s in enumerate(self.condition_specs) if s["kind"] == "onehot"
        ]

    # ---- schema
    @property
    def condition_columns(self) -> list[str]:
        return [s["column"] for s in self.condition_specs]

    @property
    def target_columns(self) -> list[str]:
        return [s["column"] for s in self.target_specs]

    @property
    def input_columns(self) -> list[str]:
        """Columns of the sampler's condition input, in order."""
        return ([self.group["column"]] if self.group else []) + self.condition_columns

    @property
    def categories(self) -> dict[str, list[str]]:
        cats = {s["column"]: list(s["categories"]) for s in self.condition_specs if s["kind"] == "onehot"}
        if self.group:
            cats[self.group["column"]] = list(self.group["categories"])
        return cats

    @property
    def n_condition_features(self) -> int:
        """Width of the encoded conditions, without the group code."""
        return sum(len(s["categories"]) if s["kind"] == "onehot" else 1 for s in self.condition_specs)

    # ---- transforms
    def encode_conditions(self, c: Tensor) -> Tensor:
        parts: list[Tensor] = []
        if self.group:
            parts.append(c[:, :1])
        pieces: dict[int, Tensor] = {}
        if self.numeric_conditions is not None:
            encoded = self.numeric_conditions(c[:, self.numeric_index])
            for j, i in enumerate(self.numeric_index):
                pieces[i] = encoded[:, j : j + 1]
        for i, n in self.onehot:
            levels = torch.arange(n, dtype=c.dtype, device=c.device)
            pieces[i] = (c[:, i : i + 1] == levels).to(c.dtype)
        parts.extend(pieces[i] for i in sorted(pieces))
        return torch.cat(parts, dim=1)

    @property
    def target_shapes(self) -> dict[str, list[int]]:
        """Row shape of each target column: [] for 1-D columns, e.g. [11, 11] for an image column."""
        return {s["column"]: list(s.get("shape", [])) for s in self.target_specs}

    @property
    def n_target_features(self) -> int:
        """Width of the targets in model space (1 per 1-D column, pixels [+ ln E] per image column)."""
        return sum(image_features(s) if s["kind"] == "image" else 1 for s in self.target_specs)

    def _target_blocks(self) -> list[tuple[int, int, int, int, int]]:
        """Per target spec: (raw start, raw width, model start, model width, index in its module)."""
        blocks, raw, model, numeric, image = [], 0, 0, 0, 0
        for s in self.target_specs:
            if s["kind"] == "image":
                width = int(np.prod(s["shape"]))
                blocks.append((raw, width, model, image_features(s), image))
                image += 1
            else:
                width = 1
                blocks.append((raw, 1, model, 1, numeric))
                numeric += 1
            raw, model = raw + width, model + blocks[-1][3]
        return blocks

    def encode_targets(self, x: Tensor, conditions: Tensor | None = None) -> Tensor:
        """Physical targets (N, raw width; image columns flattened) -> model space.

        ``conditions`` (the raw sampler condition input) is needed when an image is normalised by a condition.
        """
        if not len(self.images):
            return self.targets(x)
        blocks = self._target_blocks()
        numeric = [raw for (raw, _, _, _, _), s in zip(blocks, self.target_specs) if s["kind"] != "image"]
        encoded_numeric = self.targets(x[:, numeric]) if numeric else None
        parts: list[Tensor] = []
        for (raw, width, _, _, index), s in zip(blocks, self.target_specs):
            if s["kind"] == "image":
                column: ImageColumn = self.images[index]  # type: ignore[assignment]
                parts.append(column(x[:, raw : raw + width], conditions))
            else:
                assert encoded_numeric is not None
                parts.append(encoded_numeric[:, index : index + 1])
        return torch.cat(parts, dim=1)

    def decode_targets(self, y: Tensor, conditions: Tensor | None = None) -> Tensor:
        """Model space -> physical targets (N, raw width; image columns flattened)."""
        if not len(self.images):
            return self.targets.inverse(y)
        blocks = self._target_blocks()
        numeric = [model for (_, _, model, _, _), s in zip(blocks, self.target_specs) if s["kind"] != "image"]
        decoded_numeric = self.targets.inverse(y[:, numeric]) if numeric else None
        parts: list[Tensor] = []
        for (_, _, model, width, index), s in zip(blocks, self.target_specs):
            if s["kind"] == "image":
                column: ImageColumn = self.images[index]  # type: ignore[assignment]
                parts.append(column.inverse(y[:, model : model + width], conditions))
            else:
                assert decoded_numeric is not None
                parts.append(decoded_numeric[:, index : index + 1])
        return torch.cat(parts, dim=1)

    def target_array(self, table: dict[str, np.ndarray], *, source: str) -> np.ndarray:
        """The raw (physical) target matrix (N, raw width), float32, image columns flattened row by row."""
        n = len(next(iter(table.values())))
        parts = []
        for s in self.target_specs:
            column = np.asarray(table[s["column"]])
            shape = tuple(s.get("shape", []))
            if column.shape[1:] != shape:
                raise DataError(
                    f"{source}: target column {s['column']!r} has rows of shape {column.shape[1:]}; expected "
                    f"{shape} (as in the training data)"
                )
            parts.append(column.reshape(n, -1).astype(np.float32))
        return np.concatenate(parts, axis=1)

    def split_targets(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Decoded targets (N, raw width) -> table columns: 1-D columns as float64, images reshaped (their dtype)."""
        columns: dict[str, np.ndarray] = {}
        for (raw, width, _, _, _), s in zip(self._target_blocks(), self.target_specs):
            if s["kind"] == "image":
                columns[s["column"]] = y[:, raw : raw + width].reshape(-1, *s["shape"]).astype(s["dtype"])
            else:
                columns[s["column"]] = y[:, raw].astype(np.float64)
        return columns

    def check_targets(self, table: dict[str, np.ndarray], *, source: str) -> None:
        """DataError for target values the image transforms cannot take (see ``check_image_values``)."""
        for s in self.target_specs:
            if s["kind"] == "image":
                check_image_values(np.asarray(table[s["column"]]), s, table, source=source)

    # ---- fit / save
    @classmethod
    def fit(
        cls,
        table: dict[str, np.ndarray],
        *,
        conditions: Sequence[str],
        targets: Sequence[str],
        categorical: Sequence[str] = (),
        transforms: dict[str, str] | None = None,
        group_by: str | None = None,
        groups: Sequence[str] | None = None,
        image: Any = None,
        source: str = "<data>",
    ) -> Preprocessor:
        """Fit on the training split. Label columns get their categories from the data (sorted).

        Array-column targets (shape (N, ...)) are image targets, preprocessed as ``image`` says (an object
        with the fields of ``detgen.image_preprocessing.ImageOptions``; None: no normalisation, no transform).
        """
        transforms = transforms or {}
        cond_specs: list[dict[str, Any]] = []
        for column in conditions:
            if np.ndim(table[column]) != 1:
                raise DataError(
                    f"{source}: condition column {column!r} has shape {np.shape(table[column])}; conditions "
                    "must be 1-D columns (array columns can only be targets)"
                )
            if column in categorical:
                cats = sorted(np.unique(np.asarray(table[column]).astype(str)).tolist())
                cond_specs.append({"column": column, "kind": "onehot", "categories": cats})
            else:
                cond_specs.append(fit_column(table[column], transforms.get(column, "standard"), column, source))
        target_specs = []
        for t in targets:
            if np.ndim(table[t]) == 1:
                target_specs.append(fit_column(table[t], transforms.get(t, "standard"), t, source))
            elif t in transforms:
                raise DataError(
                    f"{source}: data.transforms.{t} is set, but {t!r} is an array column (rows of shape "
                    f"{np.shape(table[t])[1:]}); array columns are preprocessed by data.image"
                )
            else:
                target_specs.append(
                    fit_image_column(np.asarray(table[t]), t, image_options(image), source=source, conditions=table)
                )
        group = None
        if group_by is not None:
            cats = list(groups) if groups else sorted(np.unique(np.asarray(table[group_by]).astype(str)).tolist())
            group = {"column": group_by, "categories": cats}
        return cls({"group": group, "conditions": cond_specs, "targets": target_specs})

    def to_json(self) -> dict[str, Any]:
        return self.spec

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> Preprocessor:
        return cls(spec)

    def condition_array(self, table: dict[str, np.ndarray], *, source: str) -> np.ndarray:
        """Build the raw (physical units, label codes) condition matrix from a table, float64."""
        columns = []
        cats = self.categories
        for column in self.input_columns:
            if column in cats:
                columns.append(category_codes(table[column], cats[column], column, source).astype(np.float64))
            else:
                columns.append(np.asarray(table[column], dtype=np.float64))
        n = len(next(iter(table.values()))) if table else 0
        return np.stack(columns, axis=1) if columns else np.zeros((n, 0))

    def check_domain(self, table: dict[str, np.ndarray], *, source: str) -> None:
        """DataError for values a transform cannot take (e.g. p <= 0 for a log-transformed momentum)."""
        for s in self.condition_specs:
            if s["kind"] == "log":
                x = np.asarray(table[s["column"]], dtype=np.float64)
                bad = np.flatnonzero(x <= 0)
                if bad.size:
                    raise DataError(
                        f"{source}: column {s['column']!r} has {bad.size} value(s) <= 0 (first at row {bad[0]}: "
                        f"{x[bad[0]]}); expected positive values"
                    )

    def out_of_range(self, table: dict[str, np.ndarray]) -> dict[str, int]:
        """Rows per numeric condition column outside the range seen in training (reported, not dropped)."""
        counts: dict[str, int] = {}
        for s in self.condition_specs:
            if s["kind"] == "onehot":
                continue
            x = np.asarray(table[s["column"]], dtype=np.float64)
            n = int(np.count_nonzero((x < s["min"]) | (x > s["max"])))
            if n:
                counts[s["column"]] = n
        return counts
