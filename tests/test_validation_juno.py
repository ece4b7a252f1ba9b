"""JUNO validation: known answers (identical samples, known shifts), bad input, files and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from detgen.cli import main
from detgen.errors import DataError
from detgen.io import read_table
from detgen.simulators.juno import write_point_tables
from detgen.validation.juno import read_sample, separation_with_overflow, validate_juno

N_PMT = 1500


def point_tables(seed: int = 0, n_events: int = 300, radii: tuple[float, ...] = (0.0, 10.0),
                 npe_value: int | None = None, time_shift_ns: float = 0.0, with_hits: bool = True,
                 ) -> dict[str, dict[str, np.ndarray]]:
    """Synthetic point-mode tables: N_PMT PMTs per event, Poisson npe, exponential hit times.

    Without ``with_hits`` every PMT gets one time (its first hit) and there is no hits table.
    """
    rng = np.random.default_rng(seed)
    theta = np.arccos(1.0 - (2.0 * np.arange(N_PMT) + 1.0) / N_PMT)
    event = np.repeat(np.arange(n_events), N_PMT)
    r_m = np.repeat(np.resize(np.asarray(radii), n_events), N_PMT)
    mean_npe = 1.0 + 0.5 * np.cos(np.tile(theta, n_events))
    npe = np.full(len(event), npe_value) if npe_value is not None else rng.poisson(mean_npe)
    hit_rows = np.repeat(np.arange(len(event)), npe if with_hits else np.minimum(npe, 1))
    hit_time = 100.0 + 0.5 * r_m[hit_rows] + rng.exponential(6.0, len(hit_rows)) + time_shift_ns
    first = np.full(len(event), np.inf)
    np.minimum.at(first, hit_rows, hit_time)
    first[npe == 0] = -1.0
    pmt = {"event": event.astype(np.int32), "r_m": r_m.astype(np.float32), "theta": np.tile(theta, n_events),
           "npe": npe.astype(np.int32), "first_hit_ns": first}
    hits = {"event": event[hit_rows].astype(np.int32), "r_m": r_m[hit_rows].astype(np.float32),
            "theta": np.tile(theta, n_events)[hit_rows], "time_ns": hit_time}
    return {"pmt": pmt, "hits": hits} if with_hits else {"pmt": pmt}


def test_identical_samples_give_zero(tmp_path: Path) -> None:
    tables = point_tables()
    metrics = validate_juno(tables, tables, tmp_path, make_figures=False)
    assert metrics["kind"] == "points" and metrics["hit_time_source"] == "hits"
    assert metrics["n_radius_groups"] == 2
    assert metrics["n_bins_compared_npe"] > 0 and metrics["n_bins_compared_time"] > 0
    assert metrics["total_pe_rel_dev"] == 0.0
    assert metrics["hit_time_median_dev_ns"] == 0.0
    assert metrics["max_separation_power"] == 0.0
    assert metrics["npe_mean_rel_dev_max"] == 0.0 and metrics["first_hit_mean_dev_ns_max"] == 0.0
    assert json.loads((tmp_path / "metrics.json").read_text())["total_pe_rel_dev"] == 0.0
    assert (tmp_path / "report.html").is_file()


def test_known_five_percent_shift_and_time_offset(tmp_path: Path) -> None:
    truth = point_tables(npe_value=20, with_hits=False)
    generated = point_tables(npe_value=21, time_shift_ns=0.5, with_hits=False)
    metrics = validate_juno(truth, generated, tmp_path, make_figures=False)
    assert metrics["hit_time_source"] == "first_hit"
    assert metrics["total_pe_rel_dev"] == pytest.approx(0.05, abs=1e-12)
    assert metrics["npe_mean_rel_dev_max"] == pytest.approx(0.05, abs=1e-12)
    assert metrics["hit_time_median_dev_ns"] == pytest.approx(0.5, abs=0.05)
    assert metrics["first_hit_mean_dev_ns_max"] == pytest.approx(0.5, abs=0.05)
    # npe 20 vs 21 everywhere: the histograms do not overlap
    assert metrics["max_separation_power_npe"] == pytest.approx(1.0)


def test_statistical_floor_and_independent_samples(tmp_path: Path) -> None:
    truth, generated = point_tables(seed=1), point_tables(seed=2)
    metrics = validate_juno(truth, generated, tmp_path, make_figures=False)
    # same model: deviations within a few standard errors, separation power at the statistical floor
    assert metrics["total_pe_rel_dev"] < 4 * metrics["total_pe_rel_dev_stat_err"]
    assert metrics["max_separation_power"] < 0.01
    assert 0 < metrics["separation_power_floor"] < 0.01


def test_separation_power_counts_overflow() -> None:
    edges = np.linspace(0.0, 1.0, 11)
    truth = np.full(100, 0.05)
    generated = np.full(100, 5.0)  # beyond the edges: lands in the last bin, not dropped
    assert separation_with_overflow(truth, generated, edges) == pytest.approx(1.0)


def muon_table(n: int = 6, scale: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    length = rng.uniform(5.0, 35.0, n)
    npe = rng.poisson(np.outer(length, np.full(N_PMT, 2.0))).astype(np.int32)
    npe = np.rint(npe * scale).astype(np.int32)
    first = np.where(npe > 0, rng.uniform(10.0, 100.0, npe.shape), -1.0).astype(np.float32)
    tracks = {name: rng.normal(size=n) for name in ("x0", "y0", "z0", "dx", "dy", "dz")}
    return {**tracks, "track_length_m": length, "total_pe": npe.sum(axis=1), "npe": npe, "first_hit_ns": first}


def test_muons_identical_and_scaled(tmp_path: Path) -> None:
    truth = muon_table()
    metrics = validate_juno(truth, truth, tmp_path / "same")
    assert metrics["kind"] == "muons" and metrics["paired"] is True
    assert metrics["total_pe_rel_dev"] == 0.0 and metrics["npe_map_l1_rel_dev"] == 0.0
    assert metrics["max_separation_power"] == 0.0 and metrics["hit_time_median_dev_ns"] == 0.0
    assert (tmp_path / "same" / "muon_total_pe_vs_length.png").is_file()
    scaled = muon_table()
    scaled["npe"] = np.rint(scaled["npe"] * 1.05).astype(np.int32)
    scaled["total_pe"] = scaled["npe"].sum(axis=1)
    metrics = validate_juno(truth, scaled, tmp_path / "scaled", make_figures=False)
    assert metrics["total_pe_rel_dev"] == pytest.approx(0.05, abs=2e-3)  # integer rounding of npe
    assert metrics["total_pe_paired_rel_dev_mean"] == pytest.approx(0.05, abs=2e-3)


def test_bad_input_names_the_column(tmp_path: Path) -> None:
    tables = point_tables(n_events=20)
    bad = {"pmt": {**tables["pmt"], "theta": tables["pmt"]["theta"] + 4.0}}
    with pytest.raises(DataError, match="'theta'.*outside"):
        validate_juno(tables, bad, tmp_path, make_figures=False)
    missing = {"pmt": {k: v for k, v in tables["pmt"].items() if k != "npe"}}
    with pytest.raises(DataError, match="'npe'"):
        validate_juno(tables, missing, tmp_path, kind="points", make_figures=False)
    negative = {"pmt": {**tables["pmt"], "r_m": -tables["pmt"]["r_m"] - 1.0}}
    with pytest.raises(DataError, match="negative radii"):
        validate_juno(tables, negative, tmp_path, make_figures=False)
    beyond = {"pmt": {**tables["pmt"], "r_m": tables["pmt"]["r_m"] + 10.0}}
    with pytest.raises(DataError, match="beyond the LS sphere"):
        validate_juno(tables, beyond, tmp_path, make_figures=False)
    with pytest.raises(DataError, match="cannot tell the sample kind"):
        validate_juno({"x": np.zeros(3)}, {"x": np.zeros(3)}, tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_point_file_round_trip(tmp_path: Path) -> None:
    tables = point_tables(n_events=3)
    path = tmp_path / "points.h5"
    write_point_tables(path, tables)
    for group in ("pmt", "hits"):
        back = read_table(path, key=group)
        for column, values in tables[group].items():
            np.testing.assert_array_equal(back[column], values)
    assert set(read_sample(path)) == {"pmt", "hits"}
    with pytest.raises(DataError, match="HDF5"):
        write_point_tables(tmp_path / "points.parquet", tables)


def test_batched_point_file_continues_events_and_radii(tmp_path: Path) -> None:
    from detgen.simulators.juno import simulate_point_batches

    info: dict[str, float] = {}
    batches = simulate_point_batches(5, batch_events=2, r_values_m=[0.0, 10.0, 17.0], energy_mev=0.2, seed=4,
                                     info=info)
    path = tmp_path / "batched.h5"
    n_rows = write_point_tables(path, batches)
    pmt, hits = read_table(path, key="pmt"), read_table(path, key="hits")
    assert n_rows == len(pmt["npe"]) + len(hits["time_ns"])
    events = np.unique(pmt["event"])
    np.testing.assert_array_equal(events, np.arange(5))
    radius_of_event = pmt["r_m"][np.searchsorted(pmt["event"], events)]
    np.testing.assert_allclose(radius_of_event, [0.0, 10.0, 17.0, 0.0, 10.0])
    assert info["n_detected"] == pmt["npe"].sum() == len(hits["time_ns"])


def test_cli_simulate_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth, generated = tmp_path / "truth.h5", tmp_path / "gen.h5"
    for seed, path in ((1, truth), (2, generated)):
        assert main(["--no-progress", "simulate", "juno", "--mode", "point", "--n", "40", "--r-values", "0,17",
                     "--batch-events", "15",
                     "--energy-mev", "0.5", "--seed", str(seed), "-o", str(path)]) == 0
    assert main(["--no-progress", "validate", "juno", "--truth", str(truth), "--generated", str(generated),
                 "-o", str(tmp_path / "report")]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["n_radius_groups"] == 2 and math.isfinite(metrics["total_pe_rel_dev"])
    assert (tmp_path / "report" / "hit_time.png").is_file()
    assert main(["--no-progress", "simulate", "juno", "--n", "2", "--r-values", "18", "-o",
                 str(tmp_path / "bad.h5")]) == 2
    assert "radii outside" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()
