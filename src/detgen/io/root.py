"""ROOT TTrees via uproot: flat branches are columns; string columns are stored as integer codes.

Reading: a column is a branch with one numeric value per entry (``run``, ``nPhoton``, ``MET_pt``). Jagged
branches (``Photon_pt``: one value per photon), fixed-size arrays and objects are not columns; asking for one
is a DataError that names it. A ``char*`` / ``std::string`` branch is read as a string column when asked for
by name, but ``columns=None`` reads only the flat numeric branches.

How string columns are stored: uproot cannot write string branches, so a string column ``species`` is
written as an ``int32`` branch ``species`` of codes 0, 1, 2, ... and its labels go into a ``TObjString`` next
to the tree, named ``<tree>__labels``, holding JSON ``{"species": ["e", "mu", "pi"]}``: the label of code
``i`` is entry ``i`` of the list. ``read_root`` turns the codes back into strings, so a round trip is exact.
Outside detgen: ``json.loads(file["events__labels"])`` in uproot, ``file->Get<TObjString>("events__labels")``
in C++.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import uproot
from uproot.interpretation.numerical import AsDtype, TruncatedNumerical
from uproot.interpretation.strings import AsStrings

from detgen.errors import DataError
from detgen.io.table import (
    Table,
    corrupt_file_error,
    did_you_mean,
    is_string_column,
    join_names,
    require_columns,
)

LABELS_SUFFIX = "__labels"
_LIBRARY_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    EOFError,
    RuntimeError,
    struct.error,
    zlib.error,
    uproot.DeserializationError,
)


def labels_key(tree: str) -> str:
    """Name of the TObjString holding the labels of ``tree``'s string columns."""
    return f"{tree}{LABELS_SUFFIX}"


# ---------------------------------------------------------------- reading


def _find_tree(file: Any, tree: str | None, path: Path) -> str:
    """The name of the TTree to read: ``tree`` if given and present, else the file's only TTree."""
    trees = file.keys(filter_classname="TTree", cycle=False, recursive=True)
    if tree is not None:
        if tree not in trees:
            hint = did_you_mean(tree, trees)
            raise DataError(f"{path}: no TTree '{tree}'{hint}; the file has {join_names(trees) or 'none'}")
        return tree
    if len(trees) != 1:
        what = f"{len(trees)} TTrees ({join_names(trees)})" if trees else "no TTree"
        raise DataError(f"{path}: file holds {what}; expected exactly one, or pass tree= to choose")
    return str(trees[0])


def _is_flat_numeric(branch: Any) -> bool:
    """Whether a branch holds one number per entry (and so is a column)."""
    interpretation = branch.interpretation
    if branch.branches or not isinstance(interpretation, (AsDtype, TruncatedNumerical)):
        return False
    return np.dtype(interpretation.to_dtype).shape == ()


def _not_flat_error(branch: Any, tree: str, path: Path) -> DataError:
    """The DataError for a requested branch that is not a flat column, saying what it is instead."""
    kind = type(branch.interpretation).__name__
    if kind == "AsJagged":
        what = f"jagged ({branch.typename}: a variable number of values per entry)"
        counter = getattr(branch, "count_branch", None)
        advice = f"; its per-entry count '{counter.name}' is a flat column" if counter is not None else ""
    else:
        what = f"of type {branch.typename} ({kind})"
        advice = ""
    return DataError(
        f"{path}: branch '{branch.name}' of TTree '{tree}' is {what}, not a flat column "
        f"(one number per entry){advice}"
    )


def _read_labels(file: Any, tree: str, path: Path) -> dict[str, list[str]]:
    """The string-column labels written by detgen next to ``tree`` (empty if there are none)."""
    key = labels_key(tree)
    if key not in file.keys(cycle=False, recursive=True):
        return {}
    try:
        labels = json.loads(str(file[key]))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: '{key}' is not the JSON label list detgen writes ({error})") from error
    return {str(name): [str(label) for label in values] for name, values in labels.items()}


