"""Pythia-free H -> gamma gamma truth for fast photon tests: a 125 GeV particle decayed isotropically."""

from __future__ import annotations

import numpy as np

from detgen.simulators.photons import ET_MIN_GEV, ETA_MAX, smear_photons

HIGGS_MASS_GEV = 125.0


def _boost(e: np.ndarray, p: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lorentz-boost four-momenta (e, p) by velocity ``beta`` (rows)."""
    b2 = np.sum(beta**2, axis=1)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = np.sum(beta * p, axis=1)
    factor = np.where(b2 > 0, (gamma - 1.0) * bp / np.where(b2 > 0, b2, 1.0), 0.0)
    p_new = p + (factor + gamma * e)[:, None] * beta
    return gamma * (e + bp), p_new


def higgs_truth(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` events of two photons from a 125 GeV decay (pT ~ exp(40 GeV), y ~ N(0, 1.2)), selected and ordered
    like the Pythia truth (ET > 20 GeV, |eta| < 2.5, photon 1 leading), with mu ~ U(0, 40)."""
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    total = 0
    while total < n:
        m = 3 * n
        pt, y, phi = rng.exponential(40.0, m), rng.normal(0, 1.2, m), rng.uniform(-np.pi, np.pi, m)
        mt = np.hypot(HIGGS_MASS_GEV, pt)
        energy = mt * np.cosh(y)
        momentum = np.stack([pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y)], axis=1)
        cos_t, azimuth = rng.uniform(-1, 1, m), rng.uniform(0, 2 * np.pi, m)
        sin_t = np.sqrt(1 - cos_t**2)
        direction = np.stack([sin_t * np.cos(azimuth), sin_t * np.sin(azimuth), cos_t], axis=1)
        half = np.full(m, HIGGS_MASS_GEV / 2)
        photons = []
        for sign in (1.0, -1.0):
            _, p = _boost(half, sign * half[:, None] * direction, momentum / energy[:, None])
            et = np.hypot(p[:, 0], p[:, 1])
            photons.append((et, np.arcsinh(p[:, 2] / et), np.arctan2(p[:, 1], p[:, 0])))
        (et_a, eta_a, phi_a), (et_b, eta_b, phi_b) = photons
        lead = et_a >= et_b
        et1, et2 = np.where(lead, et_a, et_b), np.where(lead, et_b, et_a)
        eta1, eta2 = np.where(lead, eta_a, eta_b), np.where(lead, eta_b, eta_a)
        phi1, phi2 = np.where(lead, phi_a, phi_b), np.where(lead, phi_b, phi_a)
        keep = (et2 > ET_MIN_GEV) & (np.abs(eta1) < ETA_MAX) & (np.abs(eta2) < ETA_MAX)
        rows.append(np.stack([et1, eta1, phi1, et2, eta2, phi2], axis=1)[keep])
        total += int(keep.sum())
    values = np.concatenate(rows)[:n]
    names = ("et1", "eta1", "phi1", "et2", "eta2", "phi2")
    table = {name: values[:, k].copy() for k, name in enumerate(names)}
    table["mu"] = rng.uniform(0, 40, n)
    return table


def photon_sample(n: int, *, scenario: str = "baseline", rho: float = 0.5, seed: int = 0,
                  truth_seed: int | None = None) -> dict[str, np.ndarray]:
    """Toy truth plus the simulator's response: a complete photon table like ``simulate_photons`` writes."""
    truth = higgs_truth(n, seed if truth_seed is None else truth_seed)
    return {**truth, **smear_photons(truth, scenario=scenario, rho=rho, rng=seed + 1000)}
