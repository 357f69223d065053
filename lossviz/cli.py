"""The `lossviz` command line. Each group of subcommands lives beside the code it drives and
registers itself here through a `register(subparsers)` function."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add subcommands (each exposes `register(subparsers)`).
SUBCOMMAND_MODULES = [
    "lossviz.cli",
    "lossviz.cli_plots",
    "lossviz.cli_surface",
]


def _params_check(args: argparse.Namespace) -> int:
    from lossviz.params import ParamsError, load_params

    try:
        load_params(args.file)
    except ParamsError as error:
        print(error, file=sys.stderr)
        return 1
    print("ok")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    params = subparsers.add_parser("params", help="work with params.yaml")
    params_sub = params.add_subparsers(dest="params_command", required=True)
    check = params_sub.add_parser("check", help="validate a params file; print 'ok' or every error")
    check.add_argument("file", nargs="?", default="params.yaml")
    check.set_defaults(func=_params_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lossviz", description="Loss landscapes: compute, measure and view them; check params.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
