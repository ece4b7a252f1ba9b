"""Tests of detgen.io: exact round trips, atomic writes, real ROOT files and one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot

from detgen.errors import ConfigError, DataError, SchemaError
from detgen.io import (
    FORMATS,
    TableWriter,
    concat_tables,
    file_sha256,
    read_table,
    require_columns,
    require_finite,
    select_rows,
    split_indices,
    table_length,
    write_table,
)
from detgen.io.hdf5 import Hdf5BatchWriter
from detgen.io.parquet import ParquetBatchWriter
from detgen.io.root import RootBatchWriter

DATA = Path(__file__).parent / "data"
NANOAOD = DATA / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
HZZ = DATA / "uproot-HZZ.root"
GEANT4 = DATA / "uproot-from-geant4.root"

EXTENSIONS = [".parquet", ".pq", ".root", ".h5", ".hdf5"]
NUMERIC_DTYPES = "int8 int16 int32 int64 uint8 uint16 uint32 uint64 float32 float64 bool".split()


def make_table(n: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    """A table with every supported numeric dtype and a categorical string column."""
    rng = np.random.default_rng(seed)
    table = {f"col_{dtype}": (rng.normal(size=n) * 40).astype(dtype) for dtype in NUMERIC_DTYPES}
    table["p_gev"] = rng.uniform(0.1, 2.0, size=n)
    table["species"] = rng.choice(np.array(["e", "mu", "pi", "K", "p̄"], dtype=object), size=n)
    return table


def assert_tables_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Same column order, dtypes and values (strings as object arrays of str)."""
    assert list(actual) == list(expected)
    for name, column in expected.items():
        if column.dtype == object:
            assert actual[name].dtype == object, name
            assert actual[name].tolist() == column.tolist(), name
        else:
            assert actual[name].dtype == column.dtype, name
            np.testing.assert_array_equal(actual[name], column, err_msg=name)


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_round_trip_is_exact(tmp_path: Path, extension: str) -> None:
    table = make_table()
    path = tmp_path / f"sample{extension}"
    write_table(path, table)
    assert_tables_equal(read_table(path), table)
    assert leftovers(tmp_path) == [path.name]


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_read_selected_columns_in_requested_order(tmp_path: Path, extension: str) -> None:
    table = make_table()
    path = tmp_path / f"sample{extension}"
    write_table(path, table)
    selected = read_table(path, columns=["species", "p_gev"])
    assert_tables_equal(selected, {"species": table["species"], "p_gev": table["p_gev"]})


def test_root_stores_strings_as_codes_and_label_list(tmp_path: Path) -> None:
    path = tmp_path / "dedx.root"
    species = np.array(["pi", "K", "pi", "e"], dtype=object)
    write_table(path, {"dedx": np.arange(4.0), "species": species}, tree="tracks")
    with uproot.open(path) as file:
        codes = file["tracks"]["species"].array(library="np")
        labels = json.loads(str(file["tracks__labels"]))
    assert codes.dtype == np.int32
    assert labels == {"species": ["pi", "K", "e"]}
    assert [labels["species"][code] for code in codes] == species.tolist()
    assert read_table(path)["species"].tolist() == species.tolist()  # the only TTree is found


def test_hdf5_group_key_and_compound_dataset(tmp_path: Path) -> None:
    table = make_table(10)
    path = tmp_path / "nested.h5"
    write_table(path, table, key="calo/showers")
    assert_tables_equal(read_table(path, key="calo/showers"), table)

    compound = tmp_path / "compound.h5"
    dtype = np.dtype([("e_gev", "f4"), ("label", h5py.string_dtype("utf-8")), ("cells", "f4", (3,))])
    records = np.zeros(3, dtype=dtype)
    records["e_gev"] = [1.0, 2.0, 3.0]
    records["label"] = ["γ", "e", "γ"]
    with h5py.File(compound, "w") as file:
        file["showers"] = records
    result = read_table(compound, key="showers")
    assert list(result) == ["e_gev", "label"]  # the sub-array field is not a flat column
    assert result["label"].tolist() == ["γ", "e", "γ"]
    with pytest.raises(DataError, match=r"compound\.h5.*'cells'.*one value per row"):
        read_table(compound, key="showers", columns=["cells"])


