"""ATLAS-like photon response in H -> gamma gamma events: Pythia 8 truth plus a parametrised detector response.

Truth (:func:`generate_truth`): pp -> H -> gamma gamma at sqrt(s) = 13 TeV with Pythia 8 (``pythia8mc``,
pinned 8.317.2 through the ``[pythia]`` extra; imported only when truth is generated), gluon fusion only
(``HiggsSM:gg2H = on``), the Higgs forced to two photons (``25:onMode = off``, ``25:onIfMatch = 22 22``:
``onIfAny = 22`` would also open H -> Z gamma). Multiparton interactions and hadronisation are switched off,
initial- and final-state showers stay on (``PYTHIA_SETTINGS``): only the two photons of the Higgs decay enter
the table, and their kinematics are set by the Higgs recoil against initial-state radiation, which the
showers give; MPI and hadronisation add particles that never reach the photons (PHYSICS.md section 6: mean
Higgs pT 53 GeV and mean photon ET 59.5 GeV either way) and make generation ~15x slower. Switching the whole
parton level off would leave the Higgs with pT = 0, which is unrealistic. The photons are the daughters of
the last Higgs copy in the event record. Events are kept when both photons have ET > 20 GeV and |eta| < 2.5
(``ET_MIN_GEV``, ``ETA_MAX``); photon 1 is the one with the larger ET. Every event is given a pile-up
mu ~ U(0, 40). Rejected events and failed Pythia events are counted in ``info``.

Detector response (:func:`smear_photons`): X_reco = X_true + Delta_X for X in (ET, eta, phi) of each photon,
Delta_X drawn around 0 with the width R_X(ET, eta, mu) of the photon's own truth ET and eta and the event's mu.
The resolution functions have the form of arXiv 2303.10148 (Xu, Han, Ju, Wang), eqs. 3.1-3.3:

    R_ET  = 1.5 GeV * R_ET(ET)  * R_ET(eta)  * R_ET(mu)
    R_eta = 0.0005  * R_eta(ET) * R_eta(eta) * R_eta(mu)
    R_phi = 0.0003  * R_phi(ET) * R_phi(eta) * R_phi(mu)     (rad)

with every factor a fourth-order polynomial divided by a normalisation, R(x) = sum_i p_i x^i / C.

**STAND-IN COEFFICIENTS.** The paper's Table 2 (the polynomial coefficients) could not be found in any
source available to this project (searched: the arXiv listing and abstract pages, the authors' code at
github.com/allixu/normalizing_flow_for_detector_response, whose smearing step is not in the repository).
``STANDIN_RESOLUTION`` therefore holds clearly labelled stand-in coefficients chosen to give ATLAS-like
behaviour, NOT the paper's numbers: each factor is 1 at the reference point ET = 50 GeV, eta = 0, mu = 20
(C is the polynomial's value there); the ET resolution grows with ET (0.79x at 20 GeV, 2.2x at 200 GeV:
1.2 GeV at 20 GeV, 3.3 GeV = 1.7% at 200 GeV) and towards the end-caps (1.7x at |eta| = 2, 2.4x at 2.5) and
with pile-up (0.81x at mu = 0, 1.26x at mu = 40); the angular resolutions improve with ET (1.27x at 20 GeV,
0.27x at 250 GeV), worsen mildly with |eta| and mu. Replace them with the paper's by building a
:class:`ResolutionModel` from its Table 2 and passing it as ``resolution=``. The polynomials in ET are
evaluated at ET clamped to [20, 250] GeV (``ET_DOMAIN_GEV``), where the stand-ins are positive and
monotonic; above 250 GeV the resolution factor is held at its 250 GeV value (photons above it are counted
in ``info['photons_above_et_domain']``; they are ~1% of the sample).

Scenarios (``SCENARIOS``):

* ``baseline``: the six Delta_X independent Gaussians of width R_X.
* ``correlation``: the responses of the two photons to the same observable are correlated. With z1, z2
  independent N(0, 1), photon 2 gets z2' = rho z1 + sqrt(1 - rho^2) z2 (``correlation_form="rho"``, the
  default): z2' is again N(0, 1), so photon 2 keeps its resolution R_X, and corr(Delta_X1, Delta_X2) = rho.
  PHYSICS.md (and, as it reports, the paper) writes Delta_2 <- rho^2 Delta_1 + sqrt(1 - rho^2) Delta_2; taken
  literally on unit-width draws (``correlation_form="rho_squared"``) that gives the correlation
  rho^2 / sqrt(1 - rho^2 + rho^4) (0.277 for rho = 0.5, 1 for rho = 1) and narrows photon 2's response by
  sqrt(1 - rho^2 + rho^4) (0.90 for rho = 0.5), i.e. its resolution is no longer R_X. Both give correlation
  1 at rho = 1 (the paper's second value). We could not check the paper's text; ``info`` and the docs state
  which form produced a file. Correlations are within each observable (ET1-ET2, eta1-eta2, phi1-phi2).
* ``asymmetric``: for the observables in ``tail_observables`` (default ET only: a low-side tail is what
  energy leakage and conversions give a calorimeter; an angular tail has no such cause) each photon's
  response is, with probability 0.84, N(0, R_X) (the core) and otherwise N(-3 R_X, 3 R_X) (the tail).
  The fraction of responses below -2 R_X is then 0.84 Phi(-2) + 0.16 Phi(1/3) = 0.1200 (baseline: 0.0228).

phi_reco is wrapped into [-pi, pi); d_phi is the drawn Delta_phi (= phi_reco - phi_true modulo 2 pi).
Nothing is clipped: a reconstructed ET <= 0 (possible only far in a tail) is kept and counted in
``info['reco_et_nonpositive']``.

Speed (2 shared CPU cores, AMD EPYC; commands and load averages in docs/bench_photons.md): about 1,200
accepted events/s per worker process on an unloaded core (1,800 generated/s, 69% pass the selection), several
times less when the machine is busy; the smearing alone runs at ~1 million events/s.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from detgen.errors import ConfigError, DataError

FloatArray = NDArray[np.float64]

# ---------------------------------------------------------------------------------------------------------
# Names and constants
# ---------------------------------------------------------------------------------------------------------

#: Observables of each photon, in the order of the response columns.
OBSERVABLES: tuple[str, ...] = ("et", "eta", "phi")
#: Truth columns: ET (GeV), eta, phi (rad) of photon 1 (leading in ET) and 2, and the event's pile-up mu.
TRUTH_COLUMNS: tuple[str, ...] = ("et1", "eta1", "phi1", "et2", "eta2", "phi2", "mu")
#: The conditions of the paper's flow: truth ET and eta of both photons and mu.
CONDITION_COLUMNS: tuple[str, ...] = ("et1", "et2", "eta1", "eta2", "mu")
#: Responses Delta_X = X_reco - X_true: the six targets a model learns.
RESPONSE_COLUMNS: tuple[str, ...] = tuple(f"d_{x}{i}" for i in (1, 2) for x in OBSERVABLES)
#: Reconstructed observables.
RECO_COLUMNS: tuple[str, ...] = tuple(f"{x}{i}_reco" for i in (1, 2) for x in OBSERVABLES)
#: Detector-response scenarios of the paper.
SCENARIOS: tuple[str, ...] = ("baseline", "correlation", "asymmetric")
#: How the correlation scenario mixes photon 1's draw into photon 2's (see the module docstring).
CORRELATION_FORMS: tuple[str, ...] = ("rho", "rho_squared")

#: Photon selection: both photons ET > 20 GeV and |eta| < 2.5.
ET_MIN_GEV = 20.0
ETA_MAX = 2.5
#: Pile-up: mu ~ U(0, 40) per event.
MU_RANGE: tuple[float, float] = (0.0, 40.0)
#: ET range over which the resolution polynomials are evaluated (ET is clamped into it for R only).
ET_DOMAIN_GEV: tuple[float, float] = (20.0, 250.0)
#: Asymmetric scenario: core fraction, tail width and tail mean in units of the core resolution.
CORE_FRACTION = 0.84
TAIL_WIDTH_FACTOR = 3.0
TAIL_MEAN_SHIFT = -3.0
#: Accepted events per truth shard. Fixed, so a file depends on (n, seed) and not on the worker count.
SHARD_EVENTS = 5000
#: Largest seed Pythia accepts (Random:seed).
PYTHIA_MAX_SEED = 900_000_000

#: Pythia 8 settings of the truth (module docstring says why).
PYTHIA_SETTINGS: tuple[str, ...] = (
    "Beams:idA = 2212",
    "Beams:idB = 2212",
    "Beams:eCM = 13000.",
    "HiggsSM:gg2H = on",
    "25:onMode = off",
    "25:onIfMatch = 22 22",
    "PartonLevel:MPI = off",
    "PartonLevel:ISR = on",
    "PartonLevel:FSR = on",
    "HadronLevel:all = off",
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Random:setSeed = on",
)


# ---------------------------------------------------------------------------------------------------------
# Resolution functions (paper eqs. 3.1-3.3; stand-in coefficients, see the module docstring)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolutionPolynomial:
    """One factor R(x) = (p0 + p1 x + p2 x^2 + p3 x^3 + p4 x^4) / C of a resolution function.

    Attributes:
        coefficients: (p0, ..., p4), lowest order first.
        normalisation: C.
    """

    coefficients: tuple[float, float, float, float, float]
    normalisation: float

    def __call__(self, x: ArrayLike) -> FloatArray:
        values = np.asarray(x, dtype=np.float64)
        return np.asarray(np.polynomial.polynomial.polyval(values, self.coefficients), dtype=np.float64) / self.normalisation


@dataclass(frozen=True)
class ResolutionFunction:
    """R_X(ET, eta, mu) = scale * R(ET) * R(eta) * R(mu) for one observable X.

    Attributes:
        scale: the overall width (GeV for ET, dimensionless for eta, rad for phi).
        et: factor in truth ET (GeV), evaluated at ET clamped to ``ET_DOMAIN_GEV``.
        eta: factor in truth eta.
        mu: factor in pile-up mu.
    """

    scale: float
    et: ResolutionPolynomial
    eta: ResolutionPolynomial
    mu: ResolutionPolynomial

    def __call__(self, et_gev: ArrayLike, eta: ArrayLike, mu: ArrayLike) -> FloatArray:
        et_clamped = np.clip(np.asarray(et_gev, dtype=np.float64), *ET_DOMAIN_GEV)
        return self.scale * self.et(et_clamped) * self.eta(eta) * self.mu(mu)


@dataclass(frozen=True)
class ResolutionModel:
    """The three resolution functions R_ET (GeV), R_eta and R_phi (rad); ``source`` says where they come from."""

    et: ResolutionFunction
    eta: ResolutionFunction
    phi: ResolutionFunction
    source: str

    def of(self, observable: str) -> ResolutionFunction:
        """The resolution function of ``observable`` ('et', 'eta' or 'phi')."""
        return {"et": self.et, "eta": self.eta, "phi": self.phi}[observable]


def _normalised(coefficients: tuple[float, float, float, float, float], reference: float) -> ResolutionPolynomial:
    """A polynomial normalised to 1 at ``reference`` (C = its value there)."""
    c = float(np.polynomial.polynomial.polyval(reference, coefficients))
    return ResolutionPolynomial(coefficients, c)


#: Reference point of the stand-in coefficients: every factor is 1 at ET = 50 GeV, eta = 0, mu = 20.
REFERENCE_POINT: tuple[float, float, float] = (50.0, 0.0, 20.0)
_ANGULAR_ET = (1.8, -0.014, 4.5e-5, -5.0e-8, 0.0)  # falls by ~3.6x from 50 to 250 GeV, monotonic on the domain

#: STAND-IN coefficients (not the paper's Table 2, which we could not obtain): ATLAS-like trends, see module doc.
STANDIN_RESOLUTION = ResolutionModel(
    et=ResolutionFunction(
        1.5,
        et=_normalised((1.0, 0.01, 1.0e-5, 0.0, 0.0), REFERENCE_POINT[0]),
        eta=_normalised((1.0, 0.0, 0.1, 0.0, 0.02), REFERENCE_POINT[1]),
        mu=_normalised((1.0, 0.01, 1.0e-4, 0.0, 0.0), REFERENCE_POINT[2]),
    ),
    eta=ResolutionFunction(
        0.0005,
        et=_normalised(_ANGULAR_ET, REFERENCE_POINT[0]),
        eta=_normalised((1.0, 0.0, 0.05, 0.0, 0.0), REFERENCE_POINT[1]),
        mu=_normalised((1.0, 0.005, 0.0, 0.0, 0.0), REFERENCE_POINT[2]),
    ),
    phi=ResolutionFunction(
        0.0003,
        et=_normalised(_ANGULAR_ET, REFERENCE_POINT[0]),
        eta=_normalised((1.0, 0.0, 0.08, 0.0, 0.0), REFERENCE_POINT[1]),
        mu=_normalised((1.0, 0.005, 0.0, 0.0, 0.0), REFERENCE_POINT[2]),
    ),
    source="STAND-IN coefficients (paper arXiv 2303.10148 Table 2 not available); see detgen.simulators.photons",
)


def resolution_et(et_gev: ArrayLike, eta: ArrayLike, mu: ArrayLike, *,
                  resolution: ResolutionModel = STANDIN_RESOLUTION) -> FloatArray:
    """Core ET resolution R_ET in GeV (paper eq. 3.1 form; stand-in coefficients by default)."""
    return resolution.et(et_gev, eta, mu)


def resolution_eta(et_gev: ArrayLike, eta: ArrayLike, mu: ArrayLike, *,
                   resolution: ResolutionModel = STANDIN_RESOLUTION) -> FloatArray:
    """Core eta resolution R_eta (paper eq. 3.2 form; stand-in coefficients by default)."""
    return resolution.eta(et_gev, eta, mu)


def resolution_phi(et_gev: ArrayLike, eta: ArrayLike, mu: ArrayLike, *,
                   resolution: ResolutionModel = STANDIN_RESOLUTION) -> FloatArray:
    """Core phi resolution R_phi in rad (paper eq. 3.3 form; stand-in coefficients by default)."""
    return resolution.phi(et_gev, eta, mu)


# ---------------------------------------------------------------------------------------------------------
# Detector response
# ---------------------------------------------------------------------------------------------------------


def _check_scenario(scenario: str, rho: float, correlation_form: str) -> None:
    if scenario not in SCENARIOS:
        raise ConfigError(f"scenario '{scenario}': expected one of {', '.join(SCENARIOS)}")
    if not (math.isfinite(rho) and -1.0 <= rho <= 1.0):
        raise ConfigError(f"rho = {rho}: expected a correlation coefficient in [-1, 1]")
    if correlation_form not in CORRELATION_FORMS:
        raise ConfigError(f"correlation_form '{correlation_form}': expected one of {', '.join(CORRELATION_FORMS)}")


def check_truth(truth: Mapping[str, Any], *, source: str = "truth") -> dict[str, FloatArray]:
    """The truth columns as float arrays, or a DataError naming the column and the bad value.

    Requires every column of ``TRUTH_COLUMNS``, finite values, ET > 0 of both photons (an event with fewer than
    two photons has no usable second photon) and mu >= 0.
    """
    missing = [c for c in TRUTH_COLUMNS if c not in truth]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(TRUTH_COLUMNS)}")
    columns = {c: np.asarray(truth[c], dtype=np.float64) for c in TRUTH_COLUMNS}
    for name, values in columns.items():
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(f"{source}: column '{name}' has {int(bad.sum())} NaN/inf value(s) "
                            f"(first at row {int(np.argmax(bad))}); expected finite numbers")
    for name in ("et1", "et2"):
        bad = columns[name] <= 0
        if bad.any():
            raise DataError(f"{source}: column '{name}' has {int(bad.sum())} value(s) <= 0 (first at row "
                            f"{int(np.argmax(bad))}); expected two photons with ET > 0 GeV in every event")
    if (columns["mu"] < 0).any():
        raise DataError(f"{source}: column 'mu' has {int((columns['mu'] < 0).sum())} negative value(s); "
                        "expected pile-up mu >= 0")
    return columns


def _unit_draws(n: int, scenario: str, rho: float, correlation_form: str,
                tail_observables: Sequence[str], rng: np.random.Generator) -> FloatArray:
    """(n, 6) responses in units of each photon's core resolution, columns in ``RESPONSE_COLUMNS`` order."""
    z = rng.standard_normal((n, 6))
    if scenario == "correlation":
        mix = rho if correlation_form == "rho" else rho * rho
        z[:, 3:] = mix * z[:, :3] + math.sqrt(max(0.0, 1.0 - rho * rho)) * z[:, 3:]
    elif scenario == "asymmetric":
        in_tail = rng.random((n, 6)) >= CORE_FRACTION
        for k, observable in enumerate(OBSERVABLES):
            if observable not in tail_observables:
                continue
            for col in (k, k + 3):
                rows = in_tail[:, col]
                z[rows, col] = TAIL_MEAN_SHIFT + TAIL_WIDTH_FACTOR * z[rows, col]
    return z


