"""The data layer: read and write tables of named columns as Parquet, ROOT (TTree) or HDF5.

A table is a ``dict[str, np.ndarray]`` of equal-length columns, numeric or object arrays of ``str``; a
numeric column may hold one fixed-shape array per row (shape ``(N, ...)``, e.g. an ``(N, 11, 11)`` crystal
energy map), which only HDF5 stores (``detgen.io.hdf5``, also the CaloChallenge layout).
The format follows from the file extension (see ``FORMATS``). Writes are atomic: the data goes to a hidden
temporary file in the target directory, which is renamed onto the target only when everything was written.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tracks.parquet"
    >>> write_table(path, {"p_gev": np.array([0.5, 1.2]), "species": np.array(["pi", "K"], dtype=object)})
    >>> read_table(path, columns=["species"])["species"].tolist()
    ['pi', 'K']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Protocol

from detgen.errors import ConfigError, DataError
from detgen.io.hdf5 import LAYOUTS, Hdf5BatchWriter, check_calochallenge_table, check_layout, read_hdf5
from detgen.io.parquet import ParquetBatchWriter, read_parquet
from detgen.io.root import RootBatchWriter, read_root
from detgen.io.table import (
    FORMATS,
    PathLike,
    Table,
    check_readable,
    check_same_schema,
    check_table,
    concat_tables,
    file_format,
    file_sha256,
    finite_column,
    is_array_column,
    require_columns,
    require_finite,
    row_shape,
    select_rows,
    split_indices,
    table_length,
    temporary_sibling,
)

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "Table",
    "TableWriter",
    "concat_tables",
    "file_sha256",
    "finite_column",
    "is_array_column",
    "read_table",
    "require_columns",
    "require_finite",
    "row_shape",
    "select_rows",
    "split_indices",
    "table_length",
    "write_table",
]


def _read(
    path: Path, file_kind: str, columns: Sequence[str] | None, tree: str | None, key: str | None, layout: str
) -> Table:
    if file_kind == "parquet":
        return read_parquet(path, columns)
    if file_kind == "root":
        return read_root(path, columns, tree=tree)
    return read_hdf5(path, columns, key=key, layout=layout)


def _check_layout_format(path: Path, file_kind: str, layout: str) -> None:
    check_layout(layout, path)
    if layout == "calochallenge" and file_kind != "hdf5":
        raise DataError(f"{path}: the CaloChallenge layout is an HDF5 file; expected a .h5 or .hdf5 extension")


def read_table(
    path: PathLike,
    *,
    columns: Sequence[str] | None = None,
    tree: str | None = None,
    key: str | None = None,
    layout: str = "auto",
) -> Table:
    """Read a table from a Parquet (.parquet, .pq), ROOT (.root) or HDF5 (.h5, .hdf5) file.

    Args:
        path: the file; its extension says the format.
        columns: the columns to read, in this order; None reads every flat column (ROOT: every flat numeric
            branch; jagged branches such as ``Photon_pt`` are never columns).
        tree: ROOT only (ignored for other formats, so one data config can name files of any format): the
            TTree to read; optional when the file holds exactly one TTree.
        key: HDF5 only (ignored for other formats): a group of datasets (default: the file root) or a
            compound dataset. Numeric datasets of shape (N, ...) are read as array columns.
        layout: HDF5 only: "columns", "calochallenge" (``incident_energies`` (N, 1) MeV -> a 1-D column,
            ``showers`` (N, n_voxels) MeV; a missing one is a DataError naming it) or "auto" (the CaloChallenge
            layout when the file root holds both datasets, else "columns").

    Raises:
        DataError: missing, empty (0 bytes or 0 rows), truncated or corrupt file; unknown extension; missing,
            misspelled or non-flat column; columns of different lengths; a CaloChallenge file missing a key.
        ConfigError: ``columns`` given as a single string or as an empty list.
    """
    path = Path(path)
    file_kind = file_format(path)
    if isinstance(columns, str):
        raise ConfigError(f"{path}: columns='{columns}' is a string; expected a list of column names")
    if columns is not None:
        columns = list(dict.fromkeys(columns))
        if not columns:
            raise ConfigError(f"{path}: columns=[] asks for no columns; pass None to read all of them")
    _check_layout_format(path, file_kind, layout)
    check_readable(path)
    table = _read(path, file_kind, columns, tree, key, layout)
    if not table:
        raise DataError(f"{path}: no flat columns to read; expected at least one numeric or string column")
    if table_length(table, source=str(path)) == 0:
        raise DataError(f"{path}: file has 0 rows; expected at least one")
    return table


class _BatchWriter(Protocol):
    def append(self, table: Table) -> None: ...

    def close(self) -> None: ...


def _batch_writer(
    path: Path, file_kind: str, tree: str, key: str | None, compression: str | None, layout: str
) -> _BatchWriter:
    if file_kind == "parquet":
        return ParquetBatchWriter(path)
    if file_kind == "root":
        return RootBatchWriter(path, tree=tree)
    return Hdf5BatchWriter(path, key=key, compression=compression, layout=layout)


class TableWriter:
    """Write a table batch by batch (generation streams its output this way), atomically.

    Every batch must have the columns and dtypes of the first one. Parquet writes one row group per batch,
    HDF5 grows resizable datasets, ROOT extends the TTree ``tree`` (string columns as codes, see
    ``detgen.io.root``). The data goes to a hidden temporary file next to ``path``; a clean exit from the
    with-block renames it onto ``path`` (replacing an existing file), an exception deletes it and leaves
    ``path`` untouched.

    Args:
        path: the output file; its extension says the format.
        tree: ROOT only (ignored for other formats), the name of the TTree.
        key: HDF5 only (ignored for other formats), the group that holds the columns (default: the file root).
        compression: HDF5 only: None, "gzip" or "lzf" for numeric datasets (array columns shrink a lot).
        layout: HDF5 only: "auto"/"columns" (one dataset per column) or "calochallenge" (needs columns
            ``incident_energies`` (N,) MeV, stored as (N, 1), and ``showers`` (N, n_voxels) MeV).

    Array columns (shape (N, ...)) need HDF5: for Parquet and ROOT they are a DataError.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "generated.h5"
        >>> with TableWriter(path) as writer:
        ...     for start in range(0, 30, 10):
        ...         writer.append({"dedx_adc": np.arange(start, start + 10, dtype=np.float32)})
        >>> len(read_table(path)["dedx_adc"])
        30
    """

    def __init__(
        self,
        path: PathLike,
        *,
        tree: str = "events",
        key: str | None = None,
        compression: str | None = None,
        layout: str = "auto",
    ) -> None:
        self.path = Path(path)
        self._kind = file_format(self.path)
        _check_layout_format(self.path, self._kind, layout)
        self._tree = tree
        self._key = key
        self._compression = compression
        self._layout = layout
        self._temporary: Path | None = None
        self._backend: _BatchWriter | None = None
        self._schema: Table | None = None
        self.rows_written = 0

    def __enter__(self) -> TableWriter:
        if not self.path.parent.is_dir():
            raise DataError(f"{self.path}: directory {self.path.parent} does not exist; create it first")
        self._temporary = temporary_sibling(self.path)
        self._backend = _batch_writer(
            self._temporary, self._kind, self._tree, self._key, self._compression, self._layout
        )
        return self

    def append(self, table: Table) -> None:
        """Write one batch; it must have the columns and dtypes of the first batch (any column order)."""
        if self._backend is None:
            raise RuntimeError("TableWriter.append called outside its with-block")
        source = str(self.path)
        batch = check_table(table, source=source)
        if self._kind != "hdf5":
            for name, column in batch.items():
                if is_array_column(column):
                    raise DataError(
                        f"{source}: array column '{name}' has shape {column.shape} (rows of shape "
                        f"{row_shape(column)}) and needs HDF5 (.h5, .hdf5); {self._kind} holds 1-D columns only"
                    )
        if self._layout == "calochallenge":
            check_calochallenge_table(batch, self.path)
        if self._schema is None:
            self._schema = {name: column[:0] for name, column in batch.items()}
        else:
            check_same_schema(self._schema, batch, source=source)
            batch = {name: batch[name] for name in self._schema}
        n_rows = table_length(batch)
        if n_rows:
            self._backend.append(batch)
            self.rows_written += n_rows

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._finish()
        except BaseException:
            self._discard()
            raise

    def _finish(self) -> None:
        """Close the temporary file and move it onto the target."""
        assert self._backend is not None and self._temporary is not None
        self._backend.close()
        if self.rows_written == 0:
            raise DataError(f"{self.path}: no rows were written; expected at least one non-empty batch")
        os.replace(self._temporary, self.path)
        self._backend = None

    def _discard(self) -> None:
        """Close and delete the temporary file; the target is left as it was."""
        if self._backend is not None:
            # the original error is what matters; a second one while closing a broken file would hide it
            with suppress(Exception):
                self._backend.close()
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)
        self._backend = None


def write_table(
    path: PathLike,
    table: Table,
    *,
    tree: str = "events",
    key: str | None = None,
    compression: str | None = None,
    layout: str = "auto",
) -> None:
    """Write ``table`` to a Parquet, ROOT or HDF5 file, atomically (no partial file is ever left at ``path``).

    Args:
        path: the output file; its extension says the format. An existing file is replaced.
        table: equal-length numeric or str columns; numeric array columns (shape (N, ...)) need HDF5.
        tree: ROOT only (ignored for other formats), the TTree's name; string columns are stored as int32
            codes plus a ``<tree>__labels`` TObjString (see ``detgen.io.root``), and read back as strings.
        key: HDF5 only (ignored for other formats), the group that holds one dataset per column (default: the
            file root).
        compression: HDF5 only: None, "gzip" or "lzf".
        layout: HDF5 only: "auto"/"columns" or "calochallenge" (see ``TableWriter``).

    Raises:
        DataError: an empty table, a bad column, columns of different lengths, a missing output directory.
    """
    with TableWriter(path, tree=tree, key=key, compression=compression, layout=layout) as writer:
        writer.append(table)
