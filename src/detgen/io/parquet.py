"""Parquet tables via pyarrow: one Arrow column per column (str as ``string``), one row group per batch."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from detgen.errors import DataError
from detgen.io.table import Table, corrupt_file_error, is_string_column, require_columns

_PANDAS_INDEX = re.compile(r"__index_level_\d+__")
_LIBRARY_ERRORS = (OSError, ValueError, pa.ArrowException)


def _is_flat(arrow_type: pa.DataType) -> bool:
    """Whether a Parquet column of this type is a flat numeric or string column."""
    if pa.types.is_dictionary(arrow_type):
        return _is_string_type(arrow_type.value_type)
    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
        or _is_string_type(arrow_type)
    )


def _is_string_type(arrow_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))


def _to_numpy(column: pa.ChunkedArray, name: str, source: Path) -> np.ndarray:
    """A numpy column from an Arrow column; nulls are an error because a table has no missing values."""
    if column.null_count:
        raise DataError(
            f"{source}: column '{name}' has {column.null_count} null values; expected no missing values"
        )
    if pa.types.is_dictionary(column.type) or _is_string_type(column.type):
        return np.asarray(column.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
    return np.asarray(column.to_numpy())


def _column_names(path: Path, columns: Sequence[str] | None) -> list[str]:
    """The columns to read: the requested ones (checked to exist and be flat) or every flat column."""
    schema = pq.read_schema(path)
    if columns is None:
        return [f.name for f in schema if _is_flat(f.type) and not _PANDAS_INDEX.fullmatch(f.name)]
    require_columns(schema.names, columns, source=str(path))
    for name in columns:
        arrow_type = schema.field(name).type
        if not _is_flat(arrow_type):
            raise DataError(
                f"{path}: column '{name}' has Arrow type {arrow_type}, not a flat column; "
                "expected one integer, floating, bool or string value per row"
            )
    return list(columns)


def read_parquet(path: Path, columns: Sequence[str] | None = None) -> Table:
    """Read flat columns of a Parquet file into a table (all flat columns when ``columns`` is None)."""
    try:
        names = _column_names(path, columns)
        arrow_table = pq.read_table(path, columns=names)
    except _LIBRARY_ERRORS as error:
        raise corrupt_file_error(path, "Parquet", error) from error
    return {name: _to_numpy(arrow_table.column(name), name, path) for name in names}


def _to_arrow(table: Table) -> pa.Table:
    """An Arrow table with the same column order and dtypes; str columns become Arrow ``string``."""
    arrays = {
        name: pa.array(column, type=pa.string()) if is_string_column(column) else pa.array(column)
        for name, column in table.items()
    }
    return pa.table(arrays)


class ParquetBatchWriter:
    """Write batches to one Parquet file, one row group per batch; the file is opened at the first batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: pq.ParquetWriter | None = None

    def append(self, table: Table) -> None:
        """Write ``table`` (already checked, non-empty, same schema as earlier batches) as one row group."""
        arrow_table = _to_arrow(table)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, arrow_table.schema)
        self._writer.write_table(arrow_table, row_group_size=arrow_table.num_rows)

    def close(self) -> None:
        """Write the footer and close the file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
