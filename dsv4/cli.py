"""`dsv4` command line: one subcommand per module in `dsv4.commands`, each parsing, calling the library, printing.

A command module defines `register(subparsers)`, which adds its parser and sets `func(args) -> int` as default.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import dsv4.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsv4", description="DeepSeek-V4 end to end: run, serve, convert, plan.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(dsv4.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"dsv4.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as given (`serve --tp N` starts its ranks with it)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
