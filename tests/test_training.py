from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detgen.config import config_from_dict
from detgen.errors import ConfigError, SchemaError
from detgen.io import read_table, write_table
from detgen.training import learning_rate, train

from conftest import toy_config, toy_table


def quiet(_: str) -> None:
    pass


def run(tmp_path: Path, toy_file: Path, name: str, raw: dict | None = None, **kwargs) -> Path:
    config = config_from_dict(raw or toy_config())
    return train(config, toy_file, tmp_path / name, progress=False, log=quiet, **kwargs)


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_run_dir_is_complete(tmp_path: Path, toy_file: Path) -> None:
    run_dir = run(tmp_path, toy_file, "a")
    for name in ("config.yaml", "model.safetensors", "preprocessing.json", "meta.json", "history.csv",
                 "checkpoints/last.safetensors", "checkpoints/last.json"):
        assert (run_dir / name).is_file(), name
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["schema"]["input_columns"] == ["species", "p", "theta", "nhits"]
    assert len(meta["data"]["sha256"]) == 64 and meta["epochs_completed"] == 3
    rows = history(run_dir)
    metrics = [float(r["mean_wasserstein"]) for r in rows]
    assert meta["best_epoch"] == 1 + metrics.index(min(metrics))
    assert not list(run_dir.rglob("*.tmp"))


def test_same_seed_gives_bitwise_identical_weights(tmp_path: Path, toy_file: Path) -> None:
    a = run(tmp_path, toy_file, "a", epochs=2)
    b = run(tmp_path, toy_file, "b", epochs=2)
    c = run(tmp_path, toy_file, "c", epochs=2, seed=5)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_resume_equals_uninterrupted_run(tmp_path: Path, toy_file: Path) -> None:
    full = run(tmp_path, toy_file, "full", epochs=3)
    part = run(tmp_path, toy_file, "part", epochs=1)
    train(config_from_dict(toy_config()), toy_file, part, epochs=3, resume=True, progress=False, log=quiet)
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        assert (full / name).read_bytes() == (part / name).read_bytes(), name
    assert history(full) == history(part)


