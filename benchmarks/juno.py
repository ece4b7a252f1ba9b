"""JUNO benchmark: NN_npe / NN_time (two losses and a flow), then fast versus reference muons and 1 MeV gammas.

    python benchmarks/juno.py --out bench_out/juno [--quick]

1. simulate 1 MeV point deposits (uniform R) for training and an independent test set (reference transport);
2. train NN_npe and NN_time (configs/juno_npe.yaml, configs/juno_time.yaml) once per loss (--losses, "" for
   none), and the conditional flows (configs/juno_npe_flow.yaml on dequantised npe, configs/juno_time_flow.yaml)
   with the small comparison settings (train_rows, epochs), on the training events; then the pair "full":
   NN_npe as a Poisson mean (configs/juno_npe_poisson.yaml) and the time flow (configs/juno_time_flow.yaml)
   with their configs' rows and epochs, on ``pool_radii`` radii x ``pool_events`` events (``detgen simulate juno
   --r-grid --pool-events --group-pmts``: points_pooled.h5; NN_npe on its pooled pmt rows, the flow on its hits);
   score each pair by simulating the test events straight from the networks (npe from NN_npe per PMT, one
   NN_time draw per p.e.) and validating against the reference
   (detgen.validation.juno.validate_juno);
3. tabulate a pair (--table-pair: by default "full,full", the Poisson NN_npe and the time flow of
   configs/juno_muon.yaml; or the lowest mean separation power per (R, theta) bin of npe and of first-hit time) with
   the juno_muon family (configs/juno_muon.yaml) and check the table against the networks
   (same test events, from the table);
4. 1 MeV gammas at Z = 0, 5, 10, 15, 17 m: reference versus fast simulation;
5. the same muons through the reference photon transport and the fast simulation (detgen generate on the
   juno_muon run), wall time per muon measured in this one process; fidelity from validate_juno; then the
   drift-robust speed-up of benchmarks/juno_fast_speed.py (each reference muon bracketed by fast runs of the
   same track; ``muons.bracketed`` in results.json).
Writes results.json (and speed.json) into --out, and each validation's report dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from detgen.config import config_from_dict
from detgen.generation import generate
from detgen.io import concat_tables, read_table, write_table
from detgen.runs import load_run
from detgen.simulators.juno import (
    NO_HIT_TIME_NS,
    pool_point_batches,
    radius_grid,
    simulate_muons,
    simulate_point_batches,
    simulate_points,
    write_point_tables,
)
from detgen.simulators.juno_fast import add_dequantized_counts
from detgen.training import train
from detgen.validation.juno import validate_juno

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GAMMA_Z_M = [0.0, 5.0, 10.0, 15.0, 17.0]
KEYS = ["total_pe_rel_dev", "hit_time_median_dev_ns", "max_separation_power_npe", "max_separation_power_time",
        "mean_separation_power_npe", "mean_separation_power_time", "npe_mean_rel_dev_max", "separation_power_floor",
        "n_bins_compared_npe", "n_bins_compared_time"]


@dataclasses.dataclass
class Settings:
    train_events: int = 400
    test_events: int = 300
    gamma_events: int = 1000  # per Z: medians to 0.04-0.19 ns (4000 ran out of memory: one pmt row per PMT and event)
    muons: int = 6
    train_rows: int = 200_000
    epochs: int = 3
    group_size: int = 14
    # the "full" pair's data: pool_events events at each of pool_radii radii (spaced like the tables); NN_npe
    # trains on the pmt rows of a radius pooled (mean count per PMT group: n_events x group_size fewer, far
    # less noisy rows), the time flow on the hits
    pool_radii: int = 300
    pool_events: int = 100
    full_rows: int | None = None  # rows / epochs of the Poisson NN_npe and the time flow (None: their configs')
    full_epochs: int | None = None
    r_nodes: int = 120
    theta_nodes: int = 181
    noise_draws: int = 256
    steps_m: tuple[float, ...] = (1.0, 0.5, 0.1)


QUICK = Settings(train_events=40, test_events=120, gamma_events=25, muons=2, train_rows=60_000, epochs=1,
                 pool_radii=20, pool_events=4, full_rows=60_000, full_epochs=1, r_nodes=24, theta_nodes=31, noise_draws=64, steps_m=(0.5,))


def config(name: str, settings: Settings, *, full: bool = False, **model: Any) -> Any:
    """A config of configs/ with the loss comparison's rows and epochs, or (``full``) its own (unless
    ``settings.full_rows`` / ``full_epochs`` override them)."""
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    if full:
        raw["data"]["max_train_rows"] = settings.full_rows or raw["data"]["max_train_rows"]
        raw["training"]["epochs"] = settings.full_epochs or raw["training"]["epochs"]
    else:
        raw["data"]["max_train_rows"] = settings.train_rows
        raw["training"]["epochs"] = settings.epochs
    raw["model"].update(model)
    return config_from_dict(raw, source=name)


def pooled_points(path: Path, settings: Settings, seed: int) -> dict[str, float]:
    """The full pair's training file (``detgen simulate juno --r-grid K --pool-events --group-pmts G``)."""
    tic = time.perf_counter()
    radii = radius_grid(settings.pool_radii)
    n = settings.pool_radii * settings.pool_events
    batches = pool_point_batches(simulate_point_batches(n, batch_events=500, r_values_m=radii, seed=seed),
                                 settings.group_size)
    rows = write_point_tables(path, batches)
    return {"events": n, "radii": settings.pool_radii, "rows": rows, "seconds": round(time.perf_counter() - tic, 1)}


