"""Tables in memory: checks, row selection, concatenation, splits, and the helpers every file format shares.

A table is a ``dict[str, np.ndarray]`` of equal-length columns. A column is numeric (bool, integer or
floating dtype) or categorical: a numpy object array of ``str`` (species labels, for instance). A numeric column
may be an *array column* of shape ``(N, ...)``: one fixed-shape array per row (an 11 x 11 crystal energy map,
for instance); only HDF5 files hold array columns. String columns are always 1-D.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Union

import numpy as np

from detgen.errors import ConfigError, DataError, SchemaError

Table = dict[str, np.ndarray]
PathLike = Union[str, "os.PathLike[str]"]

#: File extensions understood by ``read_table`` / ``write_table`` and the format each one means.
FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".root": "root",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
}

_NUMERIC_KINDS = "biuf"
_LIST_LIMIT = 12  # how many available names an error message shows before "..."


# ---------------------------------------------------------------- column checks


def is_string_column(column: np.ndarray) -> bool:
    """Whether ``column`` holds categorical labels (object or unicode dtype) rather than numbers."""
    return column.dtype.kind in "OU"


def is_array_column(column: np.ndarray) -> bool:
    """Whether ``column`` holds one fixed-shape array per row (shape ``(N, ...)`` with more than one axis)."""
    return column.ndim > 1


def row_shape(column: np.ndarray) -> tuple[int, ...]:
    """The shape of one row of ``column``: ``()`` for a 1-D column, e.g. ``(11, 11)`` for a map column."""
    return tuple(column.shape[1:])


def _as_column(name: str, values: object, source: str) -> np.ndarray:
    """Return ``values`` as a numeric (1-D or array) or 1-D string column, or raise a DataError naming ``name``."""
    column = np.asarray(values)
    if column.ndim == 0:
        raise DataError(f"{source}: column '{name}' is a scalar; expected one value or one array per row")
    if column.dtype.kind in "OU" and column.ndim != 1:
        raise DataError(
            f"{source}: column '{name}' has shape {column.shape} and holds strings; expected a 1-D string column"
        )
    if column.dtype.kind == "U":
        return column.astype(object)
    if column.dtype.kind == "O":
        bad = [i for i, value in enumerate(column) if not isinstance(value, str)]
        if bad:
            kind = type(column[bad[0]]).__name__
            raise DataError(
                f"{source}: column '{name}' holds a {kind} at row {bad[0]} ({len(bad)} non-string values); "
                "expected an object column of str only"
            )
        return column
    if column.dtype.kind not in _NUMERIC_KINDS:
        raise DataError(
            f"{source}: column '{name}' has dtype {column.dtype}; expected bool, integer, floating or str"
        )
    return column


def table_length(table: Mapping[str, np.ndarray], *, source: str = "table") -> int:
    """Number of rows of ``table`` (0 for a table without columns).

    Raises:
        DataError: if the columns have different lengths; the message lists every column's length.
    """
    lengths = {name: len(column) for name, column in table.items()}
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{name} {length}" for name, length in lengths.items())
        raise DataError(f"{source}: columns have different lengths ({listing}); expected equal lengths")
    return next(iter(lengths.values()), 0)


def check_table(table: Mapping[str, object], *, source: str) -> Table:
    """Validate a table to be written and return it with every column as a numpy array.

    Raises:
        DataError: no columns, a column that is neither numeric (1-D or array) nor 1-D str, or columns of
            different lengths.
    """
    if not table:
        raise DataError(f"{source}: table has no columns; expected at least one column")
    checked = {str(name): _as_column(str(name), values, source) for name, values in table.items()}
    table_length(checked, source=source)
    return checked


def check_same_schema(
    reference: Mapping[str, np.ndarray], table: Mapping[str, np.ndarray], *, source: str
) -> None:
    """Raise a SchemaError unless ``table`` has the columns and dtypes of ``reference`` (a previous batch)."""
    missing = [name for name in reference if name not in table]
    extra = [name for name in table if name not in reference]
    if missing or extra:
        raise SchemaError(
            f"{source}: batch columns differ from the first batch "
            f"(missing {join_names(missing) or 'none'}; unexpected {join_names(extra) or 'none'})"
        )
    for name, column in reference.items():
        other = table[name]
        same = is_string_column(other) if is_string_column(column) else other.dtype == column.dtype
        if not same:
            raise SchemaError(
                f"{source}: column '{name}' has dtype {other.dtype} in this batch; "
                f"the first batch had {column.dtype}"
            )
        if row_shape(other) != row_shape(column):
            raise SchemaError(
                f"{source}: column '{name}' has rows of shape {row_shape(other)} in this batch; "
                f"the first batch had {row_shape(column)}"
            )


def join_names(names: Sequence[str], limit: int | None = None) -> str:
    """Comma-separated ``names``, cut after ``limit`` with the total count."""
    names = list(names)
    if limit is None or len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in total)"


def did_you_mean(name: str, available: Sequence[str]) -> str:
    """A " (did you mean 'x'?)" hint for a misspelled name, or the empty string."""
    close = difflib.get_close_matches(name, list(available), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def require_columns(
    table_or_available: Mapping[str, np.ndarray] | Sequence[str], required: Sequence[str], *, source: str
) -> None:
    """Raise a DataError unless every name in ``required`` is a column.

    Args:
        table_or_available: a table, or the column names a file holds.
        required: the names the caller needs.
        source: what the columns come from (usually the file name), for the message.

    Example:
        >>> require_columns(["p", "theta"], ["p", "thetaa"], source="conditions.parquet")
        Traceback (most recent call last):
        ...
        detgen.errors.DataError: conditions.parquet: missing column 'thetaa' (did you mean 'theta'?) ...
    """
    available = list(table_or_available)
    missing = [name for name in required if name not in available]
    if not missing:
        return
    label = "column" if len(missing) == 1 else "columns"
    what = ", ".join(f"'{name}'{did_you_mean(name, available)}" for name in missing)
    raise DataError(
        f"{source}: missing {label} {what} "
        f"(expected {join_names(required)}; file has {join_names(available, _LIST_LIMIT) or 'no columns'})"
    )


def finite_column(table: Mapping[str, np.ndarray], column: str, *, source: str, n_rows: int) -> np.ndarray:
    """Column ``column`` as ``n_rows`` finite float64 values, or a DataError naming the column and the problem."""
    try:
        values = np.asarray(table[column], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{source}: column '{column}' is not numeric ({error})") from error
    if values.shape != (n_rows,):
        raise DataError(f"{source}: column '{column}' has shape {values.shape}; expected ({n_rows},), one value per row")
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"{source}: column '{column}' has {int(bad.sum())} NaN/inf values (first at row "
                        f"{int(np.flatnonzero(bad)[0])}); expected finite numbers")
    return values


def require_finite(table: Mapping[str, np.ndarray], columns: Sequence[str], *, source: str) -> None:
    """Raise a DataError if any of ``columns`` holds NaN or infinite values.

    The message names the column, how many values are NaN and how many are infinite, and the first bad row
    (for an array column also how many rows are affected and the first bad element within the row).
    Integer and bool columns are always finite; a string column is an error (it has no numeric values).
    """
    require_columns(table, columns, source=source)
    for name in columns:
        column = table[name]
        if is_string_column(column):
            raise DataError(f"{source}: column '{name}' holds strings; expected a numeric column")
        if column.dtype.kind != "f":
            continue
        bad = ~np.isfinite(column)
        if bad.any():
            n_nan = int(np.isnan(column).sum())
            n_inf = int(bad.sum()) - n_nan
            if is_array_column(column):
                bad_rows = bad.reshape(len(column), -1).any(axis=1)
                first_bad = np.argwhere(bad)[0]
                element = tuple(int(i) for i in first_bad[1:])
                raise DataError(
                    f"{source}: column '{name}' has {n_nan} NaN and {n_inf} inf values in "
                    f"{int(bad_rows.sum())} of {len(column)} rows (first at row {int(first_bad[0])}, "
                    f"element {element}); expected finite values"
                )
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: column '{name}' has {n_nan} NaN and {n_inf} inf values in {len(column)} rows "
                f"(first at row {first}); expected finite values"
            )


# ---------------------------------------------------------------- row operations


def select_rows(table: Mapping[str, np.ndarray], mask_or_index: np.ndarray | Sequence[int] | slice) -> Table:
    """Rows of ``table`` picked by a boolean mask (one entry per row), an integer index array or a slice."""
    n_rows = table_length(table)
    if isinstance(mask_or_index, slice):
        return {name: column[mask_or_index] for name, column in table.items()}
    selector = np.asarray(mask_or_index)
    if selector.dtype == bool:
        if selector.shape != (n_rows,):
            raise DataError(f"row mask has shape {selector.shape}; expected ({n_rows},), one entry per row")
    elif selector.size == 0:
        selector = selector.astype(np.intp)
    elif selector.dtype.kind not in "iu" or selector.ndim != 1:
        raise DataError(
            f"row selection has dtype {selector.dtype} and shape {selector.shape}; "
            "expected a boolean mask or a 1-D integer index"
        )
    return {name: column[selector] for name, column in table.items()}


def concat_tables(tables: Sequence[Mapping[str, np.ndarray]]) -> Table:
    """Stack tables with the same columns (and row shapes) row-wise; the column order is that of the first."""
    if not tables:
        raise DataError("concat_tables: no tables given; expected at least one")
    first = tables[0]
    for number, table in enumerate(tables[1:], start=1):
        if set(table) != set(first):
            raise DataError(
                f"concat_tables: table {number} has columns {join_names(list(table))}; "
                f"table 0 has {join_names(list(first))}"
            )
        for name, column in first.items():
            if row_shape(np.asarray(table[name])) != row_shape(np.asarray(column)):
                raise DataError(
                    f"concat_tables: column '{name}' has rows of shape {row_shape(np.asarray(table[name]))} in "
                    f"table {number}; table 0 has {row_shape(np.asarray(column))}"
                )
    return {name: np.concatenate([table[name] for table in tables]) for name in first}


def split_indices(
    n: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reproducible train / validation / test split of ``n`` rows.

    The rows are permuted with ``numpy.random.default_rng(seed)`` and cut at the cumulative fractions
    (rounded to whole rows); each part is returned sorted, so reading it keeps the file's order.
    The three parts are disjoint and together hold every index ``0 .. n-1`` exactly once.

    Raises:
        ConfigError: if ``fractions`` are not three non-negative numbers summing to 1, or ``n`` < 0.

    Example:
        >>> train, val, test = split_indices(10, (0.6, 0.2, 0.2), seed=1)
        >>> len(train), len(val), len(test)
        (6, 2, 2)
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ConfigError(
            f"split fractions {tuple(fractions)} must be three non-negative numbers summing to 1 "
            "(train, validation, test)"
        )
    if n < 0:
        raise ConfigError(f"split_indices: n = {n}; expected a non-negative number of rows")
    permutation = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(fractions[:2]) * n).astype(int)
    train, val, test = np.split(permutation, cuts)
    return np.sort(train), np.sort(val), np.sort(test)


# ---------------------------------------------------------------- files


def file_sha256(path: PathLike) -> str:
    """Hex sha256 digest of a file's bytes (recorded in a run dir's meta.json for the training data)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected an existing file to hash")
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_format(path: PathLike) -> str:
    """The format ("parquet", "root" or "hdf5") that ``path``'s extension names, or a DataError."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown file extension '{suffix}'; expected one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def check_readable(path: Path) -> None:
    """Raise a DataError unless ``path`` is an existing, non-empty file."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: is a directory; expected a data file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")


def corrupt_file_error(path: Path, kind: str, error: BaseException) -> DataError:
    """The DataError for a file the library cannot read (truncated, corrupt, or not of this format)."""
    detail = " ".join(str(error).split())
    cause = f"{type(error).__name__}: {detail}"
    return DataError(f"{path}: cannot read as a {kind} file; it may be truncated or corrupt ({cause})")


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden file name next to ``path``, so that ``os.replace`` onto ``path`` is atomic."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextmanager
def removed_on_error(path: Path) -> Iterator[Path]:
    """Yield ``path``; if the block raises, delete the file at ``path`` (if any) and re-raise."""
    try:
        yield path
    except BaseException:
        with suppress(FileNotFoundError):
            path.unlink()
        raise
