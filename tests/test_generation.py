from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detgen.config import config_from_dict
from detgen.errors import DataError, SchemaError
from detgen.generation import generate
from detgen.io import read_table, write_table
from detgen.runs import load_run
from detgen.training import train

from conftest import toy_config, toy_table


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, toy_file: Path) -> Path:
    out = tmp_path_factory.mktemp("gen") / "run"
    return train(config_from_dict(toy_config()), toy_file, out, progress=False, log=quiet)


def test_generation_is_seeded_and_keeps_condition_columns(tmp_path: Path, run_dir: Path, toy_file: Path) -> None:
    a, b, c = (tmp_path / f"{n}.parquet" for n in "abc")
    generate(run_dir, toy_file, a, seed=1, batch_size=1000, progress=False, log=quiet)
    generate(run_dir, toy_file, b, seed=1, batch_size=1000, progress=False, log=quiet)
    generate(run_dir, toy_file, c, seed=2, batch_size=1000, progress=False, log=quiet)
    ta, tb, tc, truth = read_table(a), read_table(b), read_table(c), read_table(toy_file)
    assert set(ta) == set(truth)
    assert np.array_equal(ta["dedx"], tb["dedx"]) and not np.array_equal(ta["dedx"], tc["dedx"])
    for column in ("species", "p", "theta", "nhits"):
        assert np.array_equal(ta[column], truth[column])
    assert not np.array_equal(ta["dedx"], truth["dedx"])


def test_sampler_output_is_in_physical_units(run_dir: Path) -> None:
    run = load_run(run_dir)
    sampler = run.sampler()
    table = toy_table(500, seed=3)
    c = torch.from_numpy(run.preprocessor.condition_array(table, source="t")).float()
    z = torch.randn(500, 1)
    with torch.no_grad():
        out = sampler(z, c)
        expected = run.preprocessor.decode_targets(run.model.generator()(z, run.preprocessor.encode_conditions(c)))
    assert torch.equal(out, expected)
    ratio = float(out.median()) / float(np.median(table["dedx"]))
    assert 0.7 < ratio < 1.4  # physical units: same scale as the toy's dedx


def test_split_option_reproduces_the_test_split(tmp_path: Path, run_dir: Path, toy_file: Path) -> None:
    out = tmp_path / "test.parquet"
    info = generate(run_dir, toy_file, out, split="test", progress=False, log=quiet)
    assert info["rows"] == load_run(run_dir).meta["data"]["n_test"]
    other = tmp_path / "other.parquet"
    write_table(other, toy_table(100, seed=4))
    with pytest.raises(SchemaError, match="sha256"):
        generate(run_dir, other, tmp_path / "x.parquet", split="test", progress=False, log=quiet)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda t: t.pop("nhits"), "missing column 'nhits'"),
        (lambda t: t["p"].__setitem__(7, np.nan), "'p'"),
        (lambda t: t["species"].__setitem__(0, "X+"), "unknown label"),
        (lambda t: t["p"].__setitem__(3, -0.5), "'p' has 1 value"),
        (lambda t: t.update(nhits=np.where(np.arange(200) == 2, np.inf, t["nhits"])), "'nhits'"),
    ],
)
def test_bad_conditions_leave_no_output(tmp_path: Path, run_dir: Path, damage, message: str) -> None:
    table = toy_table(200, seed=5)
    damage(table)
    bad = tmp_path / "bad.parquet"
    write_table(bad, table)
    out = tmp_path / "out.parquet"
    with pytest.raises(DataError, match=message):
        generate(run_dir, bad, out, progress=False, log=quiet)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path: Path, run_dir: Path) -> None:
    table = toy_table(50)
    table.pop("theta")
    bad = tmp_path / "bad.parquet"
    write_table(bad, table)
    result = subprocess.run(
        [sys.executable, "-m", "detgen", "generate", str(run_dir), "--conditions", str(bad), "-o", str(tmp_path / "o.parquet")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.parquet" in lines[0] and "'theta'" in lines[0]
    result = subprocess.run([sys.executable, "-m", "detgen", "generate", str(tmp_path), "--conditions", str(bad),
                             "-o", str(tmp_path / "o.parquet")], capture_output=True, text=True)
    assert result.returncode == 2 and "not a detgen run dir" in result.stderr


def test_run_from_a_different_schema_is_refused(tmp_path: Path, run_dir: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    other = config_from_dict(toy_config(model={"family": "flow", "blocks": 3, "hidden": [16, 16], "bins": 6}))
    from detgen.config import dump_config

    (copy / "config.yaml").write_text(dump_config(other))
    with pytest.raises(SchemaError, match="weights do not fit"):
        load_run(copy)


@pytest.mark.slow
def test_compiled_generation_equals_eager(tmp_path: Path, run_dir: Path, toy_file: Path) -> None:
    eager, compiled = tmp_path / "eager.parquet", tmp_path / "compiled.parquet"
    generate(run_dir, toy_file, eager, seed=3, progress=False, log=quiet)
    generate(run_dir, toy_file, compiled, seed=3, compile=True, progress=False, log=quiet)
    assert np.allclose(read_table(eager)["dedx"], read_table(compiled)["dedx"], rtol=1e-3)


def test_chunking_inside_a_batch_does_not_change_the_output(tmp_path: Path, run_dir: Path, toy_file: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    generate(run_dir, toy_file, a, seed=3, chunk_rows=8192, progress=False, log=quiet)
    generate(run_dir, toy_file, b, seed=3, chunk_rows=100, progress=False, log=quiet)
    assert np.allclose(read_table(a)["dedx"], read_table(b)["dedx"], rtol=1e-6)


def test_sampler_parts_share_the_requested_device(run_dir: Path) -> None:
    """Everything in the sampler graph lives on the run's device (checked on CPU here; CUDA where present)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        sampler = load_run(run_dir, device=device).sampler()
        kinds = {t.device.type for t in [*sampler.parameters(), *sampler.buffers()]}
        assert kinds == {device}
