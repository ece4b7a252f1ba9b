"""ATLAS-like photons benchmark: CNF vs distilled student vs smearing baseline vs target, and throughput.

    python benchmarks/photons.py --out bench_out/photons [--n 200000] [--epochs 40] [--student-epochs 20]
    python benchmarks/photons.py --quick --out bench_out/photons_quick      # a couple of minutes

1. Pythia 8 truth (pp -> H -> gamma gamma, ``generate_truth``), generated once and shared by every scenario;
2. per scenario (baseline, correlation rho = 0.5 and 1.0, asymmetric) the detector response (``smear_photons``);
3. train the CNF (configs/photons_cnf.yaml), its IAF student (configs/photons_student.yaml) and the smearing
   baseline (configs/photons_smearing.yaml) on the same file; training wall time of each; with
   ``--models ...,cnf_rqs`` also the spline variant of the CNF (configs/photons_cnf_rqs.yaml), ``cnf_noise``
   the CNF with ``model.target_noise`` (``--target-noise``, a fraction of each target's spread);
4. generate on the held-out test split with each and ``validate_photons`` against it; a ``reference`` column
   validates an independent smearing of the same test truth (same scenario, another seed): the statistical floor
   of every metric at this sample size;
5. events/s of every sampler side by side in this one process on the same conditions: the teacher CNF (zuko's
   inverse, detgen's plain-tensor inverse, compiled), the student (eager, compiled), the smearing baseline, and
   the truth + smearing chain (Pythia truth, measured in step 1, then ``smear_photons``).
6. with ``--test-events N``: an independent Pythia truth of N events (another seed) smeared with each scenario,
   every trained model generated on it and validated, with its own reference column. The per-bin targets (2 %
   resolution, 0.02 correlation) sit below the statistical floor of a 10 % test split of a few 10^5 events;
   a large independent test sample resolves them without training on more events.
Writes results.json and results.md into --out (re-running resumes finished steps from results.json;
``--remeasure-throughput`` repeats step 5 only, e.g. when the machine is quieter).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detgen.config import Config, load_config
from detgen.dataset import split_table
from detgen.generation import generate
from detgen.io import read_table, write_table
from detgen.models.base import Sampler
from detgen.models.flows import FlowGenerator
from detgen.runs import load_run
from detgen.simulators.photons import generate_truth, smear_photons
from detgen.training import train
from detgen.validation.photons import SUMMARY_KEYS, validate_photons
from timing import best_rate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: name -> (smear_photons scenario, rho)
SCENARIOS: dict[str, tuple[str, float]] = {
    "baseline": ("baseline", 0.5),
    "correlation_0.5": ("correlation", 0.5),
    "correlation_1.0": ("correlation", 1.0),
    "asymmetric": ("asymmetric", 0.5),
}
MODELS = ("cnf", "student", "smearing")
#: Models trained only when --models names them (not in the throughput step): the spline variant of the CNF
#: (configs/photons_cnf_rqs.yaml, its own epochs) and the CNF trained with target noise (--target-noise)
EXTRA_MODELS = ("cnf_rqs", "cnf_noise")
#: The issue's fidelity targets (benchmark, not timed tests): metric -> largest passing value.
TARGETS = {"max_rel_resolution_dev": 0.02, "max_abs_corr_dev": 0.02, "tail_fraction_rel_dev": 0.05,
           "mgg_mean_dev_gev": 0.05, "mgg_sd_rel_dev": 0.02}


def sampler_rate(generator: torch.nn.Module, run: Any, table: dict[str, np.ndarray], *, chunk: int = 8192,
                 compiled: bool = False) -> float:
    """Events/s of ``generator`` inside the run's physical-units sampler, conditions fed in ``chunk`` rows."""
    sampler: Any = Sampler(generator, run.preprocessor, run.model.noise_dim).eval()
    c = torch.from_numpy(run.preprocessor.condition_array(table, source="throughput")).float()
    z = torch.randn(c.shape[0], run.model.noise_dim)
    if compiled:
        sampler = torch.compile(sampler, dynamic=True)

    def go() -> None:
        with torch.inference_mode():
            for s in range(0, c.shape[0], chunk):
                sampler(z[s : s + chunk], c[s : s + chunk])

    if compiled:
        go()  # compile outside the timed repeats
    return best_rate(go, c.shape[0])