# ---------------------------------------------------------------- streaming and atomic writes


@pytest.mark.parametrize("extension", [".parquet", ".root", ".h5"])
def test_table_writer_streaming_equals_write_table(tmp_path: Path, extension: str) -> None:
    batches = [make_table(n, seed) for seed, n in enumerate([7, 1, 30])]
    batches[2]["species"][:3] = "deuteron"  # a label first seen in a later batch
    streamed, whole = tmp_path / f"streamed{extension}", tmp_path / f"whole{extension}"
    with TableWriter(streamed, tree="gen") as writer:
        for batch in batches:
            writer.append(batch)
    write_table(whole, concat_tables(batches), tree="gen")
    assert writer.rows_written == 38
    assert_tables_equal(read_table(streamed), read_table(whole))
    assert_tables_equal(read_table(streamed), concat_tables(batches))


def test_parquet_writes_one_row_group_per_append(tmp_path: Path) -> None:
    path = tmp_path / "batches.parquet"
    with TableWriter(path) as writer:
        for seed in range(3):
            writer.append(make_table(20, seed))
    assert pq.ParquetFile(path).num_row_groups == 3


@pytest.mark.parametrize("extension", [".parquet", ".root", ".h5"])
def test_table_writer_leaves_no_file_on_exception(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"out{extension}"
    with pytest.raises(RuntimeError, match="generation failed"), TableWriter(path) as writer:
        writer.append(make_table())
        raise RuntimeError("generation failed")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("extension", "backend"),
    [(".parquet", ParquetBatchWriter), (".root", RootBatchWriter), (".h5", Hdf5BatchWriter)],
)
def test_write_table_failure_keeps_old_file_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extension: str, backend: type
) -> None:
    path = tmp_path / f"out{extension}"
    old = make_table(5, seed=1)
    write_table(path, old)
    before = file_sha256(path)
    original_append = backend.append

    def append_then_fail(self: object, table: dict[str, np.ndarray]) -> None:
        original_append(self, table)  # the temporary file now holds data
        raise OSError("No space left on device")

    monkeypatch.setattr(backend, "append", append_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_table(path, make_table())
    assert leftovers(tmp_path) == [path.name]
    assert file_sha256(path) == before
    assert_tables_equal(read_table(path), old)


def test_table_writer_rejects_a_batch_with_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with pytest.raises(SchemaError, match=r"out\.parquet.*missing species"), TableWriter(path) as writer:
        writer.append(make_table())
        writer.append({name: column for name, column in make_table().items() if name != "species"})
    with pytest.raises(SchemaError, match="'p_gev' has dtype float32"), TableWriter(path) as writer:
        writer.append(make_table())
        writer.append({**make_table(), "p_gev": make_table()["p_gev"].astype(np.float32)})
    assert leftovers(tmp_path) == []


def test_table_writer_accepts_columns_in_another_order(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    first, second = make_table(4, 0), make_table(4, 1)
    with TableWriter(path) as writer:
        writer.append(first)
        writer.append(dict(reversed(list(second.items()))))
    assert_tables_equal(read_table(path), concat_tables([first, second]))


def test_table_writer_without_rows_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "out.h5"
    with pytest.raises(DataError, match=r"out\.h5: no rows were written"), TableWriter(path):
        pass
    with pytest.raises(DataError, match="no rows"):
        write_table(path, {"x": np.zeros(0)})
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "no columns"),
        ({"x": np.zeros(3), "y": np.zeros(2)}, r"different lengths \(x 3, y 2\)"),
        ({"x": np.zeros((3, 2))}, r"'x' has shape \(3, 2\)"),
        ({"z": np.zeros(3, dtype=complex)}, "'z' has dtype complex128"),
        ({"s": np.array(["a", None], dtype=object)}, "'s' holds a NoneType at row 1"),
    ],
)
def test_write_table_rejects_bad_tables(tmp_path: Path, table: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.parquet"
    with pytest.raises(DataError, match=rf"bad\.parquet: .*{message}"):
        write_table(path, table)
    assert leftovers(tmp_path) == []


def test_write_table_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        write_table(tmp_path / "nowhere" / "out.root", make_table())


# ---------------------------------------------------------------- real ROOT files


def test_geant4_file_needs_a_tree_name() -> None:
    with pytest.raises(
        DataError, match=r"uproot-from-geant4\.root: file holds 4 TTrees \(Details, HitStrips"
    ):
        read_table(GEANT4)
    with pytest.raises(DataError, match="no TTree 'HitStrip' \\(did you mean 'HitStrips'\\?\\)"):
        read_table(GEANT4, tree="HitStrip")


def test_geant4_file_contents() -> None:
    hits = read_table(GEANT4, tree="HitStrips")
    assert list(hits) == ["Event", "Laystrip", "Energy"]
    assert table_length(hits) == 4808
    assert hits["Energy"].dtype == np.float32 and (hits["Energy"] > 0).all()
    tracks = read_table(GEANT4, tree="GeneratedTracks")
    details = read_table(GEANT4, tree="Details", columns=["nrays", "numgood", "gdml"])
    assert table_length(tracks) == details["nrays"][0] == 1000
    assert table_length(read_table(GEANT4, tree="TrackedRays")) == details["numgood"][0] == 224
    assert details["gdml"].dtype == object  # a char* branch read by name is a string column
    assert "opts" not in read_table(GEANT4, tree="Details")  # columns=None: numeric branches only
    assert set(hits["Event"]) <= set(tracks["Event"])


def test_nanoaod_flat_branches() -> None:
    table = read_table(NANOAOD)
    assert table_length(table) == 200
    assert {"run", "event", "nPhoton", "nJet", "MET_pt"} <= set(table)
    assert not any(name.startswith(("Photon_", "Jet_")) for name in table)  # jagged branches are left out
    assert (table["run"] == 1).all()
    assert table["event"].dtype == np.uint64 and len(np.unique(table["event"])) == 200
    assert table["nPhoton"].sum() == 79 and table["nJet"].sum() == 537
    with uproot.open(NANOAOD) as file:
        photon_pt = file["Events"]["Photon_pt"].array()
    np.testing.assert_array_equal(table["nPhoton"], ak.num(photon_pt).to_numpy())


def test_nanoaod_jagged_branch_is_a_clear_error() -> None:
    with pytest.raises(DataError) as error:
        read_table(NANOAOD, columns=["nPhoton", "Photon_pt"])
    message = str(error.value)
    assert "nanoAOD_2015_CMS_Open_Data_ttbar.root" in message
    assert "'Photon_pt'" in message and "jagged" in message and "'nPhoton'" in message
    assert "\n" not in message


def test_hzz_file() -> None:
    table = read_table(HZZ, columns=["NJet", "NMuon", "MET_px", "MET_py", "triggerIsoMu24"])
    assert table_length(table) == 2421
    assert table["MET_px"].dtype == np.float32 and table["triggerIsoMu24"].dtype == bool
    with uproot.open(HZZ) as file:
        n_jets = len(ak.flatten(file["events"]["Jet_Px"].array()))
    assert table["NJet"].sum() == n_jets
    with pytest.raises(DataError, match=r"uproot-HZZ\.root.*'Muon_E' of TTree 'events' is jagged.*'NMuon'"):
        read_table(HZZ, columns=["Muon_E"])


# ---------------------------------------------------------------- errors on bad input


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.parquet: file not found"):
        read_table(tmp_path / "absent.parquet")


def test_unknown_extension_lists_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("p,theta\n1,2\n")
    with pytest.raises(
        DataError, match=r"events\.csv: unknown file extension '\.csv'.*\.parquet, \.pq, \.root"
    ):
        read_table(path)
    assert set(FORMATS) == set(EXTENSIONS)


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_empty_file(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"empty{extension}"
    path.touch()
    with pytest.raises(DataError, match=rf"empty{extension}: empty file \(0 bytes\)"):
        read_table(path)


def _write_zero_rows(path: Path) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"p": pa.array([], type=pa.float64())}), path)
    elif path.suffix == ".root":
        with uproot.recreate(path) as file:
            file.mktree("events", {"p": np.float64})
    else:
        with h5py.File(path, "w") as file:
            file["p"] = np.zeros(0)


