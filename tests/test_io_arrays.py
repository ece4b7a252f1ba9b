"""Array columns (one fixed-shape array per row) in detgen.io and the CaloChallenge HDF5 layout."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from detgen.errors import ConfigError, DataError, SchemaError
from detgen.io import (
    TableWriter,
    concat_tables,
    read_table,
    require_finite,
    select_rows,
    write_table,
)


def shower_table(n: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """An EMC-like table: an (N, 11, 11) float32 map column, 1-D conditions and a label column."""
    rng = np.random.default_rng(seed)
    return {
        "map": rng.exponential(5.0, size=(n, 11, 11)).astype(np.float32),
        "mom": rng.uniform(0.1, 3.0, size=n),
        "hits": rng.integers(0, 121, size=(n, 2)).astype(np.int32),
        "particle": rng.choice(np.array(["e-", "e+", "gamma"], dtype=object), size=n),
    }


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def assert_same(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(actual) == list(expected)
    for name, column in expected.items():
        assert actual[name].shape == column.shape, name
        if column.dtype == object:
            assert actual[name].tolist() == column.tolist(), name
        else:
            assert actual[name].dtype == column.dtype, name
            np.testing.assert_array_equal(actual[name], column)


@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
def test_hdf5_round_trip_of_array_columns(tmp_path: Path, compression: str | None) -> None:
    table = shower_table()
    path = tmp_path / "showers.h5"
    write_table(path, table, compression=compression)
    assert_same(read_table(path), table)
    assert_same(read_table(path, columns=["mom", "map"]), {"mom": table["mom"], "map": table["map"]})
    with h5py.File(path) as file:
        assert file["map"].shape == (20, 11, 11)
        assert file["map"].maxshape == (None, 11, 11)
        assert file["map"].compression == compression


def test_hdf5_round_trip_in_a_group_key(tmp_path: Path) -> None:
    table = shower_table()
    path = tmp_path / "grouped.h5"
    write_table(path, table, key="emc/showers")
    assert_same(read_table(path, key="emc/showers"), table)


def test_streamed_batches_grow_along_rows(tmp_path: Path) -> None:
    path = tmp_path / "streamed.h5"
    parts = [shower_table(n, seed) for seed, n in enumerate((7, 1, 12))]
    with TableWriter(path, compression="gzip") as writer:
        for part in parts:
            writer.append(part)
    assert writer.rows_written == 20
    assert_same(read_table(path), concat_tables(parts))


def test_batches_with_another_row_shape_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.h5"
    other = shower_table(5)
    other["map"] = np.zeros((5, 9, 9), dtype=np.float32)
    with pytest.raises(SchemaError, match=r"column 'map' has rows of shape \(9, 9\).*first batch had \(11, 11\)"):
        with TableWriter(path) as writer:
            writer.append(shower_table(5))
            writer.append(other)
    assert not path.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".parquet", ".root"])
def test_formats_without_array_columns_say_hdf5(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"showers{suffix}"
    with pytest.raises(DataError, match=r"array column 'map' has shape \(20, 11, 11\).*needs HDF5 \(\.h5"):
        write_table(path, shower_table())
    assert not path.exists()
    assert leftovers(tmp_path) == []


def test_string_columns_must_be_one_dimensional(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'labels' has shape \(2, 2\) and holds strings"):
        write_table(tmp_path / "s.h5", {"labels": np.array([["a", "b"], ["c", "d"]], dtype=object)})


def test_select_rows_and_concat_keep_row_shapes() -> None:
    table = shower_table(10)
    picked = select_rows(table, np.array([3, 1]))
    assert picked["map"].shape == (2, 11, 11)
    np.testing.assert_array_equal(picked["map"][0], table["map"][3])
    masked = select_rows(table, table["mom"] > 1.0)
    assert masked["map"].shape == (int((table["mom"] > 1.0).sum()), 11, 11)
    both = concat_tables([picked, masked])
    assert both["map"].shape[1:] == (11, 11)
    other = dict(picked)
    other["map"] = np.zeros((2, 5, 5), dtype=np.float32)
    with pytest.raises(DataError, match=r"column 'map' has rows of shape \(5, 5\) in table 1; table 0 has \(11, 11\)"):
        concat_tables([picked, other])


def test_require_finite_names_row_and_element_of_an_array_column() -> None:
    table = shower_table(10)
    require_finite(table, ["map", "mom", "hits"], source="showers.h5")
    table["map"][4, 2, 7] = np.nan
    table["map"][6, 0, 0] = np.inf
    table["map"][6, 1, 0] = np.nan
    with pytest.raises(
        DataError,
        match=r"showers\.h5: column 'map' has 2 NaN and 1 inf values in 2 of 10 rows \(first at row 4, element \(2, 7\)\)",
    ):
        require_finite(table, ["map"], source="showers.h5")


# ---------------------------------------------------------------- CaloChallenge layout


def write_calochallenge_file(path: Path, n: int = 8, n_voxels: int = 368, *, skip: str | None = None) -> None:
    """A file written the way the CaloChallenge 2022 datasets are (plain h5py, (N, 1) energies)."""
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as file:
        if skip != "incident_energies":
            file.create_dataset("incident_energies", data=rng.uniform(1e3, 1e6, size=(n, 1)))
        if skip != "showers":
            file.create_dataset("showers", data=rng.exponential(10.0, size=(n, n_voxels)))


def test_calochallenge_file_is_read_with_1d_incident_energies(tmp_path: Path) -> None:
    path = tmp_path / "dataset_1_photons_1.hdf5"
    write_calochallenge_file(path)
    for layout in ("auto", "calochallenge"):
        table = read_table(path, layout=layout)
        assert table["incident_energies"].shape == (8,)
        assert table["showers"].shape == (8, 368)
    with h5py.File(path) as file:
        np.testing.assert_array_equal(table["incident_energies"], file["incident_energies"][:, 0])
    # the plain group layout keeps the file's shapes
    assert read_table(path, layout="columns")["incident_energies"].shape == (8, 1)


def test_calochallenge_write_round_trip_with_conditions_alongside(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    table = {
        "incident_energies": rng.uniform(1e3, 1e5, size=6),
        "showers": rng.exponential(1.0, size=(6, 45)).astype(np.float32),
        "theta": rng.uniform(0.5, 2.5, size=6),
    }
    path = tmp_path / "calo.h5"
    write_table(path, table, layout="calochallenge", compression="gzip")
    with h5py.File(path) as file:
        assert file["incident_energies"].shape == (6, 1)
        assert file["showers"].shape == (6, 45)
    assert_same(read_table(path), table)


@pytest.mark.parametrize("skip", ["incident_energies", "showers"])
def test_calochallenge_file_missing_a_key(tmp_path: Path, skip: str) -> None:
    path = tmp_path / "broken.h5"
    write_calochallenge_file(path, skip=skip)
    with pytest.raises(DataError, match=rf"broken\.h5: CaloChallenge layout needs .*missing '{skip}'"):
        read_table(path, layout="calochallenge")


def test_calochallenge_shape_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad_shapes.h5"
    with h5py.File(path, "w") as file:
        file["incident_energies"] = np.ones((4, 2))
        file["showers"] = np.ones((4, 10))
    with pytest.raises(DataError, match=r"'incident_energies' has shape \(4, 2\); expected \(N, 1\)"):
        read_table(path)
    with h5py.File(path, "w") as file:
        file["incident_energies"] = np.ones((4, 1))
        file["showers"] = np.ones((3, 10))
    with pytest.raises(DataError, match=r"'incident_energies' has 4 rows and 'showers' 3"):
        read_table(path)


def test_calochallenge_writer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"calo\.h5: the CaloChallenge layout needs .*missing 'showers'"):
        write_table(tmp_path / "calo.h5", {"incident_energies": np.ones(3)}, layout="calochallenge")
    with pytest.raises(DataError, match=r"CaloChallenge layout is an HDF5 file"):
        write_table(tmp_path / "calo.parquet", {"incident_energies": np.ones(3)}, layout="calochallenge")
    with pytest.raises(ConfigError, match=r"layout='caloch'; expected one of auto, columns, calochallenge"):
        read_table(tmp_path / "calo.h5", layout="caloch")
    with pytest.raises(ConfigError, match=r"compression='zstd'"):
        write_table(tmp_path / "calo.h5", {"x": np.ones(3)}, compression="zstd")
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "calo.h5").exists()