def configs(args: argparse.Namespace, teacher_dir: Path) -> dict[str, Config]:
    cnf = load_config(CONFIGS / "photons_cnf.yaml").replace_training(epochs=args.epochs, batch_size=args.batch_size)
    student = load_config(CONFIGS / "photons_student.yaml")
    student = dataclasses.replace(student, model=dataclasses.replace(student.model, teacher=str(teacher_dir)))
    student = student.replace_training(epochs=args.student_epochs, batch_size=args.batch_size)
    rqs = load_config(CONFIGS / "photons_cnf_rqs.yaml").replace_training(batch_size=args.batch_size)
    if args.quick:
        rqs = rqs.replace_training(epochs=args.epochs)
    noisy = dataclasses.replace(cnf, model=dataclasses.replace(cnf.model, target_noise=args.target_noise))
    return {"cnf": cnf, "student": student, "smearing": load_config(CONFIGS / "photons_smearing.yaml"),
            "cnf_rqs": rqs, "cnf_noise": noisy}


def truth_step(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, np.ndarray]:
    path = args.out / "truth.parquet"
    if path.exists() and "truth" in results:
        return read_table(path)
    started = time.perf_counter()
    truth, counts = generate_truth(args.n, seed=args.seed, workers=args.workers, progress=args.progress)
    seconds = time.perf_counter() - started
    write_table(path, truth)
    results["truth"] = {"events": args.n, "seconds": seconds, "events_per_second": args.n / seconds,
                        "workers": args.workers, "counts": counts}
    return truth