def test_killed_run_resumes_exactly(tmp_path: Path, toy_file: Path, write_config) -> None:
    raw = toy_config(training__epochs=6)
    config_path = write_config(raw)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "detgen", "--no-progress", "train", str(config_path), "--data", str(toy_file),
           "-o", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (killed / "history.csv").is_file() and len(history(killed)) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    epochs_done = len(history(killed))
    assert 1 <= epochs_done
    subprocess.run([*cmd, "--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    full = run(tmp_path, toy_file, "full", raw=raw)
    assert (full / "model.safetensors").read_bytes() == (killed / "model.safetensors").read_bytes()
    assert history(full) == history(killed)


def test_resume_before_the_first_checkpoint_starts_over(tmp_path: Path, toy_file: Path) -> None:
    import shutil

    full = run(tmp_path, toy_file, "full", epochs=2)
    early = run(tmp_path, toy_file, "early", epochs=2)
    shutil.rmtree(early / "checkpoints")  # as if killed during epoch 1
    (early / "model.safetensors").unlink()
    train(config_from_dict(toy_config()), toy_file, early, epochs=2, resume=True, progress=False, log=quiet)
    assert (full / "model.safetensors").read_bytes() == (early / "model.safetensors").read_bytes()


def test_resume_refuses_a_changed_config_or_data(tmp_path: Path, toy_file: Path) -> None:
    run_dir = run(tmp_path, toy_file, "a", epochs=1)
    with pytest.raises(ConfigError, match="training.lr"):
        train(config_from_dict(toy_config(training__lr=0.1)), toy_file, run_dir, resume=True, progress=False, log=quiet)
    with pytest.raises(ConfigError, match="already holds a run"):
        run(tmp_path, toy_file, "a")
    other = tmp_path / "other.parquet"
    write_table(other, toy_table(4000, seed=9))
    with pytest.raises(SchemaError, match="sha256"):
        train(config_from_dict(toy_config()), other, run_dir, resume=True, progress=False, log=quiet)


def test_a_listed_group_without_data_is_an_error(tmp_path: Path, toy_file: Path) -> None:
    from detgen.errors import DataError

    raw = toy_config(data={"conditions": ["p"], "targets": ["dedx"], "group_by": "species",
                           "groups": ["pi+", "K+", "pbar"], "transforms": {"p": "log", "dedx": "log"}})
    with pytest.raises(DataError, match="no training rows for pbar"):
        run(tmp_path, toy_file, "a", raw=raw)


def test_learning_rate_schedules() -> None:
    step = config_from_dict(toy_config(training={"lr": 1e-3, "schedule": {"kind": "step", "step_epochs": 10}})).training
    assert [learning_rate(step, e) for e in (0, 9, 10, 25)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    power = config_from_dict(toy_config(training={"lr": 1e-3, "epochs": 11,
                                                  "schedule": {"kind": "power", "final_lr": 1e-5}})).training
    lrs = [learning_rate(power, e) for e in range(11)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5) and lrs[5] == pytest.approx(1e-4)


def test_histogram_and_species_condition_train(tmp_path: Path, toy_file: Path) -> None:
    hist = run(tmp_path, toy_file, "hist", raw=toy_config(model={"family": "histogram", "condition_bins": 4}))
    assert len(history(hist)) == 1
    cond = toy_config(data={"conditions": ["species", "p", "theta", "nhits"], "categorical": ["species"],
                            "targets": ["dedx"], "transforms": {"p": "log", "dedx": "log"}})
    run_dir = run(tmp_path, toy_file, "cond", raw=cond, epochs=1)
    assert json.loads((run_dir / "preprocessing.json").read_text())["conditions"][0]["kind"] == "onehot"


def test_flow_learns_the_toys_known_momentum_dependence(tmp_path: Path, toy_file: Path) -> None:
    """Known truth: median dedx ~ p^-TOY_MEAN_SLOPE, log-resolution ~ TOY_RESOLUTION (see conftest.toy_table)."""
    import numpy as np
    import torch

    from detgen.io import read_table
    from detgen.runs import load_run

    from conftest import TOY_MEAN_SLOPE, TOY_RESOLUTION

    run_dir = run(tmp_path, toy_file, "a", epochs=8)
    rows = history(run_dir)
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    loaded = load_run(run_dir)
    n = 4000
    medians, widths = [], []
    for p in (0.3, 1.5):
        table = {"species": np.array(["pi+"] * n, dtype=object), "p": np.full(n, p), "theta": np.full(n, 1.5),
                 "nhits": np.full(n, 30)}
        c = torch.from_numpy(loaded.preprocessor.condition_array(table, source="t")).float()
        with torch.no_grad():
            dedx = loaded.sampler()(torch.randn(n, 1, generator=torch.Generator().manual_seed(0)), c).numpy()[:, 0]
        medians.append(np.median(dedx))
        widths.append(np.std(np.log(dedx)))
    expected_ratio = (1.5 / 0.3) ** -TOY_MEAN_SLOPE  # 0.276
    assert medians[1] / medians[0] == pytest.approx(expected_ratio, rel=0.15)
    # a short run does not yet reach the true width, but it must be conditional: far narrower than the
    # toy's marginal spread of log dedx (~0.5) and not narrower than the truth
    marginal = float(np.std(np.log(read_table(toy_file)["dedx"])))
    assert TOY_RESOLUTION * 0.8 < np.mean(widths) < 0.5 * marginal


def test_targets_outside_the_spline_domain_are_counted_and_reported(tmp_path: Path, toy_file: Path) -> None:
    messages: list[str] = []
    raw = toy_config(model={"family": "flow", "blocks": 1, "hidden": [8], "bins": 4, "bound": 1.0})
    run_dir = train(config_from_dict(raw), toy_file, tmp_path / "r", epochs=1, progress=False, log=messages.append)
    meta = json.loads((run_dir / "meta.json").read_text())
    # standardised targets beyond +-1 sigma: roughly a third of the rows
    # the toy is grouped by species: one count per member, named by its group
    counts = {k: v for k, v in meta.items() if k.startswith("rows_outside_spline_domain_")}
    assert len(counts) == len(set(read_table(toy_file)["species"]))
    n_train = meta["data"]["n_train"]
    assert 0.2 * n_train < sum(counts.values()) < 0.45 * n_train
    assert all(v > 0 for v in counts.values())
    assert any("outside the flow's spline domain" in m for m in messages)
    wide = train(config_from_dict(toy_config()), toy_file, tmp_path / "w", epochs=1, progress=False, log=quiet)
    wide_meta = json.loads((wide / "meta.json").read_text())
    wide_counts = [v for k, v in wide_meta.items() if k.startswith("rows_outside_spline_domain_")]
    assert wide_counts and not any(wide_counts)


def test_rows_left_out_by_groups_are_reported(tmp_path: Path) -> None:
    data = tmp_path / "three.parquet"
    write_table(data, toy_table(3000, species=("pi+", "K+", "e-")))
    raw = toy_config(data={"conditions": ["p"], "targets": ["dedx"], "group_by": "species", "groups": ["pi+", "K+"],
                           "transforms": {"p": "log", "dedx": "log"}})
    messages: list[str] = []
    run_dir = train(config_from_dict(raw), data, tmp_path / "r", epochs=1, progress=False, log=messages.append)
    n_electrons = int((read_table(data)["species"] == "e-").sum())
    assert json.loads((run_dir / "meta.json").read_text())["data"]["not_in_groups_species"] == n_electrons
    assert any(f"not_in_groups_species {n_electrons}" in m for m in messages)


def test_max_train_rows_and_metric_rows_take_random_rows_not_the_head_of_the_file() -> None:
    """A file ordered by a column (one sample after another) must not lose its tail to max_train_rows, nor the
    validation metric its tail to metric_rows."""
    import numpy as np
    import torch

    from detgen.config import DataConfig, TrainingConfig
    from detgen.dataset import split_table
    from detgen.training import validation_scores

    n = 20_000
    table = {"x": np.arange(n, dtype=np.float64), "y": np.arange(n, dtype=np.float64)}
    data = DataConfig(conditions=["x"], targets=["y"], max_train_rows=2_000)
    train, val, _ = split_table(table, data)
    kept = train["x"]
    assert len(kept) == 2_000 and np.all(np.diff(kept) > 0)  # a subset, in file order
    assert kept.max() > 0.95 * n and abs(kept.mean() - n / 2) < 0.05 * n  # spread over the whole file
    np.testing.assert_array_equal(split_table(table, data)[0]["x"], kept)  # reproducible
    assert not set(kept) & set(val["x"])

    class Recorder(torch.nn.Module):
        """Records the rows the validation metric is computed on."""

        trainable, noise_dim = True, 1

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.Tensor] = []

        def validation_loss(self, targets: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
            self.seen.append(conditions[:, 0].clone())
            return targets.mean()

        def generator(self) -> torch.nn.Module:
            return Echo()

    class Echo(torch.nn.Module):
        def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
            return conditions

    ordered = torch.arange(n, dtype=torch.float32)[:, None]
    model = Recorder()
    validation_scores(model, (ordered, ordered), TrainingConfig(metric_rows=1_000))  # type: ignore[arg-type]
    validation_scores(model, (ordered, ordered), TrainingConfig(metric_rows=1_000))  # type: ignore[arg-type]
    first, second = model.seen
    assert len(first) == 1_000 and first.max() > 0.95 * n  # not rows 0..999
    assert torch.equal(first, second)  # the same rows every epoch