@torch.no_grad()
def network_points(npe_run: Any, time_run: Any, truth: dict[str, dict[str, np.ndarray]], seed: int
                   ) -> dict[str, dict[str, np.ndarray]]:
    """Point events simulated straight from the networks on the truth's (event, PMT) rows.

    npe of every PMT from NN_npe (floored for a flow on dequantised counts); every p.e. a time from NN_time;
    the first hit is the earliest. No table, no Poisson assumption: this scores the networks themselves.
    """
    g = torch.Generator().manual_seed(seed)
    pmt = truth["pmt"]
    cond = {"r_m": pmt["r_m"].astype(np.float64), "theta": pmt["theta"].astype(np.float64)}
    npe_sampler = npe_run.sampler()
    c = torch.from_numpy(npe_run.preprocessor.condition_array(cond, source="test")).float()
    npe = torch.cat([npe_sampler(torch.randn(len(part), npe_sampler.noise_dim, generator=g), part)
                     for part in torch.split(c, 65536)])[:, 0]
    counts = torch.floor(npe.clamp_min(0)).long()
    owner = torch.repeat_interleave(torch.arange(len(counts)), counts)
    time_sampler = time_run.sampler()
    tc = {"r_m": cond["r_m"][owner.numpy()], "theta": cond["theta"][owner.numpy()]}
    c = torch.from_numpy(time_run.preprocessor.condition_array(tc, source="test")).float()
    hit_time = torch.cat([time_sampler(torch.randn(len(part), time_sampler.noise_dim, generator=g), part)
                          for part in torch.split(c, 65536)])[:, 0] if len(c) else torch.zeros(0)
    first = torch.full((len(counts),), math.inf).scatter_reduce(0, owner, hit_time, reduce="amin")
    first = torch.where(counts > 0, first, torch.full_like(first, NO_HIT_TIME_NS))
    return {"pmt": {**{k: pmt[k] for k in ("event", "pmt", "r_m", "theta")},
                    "npe": counts.numpy().astype(np.int32), "first_hit_ns": first.numpy().astype(np.float32)},
            "hits": {"event": pmt["event"][owner.numpy()], "r_m": pmt["r_m"][owner.numpy()],
                     "theta": pmt["theta"][owner.numpy()], "time_ns": hit_time.numpy().astype(np.float32)}}


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in KEYS if k in metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_out/juno")
    parser.add_argument("--quick", action="store_true", help="a few minutes: tiny data, one epoch, 2 muons")
    parser.add_argument("--losses", default="energy,mmd", help="two-sample losses to compare (\"\": none)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--table-pair", default="full,full", metavar="NPE,TIME",
                        help="runs to tabulate after training (full = the Poisson NN_npe / time flow trained with their "
                             "configs on the pooled data, as configs/juno_muon.yaml), or 'best': lowest mean "
                             "separation power per (R, theta) bin")
    parser.add_argument("--reuse-runs", default=None, metavar="NPE,TIME",
                        help="skip training: tabulate the runs out/runs/npe_NPE and out/runs/time_TIME of an earlier "
                             "benchmark in --out (e.g. flow,flow) and run steps 3-5 only")
    args = parser.parse_args()
    settings = QUICK if args.quick else Settings()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.reuse_runs is None:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    results: dict[str, Any] = {"settings": dataclasses.asdict(settings), "threads": args.threads,
                               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "load_average_start": os.getloadavg()}
    log = print

    if args.reuse_runs is not None:
        best_npe, best_time = args.reuse_runs.split(",")
        runs = {f"npe_{best_npe}": out / "runs" / f"npe_{best_npe}",
                f"time_{best_time}": out / "runs" / f"time_{best_time}"}
        test_tables, _ = simulate_points(settings.test_events, seed=args.seed + 1)
        results["winners"] = {"npe": best_npe, "time": best_time, "reused": True}
        shutil.rmtree(out / "runs" / "muon", ignore_errors=True)
        for old_step in out.glob("runs/muon_step*"):
            shutil.rmtree(old_step)
    else:
        test_tables, runs, best_npe, best_time = train_networks(args, settings, out, results, log)
    tables_and_muons(args, settings, out, results, log, test_tables, runs, best_npe, best_time)