def smear_photons(truth: Mapping[str, Any], *, scenario: str = "baseline", rho: float = 0.5,
                  rng: np.random.Generator | int | None = None, correlation_form: str = "rho",
                  tail_observables: Sequence[str] = ("et",),
                  resolution: ResolutionModel = STANDIN_RESOLUTION) -> dict[str, FloatArray]:
    """The detector response alone: responses ``d_*`` and reconstructed ``*_reco`` columns for a truth table.

    Args:
        truth: a table with ``TRUTH_COLUMNS`` (ET in GeV, eta, phi in rad, mu).
        scenario: 'baseline', 'correlation' or 'asymmetric' (module docstring).
        rho: the correlation coefficient of the correlation scenario (ignored otherwise).
        rng: a numpy Generator or a seed.
        correlation_form: 'rho' (correlation = rho, widths kept) or 'rho_squared' (PHYSICS.md's formula literally).
        tail_observables: observables with a tail in the asymmetric scenario (subset of 'et', 'eta', 'phi').
        resolution: the resolution functions (default: the stand-in coefficients).

    Returns:
        ``RESPONSE_COLUMNS`` and ``RECO_COLUMNS`` as float64 arrays.

    Example:
        >>> t = {"et1": [60.0], "eta1": [0.1], "phi1": [3.1], "et2": [40.0], "eta2": [-1.0], "phi2": [0.0], "mu": [20.0]}
        >>> sorted(smear_photons(t, rng=1))[:2]
        ['d_et1', 'd_et2']
    """
    _check_scenario(scenario, rho, correlation_form)
    unknown = [o for o in tail_observables if o not in OBSERVABLES]
    if unknown:
        raise ConfigError(f"tail_observables {unknown}: expected names from {', '.join(OBSERVABLES)}")
    columns = check_truth(truth)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = columns["mu"].size
    z = _unit_draws(n, scenario, rho, correlation_form, tail_observables, generator)
    out: dict[str, FloatArray] = {}
    for i in (1, 2):
        et, eta, mu = columns[f"et{i}"], columns[f"eta{i}"], columns["mu"]
        for k, observable in enumerate(OBSERVABLES):
            delta = z[:, 3 * (i - 1) + k] * resolution.of(observable)(et, eta, mu)
            out[f"d_{observable}{i}"] = delta
            reco = columns[f"{observable}{i}"] + delta
            if observable == "phi":
                reco = (reco + np.pi) % (2 * np.pi) - np.pi
            out[f"{observable}{i}_reco"] = reco
    return {name: out[name] for name in (*RESPONSE_COLUMNS, *RECO_COLUMNS)}