@pytest.mark.parametrize("extension", [".parquet", ".root", ".h5"])
def test_file_with_zero_rows(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"norows{extension}"
    _write_zero_rows(path)
    with pytest.raises(DataError, match=rf"norows{extension}: file has 0 rows"):
        read_table(path)


@pytest.mark.parametrize("source", [NANOAOD, HZZ, GEANT4])
def test_truncated_root_file(tmp_path: Path, source: Path) -> None:
    path = tmp_path / source.name
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{source.name}: cannot read as a ROOT file; it may be truncated"):
        read_table(
            path, tree="Events" if source == NANOAOD else None, columns=["run"] if source == NANOAOD else None
        )


@pytest.mark.parametrize("extension", [".parquet", ".h5"])
def test_truncated_parquet_and_hdf5_files(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"cut{extension}"
    write_table(path, make_table(2000))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        DataError, match=rf"cut{extension}: cannot read as a (Parquet|HDF5) file; it may be truncated"
    ):
        read_table(path)


def test_not_a_root_file(tmp_path: Path) -> None:
    path = tmp_path / "text.root"
    path.write_text("this is not ROOT\n" * 100)
    with pytest.raises(DataError, match=r"text\.root: cannot read as a ROOT file.*not a ROOT file"):
        read_table(path)


@pytest.mark.parametrize("extension", [".parquet", ".root", ".h5"])
def test_misspelled_column(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"conditions{extension}"
    write_table(path, {"p": np.ones(3), "theta": np.ones(3), "nhit": np.ones(3, dtype=np.int32)})
    with pytest.raises(DataError) as error:
        read_table(path, columns=["p", "thetaa", "nhits"])
    message = str(error.value)
    assert f"conditions{extension}" in message
    assert "'thetaa' (did you mean 'theta'?)" in message and "'nhits' (did you mean 'nhit'?)" in message
    assert "expected p, thetaa, nhits" in message and "file has p, theta, nhit" in message


def test_hdf5_columns_of_different_length(tmp_path: Path) -> None:
    path = tmp_path / "ragged.h5"
    with h5py.File(path, "w") as file:
        file["energy"] = np.ones(10)
        file["theta"] = np.ones(9)
    with pytest.raises(DataError, match=r"ragged\.h5: columns have different lengths \(energy 10, theta 9\)"):
        read_table(path)


def test_hdf5_without_flat_columns_names_what_is_there(tmp_path: Path) -> None:
    # (N, ...) numeric datasets are array columns (tests/test_io_arrays.py); a scalar and a 2-D string
    # dataset are not columns of any kind
    path = tmp_path / "calo.h5"
    with h5py.File(path, "w") as file:
        file["showers"] = np.array(["a", "b", "c", "d"], dtype=object).reshape(2, 2).astype("S1")
        file["incident_energies"] = 3.0
    with pytest.raises(
        DataError, match=r"calo\.h5 \(group '/'\): no datasets to read.*'showers' \(a dataset of shape"
    ):
        read_table(path, layout="columns")
    with pytest.raises(
        DataError, match=r"calo\.h5: no group or dataset 'shower' \(did you mean 'showers'\?\)"
    ):
        read_table(path, key="shower")


def test_parquet_nested_and_null_columns(tmp_path: Path) -> None:
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"n": [1, 2], "hits": [[1.0], [2.0, 3.0]], "dedx": pa.array([1.5, None])}), path)
    assert list(read_table(path, columns=["n"])) == ["n"]
    with pytest.raises(
        DataError, match=r"nested\.parquet: column 'hits' has Arrow type list<.*double>, not a flat column"
    ):
        read_table(path, columns=["hits"])
    with pytest.raises(DataError, match=r"nested\.parquet: column 'dedx' has 1 null values"):
        read_table(path)