def train_networks(args: Any, settings: Settings, out: Path, results: dict[str, Any], log: Any
                   ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Path], str, str]:
    """Steps 1 and 2: point data, the networks of every loss and the flows, scored on the test events."""
    # 1. point data ------------------------------------------------------------------------------------
    tic = time.perf_counter()
    train_tables, info = simulate_points(settings.train_events, seed=args.seed)
    add_dequantized_counts(train_tables["pmt"], seed=args.seed)
    write_point_tables(out / "points_train.h5", train_tables)
    test_tables, _ = simulate_points(settings.test_events, seed=args.seed + 1)
    results["reference_points"] = {"events_per_s": info["events_per_s"], "pe_per_s": info["pe_per_s"],
                                   "seconds": round(time.perf_counter() - tic, 2)}
    log(f"point data: {settings.train_events} + {settings.test_events} events ({results['reference_points']})")
    results["pooled_points"] = pooled_points(out / "points_pooled.h5", settings, seed=args.seed + 20)
    log(f"pooled point data for the Poisson NN_npe and the time flow: {results['pooled_points']}")

    # 2. networks: each loss, and the flow --------------------------------------------------------------
    runs: dict[str, Path] = {}
    networks: dict[str, Any] = {}
    losses = [loss for loss in args.losses.split(",") if loss]
    for loss in losses:
        for what in ("npe", "time"):
            name = f"{what}_{loss}"
            tic = time.perf_counter()
            runs[name] = train(config(f"juno_{what}", settings, loss=loss), out / "points_train.h5",
                               out / "runs" / name, progress=False, log=lambda s: None)
            networks[name] = {"train_seconds": round(time.perf_counter() - tic, 1)}
            log(f"trained {name} in {networks[name]['train_seconds']} s")
        metrics = validate_juno(test_tables, network_points(load_run(runs[f"npe_{loss}"]), load_run(runs[f"time_{loss}"]),
                                                            test_tables, seed=3),
                                out / f"report_networks_{loss}", make_figures=False)
        networks[f"npe_{loss}"].update(summary(metrics))
        log(f"networks with loss {loss}: {summary(metrics)}")
    for what in ("npe", "time"):
        tic = time.perf_counter()
        runs[f"{what}_flow"] = train(config(f"juno_{what}_flow", settings), out / "points_train.h5",
                                     out / "runs" / f"{what}_flow", progress=False, log=lambda s: None)
        networks[f"{what}_flow"] = {"train_seconds": round(time.perf_counter() - tic, 1)}
    metrics = validate_juno(test_tables, network_points(load_run(runs["npe_flow"]), load_run(runs["time_flow"]),
                                                        test_tables, seed=3),
                            out / "report_networks_flow", make_figures=False)
    networks["npe_flow"].update(summary(metrics))
    log(f"flows (npe and time): {summary(metrics)}")
    # the pair "full": the Poisson-mean NN_npe (pooled pmt rows) and the time flow (their hits), each with its
    # config's rows and epochs
    for what, name in (("npe", "juno_npe_poisson"), ("time", "juno_time_flow")):
        tic = time.perf_counter()
        runs[f"{what}_full"] = train(config(name, settings, full=True), out / "points_pooled.h5",
                                     out / "runs" / f"{what}_full", progress=False, log=lambda s: None)
        networks[f"{what}_full"] = {"train_seconds": round(time.perf_counter() - tic, 1)}
        log(f"trained {what}_full ({name}) in {networks[f'{what}_full']['train_seconds']} s")
    metrics = validate_juno(test_tables, network_points(load_run(runs["npe_full"]), load_run(runs["time_full"]),
                                                        test_tables, seed=3),
                            out / "report_networks_full", make_figures=False)
    networks["npe_full"].update(summary(metrics))
    log(f"Poisson NN_npe and time flow (full): {summary(metrics)}")
    candidates = [*losses, "flow", "full"]

    def score(name: str, key: str) -> float:  # lower is better; the pair's evaluation sits under npe_<name>
        value = networks[f"npe_{name}"].get(key, math.inf)
        return abs(float(value)) if value == value else math.inf

    best_npe = min(candidates, key=lambda c: score(c, "mean_separation_power_npe"))
    best_time = min(candidates, key=lambda c: score(c, "mean_separation_power_time"))
    results["networks"] = networks
    results["winners_by_separation_power"] = {"npe": best_npe, "time": best_time}
    log(f"lowest mean separation power: npe {best_npe}, time {best_time}")
    if args.table_pair != "best":  # the tabulated pair (default: the Poisson NN_npe and the full time flow)
        best_npe, best_time = args.table_pair.split(",")
    results["winners"] = {"npe": best_npe, "time": best_time}
    log(f"tabulated: npe {best_npe}, time {best_time}")
    return test_tables, runs, best_npe, best_time


