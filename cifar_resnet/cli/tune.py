"""``cifar-resnet tune``: an Optuna study over a recipe's fields, judged on a validation split;
each trial an ordinary ``train`` run in ``STUDY/trials/NNNN``."""

from __future__ import annotations

import argparse
import dataclasses

from ..config import PRESETS, TrainConfig, load_toml
from .flags import add_config_flags, add_data_flags, add_device_flag, flag_values

# The study decides these for its trials.
NOT_FLAGS = ("val_split", "limit_test")


def add_parser(subparsers) -> argparse.ArgumentParser:
    t = subparsers.add_parser(
        "tune",
        help="search a recipe's hyper-parameters with Optuna, on a validation split",
        description="An Optuna study: every trial is a `train` run of the recipe (--preset, "
        "--config, train flags) with sampled values on top, judged on a validation split of "
        "the training images, never on the test set. The same command again, or --resume "
        "STUDY, continues the study; other machines join it through --storage.",
    )
    add_data_flags(t, required=False, data_help="the data, as for train (required for a new study)")
    t.add_argument("--out", help="the study folder: trials/, tune.json, best.toml, study.db")
    t.add_argument("--resume", metavar="STUDY", help="continue the study in STUDY to its total")
    t.add_argument("--preset", choices=tuple(PRESETS), help="the recipe to start from (seed)")
    t.add_argument("--config", help="a TOML file of recipe fields, as for train")
    t.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=SPACE",
        help="a searched field: NAME=LOW..HIGH (a float range, an int range for int fields), "
        "NAME=LOW..HIGH:log (log scale), or NAME=A|B|C (a choice); repeat for more",
    )
    t.add_argument(
        "--space",
        metavar="FILE.toml",
        help='searched fields in a file: lr = "0.05..2:log", batch_size = [128, 256], or '
        "tables with low, high, log",
    )
    t.add_argument("--trials", type=int, help="finished or pruned trials in all (default: 20)")
    t.add_argument(
        "--val-split",
        type=int,
        default=5000,
        metavar="N",
        help="training images held out to judge trials on (stratified, seeded by --seed)",
    )
    t.add_argument(
        "--sampler",
        default="tpe",
        choices=("tpe", "random", "grid"),
        help="tpe (default), random, or grid (choices only: every combination once)",
    )
    t.add_argument(
        "--pruner",
        default="auto",
        choices=("auto", "median", "halving", "none"),
        help="stop trials that fall behind after an evaluated epoch: median, halving "
        "(successive halving); auto: median when the recipe evaluates every epoch or few, "
        "else none",
    )
    t.add_argument(
        "--pruner-startup",
        type=int,
        default=5,
        metavar="N",
        help="median pruner: trials that finish before it judges the others (default: 5)",
    )
    _add_study_flags(t)
    add_device_flag(t)
    t.add_argument("--quiet", action="store_true", help="print only errors")
    add_config_flags(t, only=tuple(f for f in _fields() if f not in NOT_FLAGS))
    t.set_defaults(func=run)
    return t


def recipe_flags(args: argparse.Namespace) -> dict:
    """The recipe fields given as train flags (--val-split is the study's own)."""
    return {k: v for k, v in flag_values(args).items() if k not in NOT_FLAGS}


def _fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _add_study_flags(t: argparse.ArgumentParser) -> None:
    t.add_argument(
        "--storage",
        metavar="URL|FILE",
        help="where the trials are kept: a database URL Optuna takes (postgresql://..., "
        "mysql://...) or a journal file on a shared file system; the same --storage and "
        "--study-name on several machines join one study (default: STUDY/study.db, SQLite)",
    )
    t.add_argument("--study-name", help="the study's name in --storage (default: STUDY's name)")
    t.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="worker processes on this machine, each trial on 1/N of the cores (default: 1); "
        "a --time-budget then buys what 1/N of the machine trains in it",
    )
    t.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        metavar="SECONDS",
        help="a worker's trial is marked failed when the worker has been silent for 2x this "
        "(killed, its machine lost); database storages only",
    )
    t.add_argument(
        "--retry-failed",
        type=int,
        default=0,
        metavar="TIMES",
        help="run a trial whose worker died again, up to this many times (default: skip it)",
    )
    t.add_argument(
        "--final-seeds",
        type=int,
        default=0,
        metavar="K",
        help="then train best.toml on all training images with K seeds and evaluate on the "
        "test set, once: mean ± std",
    )


def _check_resume(args: argparse.Namespace) -> None:
    """--resume continues the recorded study: a flag that would change it is refused."""
    from ..errors import UsageError

    if not args.resume:
        return
    if args.out and args.resume != args.out:
        raise UsageError("--resume STUDY continues in STUDY; drop --out or make them the same")
    given = ["--" + f for f in ("data", "param", "space", "storage", "preset", "config")]
    given = [f for f in given if getattr(args, f[2:])]
    given += ["--" + f.replace("_", "-") for f in recipe_flags(args)]
    if given:
        raise UsageError(
            f"--resume continues the study as it was recorded; drop {', '.join(given)} (it "
            "takes --trials, --jobs, --final-seeds and --quiet), or start a new study with --out"
        )


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..tune_study import is_study
    from ..tuning import tune

    if not args.resume and args.data is None and args.out and is_study(args.out):
        args.resume = args.out  # the study's folder again, without --data: continue it
    _check_resume(args)
    out = args.resume or args.out
    if not out:
        raise UsageError("--out STUDY is required: the study folder")
    tune(
        args.data,
        out,
        args.param,
        trials=args.trials,
        preset=args.preset,
        config_values=load_toml(args.config) if args.config else None,
        overrides=recipe_flags(args),
        space=args.space,
        val_split=args.val_split,
        sampler=args.sampler,
        pruner=args.pruner,
        pruner_startup=args.pruner_startup,
        storage=args.storage,
        study_name=args.study_name,
        jobs=args.jobs,
        heartbeat=args.heartbeat,
        retry_failed=args.retry_failed,
        device=args.device,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        resume=bool(args.resume),
        final_seeds=args.final_seeds,
        quiet=args.quiet,
    )
    return 0
