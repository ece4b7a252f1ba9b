"""``make demo``: the whole dE/dx path end to end on the reference simulator, in a few minutes on 2 cores.

simulate -> train (flow, and the histogram baseline) -> generate on the held-out test split -> validate,
then print where the reports are and a table of their key numbers side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from detgen.cli import main as detgen

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
KEYS = ("pid_eff_chi2_ndf", "misid_chi2_ndf", "classifier_auc", "mean_wasserstein")


def step(title: str, argv: list[str]) -> None:
    print(f"\n== {title}\n$ detgen {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    code = detgen(argv)
    if code != 0:
        sys.exit(code)
    print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)


def run(out: Path, n_tracks: int, epochs: int | None) -> dict[str, dict[str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    data = out / "dedx.parquet"
    if not data.exists():
        step("simulate BESIII MDC dE/dx tracks (pi+, K+, p)",
             ["simulate", "dedx", "--n", str(n_tracks), "--species", "pi+,K+,p", "--seed", "1", "-o", str(data)])
    results: dict[str, dict[str, float]] = {}
    for label, config in (("flow", "dedx_demo.yaml"), ("histogram", "dedx_demo_histogram.yaml")):
        run_dir = out / f"run_{label}"
        train = ["train", str(CONFIGS / config), "--data", str(data), "-o", str(run_dir)]
        if (run_dir / "meta.json").exists():
            train.append("--resume")
        if epochs is not None and label == "flow":
            train += ["--epochs", str(epochs)]
        step(f"train the {label} model", train)
        generated = out / f"generated_{label}.parquet"
        step(f"generate with the {label} model on the test split",
             ["generate", str(run_dir), "--conditions", str(data), "--split", "test", "-o", str(generated)])
        truth = out / "truth_test.parquet"
        if not truth.exists():  # the held-out truth: the same test split with its simulated dE/dx
            from detgen.generation import read_conditions
            from detgen.io import write_table
            from detgen.runs import load_run

            write_table(truth, read_conditions(load_run(run_dir), data, split="test"))
        report = out / f"report_{label}"
        step(f"validate the {label} model against the held-out truth",
             ["validate", "dedx", "--truth", str(truth), "--generated", str(generated), "-o", str(report)])
        results[label] = json.loads((report / "metrics.json").read_text())
    return results


def print_table(results: dict[str, dict[str, float]], out: Path) -> None:
    print("\n== key numbers (held-out truth vs generated; chi2/ndf ~ 1 and AUC ~ 0.5 mean indistinguishable)")
    print(f"{'metric':>20s}  " + "  ".join(f"{label:>10s}" for label in results))
    for key in KEYS:
        print(f"{key:>20s}  " + "  ".join(f"{results[label].get(key, float('nan')):10.4f}" for label in results))
    for label in results:
        print(f"report ({label}): {out / f'report_{label}' / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--n", type=int, default=300_000, help="tracks to simulate")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo config's epochs")
    args = parser.parse_args(argv)
    print_table(run(args.out, args.n, args.epochs), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
