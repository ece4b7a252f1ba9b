"""BESIII EMC benchmark: the conditional GAN (+ regressor) versus held-out reference showers, and throughput.

    python benchmarks/emc.py --out bench_out/emc [--quick] [--n 125000] [--regressor-epochs 10] [--gan-epochs 30]

1. simulate ``--n`` e- showers with the reference simulator (``detgen.simulators.emc``);
2. train the regressor (configs/emc_regressor.yaml) and the GAN (configs/emc_gan.yaml, naming that regressor run)
   with the one trainer, wall time recorded; validate the regressor on the test split;
3. generate on the held-out test split and validate against it with ``validate_emc`` (every shower observable,
   per momentum range; classifier AUCs);
4. throughput in showers/s in this one process: the reference simulator, and the GAN sampler graph (torch, and
   the same graph exported to ONNX run by onnxruntime) at batch 1, 1024 and 65536.
``--quick`` (a few minutes): 12k showers, 2 + 2 epochs. Writes results.json and results.md into --out.
``--variant KEY=VALUE`` (repeatable) overrides a GAN config field for a setting comparison, e.g.
``--variant output=relu --variant training.lr=3e-4``; the overrides are recorded in results.json.
``--test-showers N`` (default 60000, 0 with ``--quick``) also validates on N newly simulated showers: the test
split has only a few hundred showers per momentum bin, where the separation floor is 0.05-0.2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from detgen.config import config_from_dict
from detgen.dataset import read_training_table, split_table
from detgen.generation import generate
from detgen.io import read_table, write_table
from detgen.runs import load_run
from detgen.simulators.emc import simulate_emc
from detgen.training import train
from detgen.validation.emc import MOMENTUM_EDGES_GEV, validate_emc
from detgen.validation.regressor import validate_regressor

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BATCHES = (1, 1024, 65536)
HEADLINE = ("max_separation_power", "worst_observable", "max_separation_power_all_momenta", "separation_floor_max",
            "separation_floor_max_per_bin", "classifier_auc_high_level", "classifier_auc_maps")


def load_yaml_config(name: str, **training: Any) -> dict[str, Any]:
    raw = yaml.safe_load((CONFIGS / name).read_text())
    raw["training"].update({k: v for k, v in training.items() if v is not None})
    return raw


def apply_variant(raw: dict[str, Any], settings: list[str]) -> None:
    """Apply ``KEY=VALUE`` overrides (``--variant``) to a raw config: KEY is ``section.field`` or a bare
    ``model`` field, VALUE is YAML (``0.5``, ``threshold``, ``[16, 8, 1]``). Unknown fields are left to the
    strict config loader, which names them."""
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise SystemExit(f"--variant {setting!r}: expected KEY=VALUE (e.g. model.output=threshold)")
        section, _, name = key.rpartition(".")
        section = section or "model"
        if section not in ("data", "model", "training"):
            raise SystemExit(f"--variant {setting!r}: section {section!r} (expected data, model or training)")
        raw.setdefault(section, {})[name] = yaml.safe_load(value)


def showers_per_second(fn: Any, rows: int, min_seconds: float = 2.0) -> float:
    """Rows per second of ``fn()`` (which makes ``rows`` showers), repeated for at least ``min_seconds``."""
    fn()  # warm-up
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < min_seconds:
        fn()
        calls += 1
    return rows * calls / (time.perf_counter() - started)


def fidelity(args: argparse.Namespace, results: dict[str, Any]) -> None:
    out = args.out
    data = out / "emc.h5"
    if not data.exists():
        started = time.perf_counter()
        table, info = simulate_emc(args.n, particle=args.particle, seed=1, progress=False)
        results["simulate_seconds"] = time.perf_counter() - started
        write_table(data, table, compression="gzip")
        results["simulate_info"] = info
    log = (out / "train.log").open("a")

    def to_log(line: str) -> None:
        log.write(line + "\n")
        log.flush()

    regressor_dir = out / "runs" / "regressor"
    if not (regressor_dir / "meta.json").exists():  # a finished regressor run is reused
        regressor_raw = load_yaml_config("emc_regressor.yaml", epochs=args.regressor_epochs,
                                         metric_rows=args.metric_rows)
        started = time.perf_counter()
        train(config_from_dict(regressor_raw), data, regressor_dir, progress=False, log=to_log)
        results["regressor_train_seconds"] = time.perf_counter() - started

    gan_raw = load_yaml_config("emc_gan.yaml", epochs=args.gan_epochs, metric_rows=args.metric_rows, lr=args.gan_lr)
    apply_variant(gan_raw, args.variant)
    results["gan_variant"] = list(args.variant)
    gan_raw["model"]["regressor_run"] = str(regressor_dir)
    started = time.perf_counter()
    train(config_from_dict(gan_raw), data, out / "runs" / "gan", progress=False, log=to_log)
    results["gan_train_seconds"] = time.perf_counter() - started


def evaluate(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Generate on the test split with the GAN run (best epoch so far) and validate against the truth."""
    out = args.out
    data, gan_dir = out / "emc.h5", out / "runs" / "gan"
    meta = json.loads((gan_dir / "meta.json").read_text())
    results["gan_meta"] = {k: v for k, v in meta.items() if k in ("best_epoch", "best_metric", "epochs_completed")}
    for name in ("regressor", "gan"):  # training wall time from the run's own history (also for a stopped run)
        with (out / "runs" / name / "history.csv").open() as f:
            results[f"{name}_epoch_seconds_total"] = sum(float(row["seconds"]) for row in csv.DictReader(f))
    regressor_dir = out / "runs" / "regressor"
    results["regressor"] = {k: v for k, v in validate_regressor(regressor_dir, data, split="test",
                            out_dir=out / "regressor_report").items() if "_bin" not in k}
    gan_raw = yaml.safe_load((gan_dir / "config.yaml").read_text())
    log = (out / "train.log").open("a")

    def to_log(line: str) -> None:
        log.write(line + "\n")
        log.flush()

    generated = out / "generated_test.h5"
    generate(gan_dir, data, generated, split="test", seed=11, progress=False, log=to_log)
    selected, _ = read_training_table(data, config_from_dict(gan_raw).data)
    truth = split_table(selected, config_from_dict(gan_raw).data)[2]
    generated_table = read_table(generated)
    metrics = validate_emc(truth, generated_table, out / "report", seed=0)
    results["validation"] = metrics
    results["crystals_per_shower"] = {"truth": crystal_bands(truth["map"]),
                                      "generated": crystal_bands(generated_table["map"])}
    if args.test_showers:
        independent_test(args, results, to_log)


