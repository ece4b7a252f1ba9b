"""HDF5 tables via h5py: a group of 1-D datasets (one per column) or one compound (structured) dataset.

Writing always produces the group layout: one resizable, chunked 1-D dataset per column under ``key`` (the
file root when ``key`` is None), in the table's column order (the group tracks creation order). String
columns are variable-length UTF-8 datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from detgen.errors import DataError
from detgen.io.table import (
    Table,
    corrupt_file_error,
    did_you_mean,
    is_string_column,
    join_names,
    require_columns,
)

_LIBRARY_ERRORS = (OSError, ValueError, KeyError, RuntimeError)
_CHUNK_ROWS = 1 << 16  # largest chunk of a resizable dataset, in rows
_STRING = h5py.string_dtype("utf-8")


def _is_flat_dtype(dtype: np.dtype) -> bool:
    """Whether one element of this dtype is a single number or string (not a record or sub-array)."""
    if dtype.names is not None or dtype.shape != ():
        return False
    return dtype.kind in "biuf" or h5py.check_string_dtype(dtype) is not None


def _is_column(node: Any) -> bool:
    return isinstance(node, h5py.Dataset) and node.ndim == 1 and _is_flat_dtype(node.dtype)


def _decode_strings(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Object array of str from the bytes h5py returns for string data."""
    info = h5py.check_string_dtype(dtype)
    encoding = info.encoding if info is not None else "utf-8"
    return np.asarray(
        [value.decode(encoding) if isinstance(value, bytes) else str(value) for value in values], dtype=object
    )


def _as_column(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if h5py.check_string_dtype(dtype) is not None:
        return _decode_strings(values, dtype)
    return np.asarray(values)


def _find_node(file: h5py.File, key: str | None, path: Path) -> Any:
    """The group or dataset ``key`` names (the file root when None), or a DataError listing what exists."""
    if key is None:
        return file
    node = file.get(key)
    if node is None:
        names: list[str] = []
        file.visit(names.append)
        raise DataError(
            f"{path}: no group or dataset '{key}'{did_you_mean(key, names)}; "
            f"the file has {join_names(names, 12) or 'nothing'}"
        )
    return node


def _describe(node: Any) -> str:
    if isinstance(node, h5py.Group):
        return "a group"
    return f"a dataset of shape {node.shape} and dtype {node.dtype}"


def _read_group(group: h5py.Group, columns: Sequence[str] | None, path: Path) -> Table:
    """Columns from the 1-D datasets of ``group``."""
    source = f"{path} (group '{group.name}')"
    if columns is None:
        columns = [name for name, node in group.items() if _is_column(node)]
        if not columns:
            contents = ", ".join(f"'{name}' ({_describe(node)})" for name, node in group.items())
            raise DataError(
                f"{source}: no 1-D datasets to read as columns (it holds {contents or 'nothing'}); "
                "pass key= naming a group of 1-D datasets or a compound dataset"
            )
    require_columns(list(group.keys()), columns, source=source)
    table: Table = {}
    for name in columns:
        node = group[name]
        if not _is_column(node):
            raise DataError(
                f"{source}: '{name}' is {_describe(node)}; expected a 1-D numeric or string dataset"
            )
        table[name] = _as_column(node[()], node.dtype)
    return table


def _read_compound(dataset: h5py.Dataset, columns: Sequence[str] | None, path: Path) -> Table:
    """Columns from the fields of a 1-D compound (structured) dataset."""
    source = f"{path} (dataset '{dataset.name}')"
    fields = dataset.dtype.names
    if fields is None or dataset.ndim != 1:
        raise DataError(
            f"{source}: is {_describe(dataset)}; expected a group of 1-D datasets or a 1-D compound dataset"
        )
    if columns is None:
        columns = [name for name in fields if _is_flat_dtype(dataset.dtype[name])]
    require_columns(list(fields), columns, source=source)
    for name in columns:
        if not _is_flat_dtype(dataset.dtype[name]):
            raise DataError(
                f"{source}: field '{name}' has dtype {dataset.dtype[name]}; expected one value per row"
            )
    records = dataset[()]
    return {name: _as_column(records[name], dataset.dtype[name]) for name in columns}


def read_hdf5(path: Path, columns: Sequence[str] | None = None, *, key: str | None = None) -> Table:
    """Read a table from an HDF5 file.

    Args:
        path: the HDF5 file.
        columns: names to read; None reads every flat column.
        key: a group holding one 1-D dataset per column (default: the file root), or a 1-D compound dataset.
    """
    try:
        with h5py.File(path, "r") as file:
            node = _find_node(file, key, path)
            if isinstance(node, h5py.Dataset):
                return _read_compound(node, columns, path)
            return _read_group(node, columns, path)
    except _LIBRARY_ERRORS as error:
        raise corrupt_file_error(path, "HDF5", error) from error


class Hdf5BatchWriter:
    """Write batches to resizable 1-D datasets under one group; the file is created at the first batch."""

    def __init__(self, path: Path, *, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self._file: h5py.File | None = None
        self._group: h5py.Group | None = None

    def _create(self, table: Table) -> h5py.Group:
        """Create the file, the group and one empty resizable dataset per column."""
        self._file = h5py.File(self.path, "w", track_order=True)
        group = self._file if self.key is None else self._file.create_group(self.key, track_order=True)
        chunk = min(len(next(iter(table.values()))), _CHUNK_ROWS)
        for name, column in table.items():
            dtype = _STRING if is_string_column(column) else column.dtype
            group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk,))
        return group

    def append(self, table: Table) -> None:
        """Append ``table`` (already checked, non-empty, same schema as earlier batches) to the datasets."""
        if self._group is None:
            self._group = self._create(table)
        for name, column in table.items():
            dataset = self._group[name]
            start = dataset.shape[0]
            dataset.resize((start + len(column),))
            dataset[start:] = column

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._group = None
