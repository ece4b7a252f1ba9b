"""JUNO fast muon simulation speed: FastMuonSimulator.muon versus the reference photon transport, one process.

    python benchmarks/juno_fast_speed.py --run RUN_DIR --muons MUONS.h5 [--reps 5] [--reference 6]
        [--methods split,pairwise] [--out results.json]

RUN_DIR is a trained ``juno_muon`` run (e.g. ``benchmarks/juno.py``'s ``runs/muon``); MUONS.h5 a file of muon
tracks (columns x0, y0, z0, dx, dy, dz; e.g. ``benchmarks/juno.py``'s ``muons_reference.h5``). For each track
the fast simulation is timed ``--reps`` times per method (``split``: ``FastMuonSimulator.response``, the
default; ``pairwise``: the earlier ``response_pairwise``), then the first ``--reference`` tracks go through the
reference photon transport (``simulators.juno.simulate_muon``, the run's voxel step is irrelevant to it: it
emits along the continuous track). Reported per muon and on average: wall time and CPU time (process time,
less sensitive than wall time to other jobs on a shared machine), the medians over the repetitions, and the
speed-up ratios reference / fast (ratio of the means over the muons), with ``os.getloadavg()`` before and after.
Each reference muon is also bracketed by fast runs of the same track just before and after it
(``bracketed``: per-muon CPU-time ratios, robust to the machine's drift over minutes).
Single-threaded unless --threads says otherwise (the reference transport is numpy, one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detgen.io import read_table
from detgen.runs import load_run
from detgen.simulators.juno import simulate_muon
from detgen.simulators.juno_fast import TRACK_COLUMNS


def time_fast(sim: Any, method: str, entry: np.ndarray, direction: np.ndarray, reps: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median wall and CPU seconds per muon over ``reps`` repetitions, and the mean total p.e. per muon."""
    generator = torch.Generator().manual_seed(seed)
    respond = sim.response if method == "split" else sim.response_pairwise
    wall, cpu, total = [], [], []
    with torch.inference_mode():
        deposits = sim.deposits(entry[0], direction[0])
        respond(*deposits, generator)  # warm-up
        for i in range(len(entry)):
            walls, cpus, totals = [], [], []
            for _ in range(reps):
                tic, cpu0 = time.perf_counter(), time.process_time()
                npe, _first = respond(*sim.deposits(entry[i], direction[i]), generator)
                npe.cpu().numpy()  # the muon() path: tensors to numpy
                walls.append(time.perf_counter() - tic)
                cpus.append(time.process_time() - cpu0)
                totals.append(float(npe.sum()))
            wall.append(np.median(walls))
            cpu.append(np.median(cpus))
            total.append(np.mean(totals))
    return np.array(wall), np.array(cpu), np.array(total)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a juno_muon run dir")
    parser.add_argument("--muons", required=True, help="a file of muon tracks (x0, y0, z0, dx, dy, dz)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--reference", type=int, default=6, help="tracks to re-run through the reference")
    parser.add_argument("--methods", default="split,pairwise")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = read_table(args.muons)
    entry = np.stack([table[c] for c in TRACK_COLUMNS[:3]], axis=1).astype(np.float64)
    direction = np.stack([table[c] for c in TRACK_COLUMNS[3:]], axis=1).astype(np.float64)
    sim = load_run(args.run).model.simulator()  # type: ignore[operator]
    n_ref = min(args.reference, len(entry))
    results: dict[str, Any] = {"run": str(args.run), "muons": str(args.muons), "n_muons": len(entry),
                               "threads": args.threads, "machine": platform.machine(), "cpus": os.cpu_count(),
                               "step_m": sim.step_m, "load_average_start": os.getloadavg()}
    deposits = [len(sim.deposits(entry[i], direction[i])[1]) for i in range(len(entry))]
    results["deposits_per_muon"] = deposits
    for method in args.methods.split(","):
        wall, cpu, total = time_fast(sim, method, entry, direction, args.reps, args.seed)
        results[method] = {"wall_ms_per_muon": (wall * 1e3).round(2).tolist(),
                           "cpu_ms_per_muon": (cpu * 1e3).round(2).tolist(),
                           "wall_ms_mean": round(float(wall.mean()) * 1e3, 2),
                           "cpu_ms_mean": round(float(cpu.mean()) * 1e3, 2),
                           "total_pe_mean_per_muon": total.round(0).tolist()}
        print(f"{method}: {results[method]['wall_ms_mean']} ms wall, {results[method]['cpu_ms_mean']} ms CPU "
              f"per muon (mean over {len(entry)})", flush=True)
    if n_ref:
        rng = np.random.default_rng(args.seed + 1)
        wall_ref, cpu_ref, bracket = [], [], []
        method = args.methods.split(",")[0]
        for i in range(n_ref):
            before = time_fast(sim, method, entry[i : i + 1], direction[i : i + 1], args.reps, args.seed + i)[1][0]
            tic, cpu0 = time.perf_counter(), time.process_time()
            simulate_muon(entry[i], direction[i], rng)
            wall_ref.append(time.perf_counter() - tic)
            cpu_ref.append(time.process_time() - cpu0)
            after = time_fast(sim, method, entry[i : i + 1], direction[i : i + 1], args.reps, args.seed + i)[1][0]
            bracket.append(0.5 * (before + after))
        # the machine's speed drifts by ~15 % over minutes: each reference muon is bracketed by fast runs of the
        # same muon just before and after it, and the per-muon CPU-time ratios are the drift-robust figure
        ratio = np.array(cpu_ref) / np.array(bracket)
        results["bracketed"] = {"method": method, "fast_cpu_ms_per_muon": (np.array(bracket) * 1e3).round(2).tolist(),
                                "speedup_cpu_per_muon": ratio.round(1).tolist(),
                                "speedup_cpu_of_sums": round(float(np.sum(cpu_ref) / np.sum(bracket)), 1),
                                "speedup_cpu_median": round(float(np.median(ratio)), 1),
                                "speedup_cpu_min": round(float(ratio.min()), 1)}
        print(f"{method}, bracketed: speed-up {results['bracketed']['speedup_cpu_of_sums']}x (CPU time, sums over "
              f"{n_ref} muons), per muon {results['bracketed']['speedup_cpu_min']}x to {ratio.max():.1f}x", flush=True)
        w, c = np.array(wall_ref), np.array(cpu_ref)
        results["reference"] = {"wall_s_per_muon": w.round(3).tolist(), "cpu_s_per_muon": c.round(3).tolist(),
                                "wall_s_mean": round(float(w.mean()), 3), "cpu_s_mean": round(float(c.mean()), 3)}
        for method in args.methods.split(","):
            fast = results[method]
            fast_wall = np.array(fast["wall_ms_per_muon"][:n_ref]) / 1e3
            fast_cpu = np.array(fast["cpu_ms_per_muon"][:n_ref]) / 1e3
            fast["speedup_wall"] = round(float(w.mean() / fast_wall.mean()), 1)
            fast["speedup_cpu"] = round(float(c.mean() / fast_cpu.mean()), 1)
            fast["speedup_cpu_per_muon"] = (c / fast_cpu).round(1).tolist()
            print(f"{method}: speed-up {fast['speedup_wall']}x (wall), {fast['speedup_cpu']}x (CPU time) over "
                  f"the reference ({results['reference']['wall_s_mean']} s wall, "
                  f"{results['reference']['cpu_s_mean']} s CPU per muon)", flush=True)
    results["load_average_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
