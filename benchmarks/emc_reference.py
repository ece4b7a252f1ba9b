"""BESIII EMC reference simulator: containment, response, core resolution and showers/s (quoted in docs/emc.md).

    OMP_NUM_THREADS=1 python benchmarks/emc_reference.py [--n 5000] [--n-speed 20000]

For e- and photons at 0.5, 1 and 2 GeV/c (n showers each, seed 7): the fraction of the deposited energy outside the
11 x 11 window, the core response (median of E11x11 / E) and the core resolution (half the central 68% interval /
median). Then the throughput of ``simulate_emc`` on the default kinematics (0.25-3 GeV/c) in showers per wall
second and per CPU second of this process (the machine is shared: the CPU rate is the stable number), for
chunk sizes 500, 1000 and 2000, with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from detgen.simulators.emc import EmcKinematics, simulate_emc
from detgen.validation.metrics import core_mean_width


def physics_table(n: int) -> None:
    print("particle  p[GeV]  outside-11x11  response  resolution")
    for particle in ("e-", "gamma"):
        for p_gev in (0.5, 1.0, 2.0):
            table, _ = simulate_emc(n, particle=particle, seed=7,
                                    kinematics=EmcKinematics(p_min_gev=p_gev, p_max_gev=p_gev))
            response = table["map"].astype(np.float64).sum(axis=(1, 2)) / (1000.0 * p_gev)
            mean, width = core_mean_width(response)
            outside = table["e_outside"].sum() / table["e_total_dep"].sum()
            print(f"{particle:8s}  {p_gev:6.1f}  {outside:13.4f}  {mean:8.3f}  {width / mean:10.4f}")


def speed(n: int) -> None:
    simulate_emc(500)  # warm-up (imports, caches)
    print(f"load average before: {os.getloadavg()}")
    for particle in ("e-", "gamma"):
        for chunk_size in (500, 1000, 2000):
            wall, cpu = time.perf_counter(), time.process_time()
            simulate_emc(n, particle=particle, seed=1, chunk_size=chunk_size)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{particle:6s} chunk {chunk_size:5d}: {n / wall:8.0f} showers/s wall, {n / cpu:8.0f} showers/s CPU")
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="showers per (particle, momentum) point")
    parser.add_argument("--n-speed", type=int, default=20000, help="showers per throughput measurement")
    args = parser.parse_args()
    physics_table(args.n)
    speed(args.n_speed)


if __name__ == "__main__":
    main()