def _select_branches(ttree: Any, columns: Sequence[str] | None, tree: str, path: Path) -> list[str]:
    """The branch names to read: the requested ones (checked) or every flat numeric branch."""
    names = ttree.keys(recursive=True)
    if columns is None:
        return [name for name in names if _is_flat_numeric(ttree[name])]
    require_columns(names, columns, source=f"{path} (TTree '{tree}')")
    for name in columns:
        branch = ttree[name]
        if not (_is_flat_numeric(branch) or isinstance(branch.interpretation, AsStrings)):
            raise _not_flat_error(branch, tree, path)
    return list(columns)


def _decode(codes: np.ndarray, labels: list[str], name: str, path: Path) -> np.ndarray:
    """Turn integer codes back into their string labels."""
    if codes.size and (codes.min() < 0 or codes.max() >= len(labels)):
        raise DataError(
            f"{path}: string column '{name}' has codes outside 0..{len(labels) - 1}; "
            f"the label list '{name}' in its TObjString is incomplete"
        )
    return np.asarray(labels, dtype=object)[codes]


def _read_columns(file: Any, tree: str, columns: Sequence[str] | None, path: Path) -> Table:
    ttree = file[tree]
    labels = _read_labels(file, tree, path)
    table: Table = {}
    for name in _select_branches(ttree, columns, tree, path):
        values = np.asarray(ttree[name].array(library="np"))
        if name in labels:
            values = _decode(values, labels[name], name, path)
        elif values.dtype.kind == "O":
            values = np.asarray([str(value) for value in values], dtype=object)
        table[name] = values
    return table


def read_root(path: Path, columns: Sequence[str] | None = None, *, tree: str | None = None) -> Table:
    """Read flat branches of one TTree of a ROOT file into a table.

    Args:
        path: the ROOT file.
        columns: branch names to read; None reads every flat numeric branch (and detgen string columns).
        tree: the TTree's name (may include directories, ``"dir/events"``); optional when the file holds one.
    """
    try:
        with uproot.open(path) as file:
            name = _find_tree(file, tree, path)
            return _read_columns(file, name, columns, path)
    except _LIBRARY_ERRORS as error:
        raise corrupt_file_error(path, "ROOT", error) from error


# ---------------------------------------------------------------- writing


class RootBatchWriter:
    """Write batches to one TTree (uproot ``mktree`` + ``extend``); the file is created at the first batch.

    String columns become int32 codes; their labels grow as new ones appear (earlier codes never change) and
    are written as the ``<tree>__labels`` TObjString when the writer is closed.
    """

    def __init__(self, path: Path, *, tree: str = "events") -> None:
        self.path = path
        self.tree = tree
        self._file: Any = None
        self._labels: dict[str, dict[str, int]] = {}

    def _encode(self, name: str, column: np.ndarray) -> np.ndarray:
        """Integer codes of a string column, extending the column's label list with unseen labels."""
        codes_of = self._labels.setdefault(name, {})
        for label in dict.fromkeys(column.tolist()):
            codes_of.setdefault(label, len(codes_of))
        return np.fromiter((codes_of[label] for label in column), dtype=np.int32, count=len(column))

    def append(self, table: Table) -> None:
        """Append ``table`` (already checked, non-empty, same schema as earlier batches) to the TTree."""
        branches = {
            name: self._encode(name, column) if is_string_column(column) else column
            for name, column in table.items()
        }
        if self._file is None:
            self._file = uproot.recreate(self.path)
            self._file.mktree(self.tree, {name: values.dtype for name, values in branches.items()})
        self._file[self.tree].extend(branches)

    def close(self) -> None:
        """Write the string labels (if any) and close the file."""
        if self._file is None:
            return
        try:
            if self._labels:
                labels = {name: list(codes_of) for name, codes_of in self._labels.items()}
                self._file[labels_key(self.tree)] = json.dumps(labels, ensure_ascii=False)
        finally:
            self._file.close()
            self._file = None