def independent_test(args: argparse.Namespace, results: dict[str, Any], log: Any) -> None:
    """The GAN on ``--test-showers`` newly simulated reference showers (seed 1001), which the training never saw.

    The test split holds a few thousand showers, a few hundred per momentum bin, where the separation floor is
    0.05-0.2: too few to tell a model's per-bin error from noise. The simulator is cheap, so a large
    independent sample measures the per-bin separation (and its floor) properly.
    """
    n, seed = args.test_showers, 1001
    path = args.out / f"emc_test_{n}.h5"
    block = results.setdefault("independent_test", {}).setdefault(str(n), {"showers": n, "seed": seed})
    if not path.exists():
        started = time.perf_counter()
        table, _ = simulate_emc(n, particle=args.particle, seed=seed, progress=False)
        block["simulate_seconds"] = time.perf_counter() - started
        write_table(path, table, compression="gzip")
    generated = args.out / f"generated_test_{n}.h5"
    generate(args.out / "runs" / "gan", path, generated, seed=12, progress=False, log=log)
    truth, generated_table = read_table(path), read_table(generated)
    block["validation"] = validate_emc(truth, generated_table, args.out / f"report_test_{n}", seed=0)
    block["crystals_per_shower"] = {"truth": crystal_bands(truth["map"]),
                                    "generated": crystal_bands(generated_table["map"])}


#: Crystal energy bands (MeV) for the crystals-per-shower table: where the generated showers miss crystals.
BANDS_MEV = ((0.5, 2.0), (2.0, 10.0), (10.0, float("inf")))


