"""From a file to model-space tensors: column checks, row selection, the split, the fitted preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detgen.config import DataConfig
from detgen.errors import DataError, SchemaError
from detgen.io import (
    Table,
    file_sha256,
    read_table,
    require_columns,
    require_finite,
    select_rows,
    split_indices,
    table_length,
)
from detgen.preprocessing import Preprocessor


def needed_columns(data: DataConfig) -> list[str]:
    columns = list(data.conditions) + list(data.targets)
    if data.group_by:
        columns.insert(0, data.group_by)
    columns += [c for c in data.select if c not in columns]
    return columns


def read_training_table(path: str | Path, data: DataConfig, *, all_columns: bool = False
                        ) -> tuple[Table, dict[str, int]]:
    """Read the columns a config needs, check them, apply ``select`` and ``groups``; count exclusions.

    ``all_columns`` also keeps every other column of the file (unchecked), e.g. for ``generate --split`` whose
    output passes the file's other columns through (the photon validation needs phi, which is no condition).
    """
    source = str(path)
    columns = needed_columns(data)
    table = read_table(path, columns=None if all_columns else columns, tree=data.tree, key=data.key)
    require_columns(table, columns, source=source)
    labels = set(data.categorical) | set(data.select) | ({data.group_by} if data.group_by else set())
    require_finite(table, [c for c in columns if c not in labels], source=source)
    n_read = table_length(table)
    if n_read == 0:
        raise DataError(f"{source}: no rows")
    keep = np.ones(n_read, dtype=bool)
    excluded: dict[str, int] = {}
    for column, allowed in data.select.items():
        inside = np.isin(np.asarray(table[column]).astype(str), allowed)
        excluded[f"select_{column}"] = int(np.count_nonzero(keep & ~inside))
        keep &= inside
    if data.group_by and data.groups:
        inside = np.isin(np.asarray(table[data.group_by]).astype(str), data.groups)
        excluded[f"not_in_groups_{data.group_by}"] = int(np.count_nonzero(keep & ~inside))
        keep &= inside
    if not keep.any():
        raise DataError(f"{source}: no rows left after data.select / data.groups ({excluded})")
    return select_rows(table, keep), {"rows_read": n_read, **excluded}


def split_table(table: Table, data: DataConfig) -> tuple[Table, Table, Table]:
    """The reproducible train/validation/test split of the (selected) rows.

    ``max_train_rows`` keeps a random subset of the training rows (seeded by ``split_seed``, in file order),
    not the first ones: files are often ordered (by event, energy, or one sample after another), and the head
    of the file would be a biased sample.
    """
    fractions = (data.split[0], data.split[1], data.split[2])
    train, val, test = split_indices(table_length(table), fractions, seed=data.split_seed)
    if data.max_train_rows is not None and len(train) > data.max_train_rows:
        rng = np.random.default_rng([data.split_seed, 1])
        train = np.sort(rng.choice(train, size=data.max_train_rows, replace=False))
    return select_rows(table, train), select_rows(table, val), select_rows(table, test)


def read_run_split(run: Any, path: str | Path, split: str, *, all_columns: bool = False, cap_train: bool = True,
                   purpose: str = "--split") -> Table:
    """The ``split`` rows (train, val or test) of the file ``run`` was trained on, as the trainer split it.

    The file must be the run's own (sha256 in its meta.json). ``cap_train=False`` keeps every training row
    instead of the run's ``max_train_rows`` subset; ``all_columns`` as in :func:`read_training_table`."""
    if file_sha256(path) != run.meta["data"]["sha256"]:
        raise SchemaError(f"{path}: {purpose} needs the file the run {run.path} was trained on (sha256 differs)")
    data = run.config.data if cap_train else replace(run.config.data, max_train_rows=None)
    selected, _ = read_training_table(path, data, all_columns=all_columns)
    return dict(zip(("train", "val", "test"), split_table(selected, data)))[split]


def to_tensors(table: Table, preprocessor: Preprocessor, *, source: str) -> tuple[Tensor, Tensor]:
    """(encoded targets, encoded conditions) as float32 tensors; image (array) targets are flattened."""
    raw_conditions = torch.from_numpy(preprocessor.condition_array(table, source=source)).float()
    preprocessor.check_targets(table, source=source)
    raw_targets = torch.from_numpy(preprocessor.target_array(table, source=source))
    with torch.no_grad():
        targets = preprocessor.encode_targets(raw_targets, raw_conditions)
        conditions = preprocessor.encode_conditions(raw_conditions)
    if not torch.isfinite(targets).all():
        bad = int((~torch.isfinite(targets)).any(1).sum())
        raise DataError(f"{source}: {bad} row(s) give non-finite targets after preprocessing (log of 0?)")
    return targets, conditions


@dataclass
class PreparedData:
    preprocessor: Preprocessor
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def prepare(path: str | Path, data: DataConfig, *, preprocessor: Preprocessor | None = None) -> PreparedData:
    """Read, select, split; fit the preprocessing on the training split (or reuse the given one)."""
    source = str(path)
    table, counts = read_training_table(path, data)
    train, val, test = split_table(table, data)
    if table_length(train) == 0 or table_length(val) == 0:
        raise DataError(f"{source}: too few rows ({table_length(table)}) for a training and a validation split")
    if data.group_by and data.groups:
        present = set(np.asarray(train[data.group_by]).astype(str))
        missing = [g for g in data.groups if g not in present]
        if missing:
            raise DataError(
                f"{source}: column {data.group_by!r} has no training rows for {', '.join(missing)} "
                f"(data.groups lists them); remove them from data.groups or add their data"
            )
    if preprocessor is None:
        preprocessor = Preprocessor.fit(
            train,
            conditions=data.conditions,
            targets=data.targets,
            categorical=data.categorical,
            transforms=data.transforms,
            group_by=data.group_by,
            groups=data.groups,
            image=data.image,
            source=source,
        )
    info = {
        "path": str(Path(path).resolve()),
        "sha256": file_sha256(path),
        **counts,
        "rows_used": table_length(table),
        "n_train": table_length(train),
        "n_val": table_length(val),
        "n_test": table_length(test),
    }
    return PreparedData(
        preprocessor=preprocessor,
        train=to_tensors(train, preprocessor, source=source),
        val=to_tensors(val, preprocessor, source=source),
        info=info,
    )
