"""Bad input through the command line: one line naming the file/column/key, exit code 2, no output left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from detgen.cli import main as detgen
from detgen.io import write_table

from conftest import toy_config, toy_table


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert detgen(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture()
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(toy_config()))
    return path


def test_truncated_and_empty_data_files(tmp_path: Path, toy_file: Path, config_path: Path, capsys) -> None:
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(toy_file.read_bytes()[: toy_file.stat().st_size // 2])
    line = one_line_error(capsys, ["train", str(config_path), "--data", str(truncated), "-o", str(tmp_path / "r1")])
    assert "truncated.parquet" in line
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    line = one_line_error(capsys, ["train", str(config_path), "--data", str(empty), "-o", str(tmp_path / "r2")])
    assert "empty.parquet" in line
    assert not (tmp_path / "r1" / "model.safetensors").exists() and not (tmp_path / "r2" / "model.safetensors").exists()


def test_misspelled_column_and_unknown_config_key(tmp_path: Path, toy_file: Path, capsys) -> None:
    raw = toy_config(data__conditions=["p", "thetaa", "nhits"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    line = one_line_error(capsys, ["train", str(path), "--data", str(toy_file), "-o", str(tmp_path / "r")])
    assert "'thetaa'" in line and "toy.parquet" in line and "theta" in line
    raw = toy_config()
    raw["training"]["epoch"] = 3
    path.write_text(yaml.safe_dump(raw))
    line = one_line_error(capsys, ["train", str(path), "--data", str(toy_file), "-o", str(tmp_path / "r")])
    assert "training.epoch" in line and "did you mean 'epochs'" in line


@pytest.mark.parametrize(("column", "value"), [("p", -1.0), ("dedx", np.nan), ("nhits", np.inf)])
def test_bad_values_in_training_data(tmp_path: Path, config_path: Path, capsys, column: str, value: float) -> None:
    table = toy_table(500)
    table[column] = table[column].astype(float)
    table[column][5] = value
    bad = tmp_path / "bad.parquet"
    write_table(bad, table)
    line = one_line_error(capsys, ["train", str(config_path), "--data", str(bad), "-o", str(tmp_path / "r")])
    assert f"'{column}'" in line and "bad.parquet" in line
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_unknown_species_when_generating(tmp_path: Path, toy_file: Path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(toy_config(data={"conditions": ["species", "p"], "categorical": ["species"],
                                                    "targets": ["dedx"], "transforms": {"p": "log", "dedx": "log"}})))
    assert detgen(["--no-progress", "train", str(path), "--data", str(toy_file), "-o", str(tmp_path / "r"),
                   "--epochs", "1"]) == 0
    capsys.readouterr()
    conditions = toy_table(50)
    conditions["species"][1] = "X+"
    write_table(tmp_path / "cond.parquet", conditions)
    line = one_line_error(capsys, ["--no-progress", "generate", str(tmp_path / "r"), "--conditions",
                                   str(tmp_path / "cond.parquet"), "-o", str(tmp_path / "g.parquet")])
    assert "'species'" in line and "'X+'" in line and "cond.parquet" in line
    assert not (tmp_path / "g.parquet").exists()


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path: Path, toy_file: Path, config_path: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = one_line_error(capsys, ["train", str(config_path), "--data", str(toy_file), "-o", str(tmp_path / "r"),
                                   "--device", "cuda"])
    assert "CUDA is not available" in line


def test_console_script_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "detgen", "--help"], capture_output=True, text=True, check=True)
    for verb in ("simulate", "train", "generate", "validate", "export"):
        assert verb in result.stdout


def test_system_options_belong_to_the_system(tmp_path: Path, capsys) -> None:
    """`detgen simulate dedx --help` lists dedx's own options; an option of no system is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exc:
        detgen(["simulate", "dedx", "--help"])
    assert exc.value.code == 0
    assert "--species" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        detgen(["simulate", "dedx", "--n", "10", "-o", str(tmp_path / "x.parquet"), "--no-such-option", "1"])
    assert exc.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_simulate_rejects_non_positive_n(tmp_path: Path, capsys) -> None:
    line = one_line_error(capsys, ["simulate", "dedx", "--n", "0", "-o", str(tmp_path / "x.parquet")])
    assert "--n 0" in line and "positive" in line


