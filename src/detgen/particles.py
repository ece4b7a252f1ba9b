"""Particle properties shared by simulators and observables (PDG values)."""

from __future__ import annotations

#: Masses in GeV/c^2 by species label (the labels used in every detgen file).
MASS_GEV: dict[str, float] = {
    "e+": 0.000511, "e-": 0.000511,
    "mu+": 0.105658, "mu-": 0.105658,
    "pi+": 0.139570, "pi-": 0.139570,
    "K+": 0.493677, "K-": 0.493677,
    "p": 0.938272, "pbar": 0.938272,
}

#: Electric charge in units of e by species label.
CHARGE: dict[str, int] = {
    "e+": 1, "e-": -1, "mu+": 1, "mu-": -1, "pi+": 1, "pi-": -1, "K+": 1, "K-": -1, "p": 1, "pbar": -1,
}

#: Species labels in a fixed order (used for integer codes).
SPECIES: tuple[str, ...] = tuple(MASS_GEV)

#: Hypothesis name -> mass, independent of charge (for PID).
HYPOTHESIS_MASS_GEV: dict[str, float] = {
    "e": 0.000511, "mu": 0.105658, "pi": 0.139570, "K": 0.493677, "p": 0.938272,
}

#: Species label -> PID hypothesis name.
HYPOTHESIS_OF: dict[str, str] = {
    "e+": "e", "e-": "e", "mu+": "mu", "mu-": "mu", "pi+": "pi", "pi-": "pi",
    "K+": "K", "K-": "K", "p": "p", "pbar": "p",
}