# ---------------------------------------------------------------------------------------------------------
# Pythia truth
# ---------------------------------------------------------------------------------------------------------


def _import_pythia() -> Any:
    try:
        import pythia8mc
    except ImportError as exc:
        raise ConfigError(
            "photon truth needs Pythia 8: pip install 'detgen[pythia]' (pythia8mc==8.317.2)"
        ) from exc
    return pythia8mc


def _pythia_seed(seed_sequence: np.random.SeedSequence) -> int:
    return int(seed_sequence.generate_state(1, dtype=np.uint64)[0] % PYTHIA_MAX_SEED) + 1


def _higgs_photons(event: Any) -> tuple[Any, Any] | None:
    """The two decay photons of the last Higgs copy (searched from the end of the record), or None."""
    for j in range(event.size() - 1, 0, -1):
        particle = event[j]
        if particle.id() == 25 and particle.daughter1() > 0:
            first, second = event[particle.daughter1()], event[particle.daughter2()]
            if first.id() == 22 and second.id() == 22:
                return first, second
    return None


def generate_truth_shard(n_accepted: int, seed_sequence: np.random.SeedSequence) -> tuple[dict[str, FloatArray],
                                                                                               dict[str, int]]:
    """``n_accepted`` selected H -> gamma gamma events (truth columns) from one seeded Pythia instance."""
    pythia8mc = _import_pythia()
    pythia_seq, mu_seq = seed_sequence.spawn(2)
    pythia = pythia8mc.Pythia("", False)
    for setting in (*PYTHIA_SETTINGS, f"Random:seed = {_pythia_seed(pythia_seq)}"):
        if not pythia.readString(setting):
            raise ConfigError(f"Pythia rejected the setting '{setting}'")
    if not pythia.init():
        raise ConfigError("Pythia failed to initialise with detgen.simulators.photons.PYTHIA_SETTINGS")
    values = np.empty((n_accepted, 6))
    counts = {"events_generated": 0, "events_rejected": 0, "pythia_failures": 0}
    kept = 0
    while kept < n_accepted:
        if not pythia.next():
            counts["pythia_failures"] += 1
            if counts["pythia_failures"] > 100 + n_accepted:
                raise ConfigError("Pythia failed on most events; check PYTHIA_SETTINGS")
            continue
        counts["events_generated"] += 1
        photons = _higgs_photons(pythia.event)
        if photons is None:
            counts["events_rejected"] += 1
            continue
        kinematics = sorted(((p.pT(), p.eta(), p.phi()) for p in photons), reverse=True)
        if kinematics[1][0] <= ET_MIN_GEV or max(abs(kinematics[0][1]), abs(kinematics[1][1])) >= ETA_MAX:
            counts["events_rejected"] += 1
            continue
        values[kept] = (*kinematics[0], *kinematics[1])
        kept += 1
    mu = np.random.default_rng(mu_seq).uniform(*MU_RANGE, n_accepted)
    table = {name: values[:, k].copy() for k, name in enumerate(TRUTH_COLUMNS[:6])}
    table["mu"] = mu
    return table, counts


