"""The dE/dx path end to end through the CLI verbs, on the reference simulator (known truth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from detgen.cli import main as detgen
from detgen.io import read_table

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("dedx")
    assert detgen(["--no-progress", "simulate", "dedx", "--n", "30000", "--species", "pi+,K+,p", "--seed", "3",
                   "-o", str(work / "data.parquet")]) == 0
    return work


def test_simulated_file_has_the_documented_columns(workdir: Path) -> None:
    table = read_table(workdir / "data.parquet")
    assert list(table) == ["species", "charge", "p", "theta", "cos_theta", "nhits", "dedx"]
    assert set(np.unique(table["species"])) == {"pi+", "K+", "p"}
    assert table["p"].min() >= 0.1 and table["p"].max() <= 2.0


def test_histogram_baseline_end_to_end(workdir: Path) -> None:
    config = yaml.safe_load((CONFIGS / "dedx_demo_histogram.yaml").read_text())
    config["model"]["condition_bins"] = 5
    (workdir / "hist.yaml").write_text(yaml.safe_dump(config))
    run_dir, gen, truth, report = (workdir / n for n in ("run_hist", "gen.parquet", "truth.parquet", "report"))
    assert detgen(["--no-progress", "train", str(workdir / "hist.yaml"), "--data", str(workdir / "data.parquet"),
                   "-o", str(run_dir)]) == 0
    assert detgen(["--no-progress", "generate", str(run_dir), "--conditions", str(workdir / "data.parquet"),
                   "--split", "test", "-o", str(gen), "--seed", "1"]) == 0
    # an independent sample from the simulator with the same kinematics is the held-out truth
    assert detgen(["--no-progress", "simulate", "dedx", "--n", "30000", "--species", "pi+,K+,p", "--seed", "4",
                   "-o", str(truth)]) == 0
    assert detgen(["validate", "dedx", "--truth", str(truth), "--generated", str(gen), "-o", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    for key in ("pid_eff_chi2_ndf", "misid_chi2_ndf", "classifier_auc", "mean_wasserstein"):
        assert np.isfinite(metrics[key]), key
    # the baseline reproduces the response coarsely: far from a random guess, far from perfect separation
    assert 0.45 < metrics["classifier_auc"] < 0.8
    html = (report / "report.html").read_text()
    assert all(f.name in html for f in report.glob("*.png"))


def test_flow_trains_generates_and_exports(workdir: Path) -> None:
    config = yaml.safe_load((CONFIGS / "dedx_demo.yaml").read_text())
    config["training"].update(epochs=2, metric_rows=3000)
    config["model"].update(blocks=2, hidden=[32, 32])
    (workdir / "flow.yaml").write_text(yaml.safe_dump(config))
    run_dir = workdir / "run_flow"
    assert detgen(["--no-progress", "train", str(workdir / "flow.yaml"), "--data", str(workdir / "data.parquet"),
                   "-o", str(run_dir)]) == 0
    out = workdir / "flow_gen.parquet"
    assert detgen(["--no-progress", "generate", str(run_dir), "--conditions", str(workdir / "data.parquet"),
                   "-o", str(out), "--batch-size", "7000"]) == 0
    generated, truth = read_table(out), read_table(workdir / "data.parquet")
    for species in ("pi+", "K+", "p"):
        g, t = generated["dedx"][generated["species"] == species], truth["dedx"][truth["species"] == species]
        assert np.median(g) == pytest.approx(np.median(t), rel=0.1), species
    assert detgen(["export", str(run_dir), "-o", str(workdir / "flow.onnx")]) == 0
    assert (workdir / "flow.onnx").stat().st_size > 10_000
