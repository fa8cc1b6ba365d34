"""`geopurify` console script: a thin dispatcher over one module per sub-command.

Each module in COMMANDS defines `add_parser(subparsers)` (registering its sub-command and
setting `func`) and keeps the real work in the pipeline packages. An InputError anywhere
becomes one line on stderr and exit code 2. With -q/--quiet that line is all stderr shows
(log records below ERROR and progress bars are dropped).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

from geopurify.errors import EXIT_BAD_INPUT, InputError

# sub-command modules under geopurify.cli, in the order `--help` lists them
COMMANDS = ["synth", "prepare", "lift", "eval", "select_subset", "train", "val", "demo", "query", "view"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geopurify", description="Open-vocabulary 3D segmentation with GeoPurify.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="quiet: no log lines or progress bars; stderr shows only an error, if any",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"geopurify.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"geopurify.cli.{name}":
                continue  # command not built yet
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        with contextlib.ExitStack() as stack:
            if args.quiet:  # progress bars and library chatter write to sys.stderr: send them nowhere
                stack.enter_context(contextlib.redirect_stderr(stack.enter_context(open(os.devnull, "w"))))
            rc = args.func(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return int(rc or 0)


def exit_process(rc: int):
    """Exit with `rc`. A torchrun rank (WORLD_SIZE > 1), whose command has left the process group,
    flushes its output and leaves by os._exit, skipping interpreter shutdown: there, torch's C++
    distributed objects (gloo work threads, the store client) have been seen to abort a rank that
    had finished and written everything ("terminate called without an active exception", SIGABRT,
    about one CI run in five), so torchrun reported the run as failed. A single process exits normally."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(rc)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(rc)


if __name__ == "__main__":
    exit_process(main())
