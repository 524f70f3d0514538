"""The command line: ``cifar-resnet train | evaluate | models | presets``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from .config import PRESETS, TrainConfig, load_toml, resolve_config
from .errors import EXIT_INTERRUPTED, CheckpointError, CifarResnetError, UsageError

# Help for every recipe field: advice, not the flag's name again.
FIELD_HELP = {
    "model": "network from `cifar-resnet models` (seed: the post's net; resnet20..110: He et al.)",
    "shortcut": "force He et al.'s shortcut option for resnetN: A (identity, zero-pad, no "
    "parameters) or B (1x1 projection)",
    "epochs": "passes over the training set; the seed recipe needs ~50 for 85%% here",
    "steps": "total optimizer steps instead of epochs (the paper stops at 64000)",
    "batch_size": "images per optimizer step over all processes; if you change it, scale --lr "
    "linearly with it",
    "lr": "peak learning rate (SGD); 0.1 suits batch 128",
    "momentum": "SGD momentum",
    "nesterov": "use Nesterov momentum",
    "weight_decay": "L2 weight decay (5e-4 seed, 1e-4 paper); too high underfits small nets",
    "label_smoothing": "cross-entropy label smoothing, e.g. 0.1; 0 reproduces the seed",
    "ema": "keep an exponential moving average of the weights with this decay per step "
    "(e.g. 0.999), evaluated every epoch (ema_test_acc) and saved in checkpoints",
    "schedule": "learning-rate schedule: step (StepLR per epoch), multistep (decay at "
    "--lr-milestones steps), cosine, onecycle (warm-up then linear decay), constant",
    "lr_step": "for --schedule step: decay every this many epochs",
    "lr_gamma": "decay factor for step/multistep schedules",
    "lr_milestones": "for --schedule multistep: comma-separated steps, e.g. 32000,48000",
    "warmup_steps": "linear learning-rate warm-up over this many steps; helps large batches",
    "warmup_fraction": "for --schedule onecycle without --warmup-steps: the share of the run "
    "spent warming up",
    "lr_start_factor": "for --schedule onecycle: the lr at the first step, as a fraction of --lr",
    "lr_end_factor": "for --schedule onecycle: the lr at the last step, as a fraction of --lr",
    "norm_lr_scale": "BatchNorm parameters learn at lr times this, with weight decay divided by "
    "it (the fast preset: 64)",
    "lookahead": "every N steps move the weights to a slow average of themselves (lookahead, "
    "as airbench; the fast preset: 5); the run ends on the slow weights",
    "whiten_bias_fraction": "fastnet: the whitening stem's bias learns for this share of the "
    "steps, then is frozen",
    "pad_mode": "crop padding: zeros (the seed, the paper) or reflect (mirror the border)",
    "alt_flip": "flip each image in every other epoch instead of at random each epoch "
    "(airbench: fewer repeated views in short runs)",
    "tta": "test-time augmentation for the evaluations during training: 0 none, 1 mirror, "
    "2 mirror + 1-pixel translations (6 passes)",
    "padding": "random-crop zero padding in pixels (seed 1, paper 4); 0 disables cropping",
    "flip": "random horizontal flips (--no-flip for data where left/right matters)",
    "normalize": "half: (x-0.5)/0.5 as the seed; dataset: training-set per-channel mean/std",
    "precision": "auto picks bf16 on GPUs and CPUs that run it natively, else fp32",
    "channels_last": "NHWC memory format: auto (on for GPU), on, off",
    "compile": "torch.compile the model: auto (on for GPU), on, off",
    "seed": "seeds the weights, the data order and augmentation; same seed, same run",
    "val_split": "hold out this many training images (stratified) to choose hyper-parameters "
    "and the best checkpoint on; never tune on the test set",
    "limit_train": "train on a stratified subset of this many images, for quick trials",
    "limit_test": "evaluate on a stratified subset of this many test images",
    "image_size": "resize images to N x N (shorter side to N, centre crop); needed when "
    "a folder's images differ in size",
    "eval_batch_size": "images per evaluation batch; lower it if memory is short",
    "keep": "how many checkpoints to keep in RUN/checkpoints",
    "save_every_steps": "also checkpoint every N steps inside an epoch (long epochs, preemption)",
    "deterministic": "bitwise-reproducible kernels: a resumed run equals an uninterrupted one",
    "eval_every": "evaluate every N epochs (0: only after the last); evaluation is a large share "
    "of a CPU epoch",
    "time_budget": "finish training and the final evaluation within this wall time, e.g. 5m, "
    "90s, 1h30m: steps are planned from measured speed and the schedule fitted to them",
    "target_accuracy": "stop as soon as this accuracy (percent) is reached; see --target-split",
    "target_split": "where --target-accuracy is checked: val (needs --val-split) or test",
    "sync_bn": "with torchrun: BatchNorm statistics over the global batch (SyncBatchNorm); "
    "use it when the per-GPU batch is small",
}
DATA_FIELDS = ("val_split", "limit_train", "limit_test", "image_size")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def _list_of_ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def parse_duration(text: str) -> float:
    """'90s', '5m', '1h30m', '2.5m' or plain seconds -> seconds."""
    import re

    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 5m or 1h30m, got {text!r}")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _add_config_flags(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kw: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": FIELD_HELP.get(f.name, "") + f" (default: {default!r})",
        }
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, list):
            p.add_argument(flag, type=_list_of_ints, metavar="N,N", **kw)
        elif f.name == "time_budget":
            p.add_argument(flag, type=parse_duration, metavar="DURATION", **kw)
        else:
            p.add_argument(flag, type=type(default), metavar=type(default).__name__.upper(), **kw)


def add_data_flags(
    p: argparse.ArgumentParser, required: bool = True, data_help: str | None = None
) -> None:
    """--data, --data-dir and --cache-dir, shared by every command that reads a dataset."""
    p.add_argument(
        "--data",
        required=required,
        help=data_help
        or "an image folder (DIR/train/<class>/*, "
        "DIR/test/<class>/*), a CIFAR python archive or its folder, or cifar10 / "
        "cifar100 to download the official archive",
    )
    p.add_argument(
        "--data-dir",
        help="where cifar10/cifar100 are downloaded (default: "
        "$CIFAR_RESNET_DATA or ~/.cache/cifar-resnet/data)",
    )
    p.add_argument(
        "--cache-dir",
        help="where decoded images are cached (default: "
        "$CIFAR_RESNET_CACHE or ~/.cache/cifar-resnet/decoded)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cifar-resnet",
        description="Train ResNets on CIFAR-10/100 and small colour image folders, on CPU and GPU.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="train a model; prints the seed post's line every epoch",
        description="Train a ResNet. Recipe: --preset, then --config, then flags.",
    )
    add_data_flags(t)
    t.add_argument(
        "--out",
        help="run folder for metrics.csv, config.toml, checkpoints and "
        "summary.json (required unless --resume RUN_DIR)",
    )
    t.add_argument("--preset", help=f"recipe to start from: {', '.join(PRESETS)} (default seed)")
    t.add_argument("--config", help="TOML file of recipe fields (see config.toml in any run)")
    t.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue a run from its newest "
        "valid checkpoint; auto: continue --out if it has one, else start it",
    )
    t.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    t.add_argument("--quiet", action="store_true", help="print only errors and the summary")
    t.add_argument(
        "--tensorboard",
        action="store_true",
        help="log every epoch's figures and "
        "the learning rate to RUN/tensorboard (pip install 'cifar-resnet[tensorboard]')",
    )
    t.add_argument(
        "--no-report",
        action="store_true",
        help="skip the PNG plots and report.md "
        "written after training (they need matplotlib: pip install "
        "'cifar-resnet[report]')",
    )
    t.add_argument(
        "--dist-backend",
        default="auto",
        help="with torchrun: auto (nccl on GPUs, gloo on CPUs), nccl or gloo",
    )
    t.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="with torchrun: how long a rank waits for the others before the job "
        "fails (a dead rank ends the job instead of hanging it)",
    )
    _add_config_flags(t)

    e = sub.add_parser(
        "evaluate",
        help="loss, accuracy, per-class accuracy, confusion matrix",
        description="Evaluate a run's newest checkpoint (or a .pt file).",
    )
    e.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    add_data_flags(e)
    e.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="val needs a run trained with --val-split (the same images are held out)",
    )
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--ema",
        dest="use_ema",
        action="store_true",
        help="evaluate the EMA weights of a run trained with --ema",
    )
    e.add_argument(
        "--tta",
        nargs="?",
        type=int,
        choices=(0, 1, 2),
        const=1,
        default=0,
        metavar="LEVEL",
        help="test-time augmentation: --tta (or 1) averages the logits of each image and its "
        "mirror image (usually a few tenths of a point); 2 adds two 1-pixel translations, as "
        "the fast preset's evaluations",
    )
    _add_config_flags(e, only=(*DATA_FIELDS, "eval_batch_size", "precision"))

    from . import export, predict, report

    report.add_parser(sub)
    predict.add_parser(sub)
    export.add_parser(sub)
    sub.add_parser("models", help="list the models")
    sub.add_parser("presets", help="list the presets with their recipes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CifarResnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def _load_bundle(args, image_size: int, progress: bool):
    from .data import load_data

    return load_data(
        args.data,
        data_dir=args.data_dir,
        image_size=image_size or None,
        cache_dir=args.cache_dir,
        progress=progress,
    )


def cmd_train(args: argparse.Namespace) -> int:
    started = time.perf_counter()  # --time-budget counts from here: torch's import included
    from . import checkpoint as ckpt_io
    from .train import check_resume, fit

    flags = _flag_values(args)
    file_values = load_toml(args.config) if args.config else None
    resume_ckpt, out = None, args.out
    if args.resume:
        if args.resume == "auto":
            if not out:
                raise UsageError("--resume auto needs --out RUN_DIR")
        else:
            if out and Path(out).resolve() != Path(args.resume).resolve():
                raise UsageError(
                    "--resume RUN_DIR continues in RUN_DIR; drop --out or make them the same"
                )
            out = args.resume
            if not Path(out).is_dir():
                raise UsageError(f"--resume {out}: no such run folder")
        warned: list[str] = []
        found = ckpt_io.latest_valid(out, warn=warned.append)
        if found is None and warned:  # checkpoints there but none loads: never start over
            try:
                ckpt_io.load_checkpoint(ckpt_io.checkpoint_files(out)[0])
            except CheckpointError as e:
                raise CheckpointError(
                    f"{e}, and no older checkpoint is valid; move the bad "
                    f"files out of {out}/checkpoints to start over"
                ) from None
        for message in warned:
            print(message, file=sys.stderr)
        if found is None and args.resume != "auto":
            raise CheckpointError(
                f"--resume {out}: the folder holds no checkpoint yet; start "
                f"the run with --out {out} --resume auto"
            )
        if found is not None:
            path, resume_ckpt = found
            if not args.quiet:
                print(f"resuming from {path}")
    elif not out:
        raise UsageError("--out RUN_DIR is required: the run folder for metrics and checkpoints")

    if resume_ckpt is not None:
        preset = resume_ckpt.get("preset", "seed")
        base = {k: v for k, v in resume_ckpt["config"].items()}
        _, config = resolve_config(preset, base, flags)
    else:
        from .train import resolve_device

        preset, config = resolve_config(
            args.preset,
            file_values,
            flags,
            file_name=args.config or "config file",
            device_type=resolve_device(args.device).type,
        )
    progress = sys.stderr.isatty() and not args.quiet
    bundle = _load_bundle(args, config.image_size, progress)
    if resume_ckpt is not None:
        check_resume(resume_ckpt, config, bundle.classes, Path(out))
    summary = fit(
        config,
        bundle,
        out,
        preset=preset,
        device=args.device,
        resume=resume_ckpt,
        quiet=args.quiet,
        dist_backend=args.dist_backend,
        dist_timeout=args.dist_timeout,
        started=started,
        tensorboard=args.tensorboard,
    )
    if "checkpoint" not in summary:  # not rank 0 of a torchrun job
        return 0
    if not args.no_report:
        _report_after_training(args, out, bundle)
    print(
        json.dumps(summary)
        if args.quiet
        else f"done: test accuracy {summary['test_accuracy']:.2f}% after "
        f"{summary['epochs']} epochs ({summary['wall_seconds']:.0f}s); summary in "
        f"{Path(out) / 'summary.json'}"
    )
    return 0


def _report_after_training(args: argparse.Namespace, out: str, bundle) -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        if not args.quiet:
            print("(no plots: pip install 'cifar-resnet[report]' for report.md and PNG plots)")
        return
    from .report import write_report

    t0 = time.perf_counter()  # after the run: outside --time-budget (--no-report skips it)
    paths = write_report(out, data=bundle)  # the data already loaded for training
    if not args.quiet:
        took = time.perf_counter() - t0
        print(f"report: {Path(out) / 'report.md'} ({len(paths)} files, {took:.1f}s)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import resolve_checkpoint
    from .evaluate import evaluate_checkpoint, format_report

    path, ckpt = resolve_checkpoint(args.target)
    flags = _flag_values(args)
    result = evaluate_checkpoint(
        ckpt, args, flags, split=args.split, device=args.device, tta=args.tta, ema=args.use_ema
    )
    result["checkpoint"] = str(path)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import count_parameters, create_model, list_models

    for name, about in list_models().items():
        print(f"{name:<11} {count_parameters(create_model(name)):>10,} params  {about}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import preset_config

    for name, values in PRESETS.items():
        print(f"{name}: {values.get('_about', '')}")
        config = preset_config(name)
        print("   " + ", ".join(f"{k}={getattr(config, k)!r}" for k in values if k[0] != "_"))
        if "_cpu" in values:
            cpu = ", ".join(f"{k}={v!r}" for k, v in values["_cpu"].items())
            print(f"   on a CPU: {cpu}")
    return 0


def _run_report(args):
    from .report import run

    return run(args)


def _run_predict(args):
    from .predict import run

    return run(args)


def _run_export(args):
    from .export import run

    return run(args)


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "report": _run_report,
    "predict": _run_predict,
    "export": _run_export,
    "models": cmd_models,
    "presets": cmd_presets,
}
