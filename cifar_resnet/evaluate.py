"""Evaluate a trained checkpoint: accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

from typing import Any

import torch

from .checkpoint import load_checkpoint
from .config import TrainConfig, apply_overrides
from .errors import UsageError
from .loader import DeviceLoader
from .models import create_model


def load_model(
    ckpt: dict[str, Any] | str, device: str | torch.device = "cpu", ema: bool = False
) -> torch.nn.Module:
    """A trained model in eval mode from a checkpoint dict or file (its EMA weights if ema)."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    if ema and "ema" not in ckpt:
        raise UsageError("this checkpoint holds no EMA weights: train with --ema DECAY")
    model = create_model(ckpt["model_name"], len(ckpt["classes"]))
    model.load_state_dict(ckpt["ema" if ema else "model"])
    return model.to(device).eval()


def load_run_data(ckpt: dict[str, Any], data: str, *, data_dir=None, cache_dir=None):
    """The dataset ``data`` decoded as the checkpoint's run saw it (its ``image_size``)."""
    from .data import load_data

    return load_data(
        data,
        data_dir=data_dir,
        image_size=ckpt.get("config", {}).get("image_size") or None,
        cache_dir=cache_dir,
        progress=False,
    )


def evaluate_checkpoint(
    ckpt: dict[str, Any],
    args,
    flags: dict[str, Any],
    split: str = "test",
    device: str = "auto",
    tta: int = 0,
    ema: bool = False,
) -> dict[str, Any]:
    from .cli import _load_bundle
    from .data import split_validation, subset
    from .train import evaluate, resolve_device, resolve_precision

    config = apply_overrides(TrainConfig(**ckpt["config"]), flags, "command line").validate()
    dev = resolve_device(device)
    bundle = _load_bundle(args, config.image_size, progress=False)
    if list(bundle.classes) != list(ckpt["classes"]):
        raise UsageError(
            f"the data's classes {bundle.classes[:4]}... differ from the "
            f"checkpoint's {ckpt['classes'][:4]}...; pass the --data it was trained on"
        )
    if split == "val":
        if not config.val_split:
            raise UsageError("this run was trained without --val-split; evaluate --split test")
        _, data = split_validation(bundle.train, config.val_split, config.seed)
    else:
        data = subset(bundle.test, config.limit_test or None, config.seed)
    loader = DeviceLoader(
        data.images,
        data.labels,
        config.eval_batch_size,
        device=dev,
        train=False,
        mean=ckpt["mean"],
        std=ckpt["std"],
    )
    model = load_model(ckpt, dev, ema=ema)
    result = evaluate(
        model, loader, resolve_precision(config.precision, dev), len(bundle.classes), tta=tta
    )
    result.update(
        tta=tta, ema=ema, split=split, classes=list(ckpt["classes"]), model=ckpt["model_name"]
    )
    return result


def format_report(r: dict[str, Any]) -> str:
    """A readable table: the headline, per-class accuracy, the confusion matrix."""
    classes = r["classes"]
    lines = [
        f"{r['model']} on {r['count']} {r['split']} images: loss {r['loss']:.4f}, "
        f"accuracy {r['accuracy']:.2f}% ({r['correct']}/{r['count']})",
        "",
        "per-class accuracy:",
    ]
    width = max(len(c) for c in classes)
    for name, acc, row in zip(classes, r["per_class_accuracy"], r["confusion"]):
        lines.append(f"  {name:<{width}}  {acc:6.2f}%  ({row[classes.index(name)]}/{sum(row)})")
    if len(classes) <= 20:
        short = [c[:5] for c in classes]
        cell = max(5, len(str(max(max(row) for row in r["confusion"]))))
        lines += [
            "",
            "confusion matrix (rows: true class, columns: predicted):",
            " " * (width + 2) + " ".join(f"{s:>{cell}}" for s in short),
        ]
        for name, row in zip(classes, r["confusion"]):
            lines.append(f"  {name:<{width}}" + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