def crystal_bands(maps: np.ndarray) -> dict[str, float]:
    """Mean crystals per shower at or above 0.5 MeV and per energy band, and the fraction of exact zeros."""
    maps = np.asarray(maps, dtype=np.float64)
    out = {"hits_ge_0.5": float((maps >= 0.5).sum() / len(maps))}
    for low, high in BANDS_MEV:
        out[f"hits_{low:g}_{high:g}"] = float(((maps >= low) & (maps < high)).sum() / len(maps))
    out["zero_fraction"] = float((maps == 0).mean())
    return out


def throughput(args: argparse.Namespace, results: dict[str, Any]) -> None:
    n_sim = args.simulator_rows
    rates: dict[str, float] = {}
    started = time.perf_counter()
    simulate_emc(n_sim, particle=args.particle, seed=5, progress=False)
    rates["simulator"] = n_sim / (time.perf_counter() - started)
    run = load_run(args.out / "runs" / "gan")
    table = read_table(args.out / "emc.h5", columns=run.preprocessor.input_columns)
    conditions = torch.from_numpy(run.preprocessor.condition_array(table, source="bench")).float()
    sampler = run.sampler()
    for batch in BATCHES:
        c = conditions[:batch] if batch <= len(conditions) else conditions[torch.arange(batch) % len(conditions)]
        z = torch.randn(batch, sampler.noise_dim)

        def sample(c: torch.Tensor = c, z: torch.Tensor = z) -> None:
            with torch.inference_mode():
                sampler(z, c)

        rates[f"gan_torch_batch{batch}"] = showers_per_second(sample, batch)
    try:
        import onnxruntime as ort

        from detgen.export import export_onnx

        onnx_path = args.out / "emc_gan.onnx"
        export_onnx(args.out / "runs" / "gan", onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        for batch in BATCHES:
            c = conditions[torch.arange(batch) % len(conditions)].numpy()
            z = np.random.default_rng(0).standard_normal((batch, sampler.noise_dim)).astype(np.float32)
            feed = {names[0]: z, names[1]: c}
            rates[f"gan_onnxruntime_batch{batch}"] = showers_per_second(lambda feed=feed: session.run(None, feed), batch)
    except Exception as error:  # report, do not hide: the torch numbers above stand on their own
        results["onnx_error"] = f"{type(error).__name__}: {error}"
    results["throughput_showers_per_second"] = rates
    best_gan = max(v for k, v in rates.items() if k.startswith("gan_"))
    results["gan_speedup_over_simulator"] = best_gan / rates["simulator"]


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# EMC benchmark ({results['mode']})", "", f"command: `{results['command']}`",
             f"load average before/after: {results['load_before']} / {results.get('load_after', '?')}",
             f"torch threads: {results['threads']}, {results['platform']}", ""]
    if "validation" in results:
        v = results["validation"]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v[k]} |" for k in HEADLINE if k in v]
        lines += [f"| regressor {k} | {val:.4g} |" for k, val in results["regressor"].items()
                  if isinstance(val, float) and k.endswith(("_mae", "_resolution", "l1_encoded"))]
        lines += [f"| regressor training, sum of epochs (s) | {results['regressor_epoch_seconds_total']:.0f} |",
                  f"| GAN training, sum of epochs (s) | {results['gan_epoch_seconds_total']:.0f} |",
                  f"| GAN epochs completed / best | {results['gan_meta']['epochs_completed']} / "
                  f"{results['gan_meta']['best_epoch']} |", ""]
        lines += validation_tables(v, results.get("crystals_per_shower"))
    for n, block in results.get("independent_test", {}).items():
        if "validation" not in block:
            continue
        v = block["validation"]
        lines += [f"## Independent test: {n} newly simulated showers (seed {block['seed']})", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v[k]} |" for k in HEADLINE if k in v]
        lines.append("")
        lines += validation_tables(v, block.get("crystals_per_shower"))
    if "throughput_showers_per_second" in results:
        lines += ["| sampler | showers/s |", "|---|---|"]
        lines += [f"| {k} | {v:,.0f} |" for k, v in results["throughput_showers_per_second"].items()]
        lines += [f"| GAN / simulator | {results['gan_speedup_over_simulator']:.1f}x |"]
    return "\n".join(lines) + "\n"


