"""BESIII dE/dx benchmark: flow vs histogram baseline vs held-out truth, and sampling throughput.

    python benchmarks/dedx.py --out bench_out/dedx [--n-per-species 200000] [--epochs 15]

1. simulate pi+, K+ and p tracks with the reference simulator;
2. train the seed flow (configs/dedx_besiii.yaml restricted to those species, epochs/batch as given) and the
   histogram baseline (configs/dedx_histogram.yaml) on the same file;
3. generate on the held-out test split with each and validate both against it (detgen validate dedx);
4. measure tracks/s of the reference simulator, the histogram sampler, zuko's plain flow sampler and the
   detgen flow sampler on the same conditions, side by side in this one process.
Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from detgen.config import load_config
from detgen.generation import generate, read_conditions
from detgen.io import write_table
from detgen.models.flows import FlowGenerator
from detgen.runs import load_run
from detgen.simulators.dedx import simulate_dedx
from detgen.training import train
from detgen.validation.dedx import validate_dedx
from timing import best_rate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPECIES = ["pi+", "K+", "p"]
KEYS = ["pid_eff_chi2_ndf", "misid_chi2_ndf", "classifier_auc", "mean_wasserstein", "max_ks"]


def sampler_rate(generator: torch.nn.Module, run, table, chunk: int, compiled: bool = False) -> float:
    """Tracks/s of a generator inside the run's sampler, conditions fed in chunks of `chunk` rows."""
    from detgen.models.base import Sampler

    sampler = Sampler(generator, run.preprocessor, run.model.noise_dim).eval()
    c = torch.from_numpy(run.preprocessor.condition_array(table, source="bench")).float()
    z = torch.randn(c.shape[0], 1)
    if compiled:
        sampler = torch.compile(sampler, dynamic=True)
        with torch.inference_mode():  # compile outside the timed loop (its time is reported separately)
            for start in range(0, c.shape[0], chunk):
                sampler(z[start : start + chunk], c[start : start + chunk])

    def go() -> None:
        with torch.inference_mode():
            for s in range(0, c.shape[0], chunk):
                sampler(z[s : s + chunk], c[s : s + chunk])

    return best_rate(go, c.shape[0])


def training_step_rates(batch_size: int = 512, steps: int = 60) -> dict[str, float]:
    """Adam steps/s of one seed-architecture flow with zuko's log_prob and with detgen's batched one."""
    from detgen.config import FlowConfig
    from detgen.models.flows import ConditionalFlow

    torch.manual_seed(0)
    flow = ConditionalFlow(n_targets=1, n_conditions=3, config=FlowConfig())
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    x, c = torch.randn(batch_size, 1), torch.randn(batch_size, 3)
    paths = {"zuko_log_prob": lambda: flow.flow(c).log_prob(x), "detgen_log_prob": lambda: flow.log_prob(x, c)}
    rates = {}
    for name, log_prob in paths.items():
        def step(log_prob=log_prob) -> None:
            for _ in range(steps):
                loss = -log_prob().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        rates[name] = best_rate(step, steps)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out/dedx"))
    parser.add_argument("--n-per-species", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--step-epochs", type=int, default=5, help="halve the learning rate every N epochs")
    parser.add_argument("--throughput-rows", type=int, default=1_000_000)
    parser.add_argument("--bound", type=float, default=None, help="override the flow's spline domain (model.bound)")
    parser.add_argument("--phase", choices=("all", "fidelity", "throughput"), default="all",
                        help="throughput reuses the runs a fidelity phase left in --out")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}
    command = "python benchmarks/dedx.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    results.update({f"command_{args.phase}": command,
                    "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
                    "torch": torch.__version__})
    if args.phase in ("all", "fidelity"):
        fidelity(args, results)
    if args.phase in ("all", "throughput"):
        throughput(args, results)
    results_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