def test_simulate_juno_group_pmts_keeps_every_count(tmp_path: Path, capsys) -> None:
    from detgen.io import read_table
    from detgen.simulators.juno import DEFAULT_DETECTOR

    plain, grouped = tmp_path / "plain.h5", tmp_path / "grouped.h5"
    common = ["simulate", "juno", "--mode", "point", "--n", "2", "--seed", "3"]
    assert detgen([*common, "-o", str(plain)]) == 0
    assert detgen([*common, "--group-pmts", "14", "-o", str(grouped)]) == 0
    per_pmt, summed = read_table(plain, key="pmt"), read_table(grouped, key="pmt")
    assert len(summed["npe"]) == 2 * DEFAULT_DETECTOR.n_pmt // 14
    for event in (0, 1):  # same events (same seed), every count kept: group means x 14 add up to the total
        total = per_pmt["npe"][per_pmt["event"] == event].sum()
        assert total > 0
        assert summed["npe"][summed["event"] == event].sum() * 14 == pytest.approx(total, rel=1e-5)
    # the hits are written unchanged
    assert len(read_table(grouped, key="hits")["time_ns"]) == len(read_table(plain, key="hits")["time_ns"])
    capsys.readouterr()  # the two runs' own output
    line = one_line_error(capsys, [*common, "--group-pmts", "13", "-o", str(tmp_path / "bad.h5")])
    assert "--group-pmts 13" in line and "divisor" in line
    assert not (tmp_path / "bad.h5").exists()


def test_simulate_juno_pool_events(tmp_path: Path, capsys) -> None:
    """--r-grid K --pool-events: one row per radius and PMT group holding the mean count of that radius' events."""
    from detgen.io import read_table
    from detgen.simulators.juno import DEFAULT_DETECTOR, radius_grid

    plain, pooled = tmp_path / "plain.h5", tmp_path / "pooled.h5"
    common = ["simulate", "juno", "--mode", "point", "--n", "4", "--seed", "3", "--r-grid", "2", "--r-min", "5"]
    assert detgen([*common, "-o", str(plain)]) == 0
    assert detgen([*common, "--pool-events", "--group-pmts", "14", "-o", str(pooled)]) == 0
    per_pmt, rows = read_table(plain, key="pmt"), read_table(pooled, key="pmt")
    assert len(rows["npe"]) == 2 * DEFAULT_DETECTOR.n_pmt // 14 and set(rows["n_events"].tolist()) == {2}
    np.testing.assert_allclose(np.unique(rows["r_m"]), radius_grid(2, 5.0), rtol=1e-6)
    for radius in np.unique(rows["r_m"]):  # same events (same seed): mean count per PMT and event kept
        total = per_pmt["npe"][np.isclose(per_pmt["r_m"], radius)].sum()
        assert total > 0
        assert rows["npe"][rows["r_m"] == radius].sum() * 14 * 2 == pytest.approx(total, rel=1e-5)
    assert len(read_table(pooled, key="hits")["time_ns"]) == len(read_table(plain, key="hits")["time_ns"])
    capsys.readouterr()
    for extra, message in ((["--n", "3"], "not a multiple"), (["--r-grid", "-1"], "--r-grid -1")):
        args = [*common, "--pool-events", *extra, "-o", str(tmp_path / "bad.h5")]
        line = one_line_error(capsys, args)
        assert message in line
        assert not (tmp_path / "bad.h5").exists()
    line = one_line_error(capsys, ["simulate", "juno", "--mode", "point", "--n", "2", "--pool-events",
                                   "-o", str(tmp_path / "bad.h5")])
    assert "--r-values or --r-grid" in line
