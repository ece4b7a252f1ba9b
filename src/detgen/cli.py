"""The ``detgen`` command: one thin function per verb; errors become one line and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from detgen.errors import DataError, DetgenError

#: ``detgen simulate SYSTEM``: the module of each reference simulator. A module provides ``CLI_HELP``,
#: ``add_cli_arguments(parser)`` (its own options) and ``simulate_cli(args, progress=) -> (table, info)``;
#: optionally ``write_cli_output(path, result) -> rows`` when its output is not one table (JUNO: two HDF5 groups).
SIMULATORS = {
    "dedx": "detgen.simulators.dedx",
    "photons": "detgen.simulators.photons",
    "juno": "detgen.simulators.juno",
    "emc": "detgen.simulators.emc",
}
#: ``detgen validate SYSTEM``: the observables module of each system. A module provides ``CLI_HELP``,
#: ``SUMMARY_KEYS``, ``add_cli_arguments(parser)`` and ``validate_cli(truth, generated, out, args) -> metrics``.
VALIDATORS = {
    "dedx": "detgen.validation.dedx",
    "photons": "detgen.validation.photons",
    "emc": "detgen.validation.emc",
    "juno": "detgen.validation.juno",
}


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress


def _system_args(args: argparse.Namespace, modules: dict[str, str], common: Callable[[argparse.ArgumentParser], None]
                 ) -> tuple[Any, argparse.Namespace]:
    """Import the system's module (only now: detgen --help stays fast) and parse its own options."""
    module = importlib.import_module(modules[args.system])
    parser = argparse.ArgumentParser(prog=f"detgen {args.verb} {args.system}", description=module.CLI_HELP)
    common(parser)
    module.add_cli_arguments(parser)
    return module, parser.parse_args(args.rest)


def _simulate_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, required=True, help="number of tracks/events/showers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", required=True)


def _validate_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", required=True)
    parser.add_argument("--generated", required=True)
    parser.add_argument("-o", "--output", required=True, help="report dir")
    parser.add_argument("--seed", type=int, default=0)


def cmd_simulate(args: argparse.Namespace) -> None:
    from detgen.io import table_length, write_table

    module, sargs = _system_args(args, SIMULATORS, _simulate_common)
    if sargs.n <= 0:
        raise DataError(f"--n {sargs.n}: expected a positive number")
    table, info = module.simulate_cli(sargs, progress=_progress(args))
    # a module whose output is not one table (e.g. several HDF5 groups) writes it itself
    custom_writer = getattr(module, "write_cli_output", None)
    if custom_writer is not None:
        n_rows = custom_writer(sargs.output, table)
    else:
        write_table(sargs.output, table)
        n_rows = table_length(table)
    extra = ", ".join(f"{k} {v}" for k, v in info.items())
    print(f"wrote {n_rows} rows to {sargs.output}" + (f" ({extra})" if extra else ""))


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
    module, vargs = _system_args(args, VALIDATORS, _validate_common)
    metrics = module.validate_cli(vargs.truth, vargs.generated, vargs.output, vargs)
    for key in (k for k in module.SUMMARY_KEYS if k in metrics):
        print(f"{key:>24s}  {metrics[key]:.4f}")
    print(f"report: {Path(vargs.output) / 'report.html'}")


def cmd_export(args: argparse.Namespace) -> None:
    from detgen.export import export_onnx

    check = export_onnx(args.run_dir, args.output, group=args.group)
    print(f"wrote {args.output}; onnxruntime vs torch on {check['rows']} rows: "
          f"max abs diff {check['max_abs_diff']:.2e}, max rel diff {check['max_rel_diff']:.2e}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detgen", description="Learned detector simulation.")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("simulate", help="run a reference simulator with known truth",
                         description="detgen simulate SYSTEM --n N [--seed S] -o FILE [system options]; "
                                     "`detgen simulate SYSTEM --help` lists the system's options.")
    p.add_argument("system", choices=list(SIMULATORS))
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
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

    p = verbs.add_parser("validate", help="compare generated with truth using the system's observables",
                         description="detgen validate SYSTEM --truth T --generated G -o REPORT_DIR [system options]; "
                                     "`detgen validate SYSTEM --help` lists the system's options.")
    p.add_argument("system", choices=list(VALIDATORS))
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_validate)

    p = verbs.add_parser("export", help="export the sampler graph to ONNX")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--group", help="export one member of a grouped run (e.g. a species): its graph takes the "
                                   "conditions without the group column and evaluates only that member")
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