def fidelity(args: argparse.Namespace, results: dict) -> None:
    """Train flow and baseline, generate on the held-out split, validate both."""
    out = args.out

    data = out / "dedx.parquet"
    started = time.perf_counter()
    table, sim_info = simulate_dedx(args.n_per_species * len(SPECIES), seed=11, species=SPECIES)
    results["simulate_info"] = sim_info
    write_table(data, table)
    results["simulate_seconds"] = time.perf_counter() - started

    flow_config = load_config(CONFIGS / "dedx_besiii.yaml")
    flow_config = dataclasses.replace(flow_config, data=dataclasses.replace(flow_config.data, groups=SPECIES))
    if args.bound is not None:
        flow_config = dataclasses.replace(flow_config, model=dataclasses.replace(flow_config.model, bound=args.bound))
    flow_config = flow_config.replace_training(
        epochs=args.epochs, batch_size=args.batch_size,
        schedule=dataclasses.replace(flow_config.training.schedule, step_epochs=args.step_epochs))
    hist_config = load_config(CONFIGS / "dedx_histogram.yaml")
    hist_config = dataclasses.replace(hist_config, data=dataclasses.replace(hist_config.data, groups=SPECIES))

    truth_path = out / "truth_test.parquet"
    for label, config in (("flow", flow_config), ("histogram", hist_config)):
        run_dir = out / f"run_{label}"
        started = time.perf_counter()
        train(config, data, run_dir, resume=(run_dir / "meta.json").exists(), progress=False)
        results[f"train_seconds_{label}"] = time.perf_counter() - started
        run = load_run(run_dir)
        if not truth_path.exists():
            write_table(truth_path, read_conditions(run, data, split="test"))
        generated = out / f"generated_{label}.parquet"
        generate(run_dir, data, generated, split="test", progress=False)
        from detgen.io import read_table

        metrics = validate_dedx(read_table(truth_path), read_table(generated), out / f"report_{label}")
        results[label] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}



def throughput(args: argparse.Namespace, results: dict) -> None:
    """Tracks/s of every sampler, side by side in this one process, on the same conditions."""
    out = args.out
    rows = args.throughput_rows
    results["tracks_per_second"] = {
        "reference_simulator": best_rate(lambda: simulate_dedx(rows, seed=3, species=SPECIES), rows, repeats=1)}
    cond_table, _ = simulate_dedx(rows, seed=4, species=SPECIES)
    flow_run, hist_run = load_run(out / "run_flow"), load_run(out / "run_histogram")
    speeds = results["tracks_per_second"]
    speeds["histogram_sampler_chunk8192"] = sampler_rate(hist_run.model.generator(), hist_run, cond_table, 8192)
    from detgen.models.base import GroupedGenerator

    zuko_members = {g: FlowGenerator(m.flow) for g, m in zip(flow_run.model.group_names, flow_run.model.members.values())}
    zuko_generator = GroupedGenerator(zuko_members, 1)
    for chunk in (8192, 65536):
        speeds[f"zuko_flow_sampler_chunk{chunk}"] = sampler_rate(zuko_generator, flow_run, cond_table, chunk)
    for chunk in (2048, 8192, 65536):
        speeds[f"detgen_flow_sampler_chunk{chunk}"] = sampler_rate(flow_run.model.generator(), flow_run, cond_table, chunk)
    started = time.perf_counter()
    speeds["detgen_flow_sampler_compiled_chunk8192"] = sampler_rate(
        flow_run.model.generator(), flow_run, cond_table, 8192, compiled=True)
    results["compiled_sampler_seconds_including_compile"] = time.perf_counter() - started
    results["training_steps_per_second_batch512"] = training_step_rates()
    cond_path = out / "throughput_conditions.parquet"
    write_table(cond_path, cond_table)
    gen_info = generate(out / "run_flow", cond_path, out / "throughput_generated.parquet", progress=False)
    speeds["detgen_generate_command_end_to_end"] = gen_info["rows_per_second"]


def markdown(results: dict) -> str:
    commands = [f"`{v}`" for k, v in sorted(results.items()) if k.startswith("command_")]
    lines = ["Commands: " + "; ".join(commands), "", f"Machine: {results['machine']}, torch {results['torch']}", ""]
    if "flow" in results and "histogram" in results:
        lines += ["| metric | flow | histogram baseline |", "|---|---|---|"]
        breakdown = sorted(k for k in results["flow"] if k.startswith(("pid_eff_chi2_ndf_", "misid_chi2_ndf_")))
        for key in KEYS + breakdown:
            f, h = results["flow"].get(key, np.nan), results["histogram"].get(key, np.nan)
            lines.append(f"| {key} | {f:.3f} | {h:.3f} |")
        lines += ["", f"Training wall time: flow {results['train_seconds_flow']:.0f} s, "
                  f"histogram {results['train_seconds_histogram']:.0f} s", ""]
    if "tracks_per_second" in results:
        lines += ["| sampler | tracks/s |", "|---|---|"]
        lines += [f"| {key} | {value:,.0f} |" for key, value in results["tracks_per_second"].items()]
    if "training_steps_per_second_batch512" in results:
        lines += ["", "| training step (batch 512, one seed flow) | steps/s |", "|---|---|"]
        lines += [f"| {key} | {value:.1f} |" for key, value in results["training_steps_per_second_batch512"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
