"""The command line, on top of the library (which never imports it): one module per command,
``flags`` for what they share. Building the parser imports no torch, so ``--help`` is quick
and ``--time-budget``'s clock starts before torch's import."""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import EXIT_INTERRUPTED, EXIT_PIPE, CifarResnetError, Interrupted
from . import evaluate, export, info, predict, report, train, tune
from .flags import Parser


def tta_levels(argv: list[str]) -> list[str]:
    """``--tta`` with no level takes 1 explicitly, so that it never swallows the positional
    argument after it (``predict --tta runs/seed img.jpg``); a number after it stays its level
    (``--tta 3`` is argparse's "invalid choice")."""
    out: list[str] = []
    for i, arg in enumerate(map(str, argv)):
        out.append(arg)
        level = str(argv[i + 1]).lstrip("-").isdigit() if i + 1 < len(argv) else False
        if arg == "--tta" and not level:
            out.append("1")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cifar-resnet",
        description="Train ResNets on CIFAR-10/100 and small colour image folders, on CPU and GPU.",
    )
    parser.add_argument("--version", action="version", version=f"cifar-resnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (train, evaluate, report, predict, export, tune):
        command.add_parser(sub)
    info.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(tta_levels(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except Interrupted as e:  # the user's own stop: not an error ("stopped by signal 2 ...")
        print(e, file=sys.stderr)
        return e.exit_code
    except CifarResnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("stopped by Ctrl-C", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`... | head`): nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return EXIT_PIPE