def scenario_step(name: str, truth: dict[str, np.ndarray], args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Smear, train the three models, generate on the test split, validate every one (and the reference)."""
    scenario, rho = SCENARIOS[name]
    folder = args.out / name
    folder.mkdir(parents=True, exist_ok=True)
    entry = results.setdefault("scenarios", {}).setdefault(name, {"scenario": scenario, "rho": rho})
    data = folder / "data.parquet"
    if not data.exists():
        write_table(data, {**truth, **smear_photons(truth, scenario=scenario, rho=rho, rng=args.seed + 1)})
    all_configs = configs(args, folder / f"run_{args.teacher}")
    # every column of the held-out rows (the configs select no rows, so this is the split training used)
    assert not all_configs["cnf"].data.select
    test_truth = split_table(read_table(data), all_configs["cnf"].data)[2]
    if "reference" not in entry:  # the same test truth, smeared again: the statistical floor
        reference = {**test_truth, **smear_photons(test_truth, scenario=scenario, rho=rho, rng=args.seed + 99)}
        entry["reference"] = summary(validate_photons(test_truth, reference, folder / "report_reference",
                                                      label_generated="reference", make_figures=False))
    for model in args.models:
        if model in entry:
            continue
        run_dir = folder / f"run_{model}"
        started = time.perf_counter()
        train(all_configs[model], data, run_dir, resume=(run_dir / "meta.json").exists(), progress=args.progress,
              log=lambda line, tag=f"[{name} {model}]": print(f"{tag} {line}", flush=True))
        train_seconds = time.perf_counter() - started
        generated = folder / f"generated_{model}.parquet"
        info = generate(run_dir, data, generated, split="test", seed=args.seed + 7, progress=False, log=lambda _: None)
        generated_table = read_table(generated)
        # `generate --split test` keeps only the run's columns: take the rest (phi) from the same test rows
        if not np.array_equal(generated_table["et1"], test_truth["et1"]):
            raise RuntimeError(f"{generated}: rows are not the test split's rows in order")
        generated_table = {**test_truth, **generated_table}
        metrics = validate_photons(test_truth, generated_table, folder / f"report_{model}",
                                   label_generated=model, make_figures=args.figures)
        meta = json.loads((run_dir / "meta.json").read_text())
        entry[model] = {**summary(metrics), "train_seconds": train_seconds, "best_epoch": meta.get("best_epoch"),
                        "epochs_completed": meta.get("epochs_completed"),
                        "rows_outside_tanh_domain": meta.get("rows_outside_tanh_domain"),
                        "target_noise_scale": meta.get("target_noise_scale"),
                        **({"teacher": args.teacher} if model == "student" else {}),
                        "generate_rows_per_second": info["rows_per_second"]}
        save(args, results)


def independent_test_step(name: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Every trained model of ``name`` on an independent truth of ``--test-events`` events, with its reference."""
    scenario, rho = SCENARIOS[name]
    folder = args.out / name
    n = args.test_events
    truth_path = args.out / f"truth_test_{n}.parquet"
    block = results.setdefault("independent_test", {}).setdefault(str(n), {"events": n, "seed": args.seed + 1000})
    if not truth_path.exists():
        started = time.perf_counter()
        truth, counts = generate_truth(n, seed=args.seed + 1000, workers=args.workers, progress=args.progress)
        write_table(truth_path, truth)
        block.update(seconds=time.perf_counter() - started, counts=counts)
    truth = read_table(truth_path)
    entry = block.setdefault("scenarios", {}).setdefault(name, {"scenario": scenario, "rho": rho})
    data = folder / f"test_{n}.parquet"
    if not data.exists():
        write_table(data, {**truth, **smear_photons(truth, scenario=scenario, rho=rho, rng=args.seed + 1001)})
    test_truth = read_table(data)
    if "reference" not in entry:
        reference = {**truth, **smear_photons(truth, scenario=scenario, rho=rho, rng=args.seed + 1099)}
        entry["reference"] = summary(validate_photons(test_truth, reference, folder / f"report_reference_test{n}",
                                                      label_generated="reference", make_figures=False))
        save(args, results)
    for model in args.models:
        if model in entry:
            continue
        generated = folder / f"generated_{model}_test{n}.parquet"
        info = generate(folder / f"run_{model}", data, generated, seed=args.seed + 1007, progress=False,
                        log=lambda _: None)
        metrics = validate_photons(test_truth, read_table(generated), folder / f"report_{model}_test{n}",
                                   label_generated=model, make_figures=args.figures)
        entry[model] = {**summary(metrics), "generate_rows_per_second": info["rows_per_second"]}
        save(args, results)


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline and per-component metrics worth tabulating (scalars only)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def throughput_step(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Events/s of every sampler on the same conditions, side by side in this process (the baseline scenario)."""
    folder = args.out / args.throughput_scenario
    data = read_table(folder / "data.parquet")
    rows = min(args.throughput_rows, len(data["mu"]))
    table = {k: v[:rows] for k, v in data.items()}
    speeds: dict[str, float] = {}
    cnf, student, smearing = (load_run(folder / f"run_{m}") for m in MODELS)
    speeds["cnf_zuko_inverse"] = sampler_rate(FlowGenerator(cnf.model.flow, final_tanh=True), cnf, table)
    speeds["cnf_detgen_inverse"] = sampler_rate(cnf.model.generator(), cnf, table)
    speeds["student"] = sampler_rate(student.model.generator(), student, table)
    speeds["smearing"] = sampler_rate(smearing.model.generator(), smearing, table)
    truth = {k: table[k] for k in ("et1", "eta1", "phi1", "et2", "eta2", "phi2", "mu")}
    speeds["smear_photons"] = best_rate(lambda: smear_photons(truth, scenario="baseline", rng=1), rows)
    if args.compile:
        started = time.perf_counter()
        speeds["cnf_detgen_inverse_compiled"] = sampler_rate(cnf.model.generator(), cnf, table, compiled=True)
        speeds["student_compiled"] = sampler_rate(student.model.generator(), student, table, compiled=True)
        results["compile_and_measure_seconds"] = time.perf_counter() - started
    pythia = results["truth"]["events_per_second"]
    speeds["pythia_truth"] = pythia
    speeds["truth_plus_smearing_chain"] = 1 / (1 / pythia + 1 / speeds["smear_photons"])
    results["events_per_second"] = speeds
    results["throughput_rows"] = rows
    results["throughput_torch_threads"] = torch.get_num_threads()


def save(args: argparse.Namespace, results: dict[str, Any]) -> None:
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / "results.md").write_text(markdown(results))


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Command: `{results['command']}`", "",
             f"Machine: {results['machine']}; load average at start {results.get('uptime_start', '?')}, "
             f"at end {results.get('uptime_end', '?')}", ""]
    truth = results.get("truth")
    if truth:
        lines += [f"Pythia truth: {truth['events']} events in {truth['seconds']:.0f} s "
                  f"({truth['events_per_second']:,.0f} events/s with {truth['workers']} worker processes)", ""]
    for name, entry in results.get("scenarios", {}).items():
        columns = ["target", "reference", *[m for m in (*MODELS, *EXTRA_MODELS) if m in entry]]
        lines += [f"### {name}", "", "| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for key in (*SUMMARY_KEYS, "resolution_bins_used"):
            cells = [_fmt(TARGETS.get(key))] + [_fmt(entry.get(c, {}).get(key)) for c in columns[1:]]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        for extra in ("train_seconds", "best_epoch", "epochs_completed"):
            lines.append(f"| {extra} | - | - | " + " | ".join(_fmt(entry.get(m, {}).get(extra)) for m in columns[2:]) + " |")
        outside = entry.get("cnf", {}).get("rows_outside_tanh_domain")
        if outside:
            lines.append(f"\nRows outside the tanh domain (left out of the CNF loss): train {outside['train']} of "
                         f"{outside['train_rows']}, validation {outside['val']} of {outside['val_rows']}.")
        lines.append("")
    for block in results.get("independent_test", {}).values():
        lines += [f"Independent test truth: {block['events']} Pythia events (seed {block['seed']}), the models "
                  "trained above", ""]
        for name, entry in block.get("scenarios", {}).items():
            columns = ["target", "reference", *[m for m in (*MODELS, *EXTRA_MODELS) if m in entry]]
            lines += [f"### {name} (independent test, {block['events']} events)", "",
                      "| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            for key in (*SUMMARY_KEYS, "resolution_bins_used"):
                cells = [_fmt(TARGETS.get(key))] + [_fmt(entry.get(c, {}).get(key)) for c in columns[1:]]
                lines.append(f"| {key} | " + " | ".join(cells) + " |")
            lines.append("")
    speeds = results.get("events_per_second")
    if speeds:
        lines += [f"Throughput ({results['throughput_rows']} events, {results['throughput_torch_threads']} torch "
                  "threads, sampler in 8192-event chunks, physical units in and out):", "",
                  "| sampler | events/s |", "|---|---|"]
        lines += [f"| {k} | {v:,.0f} |" for k, v in speeds.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out/photons"))
    parser.add_argument("--n", type=int, default=200_000, help="Pythia truth events (shared by every scenario)")
    parser.add_argument("--epochs", type=int, default=40, help="CNF epochs")
    parser.add_argument("--student-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of " + ",".join(SCENARIOS))
    parser.add_argument("--workers", type=int, default=2, help="processes for the Pythia truth")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--throughput-rows", type=int, default=200_000)
    parser.add_argument("--throughput-scenario", default="baseline")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rates")
    parser.add_argument("--figures", action="store_true", help="write the validation figures too")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a crowded machine)")
    parser.add_argument("--remeasure-throughput", action="store_true",
                        help="measure the throughput again (finished scenarios are reused from results.json)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated subset of " + ",".join(MODELS + EXTRA_MODELS) + " to train and validate "
                             "(default: " + ",".join(MODELS) + ")")
    parser.add_argument("--target-noise", type=float, default=0.05,
                        help="model.target_noise of the cnf_noise model (fraction of each target's standard deviation)")
    parser.add_argument("--teacher", choices=("cnf", "cnf_noise"), default="cnf",
                        help="the CNF the student is distilled from (name it in --models before the student; a finished one "
                             "is reused from results.json)")
    parser.add_argument("--test-events", type=int, default=0,
                        help="also validate every trained model on an independent truth of this many events")
    parser.add_argument("--quick", action="store_true", help="20k events, 3 + 2 epochs, baseline and asymmetric")
    args = parser.parse_args()
    if args.quick:
        args.n, args.epochs, args.student_epochs = 20_000, 3, 2
        args.scenarios = "baseline,asymmetric"
        args.throughput_rows = min(args.throughput_rows, 20_000)
    args.models = args.models.split(",")
    student_ok = "student" not in args.models or (
        args.teacher in args.models and args.models.index("student") > args.models.index(args.teacher))
    if any(m not in MODELS + EXTRA_MODELS for m in args.models) or not student_ok:
        parser.error(f"--models: expected names from {', '.join(MODELS + EXTRA_MODELS)}, the student after its "
                     f"teacher (--teacher {args.teacher})")
    names = args.scenarios.split(",")
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        parser.error(f"--scenarios: unknown {unknown}; expected names from {', '.join(SCENARIOS)}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(command="python benchmarks/photons.py " + " ".join(
        f"--{k.replace('_', '-')} {','.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()
        if k not in ("quick", "progress")),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        uptime_start=_load_average())
    truth = truth_step(args, results)
    save(args, results)
    for name in names:
        scenario_step(name, truth, args, results)
        measure = "events_per_second" not in results or args.remeasure_throughput
        if name == args.throughput_scenario and measure and set(MODELS) <= set(args.models):
            throughput_step(args, results)
            save(args, results)
        if args.test_events:
            independent_test_step(name, args, results)
    results["uptime_end"] = _load_average()
    save(args, results)
    print(markdown(results))


def _load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


if __name__ == "__main__":
    main()