def _shard_sizes(n: int) -> list[int]:
    full, rest = divmod(n, SHARD_EVENTS)
    return [SHARD_EVENTS] * full + ([rest] if rest else [])


def generate_truth(n: int, *, seed: int = 0, workers: int | None = None,
                   progress: bool = False) -> tuple[dict[str, FloatArray], dict[str, int]]:
    """``n`` selected H -> gamma gamma events of Pythia truth, sharded over processes.

    The events come in shards of ``SHARD_EVENTS`` accepted events, each from its own Pythia seed derived from
    ``seed`` by ``numpy.random.SeedSequence``, so the result depends only on ``n`` and ``seed``, not on
    ``workers`` (None: up to ``os.cpu_count()`` processes; 1: in this process).
    """
    if n <= 0:
        raise DataError(f"n = {n}: expected a positive number of events")
    if seed < 0:
        raise ConfigError(f"seed = {seed}: expected a non-negative integer")
    sizes = _shard_sizes(n)
    shard_seeds = np.random.SeedSequence(seed).spawn(2)[0].spawn(len(sizes))
    n_workers = min(len(sizes), workers if workers is not None else (os.cpu_count() or 1))
    if n_workers < 1:
        raise ConfigError(f"workers = {workers}: expected at least 1")
    from tqdm.auto import tqdm

    bar = tqdm(total=n, unit="event", desc="pythia H->yy", disable=not progress)
    results: list[tuple[dict[str, FloatArray], dict[str, int]]] = []
    try:
        if n_workers == 1:
            for size, seq in zip(sizes, shard_seeds):
                results.append(generate_truth_shard(size, seq))
                bar.update(size)
        else:
            # fork where available: spawn/forkserver re-import the caller's __main__, which breaks scripts
            # without an ``if __name__ == "__main__"`` guard; the workers use only numpy and Pythia
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context(method)) as pool:
                futures = [pool.submit(generate_truth_shard, size, seq) for size, seq in zip(sizes, shard_seeds)]
                for size, future in zip(sizes, futures):
                    results.append(future.result())
                    bar.update(size)
    finally:
        bar.close()
    table = {name: np.concatenate([r[0][name] for r in results]) for name in TRUTH_COLUMNS}
    counts = {key: sum(r[1][key] for r in results) for key in results[0][1]}
    counts["shards"] = len(sizes)
    return table, counts


