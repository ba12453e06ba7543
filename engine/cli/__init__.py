"""`syncxr` command line. Subcommands live in the `commands` package of each top-level package
(engine, train, eval), one module each with `register(sub)` that adds a parser whose `func(args)`
does the work. They are found by name, so the engine never imports train/ or eval/ code itself.
User errors print one line, no traceback."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import os
import sys
import textwrap
import warnings

from engine import __version__
from engine.core.errors import UserError


COMMAND_PACKAGES = ("engine.cli.commands", "train.commands", "eval.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncxr", description="Synthetic chest X-ray data engine (SynCXR).")
    parser.add_argument("--version", action="version", version=f"syncxr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for package_name in COMMAND_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError:
            continue  # a package not installed: its commands are simply absent
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package_name}.{info.name}").register(sub)
    for command in sub.choices.values():
        codes = {0: "success", 2: "bad input or a failed check: one line on stderr naming the file, field or row",
                 **getattr(command, "exit_codes", {}), 130: "interrupted"}
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.description = textwrap.fill(command.description or "", 100)
        command.epilog = "exit codes:\n" + "\n".join(f"  {k:<4} {v}" for k, v in sorted(codes.items()))
        if "--verbose" not in command._option_string_actions:
            command.add_argument("--verbose", action="store_true",
                                 help="show Ray's own log lines and warnings (quiet by default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "verbose", False):
        os.environ["SYNCXR_VERBOSE"] = "1"
    else:
        warnings.filterwarnings("ignore", module="ray")  # Ray's own deprecation notes; --verbose shows them
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"syncxr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"syncxr {args.command}: interrupted", file=sys.stderr)
        return 130
