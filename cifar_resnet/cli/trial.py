"""``python -m cifar_resnet.cli.trial train ...``: the command line as a tuning worker's child.

It is ``cifar-resnet`` itself, with two things set first: the process gets SIGTERM when its
worker dies, even by ``kill -9`` (Linux PR_SET_PDEATHSIG; the run saves and exits 130 as on
one SIGTERM, instead of training on unwatched), and it runs on the worker's share of the cores
(``CIFAR_RESNET_TRIAL_CPUS``)."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    from ..tune_worker import die_with_parent

    die_with_parent()
    parent = os.environ.get("CIFAR_RESNET_TUNE_PARENT")
    if parent and os.getppid() != int(parent):  # the worker died before the line above
        return 130
    cpus = os.environ.get("CIFAR_RESNET_TRIAL_CPUS")
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    from . import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
