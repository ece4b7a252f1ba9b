"""The ``detgen`` command: one thin function per verb; errors become one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from detgen.errors import DetgenError

SIMULATORS = ("dedx",)
VALIDATORS = ("dedx",)


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress


def cmd_simulate(args: argparse.Namespace) -> None:
    from detgen.io import write_table

    if args.system == "dedx":
        from detgen.simulators.dedx import simulate_dedx

        species = [s for s in args.species.split(",") if s] if args.species else None
        table, info = simulate_dedx(args.n, seed=args.seed, species=species, progress=_progress(args))
    write_table(args.output, table)
    extra = ", ".join(f"{k} {v}" for k, v in info.items())
    print(f"wrote {len(next(iter(table.values())))} rows to {args.output}" + (f" ({extra})" if extra else ""))


def cmd_train(args: argparse.Namespace) -> None:
    from detgen.config import load_config
    from detgen.training import train

    config = load_config(args.config)
    train(config, args.data, args.output, epochs=args.epochs, seed=args.seed, device=args.device,
          resume=args.resume, progress=_progress(args))


def cmd_generate(args: argparse.Namespace) -> None:
    from detgen.generation import generate

    generate(args.run_dir, args.conditions, args.output, seed=args.seed, batch_size=args.batch_size,
             device=args.device, split=args.split, compile=args.compile, progress=_progress(args))


def cmd_validate(args: argparse.Namespace) -> None:
    from detgen.io import read_table

    truth = read_table(args.truth)
    generated = read_table(args.generated)
    if args.system == "dedx":
        from detgen.validation.dedx import validate_dedx

        hypotheses = tuple(h for h in args.hypotheses.split(",") if h)
        metrics = validate_dedx(truth, generated, args.output, hypotheses=hypotheses, seed=args.seed)
    keys = [k for k in ("pid_eff_chi2_ndf", "misid_chi2_ndf", "classifier_auc", "mean_wasserstein") if k in metrics]
    for key in keys:
        print(f"{key:>20s}  {metrics[key]:.4f}")
    print(f"report: {Path(args.output) / 'report.html'}")


def cmd_export(args: argparse.Namespace) -> None:
    from detgen.export import export_onnx

    check = export_onnx(args.run_dir, args.output)
    print(f"wrote {args.output}; onnxruntime vs torch on {check['rows']} rows: "
          f"max abs diff {check['max_abs_diff']:.2e}, max rel diff {check['max_rel_diff']:.2e}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detgen", description="Learned detector simulation.")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("simulate", help="run a reference simulator with known truth")
    p.add_argument("system", choices=SIMULATORS)
    p.add_argument("--n", type=int, required=True, help="number of tracks/events")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--species", default=None, help="comma-separated species labels (default: all)")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_simulate)

    p = verbs.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config")
    p.add_argument("--data", required=True, help="Parquet, ROOT or HDF5 file")
    p.add_argument("-o", "--output", required=True, help="run dir to create (or resume)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N")
    p.add_argument("--resume", action="store_true", help="continue the run in -o from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("generate", help="generate targets for a conditions file with a trained run")
    p.add_argument("run_dir")
    p.add_argument("--conditions", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--device", default=None)
    p.add_argument("--split", default=None, choices=("train", "val", "test"),
                   help="use only this split of the run's training file as conditions")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the sampler (tens of seconds once; faster for large samples)")
    p.set_defaults(func=cmd_generate)

    p = verbs.add_parser("validate", help="compare generated with truth using the system's observables")
    p.add_argument("system", choices=VALIDATORS)
    p.add_argument("--truth", required=True)
    p.add_argument("--generated", required=True)
    p.add_argument("-o", "--output", required=True, help="report dir")
    p.add_argument("--hypotheses", default="pi,K,p", help="PID hypotheses (add e,mu as an option)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_validate)

    p = verbs.add_parser("export", help="export the sampler graph to ONNX")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DetgenError as exc:
        print(f"detgen {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"detgen {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