def test_options_of_other_formats_are_ignored_and_bad_columns_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    write_table(path, make_table(3), key="data")
    assert table_length(read_table(path, tree="events", key="data")) == 3
    with pytest.raises(ConfigError, match="columns='p_gev' is a string"):
        read_table(path, columns="p_gev")
    with pytest.raises(ConfigError, match="asks for no columns"):
        read_table(path, columns=[])


# ---------------------------------------------------------------- table helpers


def test_require_columns_message() -> None:
    with pytest.raises(DataError) as error:
        require_columns(
            {"p": np.ones(2), "theta": np.ones(2), "nhit": np.ones(2)},
            ["p", "thetaa", "nhits"],
            source="conditions.parquet",
        )
    assert str(error.value) == (
        "conditions.parquet: missing columns 'thetaa' (did you mean 'theta'?), "
        "'nhits' (did you mean 'nhit'?) (expected p, thetaa, nhits; file has p, theta, nhit)"
    )
    require_columns(["p", "theta"], ["theta"], source="ok.parquet")


def test_require_finite_counts_nan_and_inf() -> None:
    table = {
        "p": np.array([1.0, np.nan, np.inf, np.nan]),
        "n": np.arange(4),
        "s": np.array(["a"] * 4, dtype=object),
    }
    with pytest.raises(
        DataError, match=r"^tracks\.root: column 'p' has 2 NaN and 1 inf values in 4 rows \(first at row 1\)"
    ):
        require_finite(table, ["n", "p"], source="tracks.root")
    require_finite(table, ["n"], source="tracks.root")
    with pytest.raises(DataError, match="'s' holds strings"):
        require_finite(table, ["s"], source="tracks.root")


