"""The `lossviz` command line. Each group of subcommands lives beside the code it drives and
registers itself here through a `register(subparsers)` function.

Start-up stays cheap: the subcommand modules import torch, plotly and the engine inside their handlers, after
the arguments are parsed and checked. Errors: bad input (a flag, a file, a directory) is one line naming it and
what was expected, exit code 2; an unexpected failure is one line and exit code 1; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# Modules that add subcommands (each exposes `register(subparsers)`).
SUBCOMMAND_MODULES = [
    "lossviz.cli",
    "lossviz.cli_plots",
    "lossviz.cli_surface",
    "lossviz.cli_stability",
]


class CliError(ValueError):
    """Bad command-line input; the message names the flag or file and what is allowed."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written (examples keep their lines); every option's default appended to its help,
    except where the help already says it or there is nothing to show (None, off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or nothing or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: `HelpFormatter` unless told otherwise."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


# -- argument types: a bad value is reported by argparse as "argument --flag: invalid value ..." -----------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; expected a positive integer (1, 2, ...)")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; expected a number ≥ 0")
    return value


def positive_float(text: str) -> float:
    value = nonnegative_float(text)
    if value == 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; expected a finite number > 0")
    return value


def check_input_file(path: str | os.PathLike, flag: str) -> Path:
    """An existing regular file, else a CliError naming the flag."""
    path = Path(path)
    if path.is_dir():
        raise CliError(f"{flag} {path}: is a directory; expected a file")
    if not path.is_file():
        raise CliError(f"{flag} {path}: no such file")
    return path


def check_output_file(path: str | os.PathLike, flag: str, *, create_parents: bool = False) -> Path:
    """A file this process can create or replace: not a directory; its directory exists (or, with
    `create_parents`, its nearest existing ancestor) and is writable. Checked before any work starts."""
    path = Path(path)
    if path.is_dir():
        raise CliError(f"{flag} {path}: is a directory; expected a file name")
    parent = path.parent
    if create_parents:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"{flag} {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"{flag} {path}: directory {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise CliError(f"{flag} {path}: the file is read-only")
    return path


def is_user_error(error: BaseException) -> bool:
    """Bad input rather than a bug: lossviz's own errors (CheckpointError, DataError, SurfaceFileError, ...,
    raised for what a user gave it), ValueError (a bad value) and OSError (a file, a directory, a full disk)."""
    return isinstance(error, ValueError | OSError) or type(error).__module__.startswith("lossviz.")


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
    params = subparsers.add_parser("params", help="work with params.yaml",
                                   description="Check a params file, or merge a preset into it.")
    params_sub = params.add_subparsers(dest="params_command", required=True)
    check = params_sub.add_parser("check", help="validate a params file; print 'ok' or every error",
                                  description="Validate a params file with the stages' own checks (cross-section "
                                              "rules included); print 'ok' or every error (exit code 1).")
    check.add_argument("file", nargs="?", default="params.yaml", help="params file (default: params.yaml)")
    check.set_defaults(func=_params_check)
    apply = params_sub.add_parser("apply", help="merge a preset (e.g. presets/paper.yaml) into params.yaml, "
                                                "keeping its comments",
                                  description="Merge a preset into a params file, keeping its comments; the "
                                              "merged params are validated first and nothing is written on error.")
    apply.add_argument("preset", help="preset file, e.g. presets/paper.yaml")
    apply.add_argument("--params", default="params.yaml", help="params file to update")
    apply.set_defaults(func=_params_apply)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lossviz", description="Loss landscapes: compute, measure and view them; check params.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for command in _parsers(parser):  # `lossviz surface ... --debug` works as well as `lossviz --debug surface`
        if command is not parser:
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show the traceback of an error")
    return parser


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _parsers(child)


def main(argv: list[str] | None = None) -> int:
    from lossviz.runtime import prepare_cpu_environment

    prepare_cpu_environment()  # before any subcommand loads torch
    args = build_parser().parse_args(argv)
    name = f"lossviz {args.command}"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        if not is_user_error(error):
            print(f"{name}: unexpected error: {type(error).__name__}: {error} (rerun with --debug for the "
                  "traceback)", file=sys.stderr)
            return 1
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
