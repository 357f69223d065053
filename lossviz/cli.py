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
    "lossviz.cli_stability",
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


def _params_apply(args: argparse.Namespace) -> int:
    """Merge a preset into the params file, keeping its comments; validate first, write nothing on error."""
    import os
    import tempfile
    from pathlib import Path

    import yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    from lossviz.params import ParamsError, merge, parse_params

    target, preset_path = Path(args.params), Path(args.preset)
    for path in (target, preset_path):
        if not path.is_file():
            print(f"{path}: file not found", file=sys.stderr)
            return 1
    preset = yaml.safe_load(preset_path.read_text()) or {}
    if not isinstance(preset, dict):
        print(f"{preset_path}: expected a mapping of sections", file=sys.stderr)
        return 1
    try:
        parse_params(merge(yaml.safe_load(target.read_text()) or {}, preset), f"{target} + {preset_path}",
                     target.parent)
    except ParamsError as error:
        print(error, file=sys.stderr)
        return 1
    round_trip = YAML()
    round_trip.width = 4096  # never re-wrap long comment lines
    round_trip.representer.add_representer(  # keep `null` spelled out, as params.yaml writes it
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = round_trip.load(target)

    def flow(value):
        if isinstance(value, list):
            value = CommentedSeq(value)
            value.fa.set_flow_style()  # lists stay on one line, as params.yaml writes them
        return value

    def update(node, overrides: dict) -> None:
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                update(node[key], value)
            else:
                node[key] = flow(value)

    update(document, preset)
    handle, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(handle, "w") as stream:
        round_trip.dump(document, stream)
    os.replace(staging, target)
    print(f"{target}: applied {preset_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    params = subparsers.add_parser("params", help="work with params.yaml")
    params_sub = params.add_subparsers(dest="params_command", required=True)
    check = params_sub.add_parser("check", help="validate a params file; print 'ok' or every error")
    check.add_argument("file", nargs="?", default="params.yaml")
    check.set_defaults(func=_params_check)
    apply = params_sub.add_parser("apply", help="merge a preset (e.g. presets/paper.yaml) into params.yaml, "
                                                "keeping its comments")
    apply.add_argument("preset")
    apply.add_argument("--params", default="params.yaml")
    apply.set_defaults(func=_params_apply)


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
