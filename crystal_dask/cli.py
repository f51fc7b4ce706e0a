"""The `crystal-dask` command: one subcommand per stage, each defined in crystal_dask/commands/<verb>.py, and the
verbs that run, follow and check whole jobs."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from crystal_dask import commands, errors
from crystal_dask.stages import ORDER

# verb -> module under crystal_dask.commands; each module has HELP, add_arguments(parser) and run(args) -> int.
VERBS: tuple[str, ...] = tuple(sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(commands.__path__)
                                     if not m.name.startswith("_")))


def _module(verb: str):
    return importlib.import_module(f"crystal_dask.commands.{verb.replace('-', '_')}")


DESCRIPTION = (f"Distributed computational pathology on Dask. One verb per stage, in run order: {', '.join(ORDER)}. "
               "`run` runs a whole job file, `submit` starts one detached, `status` follows it. "
               "Each verb's options: crystal-dask VERB --help.")


def build_parser(verbs: tuple[str, ...] = VERBS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crystal-dask", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also: CRYSTAL_DASK_DEBUG=1)")
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in verbs:
        mod = _module(verb)
        p = sub.add_parser(verb, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; an expected failure prints `crystal-dask: error: ...` and returns 1 (usage errors exit 2)."""
    argv = sys.argv[1:] if argv is None else argv
    # import only the verb's module when it is known, so one stage's imports never slow another's start
    verb = next((a for a in argv if not a.startswith("-")), None)
    verbs = tuple(v for v in VERBS if v == verb) or VERBS
    args = build_parser(verbs).parse_args(argv)
    debug = args.debug or errors.debug_wanted([])
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{errors.PROG}: interrupted", file=sys.stderr)
        return errors.INTERRUPTED
    except Exception as exc:
        if debug or not errors.expected(exc):
            raise
        print(errors.message(exc), file=sys.stderr)
        return errors.INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