def validation_tables(v: dict[str, Any], bands: dict[str, dict[str, float]] | None) -> list[str]:
    """Per-observable, crystals-per-shower and per-momentum-bin tables of one ``validate_emc`` result."""
    lines: list[str] = []
    observables = [k[4:] for k in v if k.startswith("sep_") and not k[-3:-1] == "_p"]
    lines += ["| observable | separation power (all momenta) | worst momentum bin |", "|---|---|---|"]
    for name in observables:
        bins = {k: v[k] for k in v if k.startswith(f"sep_{name}_p") and k[len(f"sep_{name}_p"):].isdigit()}
        worst = max(bins, key=lambda k: v[k] if v[k] is not None else -1.0) if bins else None
        worst_text = f"{v[worst]:.4f} (p bin {worst.rsplit('_p', 1)[1]})" if worst and v[worst] is not None else "n/a"
        lines.append(f"| {name} | {v[f'sep_{name}']:.4f} | {worst_text} |")
    lines.append("")
    if bands:
        keys = list(bands["truth"])
        lines += ["| crystals per shower | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{bands[name][k]:.3g}" for k in keys) + " |"
                  for name in ("truth", "generated")]
        lines.append("")
    edges = MOMENTUM_EDGES_GEV
    lines += ["| momentum bin (GeV/c) | truth showers | max separation power | worst observable | floor (truth halves) |",
              "|---|---|---|---|---|"]
    for k in range(len(edges) - 1):
        seps = {name: v.get(f"sep_{name}_p{k}") for name in observables}
        seps = {name: x for name, x in seps.items() if x is not None}
        if seps:
            worst_name = max(seps, key=lambda name: seps[name])
            floor = v.get(f"separation_floor_p{k}")
            lines.append(f"| p{k}: {edges[k]:g}-{edges[k + 1]:g} | {v.get(f'n_truth_p{k}')} | "
                         f"{seps[worst_name]:.4f} | {worst_name} | {'n/a' if floor is None else f'{floor:.4f}'} |")
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out/emc"))
    parser.add_argument("--quick", action="store_true", help="12k showers, 2 + 2 epochs (a few minutes)")
    parser.add_argument("--n", type=int, default=125_000,
                        help="showers simulated for training/validation/test (80/10/10; the config's 20 epochs suit "
                             "~100k training showers)")
    parser.add_argument("--particle", default="e-")
    parser.add_argument("--regressor-epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--gan-epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--gan-lr", type=float, default=None, help="default: the config's")
    parser.add_argument("--metric-rows", type=int, default=None)
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="GAN config override, repeatable: model.output=threshold, training.lr=1e-4, "
                             "gate_temperature=0.3 (bare names are model fields; values are YAML)")
    parser.add_argument("--simulator-rows", type=int, default=2000)
    parser.add_argument("--test-showers", type=int, default=None,
                        help="also validate on this many newly simulated showers (seed 1001), for per-bin statistics "
                             "(default 60000; --quick: 0 = none)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--phase", choices=("all", "fidelity", "evaluate", "throughput"), default="all",
                        help="fidelity = simulate + train + evaluate; evaluate = generate + validate existing runs")
    args = parser.parse_args()
    if args.quick:
        args.n, args.regressor_epochs, args.gan_epochs = 12_000, args.regressor_epochs or 2, args.gan_epochs or 2
        args.metric_rows = args.metric_rows or 3000
    if args.test_showers is None:
        args.test_showers = 0 if args.quick else 60_000
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results.update(mode="quick" if args.quick else "full", command="python " + " ".join(os.sys.argv),  # type: ignore[attr-defined]
                   load_before=os.getloadavg(), threads=torch.get_num_threads(),
                   platform=f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    if args.phase in ("all", "fidelity"):
        fidelity(args, results)
    if args.phase in ("all", "fidelity", "evaluate"):
        evaluate(args, results)
    if args.phase in ("all", "throughput"):
        throughput(args, results)
    results["load_after"] = os.getloadavg()
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
