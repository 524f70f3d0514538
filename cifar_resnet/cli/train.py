"""``cifar-resnet train``: resolve the recipe, load the data, call ``fit``, write the report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..config import PRESETS, load_toml, resolve_config
from ..errors import CheckpointError, UsageError
from ..names import check_model
from ..progress import plural
from ..recipe import DATA, RUN, RUNTIME
from ..rundir import RunDir
from .flags import (
    add_config_flags,
    add_data_flags,
    add_device_flag,
    add_groups,
    flag_values,
    load_bundle,
    to_json,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    t = subparsers.add_parser(
        "train",
        help="train a model; prints the seed post's line every epoch",
        description="Train a ResNet. The recipe is --preset, then --config, then the flags "
        "given: a recipe flag left out keeps the preset's value (`cifar-resnet presets` lists "
        "each preset's values), so a default is shown only where no preset sets it.",
    )
    t.add_argument(
        "--preset", choices=tuple(PRESETS), help="the recipe to start from (default: seed)"
    )
    t.add_argument(
        "--config",
        help="TOML file of recipe fields (see config.toml in any run); for a new run only: a "
        "resumed run keeps its recipe, changed by flags",
    )
    groups = add_groups(t)
    add_data_flags(
        groups[DATA],
        required=False,
        data_help="an image folder (DIR/train/<class>/*, DIR/test/<class>/*), a CIFAR python "
        "archive or its folder, or cifar10 / cifar100 to download the official archive; "
        "required for a new run, remembered by the run for --resume",
    )
    _add_run_flags(groups[RUN])
    add_device_flag(groups[RUNTIME])
    _add_dist_flags(groups[RUNTIME])
    add_config_flags(t, groups=groups)
    t.set_defaults(func=run)
    return t


def _add_run_flags(g) -> None:
    g.add_argument(
        "--out",
        help="run folder for metrics.csv, config.toml, checkpoints and "
        "summary.json (required unless --resume RUN_DIR)",
    )
    g.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue a run from its newest "
        "valid checkpoint; auto: continue --out if it has one, else start it",
    )
    g.add_argument(
        "--seeds",
        metavar="LIST",
        help="train one run per seed, one after another, into OUT/seed-S (each what --seed S "
        "--out OUT/seed-S makes), then OUT/summary.json and a table with mean ± std: "
        "0,1,2, a range 0-4, or both: 0-2,7; --resume OUT continues the unfinished seeds",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --out that already holds one, deleting the files the old "
        "run recorded writing (RUN/manifest.json); a folder holding other files is refused",
    )
    g.add_argument("--quiet", action="store_true", help="print only errors and the summary")
    g.add_argument(
        "--log-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="when stdout is not a terminal (a log file, a cluster job), print a progress line "
        "every this many steps (default: every 10%% of an epoch, and at least every 30 s)",
    )
    g.add_argument(
        "--tensorboard",
        action="store_true",
        help="log every epoch's figures and "
        "the learning rate to RUN/tensorboard (pip install 'cifar-resnet[tensorboard]')",
    )
    g.add_argument(
        "--no-report",
        action="store_true",
        help="skip the PNG plots and report.md "
        "written after training (they need matplotlib: pip install "
        "'cifar-resnet[report]')",
    )


def _add_dist_flags(t) -> None:
    t.add_argument(
        "--dist-backend",
        default="auto",
        choices=("auto", "nccl", "gloo"),
        help="with torchrun: auto (nccl on GPUs, gloo on CPUs), nccl or gloo",
    )
    t.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="with torchrun: how long a rank waits for the others before the job "
        "fails (a dead rank ends the job instead of hanging it; default: 600)",
    )


def _run_folder(args: argparse.Namespace) -> str:
    """The run folder, normalised (``./runs//seed/`` is printed as ``runs/seed``)."""
    return os.path.normpath(_given_folder(args))


def _given_folder(args: argparse.Namespace) -> str:
    if args.resume and args.resume != "auto":
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise UsageError(
                "--resume RUN_DIR continues in RUN_DIR; drop --out or make them the same"
            )
        _check_resume_folder(Path(args.resume))
        return args.resume
    if args.resume == "auto" and not args.out:
        raise UsageError("--resume auto needs --out RUN_DIR")
    if not args.out:
        raise UsageError("--out RUN_DIR is required: the run folder for metrics and checkpoints")
    return args.out


def _check_resume_folder(path: Path) -> None:
    """``--resume PATH`` names a run folder: a checkpoint file, or a folder of runs, is refused
    with the command that continues the run meant."""
    if path.is_file() and path.parent.name == "checkpoints":
        raise UsageError(
            f"--resume takes a run folder, not a checkpoint file; continue its run (from its "
            f"newest checkpoint) with `cifar-resnet train --resume {path.parent.parent}`"
        )
    if not path.is_dir():
        raise CheckpointError(
            f"--resume {path}: no such run folder; pass the folder given as --out"
        )
    if RunDir(path).holds_run() or (path / "seeds.json").is_file():
        return
    runs = sorted(p for p in path.iterdir() if p.is_dir() and RunDir(p).holds_run())
    if runs:
        names = ", ".join(str(p) for p in runs[:3]) + (", ..." if len(runs) > 3 else "")
        raise UsageError(
            f"--resume {path}: a folder of runs ({names}), not a run; continue one with "
            f"`cifar-resnet train --resume {runs[0]}`"
        )


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()  # --time-budget counts from here: torch's import included
    if args.log_every < 0:
        raise UsageError(
            f"--log-every must be 0 (automatic) or a number of steps, got {args.log_every}"
        )
    if "model" in flag_values(args):  # a misspelt --model refused before torch is imported
        check_model(args.model)
    out = _run_folder(args)
    # The library (and torch) is imported only now, so that --help answers at once.
    from ..train import fit

    if _several_seeds(args, out):
        return _run_seeds(args, out, started)
    preset, config, resume = _recipe(args, out)
    bundle = load_bundle(args, config.image_size, progress=sys.stderr.isatty() and not args.quiet)
    summary = fit(config, bundle, out, _run_options(args, started, resume), preset=preset)
    if "checkpoint" not in summary:  # not rank 0 of a torchrun job
        return 0
    if not args.no_report:
        _report(out, bundle, args.quiet)
    print(
        to_json(summary)
        if args.quiet
        else f"done: test accuracy {summary['test_accuracy']:.2f}% after "
        f"{plural(summary['epochs'], 'epoch')} ({summary['wall_seconds']:.0f}s); summary in "
        f"{Path(out) / 'summary.json'}"
    )
    return 0


def _recipe(args: argparse.Namespace, out: str):
    """(preset, config, checkpoint to resume or None); sets ``args.data`` to the run's data:
    a resumed run's recorded data unless --data is given."""
    from .. import checkpoint as ckpt_io

    flags = flag_values(args)
    found = ckpt_io.find_resume(out, required=False) if args.resume else None
    if found is None and args.resume not in (None, "auto"):
        return _restart_recipe(args, flags, out)
    if found is None:
        if args.resume is None and not args.overwrite and RunDir(out).holds_run():
            raise UsageError(
                f"{out} already holds a run; continue it with `cifar-resnet train --resume "
                f"{out}`, replace it with --overwrite, or choose a new --out"
            )
        # --resume auto on a folder with no checkpoint (a run killed before its first one
        # ended, or none yet): the run starts, over whatever that run left.
        return (*_new_recipe(args, flags), args.resume)
    path, resume = found
    _no_config_with_resume(args, out)
    if not args.quiet:
        print(f"resuming from {path}")
    preset, config = ckpt_io.resumed_config(resume, path, flags)  # a damaged one: exit 4
    args.data = args.data or resume.get("data")
    if args.data is None:
        raise UsageError(f"{out} does not record its data (an older run); pass --data")
    return preset, config, resume


def _no_config_with_resume(args: argparse.Namespace, out: str) -> None:
    """A continued run keeps its recipe; --config would replace it wholesale, so it is refused
    (changes are given as flags, which apply on top of the run's recipe)."""
    if args.config:
        raise UsageError(
            f"--config with --resume: {out} continues with its own recipe; give the fields to "
            "change as flags (e.g. --epochs 30), or start a new --out with --config"
        )


def _restart_recipe(args: argparse.Namespace, flags: dict, out: str):
    """``--resume R`` of a run stopped before its first checkpoint: its recipe (R/config.toml)
    and data (R/run.json) start it again from step 0."""
    from ..rundir import read_json

    saved = Path(out) / "config.toml"
    args.data = args.data or read_json(Path(out) / "run.json").get("data")
    if not saved.is_file() or args.data is None:
        raise CheckpointError(
            f"--resume {out}: the folder holds no checkpoint yet and no run to start again; "
            "start one with "
            f"`cifar-resnet train --data DATA --out {out} --resume auto`"
        )
    preset, config = resolve_config(args.preset, load_toml(str(saved)), flags, file_name=str(saved))
    if not args.quiet:
        print(f"{out} holds no checkpoint yet (stopped in its first epoch): starting it again")
    return preset, config, "auto"


def _several_seeds(args: argparse.Namespace, out: str) -> bool:
    """True for --seeds, or --resume of a multi-seed folder; a lone run into one is refused."""
    from ..seeds import is_multi_seed

    if args.seeds is not None or (args.resume and is_multi_seed(out)):
        return True
    if is_multi_seed(out):
        raise UsageError(
            f"{out} holds several seeds; continue them with --resume {out}, replace them "
            "with --seeds LIST --overwrite, or choose a new --out"
        )
    return False


def _run_seeds(args: argparse.Namespace, out: str, started: float) -> int:
    """``--seeds`` (or ``--resume`` of a multi-seed folder): every seed through ``fit_seeds``
    with the recipe, data and device a lone run gets, then the reports and the table."""
    from ..seeds import fit_seeds, format_table

    preset, config, seeds, resume = _seeds_recipe(args, out)
    bundle = load_bundle(args, config.image_size, progress=sys.stderr.isatty() and not args.quiet)
    options = _run_options(args, started, resume)  # resume: the seeds' mode
    result = fit_seeds(config, bundle, out, seeds, preset=preset, **vars(options))
    if not args.no_report:
        _report(out, bundle, args.quiet)
    if args.quiet:
        print(to_json(result))
        return 0
    acc = result["aggregate"]["test_accuracy"]
    print("\n".join(["", *text_table(format_table(result)), ""]))
    print(
        f"done: {len(result['seeds'])} seeds, test accuracy {acc['mean']:.2f}% ± "
        f"{acc['std']:.2f} (min {acc['min']:.2f}, max {acc['max']:.2f}); summary in "
        f"{Path(out) / 'summary.json'}"
    )
    return 0


SEED_COLUMNS = (
    "train s: seconds in training steps; wall s: training and evaluations; command s: "
    "seconds since the command started (start-up and data included)"
)


def text_table(markdown: list[str]) -> list[str]:
    """A markdown table as aligned plain text for a terminal, its columns explained below."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown]
    rows = [r for r in rows if not all(set(c) <= {"-"} for c in r)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths))).rstrip() for r in rows]  # fmt: skip
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:], SEED_COLUMNS]


def _seeds_recipe(args: argparse.Namespace, out: str):
    """(preset, config, seeds or None, resume mode) of a multi-seed command; sets ``args.data``
    as :func:`_recipe` does (a continued folder's recorded data unless --data is given)."""
    from ..seeds import is_multi_seed, parse_seeds, read_plan

    if "seed" in vars(args):
        raise UsageError("--seed with several seeds: each run gets its own; drop --seed")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    flags = flag_values(args)
    if args.resume not in (None, "auto") and not is_multi_seed(out):
        raise UsageError(
            f"--resume {out}: not a multi-seed folder (no seeds.json); drop --seeds to "
            f"continue a single run, or start one with --out {out} --seeds {args.seeds}"
        )
    if args.resume and is_multi_seed(out):
        _no_config_with_resume(args, out)
        plan = read_plan(out)
        if not args.quiet:
            print(f"continuing the seeds in {out}")
        _, config = resolve_config(plan["preset"], plan["config"], flags)
        args.data = args.data or plan.get("data")
        if args.data is None:
            raise UsageError(f"{out} does not record its data; pass --data")
        return plan["preset"], config, seeds, "auto" if args.resume == "auto" else "required"
    return (*_new_recipe(args, flags), seeds, args.resume)  # resume: None, or auto


def _new_recipe(args: argparse.Namespace, flags: dict):
    """(preset, config) of a new run: the preset (with its values for the device's type),
    then --config, then the flags; --data is required."""
    from ..runtime import resolve_device

    preset, config = resolve_config(
        args.preset,
        load_toml(args.config) if args.config else None,
        flags,
        file_name=args.config or "config file",
        device_type=resolve_device(args.device).type,
    )
    if args.data is None:
        raise UsageError(
            "--data is required for a new run: an image folder, a CIFAR archive, or cifar10"
        )
    return preset, config


def _run_options(args: argparse.Namespace, started: float, resume):
    """The ``fit`` options a lone run and every seed of ``--seeds`` take from the flags."""
    from ..run import RunOptions

    return RunOptions(
        device=args.device,
        resume=resume,
        overwrite=args.overwrite,
        quiet=args.quiet,
        dist_backend=args.dist_backend,
        dist_timeout=args.dist_timeout,
        started=started,
        tensorboard=args.tensorboard,
        data_spec=_spec(args.data),
        log_every=args.log_every,
    )


def _spec(data: str) -> str:
    """--data as the run records it: a path made absolute (so the run finds it from any
    folder), a dataset name as it is."""
    path = Path(data).expanduser()
    return str(path.absolute()) if path.exists() else data


def _report(out: str, bundle, quiet: bool) -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        if not quiet:
            print("(no plots: pip install 'cifar-resnet[report]' for report.md and PNG plots)")
        return
    from ..progress import Phases
    from ..report import write_report

    t0 = time.perf_counter()  # after the run: outside --time-budget (--no-report skips it)
    if not quiet:
        print(f"report: plots of {out}, the test images evaluated for them ...", flush=True)
    with Phases("report", not quiet and sys.stdout.isatty()) as bar:
        paths = write_report(out, bundle, bar)  # the data already loaded for training
    if not quiet:
        took = time.perf_counter() - t0
        print(f"report: {Path(out) / 'report.md'} ({len(paths)} files, {took:.1f}s)")
