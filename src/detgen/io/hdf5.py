"""HDF5 tables via h5py: a group of datasets (one per column) or one compound (structured) dataset.

Writing always produces the group layout: one resizable (along axis 0), chunked dataset per column under
``key`` (the file root when ``key`` is None), in the table's column order (the group tracks creation order).
String columns are variable-length UTF-8 datasets. A numeric dataset of shape ``(N, ...)`` is an array column
(one fixed-shape array per row, e.g. an ``(N, 11, 11)`` crystal energy map); gzip compression is optional.

The CaloChallenge 2022 layout (``layout="calochallenge"``) is the group layout with two required datasets at
the file root: ``incident_energies`` of shape ``(N, 1)`` (MeV) and ``showers`` of shape ``(N, n_voxels)`` (MeV).
It is read as a 1-D column ``incident_energies`` and an array column ``showers`` (plus any other columns the
root holds, such as conditions stored alongside), and written back with ``incident_energies`` as ``(N, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from detgen.errors import ConfigError, DataError
from detgen.io.table import (
    Table,
    corrupt_file_error,
    did_you_mean,
    is_array_column,
    is_string_column,
    join_names,
    require_columns,
    row_shape,
)

_LIBRARY_ERRORS = (OSError, ValueError, KeyError, RuntimeError)
_CHUNK_ROWS = 1 << 16  # largest chunk of a resizable dataset, in rows
_CHUNK_BYTES = 1 << 20  # largest chunk of an array column, in bytes (at least one row)
_STRING = h5py.string_dtype("utf-8")

#: Table layouts in an HDF5 file: "columns" (a group of datasets), "calochallenge" (the CaloChallenge 2022
#: datasets, see the module docstring), "auto" (read: "calochallenge" when the file root holds both of its
#: datasets and no ``key`` is given, else "columns"; write: "columns").
LAYOUTS = ("auto", "columns", "calochallenge")
CALOCHALLENGE_KEYS = ("incident_energies", "showers")
COMPRESSIONS = (None, "gzip", "lzf")


def _is_flat_dtype(dtype: np.dtype) -> bool:
    """Whether one element of this dtype is a single number or string (not a record or sub-array)."""
    if dtype.names is not None or dtype.shape != ():
        return False
    return dtype.kind in "biuf" or h5py.check_string_dtype(dtype) is not None


def _is_column(node: Any) -> bool:
    """A 1-D numeric or string dataset, or a numeric dataset of shape (N, ...) (an array column)."""
    if not isinstance(node, h5py.Dataset) or node.ndim < 1 or not _is_flat_dtype(node.dtype):
        return False
    return node.ndim == 1 or h5py.check_string_dtype(node.dtype) is None


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
    """Columns from the datasets of ``group`` (1-D numeric or string, or numeric arrays of shape (N, ...))."""
    source = f"{path} (group '{group.name}')"
    if columns is None:
        columns = [name for name, node in group.items() if _is_column(node)]
        if not columns:
            contents = ", ".join(f"'{name}' ({_describe(node)})" for name, node in group.items())
            raise DataError(
                f"{source}: no datasets to read as columns (it holds {contents or 'nothing'}); "
                "pass key= naming a group of datasets or a compound dataset"
            )
    require_columns(list(group.keys()), columns, source=source)
    table: Table = {}
    for name in columns:
        node = group[name]
        if not _is_column(node):
            raise DataError(
                f"{source}: '{name}' is {_describe(node)}; expected a numeric dataset of shape (N,) or "
                "(N, ...) or a 1-D string dataset"
            )
        table[name] = _as_column(node[()], node.dtype)
    return table


def _is_calochallenge(file: h5py.File) -> bool:
    return all(isinstance(file.get(name), h5py.Dataset) for name in CALOCHALLENGE_KEYS)


def _read_calochallenge(file: h5py.File, columns: Sequence[str] | None, path: Path) -> Table:
    """The CaloChallenge datasets (``incident_energies`` as a 1-D column) and any other root columns."""
    missing = [name for name in CALOCHALLENGE_KEYS if not isinstance(file.get(name), h5py.Dataset)]
    if missing:
        raise DataError(
            f"{path}: CaloChallenge layout needs datasets 'incident_energies' (N, 1) MeV and 'showers' "
            f"(N, n_voxels) MeV; missing {', '.join(repr(name) for name in missing)} "
            f"(file root has {join_names(list(file.keys()), 12) or 'nothing'})"
        )
    energies, showers = file["incident_energies"], file["showers"]
    if energies.ndim not in (1, 2) or (energies.ndim == 2 and energies.shape[1] != 1):
        raise DataError(f"{path}: 'incident_energies' has shape {energies.shape}; expected (N, 1) (MeV)")
    if showers.ndim != 2:
        raise DataError(f"{path}: 'showers' has shape {showers.shape}; expected (N, n_voxels) (MeV)")
    if energies.shape[0] != showers.shape[0]:
        raise DataError(
            f"{path}: 'incident_energies' has {energies.shape[0]} rows and 'showers' {showers.shape[0]}; "
            "expected one incident energy per shower"
        )
    table = _read_group(file, columns, path)
    if "incident_energies" in table:
        table["incident_energies"] = table["incident_energies"].reshape(-1)
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


def check_layout(layout: str, path: Path) -> None:
    """ConfigError unless ``layout`` is one of ``LAYOUTS``."""
    if layout not in LAYOUTS:
        raise ConfigError(f"{path}: layout={layout!r}; expected one of {', '.join(LAYOUTS)}")


def read_hdf5(
    path: Path, columns: Sequence[str] | None = None, *, key: str | None = None, layout: str = "auto"
) -> Table:
    """Read a table from an HDF5 file.

    Args:
        path: the HDF5 file.
        columns: names to read; None reads every column (1-D and array columns).
        key: a group holding one dataset per column (default: the file root), or a 1-D compound dataset.
        layout: "columns", "calochallenge" (``key`` must be None) or "auto" (see ``LAYOUTS``).
    """
    check_layout(layout, path)
    if layout == "calochallenge" and key is not None:
        raise ConfigError(f"{path}: the CaloChallenge layout lives at the file root; got key={key!r}")
    try:
        with h5py.File(path, "r") as file:
            if layout == "calochallenge" or (layout == "auto" and key is None and _is_calochallenge(file)):
                return _read_calochallenge(file, columns, path)
            node = _find_node(file, key, path)
            if isinstance(node, h5py.Dataset):
                return _read_compound(node, columns, path)
            return _read_group(node, columns, path)
    except _LIBRARY_ERRORS as error:
        raise corrupt_file_error(path, "HDF5", error) from error


def _chunk_rows(n_rows: int, column: np.ndarray) -> int:
    """Rows per chunk: at most ``_CHUNK_ROWS`` and, for array columns, at most ``_CHUNK_BYTES`` (>= 1 row)."""
    row_bytes = max(column.dtype.itemsize * int(np.prod(row_shape(column))), 1)
    limit = _CHUNK_ROWS if not is_array_column(column) else max(_CHUNK_BYTES // row_bytes, 1)
    return max(min(n_rows, limit), 1)


def check_calochallenge_table(table: Table, path: Path) -> None:
    """DataError unless ``table`` has a 1-D or (N, 1) ``incident_energies`` and an (N, n_voxels) ``showers``."""
    missing = [name for name in CALOCHALLENGE_KEYS if name not in table]
    if missing:
        raise DataError(
            f"{path}: the CaloChallenge layout needs columns 'incident_energies' (MeV) and 'showers' "
            f"(N, n_voxels) MeV; missing {', '.join(repr(name) for name in missing)}"
        )
    if row_shape(table["incident_energies"]) not in ((), (1,)):
        raise DataError(
            f"{path}: column 'incident_energies' has shape {table['incident_energies'].shape}; expected (N,) or (N, 1)"
        )
    if table["showers"].ndim != 2 or is_string_column(table["showers"]):
        raise DataError(f"{path}: column 'showers' has shape {table['showers'].shape}; expected (N, n_voxels)")


class Hdf5BatchWriter:
    """Write batches to datasets resizable along axis 0 under one group; the file is created at the first batch.

    Args:
        path: the file to create.
        key: the group that holds the columns (None: the file root).
        compression: None, "gzip" or "lzf" (numeric datasets; strings are never compressed).
        layout: "columns" / "auto" (one dataset per column) or "calochallenge" (the same, with
            ``incident_energies`` stored as (N, 1) and both CaloChallenge datasets required).
    """

    def __init__(
        self, path: Path, *, key: str | None = None, compression: str | None = None, layout: str = "auto"
    ) -> None:
        check_layout(layout, path)
        if compression not in COMPRESSIONS:
            raise ConfigError(f"{path}: compression={compression!r}; expected None, 'gzip' or 'lzf'")
        if layout == "calochallenge" and key is not None:
            raise ConfigError(f"{path}: the CaloChallenge layout lives at the file root; got key={key!r}")
        self.path = path
        self.key = key
        self.compression = compression
        self.layout = layout
        self._file: h5py.File | None = None
        self._group: h5py.Group | None = None

    def _stored(self, table: Table) -> Table:
        """The arrays as stored: CaloChallenge's incident energies as (N, 1)."""
        if self.layout != "calochallenge":
            return table
        return {**table, "incident_energies": table["incident_energies"].reshape(-1, 1)}

    def _create(self, table: Table) -> h5py.Group:
        """Create the file, the group and one empty dataset per column, resizable along axis 0."""
        self._file = h5py.File(self.path, "w", track_order=True)
        group = self._file if self.key is None else self._file.create_group(self.key, track_order=True)
        n_rows = len(next(iter(table.values())))
        for name, column in table.items():
            string = is_string_column(column)
            shape = row_shape(column)
            group.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=_STRING if string else column.dtype,
                chunks=(_chunk_rows(n_rows, column), *shape),
                compression=None if string else self.compression,
            )
        return group

    def append(self, table: Table) -> None:
        """Append ``table`` (already checked, non-empty, same schema as earlier batches) to the datasets."""
        table = self._stored(table)
        if self._group is None:
            self._group = self._create(table)
        for name, column in table.items():
            dataset = self._group[name]
            start = dataset.shape[0]
            dataset.resize(start + len(column), axis=0)
            dataset[start:] = column

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._group = None
