"""Oracle check of the JUNO fast simulator's data path, without any network.

    python benchmarks/juno_table_oracle.py --points POINTS.h5 --muons MUONS_REFERENCE.h5

Fills the juno_muon npe table with the training data's own mean npe per (R, theta) node cell (1 MeV point
deposits, group ``pmt`` of ``detgen simulate juno --mode point``), then runs FastMuonSimulator on 1 MeV gammas at
Z = 0, 5, 10, 15, 17 m (fresh reference events) and on the muon tracks of a reference muon file, and prints the
total p.e. of both. Agreement (within the statistics and the cell averaging) means the fast simulator's energy
scaling, voxels, theta definition and (R, theta) interpolation are right, so any remaining total-p.e. deviation
of a trained table comes from the network's learned mean. Only the npe is checked (hit times are a fixed
Gaussian here).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from detgen.io import read_table
from detgen.simulators.juno import DEFAULT_DETECTOR, radius_s, simulate_points
from detgen.simulators.juno_fast import QUANTILE_Z_MAX, FastMuonSimulator, ResponseTables

GAMMA_Z_M = [0.0, 5.0, 10.0, 15.0, 17.0]


def oracle_tables(points: str, r_nodes: int, theta_nodes: int) -> ResponseTables:
    """Tables whose npe per MeV at each node is the mean npe of the 1 MeV training rows nearest to it."""
    pmt = read_table(points, key="pmt")
    r_max = DEFAULT_DETECTOR.ls_radius_m
    s_index = np.rint(radius_s(pmt["r_m"].astype(np.float64), r_max) * (r_nodes - 1)).astype(np.int64)
    t_index = np.rint(pmt["theta"].astype(np.float64) / np.pi * (theta_nodes - 1)).astype(np.int64)
    cell = s_index * theta_nodes + t_index
    total = np.bincount(cell, pmt["npe"].astype(np.float64), r_nodes * theta_nodes)
    rows = np.bincount(cell, minlength=r_nodes * theta_nodes)
    mean = np.where(rows > 0, total / np.maximum(rows, 1), np.nan).reshape(r_nodes, theta_nodes)
    for i in range(r_nodes):  # empty cells (near the poles): interpolate along theta
        filled = np.isfinite(mean[i])
        if not filled.any():
            raise SystemExit(f"{points}: no rows near the radius node {i}; use fewer --r-nodes")
        mean[i] = np.interp(np.arange(theta_nodes), np.flatnonzero(filled), mean[i][filled])
    print(f"oracle table: {r_nodes} x {theta_nodes} nodes, {int((rows == 0).sum())} empty cells filled")
    tables = ResponseTables(r_nodes=r_nodes, theta_nodes=theta_nodes, quantile_nodes=16, r_max_m=r_max)
    tables.npe_per_mev.copy_(torch.from_numpy(mean))
    z = np.linspace(-QUANTILE_Z_MAX, QUANTILE_Z_MAX, 16)
    tables.time_quantiles.copy_(torch.from_numpy(np.broadcast_to(100.0 + 5.0 * z, (r_nodes, theta_nodes, 16)).copy()))
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", required=True, help="1 MeV point-deposit file (group pmt)")
    parser.add_argument("--muons", required=True, help="reference muon file (detgen simulate juno --mode muon)")
    parser.add_argument("--r-nodes", type=int, default=60)
    parser.add_argument("--theta-nodes", type=int, default=121)
    parser.add_argument("--gammas", type=int, default=100, help="1 MeV gammas per Z")
    parser.add_argument("--step-m", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    sim = FastMuonSimulator(oracle_tables(args.points, args.r_nodes, args.theta_nodes), step_m=args.step_m)
    generator = torch.Generator().manual_seed(args.seed)
    n = args.gammas * len(GAMMA_Z_M)
    truth, _ = simulate_points(n, r_values_m=GAMMA_Z_M, seed=args.seed)
    fast = sim.points(np.resize(np.array(GAMMA_Z_M), n), energy_mev=1.0, generator=generator)
    z_of = {k: t["pmt"]["r_m"].reshape(n, -1)[:, 0] for k, t in (("truth", truth), ("fast", fast))}
    total_of = {k: t["pmt"]["npe"].reshape(n, -1).sum(1) for k, t in (("truth", truth), ("fast", fast))}
    for z in GAMMA_Z_M:
        a = total_of["truth"][np.isclose(z_of["truth"], z)]
        b = total_of["fast"][np.isclose(z_of["fast"], z)]
        err = np.hypot(a.std() / np.sqrt(len(a)), b.std() / np.sqrt(len(b))) / a.mean()
        print(f"1 MeV gamma at Z = {z:4.1f} m: total p.e. reference {a.mean():7.1f}, fast (oracle table) "
              f"{b.mean():7.1f}, rel. dev {b.mean() / a.mean() - 1:+.2%} +- {err:.2%}")
    muons = read_table(args.muons)
    sums = np.zeros(2)
    for i in range(len(muons["x0"])):
        entry = np.array([muons[c][i] for c in ("x0", "y0", "z0")], dtype=np.float64)
        direction = np.array([muons[c][i] for c in ("dx", "dy", "dz")], dtype=np.float64)
        npe, _ = sim.muon(entry, direction, generator)
        reference = float(np.asarray(muons["npe"][i]).sum())
        sums += [reference, float(npe.sum())]
        print(f"muon {i}: track {float(muons['track_length_m'][i]):5.2f} m, total p.e. reference {reference:.0f}, "
              f"fast (oracle table) {npe.sum()}, rel. dev {npe.sum() / reference - 1:+.2%}")
    print(f"all muons: total p.e. rel. dev {sums[1] / sums[0] - 1:+.3%}")


if __name__ == "__main__":
    main()