def test_table_length() -> None:
    assert table_length({"a": np.zeros(3), "b": np.zeros(3)}) == 3
    assert table_length({}) == 0
    with pytest.raises(DataError, match=r"x\.h5: columns have different lengths \(a 3, b 4\)"):
        table_length({"a": np.zeros(3), "b": np.zeros(4)}, source="x.h5")


def test_select_rows() -> None:
    table = make_table(6)
    mask = np.array([True, False, True, False, False, True])
    assert_tables_equal(select_rows(table, mask), select_rows(table, np.array([0, 2, 5])))
    assert table_length(select_rows(table, slice(1, 3))) == 2
    assert table_length(select_rows(table, [])) == 0
    with pytest.raises(DataError, match=r"row mask has shape \(2,\); expected \(6,\)"):
        select_rows(table, np.array([True, False]))


def test_concat_tables() -> None:
    first, second = make_table(3, 0), make_table(4, 1)
    joined = concat_tables([first, second])
    assert table_length(joined) == 7
    assert joined["species"].tolist() == first["species"].tolist() + second["species"].tolist()
    with pytest.raises(DataError, match="table 1 has columns"):
        concat_tables([first, {"p_gev": np.ones(2)}])
    with pytest.raises(DataError, match="no tables"):
        concat_tables([])


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_split_is_a_reproducible_partition(n: int) -> None:
    train, val, test = split_indices(n, seed=3)
    again = split_indices(n, seed=3)
    for part, same in zip((train, val, test), again):
        np.testing.assert_array_equal(part, same)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val, test])), np.arange(n))
    if n == 1000:
        assert (len(train), len(val), len(test)) == (800, 100, 100)
        assert not np.array_equal(train, split_indices(n, seed=4)[0])


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.2), (0.5, 0.6, -0.1), (1.0, 0.0)])
def test_split_fractions_must_sum_to_one(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError, match="summing to 1"):
        split_indices(10, fractions)  # type: ignore[arg-type]


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    write_table(path, make_table())
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=r"missing\.parquet: file not found"):
        file_sha256(tmp_path / "missing.parquet")
