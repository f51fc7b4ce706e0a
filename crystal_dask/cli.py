"""The `crystal-dask` command: one subcommand per stage, each defined in crystal_dask/commands/<verb>.py."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from crystal_dask import commands

# verb -> module under crystal_dask.commands; each module has HELP, add_arguments(parser) and run(args) -> int.
VERBS: tuple[str, ...] = tuple(sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(commands.__path__)
                                     if not m.name.startswith("_")))


def _module(verb: str):
    return importlib.import_module(f"crystal_dask.commands.{verb.replace('-', '_')}")


def build_parser(verbs: tuple[str, ...] = VERBS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crystal-dask", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in verbs:
        mod = _module(verb)
        p = sub.add_parser(verb, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # import only the verb's module when it is known, so one stage's imports never slow another's start
    verbs = tuple(v for v in VERBS if argv and argv[0] == v) or VERBS
    args = build_parser(verbs).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