def tables_and_muons(args: Any, settings: Settings, out: Path, results: dict[str, Any], log: Any,
                     test_tables: dict[str, dict[str, np.ndarray]], runs: dict[str, Path], best_npe: str,
                     best_time: str) -> None:
    """Steps 3-5: the tables of the chosen runs, 1 MeV gammas and muons, fast versus reference."""

    # 3. the table of the winning pair ------------------------------------------------------------------
    muon_raw = yaml.safe_load((CONFIGS / "juno_muon.yaml").read_text())
    muon_raw["model"].update(npe_run=str(runs[f"npe_{best_npe}"]), time_run=str(runs[f"time_{best_time}"]),
                             r_nodes=settings.r_nodes, theta_nodes=settings.theta_nodes,
                             noise_draws=settings.noise_draws, step_m=settings.steps_m[0])
    tic = time.perf_counter()
    muon_run = train(config_from_dict(muon_raw, source="juno_muon"), out / "points_train.h5", out / "runs" / "muon",
                     progress=False, log=log)
    results["tabulation"] = {"seconds": round(time.perf_counter() - tic, 1),
                             **json.loads((muon_run / "meta.json").read_text())["fit_info"]}
    family = load_run(muon_run).model
    sim = family.simulator()  # type: ignore[operator]
    g = torch.Generator().manual_seed(5)
    test_r = test_tables["pmt"]["r_m"].reshape(settings.test_events, -1)[:, 0].astype(np.float64)
    from_table = sim.points(test_r, energy_mev=1.0, generator=g)
    results["table_vs_reference"] = summary(validate_juno(test_tables, from_table, out / "report_table",
                                                          make_figures=False))
    log(f"table vs reference (test points): {results['table_vs_reference']}")

    # 4. 1 MeV gammas on the z axis ---------------------------------------------------------------------
    tic = time.perf_counter()
    batches = list(simulate_point_batches(settings.gamma_events * len(GAMMA_Z_M), batch_events=500,
                                          r_values_m=GAMMA_Z_M, seed=args.seed + 2))
    gamma_truth = {group: concat_tables([b[group] for b in batches]) for group in batches[0]}
    del batches
    reference_seconds = time.perf_counter() - tic
    r_gamma = np.resize(np.array(GAMMA_Z_M), settings.gamma_events * len(GAMMA_Z_M))
    tic = time.perf_counter()
    gamma_fast = sim.points(r_gamma, energy_mev=1.0, generator=g)
    fast_seconds = time.perf_counter() - tic
    gamma_metrics = validate_juno(gamma_truth, gamma_fast, out / "report_gammas")
    results["gammas"] = {**{k: v for k, v in gamma_metrics.items() if isinstance(v, (int, float))},
                         "reference_seconds_per_event": reference_seconds / len(r_gamma),
                         "fast_seconds_per_event": fast_seconds / len(r_gamma)}
    log(f"1 MeV gammas: {summary(gamma_metrics)}; {reference_seconds / fast_seconds:.0f}x faster")

    # 5. muons: reference and fast, same tracks, one process ---------------------------------------------
    cpu = time.process_time()
    muon_truth, _ = simulate_muons(settings.muons, seed=args.seed + 3)
    reference_cpu_per_muon = (time.process_time() - cpu) / settings.muons
    write_table(out / "muons_reference.h5", muon_truth)
    reference_per_muon = float(np.mean(muon_truth["wall_time_s"]))
    results["muons"] = {"reference_seconds_per_muon": reference_per_muon,
                        "reference_cpu_seconds_per_muon": reference_cpu_per_muon, "n_muons": settings.muons,
                        "load_average": os.getloadavg()}
    # warm-up (not timed): the first muon of a fresh process paid ~1 s of one-off costs after the calibration
    generate(muon_run, out / "muons_reference.h5", out / "muons_warmup.h5", seed=7, progress=False, log=lambda s: None)
    (out / "muons_warmup.h5").unlink()
    for step in settings.steps_m:
        run_dir = muon_run
        if step != settings.steps_m[0]:  # the same tables with another voxel step
            muon_raw["model"]["step_m"] = step
            run_dir = out / "runs" / f"muon_step{step}"
            shutil.copytree(muon_run, run_dir)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(
                {**yaml.safe_load((muon_run / "config.yaml").read_text()), "model": muon_raw["model"]}, sort_keys=False))
        fast_path = out / f"muons_fast_step{step}.h5"
        cpu = time.process_time()
        info = generate(run_dir, out / "muons_reference.h5", fast_path, seed=7, progress=False, log=log)
        fast_cpu_per_muon = (time.process_time() - cpu) / settings.muons  # includes reading/writing the files
        fast = read_table(fast_path)
        per_muon = float(np.mean(fast["wall_time_s"]))
        metrics = validate_juno(muon_truth, fast, out / f"report_muons_step{step}", kind="muons")
        results["muons"][f"step_{step}"] = {
            "fast_seconds_per_muon": per_muon, "fast_seconds_per_muon_with_io": info["seconds_per_muon"],
            "speedup": reference_per_muon / per_muon, "fast_cpu_seconds_per_muon_with_io": fast_cpu_per_muon,
            "speedup_cpu_time_with_io": reference_cpu_per_muon / fast_cpu_per_muon,
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        log(f"muons, step {step} m: {reference_per_muon:.2f} s -> {per_muon * 1e3:.1f} ms per muon "
            f"({reference_per_muon / per_muon:.0f}x); {summary(metrics)}")
    # the speed figure to quote: each reference muon again, bracketed by fast runs of the same track (the
    # machine's speed drifts by ~15 % between the passes above)
    from juno_fast_speed import main as fast_speed  # benchmarks/ is on sys.path when run as a script

    speed = fast_speed(["--run", str(muon_run), "--muons", str(out / "muons_reference.h5"), "--reps", "5",
                        "--reference", str(settings.muons), "--methods", "split", "--threads", str(args.threads),
                        "--seed", str(args.seed), "--out", str(out / "speed.json")])
    results["muons"]["bracketed"] = speed["bracketed"]
    log(f"muons, bracketed: {speed['bracketed']['speedup_cpu_of_sums']}x (total CPU time, step "
        f"{settings.steps_m[0]} m; per muon {speed['bracketed']['speedup_cpu_min']}x and up)")
    results["load_average_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    log(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