def simulate_photons(n: int, *, scenario: str = "baseline", rho: float = 0.5, seed: int = 0,
                     workers: int | None = None, progress: bool = False, correlation_form: str = "rho",
                     tail_observables: Sequence[str] = ("et",),
                     resolution: ResolutionModel = STANDIN_RESOLUTION) -> tuple[dict[str, FloatArray], dict[str, Any]]:
    """``n`` H -> gamma gamma events: Pythia truth, pile-up and the detector response of ``scenario``.

    Returns:
        (table, info): the table has ``TRUTH_COLUMNS``, ``RECO_COLUMNS`` and ``RESPONSE_COLUMNS``; info counts
        generated, rejected and failed Pythia events, photons above the ET domain of the resolution
        polynomials and reconstructed ET <= 0, and records the scenario, rho and the coefficient source.
    """
    _check_scenario(scenario, rho, correlation_form)
    truth, counts = generate_truth(n, seed=seed, workers=workers, progress=progress)
    smear_seq = np.random.SeedSequence(seed).spawn(2)[1]
    response = smear_photons(truth, scenario=scenario, rho=rho, rng=np.random.default_rng(smear_seq),
                             correlation_form=correlation_form, tail_observables=tail_observables,
                             resolution=resolution)
    table = {**truth, **response}
    info: dict[str, Any] = {"scenario": scenario, **counts}
    if scenario == "correlation":
        info["rho"] = rho
        info["correlation_form"] = correlation_form
    if scenario == "asymmetric":
        info["tail_observables"] = ",".join(tail_observables)
    info["photons_above_et_domain"] = int((truth["et1"] > ET_DOMAIN_GEV[1]).sum()
                                          + (truth["et2"] > ET_DOMAIN_GEV[1]).sum())
    info["reco_et_nonpositive"] = int((response["et1_reco"] <= 0).sum() + (response["et2_reco"] <= 0).sum())
    info["resolution"] = "stand-in" if resolution is STANDIN_RESOLUTION else resolution.source
    return table, info


# ---------------------------------------------------------------------------------------------------------
# CLI hooks (detgen simulate photons)
# ---------------------------------------------------------------------------------------------------------

CLI_HELP = "ATLAS-like photon response in Pythia 8 H -> gamma gamma events (truth, reco and responses)"


def add_cli_arguments(parser: Any) -> None:
    """Options of ``detgen simulate photons`` beyond the common --n, --seed, -o."""
    parser.add_argument("--scenario", default="baseline", choices=SCENARIOS)
    parser.add_argument("--rho", type=float, default=0.5, help="correlation of the two photons' responses")
    parser.add_argument("--correlation-form", default="rho", choices=CORRELATION_FORMS,
                        help="rho: correlation = rho (default); rho_squared: PHYSICS.md's formula literally")
    parser.add_argument("--workers", type=int, default=None, help="processes for the Pythia truth (default: all cores)")


def simulate_cli(args: Any, *, progress: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    return simulate_photons(args.n, scenario=args.scenario, rho=args.rho, seed=args.seed, workers=args.workers,
                            progress=progress, correlation_form=args.correlation_form)
