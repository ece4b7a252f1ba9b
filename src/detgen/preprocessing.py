"""Invertible per-column transforms, fitted on the training split, saved as ``preprocessing.json``.

The transforms are torch modules made of plain tensor ops, so they sit inside the sampler graph that
generation and ONNX export share: the sampler takes conditions in physical units (category codes for label
columns) and returns targets in physical units.

Column kinds:
    standard  (x - mean) / std
    log       (ln x - mean) / std            (x must be > 0)
    minmax    (x - mid) / half_range         (maps the training range onto [-1, 1])
    identity  x
    onehot    category code -> one-hot vector (condition label columns such as species)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detgen.errors import DataError, SchemaError

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
    else:
        raise SchemaError(f"{source}: unknown transform {kind!r} for column {column!r}")
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0  # a constant column: keep it, centred
    raw = np.asarray(values, dtype=np.float64)
    return {"column": column, "kind": kind, "shift": shift, "scale": scale,
            "min": float(raw.min()), "max": float(raw.max())}


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
        self.targets = NumericColumns(self.target_specs)
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

    def encode_targets(self, x: Tensor) -> Tensor:
        return self.targets(x)

    def decode_targets(self, y: Tensor) -> Tensor:
        return self.targets.inverse(y)

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
        source: str = "<data>",
    ) -> Preprocessor:
        """Fit on the training split. Label columns get their categories from the data (sorted)."""
        transforms = transforms or {}
        cond_specs: list[dict[str, Any]] = []
        for column in conditions:
            if column in categorical:
                cats = sorted(np.unique(np.asarray(table[column]).astype(str)).tolist())
                cond_specs.append({"column": column, "kind": "onehot", "categories": cats})
            else:
                cond_specs.append(fit_column(table[column], transforms.get(column, "standard"), column, source))
        target_specs = [fit_column(table[t], transforms.get(t, "standard"), t, source) for t in targets]
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
