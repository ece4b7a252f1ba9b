"""Large-sample check of the 1 MeV gammas' total p.e. and hit-time medians: juno_muon runs vs the reference.

    python benchmarks/juno_gamma_medians.py --gammas 8000 --cache ref_hits.npz RUN [RUN ...]

The reference hit times of ``--gammas`` point deposits per Z (0, 5, 10, 15, 17 m) are simulated once and cached
(``--cache``); each juno_muon run's tables then simulate the same number per Z in batches of 500. Prints, per
run and Z, the relative total-p.e. deviation and the median deviation with its distribution-free error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from detgen.runs import load_run
from detgen.simulators.juno import simulate_point_batches
from detgen.validation.juno import median_standard_error

GAMMA_Z_M = [0.0, 5.0, 10.0, 15.0, 17.0]
BATCH = 500


def reference(n: int, cache: Path, seed: int) -> dict[str, np.ndarray]:
    """Per Z: all p.e. hit times (``t<Z>``; one per p.e.) and the number of gammas, cached in ``cache``."""
    if cache.exists():
        return dict(np.load(cache))
    times: dict[float, list[np.ndarray]] = {z: [] for z in GAMMA_Z_M}
    for batch in simulate_point_batches(n * len(GAMMA_Z_M), batch_events=BATCH, r_values_m=GAMMA_Z_M, seed=seed):
        hits = batch["hits"]
        for z in GAMMA_Z_M:
            times[z].append(hits["time_ns"][np.abs(hits["r_m"] - z) < 1e-3])
    out = {f"t{z:g}": np.concatenate(times[z]) for z in GAMMA_Z_M} | {"gammas": np.array(n)}
    np.savez(cache, **out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="juno_muon run dirs")
    parser.add_argument("--gammas", type=int, default=8000, help="gammas per Z")
    parser.add_argument("--cache", type=Path, required=True, help="npz file of the reference hit times")
    parser.add_argument("--seed", type=int, default=777)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ref = reference(args.gammas, args.cache, args.seed)
    ref_gammas = int(ref.get("gammas", args.gammas))  # caches written before the key existed: --gammas
    for run in args.runs:
        sim = load_run(run).model.simulator()  # type: ignore[operator]
        generator = torch.Generator().manual_seed(31)
        parts = []
        for z in GAMMA_Z_M:
            times = []
            for start in range(0, args.gammas, BATCH):
                fast = sim.points(np.full(min(BATCH, args.gammas - start), z), energy_mev=1.0, generator=generator)
                times.append(fast["hits"]["time_ns"])
            t_fast, t_ref = np.concatenate(times), ref[f"t{z:g}"]
            dev = float(np.median(t_fast) - np.median(t_ref))
            err = float(np.hypot(median_standard_error(t_fast), median_standard_error(t_ref)))
            pe = (len(t_fast) / args.gammas) / (len(t_ref) / ref_gammas) - 1.0  # one hit per p.e. in both
            parts.append(f"Z={z:g}: pe {pe:+.4f} median {dev:+.3f}+-{err:.3f}")
        print(run, "|", "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
