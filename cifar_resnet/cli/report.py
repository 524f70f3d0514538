"""``cifar-resnet report``: plots and report.md for a run."""

from __future__ import annotations

import argparse
import sys

from .flags import add_data_flags, load_run_bundle


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="plots and report.md for a run (needs matplotlib)",
        description="Write curves.png and report.md into a run folder; with --data also the "
        "confusion matrix, per-class accuracy and the most confidently wrong test images. "
        "A multi-seed folder (train --seeds) gets every seed's report and seeds.png; a tuning "
        "study (tune --out STUDY) its optimisation history, importances and slice plots.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    # Without --data, curves only.
    add_data_flags(
        p,
        required=False,
        data_help="the data the run was trained on (default: the data the run recorded), "
        "to evaluate its final checkpoint on its test images for the confusion matrix and "
        "error plots; without either, the curves only",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..tune_study import is_study

    if is_study(args.run_dir):  # a tuning study: its history, importances and slices
        from ..tune_report import write_study_report

        for path in write_study_report(args.run_dir):
            print(f"wrote {path}")
        return 0
    # Imported here: the parser is built before torch is imported, and these import torch.
    from ..checkpoint import resolve_checkpoint
    from ..progress import Phases
    from ..report import check_run, write_report

    run_dir = _data_run(args.run_dir)
    check_run(run_dir)  # fail on a missing folder or matplotlib before decoding data
    _, ckpt = resolve_checkpoint(run_dir)
    bundle = load_run_bundle(args, ckpt, required=False)  # at the image size it trained on
    what = "the test images evaluated for them" if bundle is not None else "curves only"
    print(f"report: plots of {args.run_dir}, {what} ...", file=sys.stderr, flush=True)
    with Phases("report", sys.stdout.isatty()) as bar:
        paths = write_report(args.run_dir, bundle, bar)
    for path in paths:
        print(f"wrote {path}")
    return 0


def _data_run(run_dir: str):
    """The run whose checkpoint names the data: ``run_dir``, or for a multi-seed folder its
    first seed that has trained an epoch."""
    from ..rundir import read_csv
    from ..seeds import is_multi_seed, read_plan, seed_dir

    if not is_multi_seed(run_dir):
        return run_dir
    folders = [seed_dir(run_dir, s) for s in read_plan(run_dir)["seeds"]]
    return next((f for f in folders if read_csv(f / "metrics.csv")), folders[0])
