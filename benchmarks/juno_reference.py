"""Speed of the JUNO reference optical simulator: p.e./s, 1 MeV events/s and seconds per muon.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/juno_reference.py --events 1000 --muons 3 -o bench_juno_reference.json

Writes a JSON file with the rates, the photon bookkeeping and the load average before and after. The machine is
shared: wall times depend on the load, so the CPU time of this process is recorded too (single-threaded numpy,
so CPU seconds are what the simulation costs on an otherwise idle core).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from detgen.simulators.juno import DEFAULT_DETECTOR, simulate_muons, simulate_points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1000, help="1 MeV point events (R uniform on 0-17.7 m)")
    parser.add_argument("--muons", type=int, default=3, help="cosmic muons")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-o", "--output", default="bench_juno_reference.json")
    args = parser.parse_args()

    result: dict[str, object] = {"load_average_before": os.getloadavg()}
    simulate_points(5, seed=0)  # warm-up: builds the PMT lookup grid once
    began, began_cpu = time.perf_counter(), time.process_time()
    tables, info = simulate_points(args.events, seed=args.seed)
    wall, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    total_pe = np.bincount(tables["pmt"]["event"], weights=tables["pmt"]["npe"])
    result["points"] = {"n_events": args.events, "wall_time_s": wall, "events_per_s": args.events / wall,
                        "pe_per_s": float(total_pe.sum()) / wall, "mean_total_pe": float(total_pe.mean()),
                        "photons_tracked_per_s": info["n_photons_tracked"] / wall, "cpu_time_s": cpu,
                        "events_per_cpu_s": args.events / cpu}
    if args.muons > 0:
        began_cpu = time.process_time()
        table, muon_info = simulate_muons(args.muons, seed=args.seed)
        cpu = time.process_time() - began_cpu
        result["muons"] = {"n_muons": args.muons, "seconds_per_muon": muon_info["seconds_per_muon"],
                           "track_length_m": table["track_length_m"].tolist(),
                           "total_pe": table["total_pe"].tolist(), "wall_time_s": table["wall_time_s"].tolist(),
                           "pe_per_m": float(table["total_pe"].sum() / table["track_length_m"].sum()),
                           "photons_tracked": muon_info["n_photons_tracked"],
                           "pe_per_s": muon_info["pe_per_s"], "cpu_seconds_per_muon": cpu / args.muons}
    result["load_average_after"] = os.getloadavg()
    result["detector"] = DEFAULT_DETECTOR.to_dict()
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "detector"}, indent=2))


if __name__ == "__main__":
    main()
