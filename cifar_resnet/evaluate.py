"""The one inference path: logits with test-time augmentation, then loss, accuracy and the
confusion matrix. Training's evaluations, ``cifar-resnet evaluate``, the report, ``predict``
and the export check all come through here, so they cannot disagree.

A *model* here is any callable from normalised float images (B, 3, H, W) to logits (B, C):
an ``nn.Module``, or a wrapper around an exported file (ONNX, TorchScript).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .checkpoint import build_model, checkpoint_config
from .config import MAX_IMAGE_SIZE, apply_overrides
from .data import CIFAR_SIDE, DataBundle, eval_split
from .errors import CheckpointError, DataError
from .loader import DeviceLoader, eval_loader

Model = Callable[[torch.Tensor], torch.Tensor]
PREDICT_BATCH = 256  # images per forward pass outside training


def tta_logits(model: Model, x: torch.Tensor, tta: int = 0) -> torch.Tensor:
    """fp32 logits of ``x`` with test-time augmentation: 0 none, 1 the mean over the image and
    its mirror, 2 (airbench) half that plus half the mirror-mean of two 1-pixel diagonal
    translations with mirrored borders: 6 forward passes."""

    def mirrored(v):
        out = model(v).float()
        return out if tta == 0 else (out + model(v.flip(3)).float()) / 2

    logits = mirrored(x)
    if tta >= 2:
        h, w = x.shape[2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[:, :, :h, :w], padded[:, :, 2 : h + 2, 2 : w + 2]]
        logits = (logits + sum(mirrored(v) for v in shifted) / 2) / 2
    return logits


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(
        device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
    )


@torch.no_grad()
def predict_logits(
    model: Model, loader: DeviceLoader, *, amp_dtype: torch.dtype | None = None, tta: int = 0
) -> torch.Tensor:
    """fp32 logits (N, C) of this rank's images of ``loader``, in its order, on the CPU."""
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    with _autocast(loader.device, amp_dtype):
        out = [tta_logits(model, x, tta).cpu() for x, _ in loader]
    if isinstance(model, torch.nn.Module):
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def evaluate(
    model: Model,
    loader: DeviceLoader,
    *,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    tta: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any] | None:
    """Loss, accuracy (percent), per-class accuracy and the confusion matrix (rows: true,
    columns: predicted) over ``loader``'s images, summed over every rank of a distributed run.
    None when ``should_stop()`` turned true between two batches.

    Losses and counts stay on the device until the end: no host sync per batch."""
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    try:
        with _autocast(device, amp_dtype):
            for x, y in loader:
                if should_stop is not None and should_stop():
                    return None
                logits = tta_logits(model, x, tta)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
                confusion += torch.bincount(
                    y * num_classes + logits.argmax(1), minlength=num_classes * num_classes
                )
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    distributed.all_reduce_(loss_sum)
    distributed.all_reduce_(confusion)
    return summarize(float(loss_sum), confusion.view(num_classes, num_classes).cpu())


def summarize(loss_sum: float, confusion: torch.Tensor) -> dict[str, Any]:
    """The figures of an evaluation from its summed loss and its confusion matrix."""
    count = int(confusion.sum())
    correct = int(confusion.diag().sum())
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1).double()
    return {
        "loss": loss_sum / max(count, 1),
        "accuracy": 100.0 * correct / max(count, 1),
        "correct": correct,
        "count": count,
        "per_class_accuracy": (100.0 * per_class).tolist(),
        "confusion": confusion.tolist(),
    }


@dataclass
class Predictor:
    """A trained model and what is needed to feed it: class names, normalisation and the
    training image size. Made from a checkpoint (:func:`predictor_from_checkpoint`) or an
    exported file (``cifar_resnet.export.load_exported``).

    ``forward`` maps normalised float32 (B, 3, N, N) images on the CPU to (B, classes) logits.
    """

    forward: Model
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    model_name: str
    source: str

    def logits(self, images: np.ndarray, tta: int = 0) -> np.ndarray:
        """uint8 (N, H, W, 3) images -> float32 (N, classes) logits, with TTA level ``tta``."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        loader = eval_loader(
            images, np.zeros(len(images), np.int64), PREDICT_BATCH, mean=self.mean, std=self.std
        )
        return predict_logits(self.forward, loader, tta=tta).numpy().astype(np.float32)

    def probabilities(self, images: np.ndarray, tta: int = 0) -> np.ndarray:
        """float64 (N, classes) softmax probabilities."""
        return torch.softmax(torch.from_numpy(self.logits(images, tta)).double(), 1).numpy()


def module_forward(model: torch.nn.Module) -> Model:
    """An ``nn.Module`` in eval mode as a Predictor's forward (fp32, no autograd)."""
    model.eval()

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x).float()

    return forward


def checkpoint_image_size(ckpt: dict[str, Any]) -> int:
    """The side of the training images: --image-size, else the data's own size (recorded as
    ``input_size``), else 32 (CIFAR's)."""
    size = checkpoint_config(ckpt).image_size or int(ckpt.get("input_size", 0)) or CIFAR_SIDE
    if not 1 <= size <= MAX_IMAGE_SIZE:  # bounded before any buffer of that side is made
        raise CheckpointError(
            f"the checkpoint's image size {size} is not 1 to {MAX_IMAGE_SIZE}; it is damaged"
        )
    return size


def predictor_from_checkpoint(
    ckpt: dict[str, Any], source: str = "checkpoint", ema: bool = False
) -> Predictor:
    """A predictor from a loaded checkpoint (fp32, on the CPU)."""
    return Predictor(
        module_forward(build_model(ckpt, "cpu", ema=ema, where=source)),
        list(ckpt["classes"]),
        tuple(ckpt["mean"]),
        tuple(ckpt["std"]),
        checkpoint_image_size(ckpt),
        ckpt["model_name"],
        source,
    )


def check_classes(bundle: DataBundle, ckpt: dict[str, Any], where: str = "checkpoint") -> None:
    """The one check that data and a model agree on the class list (same message and exit
    code from every command)."""
    if list(bundle.classes) != list(ckpt["classes"]):
        raise DataError(
            f"the data's classes {bundle.classes[:4]}... differ from the {where}'s "
            f"{list(ckpt['classes'])[:4]}...; pass the --data it was trained on"
        )


def evaluate_checkpoint(
    ckpt: dict[str, Any],
    bundle: DataBundle,
    *,
    split: str = "test",
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    eval_batch_size: int | None = None,
    tta: int = 0,
    ema: bool = False,
    where: str = "checkpoint",
    overrides: dict[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the images of ``split`` that its run held out (``test``: the
    test split under the run's ``limit_test``; ``val``: its validation split). ``overrides``
    change the run's recipe fields for this evaluation (e.g. ``limit_test``); ``on_batch(n)``
    is called before each of the ``n`` batches (a progress bar)."""
    check_classes(bundle, ckpt, where)
    config = checkpoint_config(ckpt, where)
    if overrides:
        config = apply_overrides(config, overrides, "command line").validate()
    images = eval_split(
        bundle, split, val_split=config.val_split, limit_test=config.limit_test, seed=config.seed
    )
    loader = eval_loader(
        images.images,
        images.labels,
        eval_batch_size or config.eval_batch_size,
        device=device,
        mean=ckpt["mean"],
        std=ckpt["std"],
    )
    model = build_model(ckpt, device, ema=ema, where=where)
    tick = None if on_batch is None else (lambda: bool(on_batch(len(loader))))
    result = evaluate(
        model,
        loader,
        num_classes=len(bundle.classes),
        amp_dtype=amp_dtype,
        tta=tta,
        should_stop=tick,
    )
    result.update(
        tta=tta, ema=ema, split=split, classes=list(ckpt["classes"]), model=ckpt["model_name"]
    )
    return result


TTA_WORDS = {
    0: "none",
    1: "level 1 (each image and its mirror, averaged)",
    2: "level 2 (mirror and two 1-pixel translations: 6 passes per image, averaged)",
}


def format_report(r: dict[str, Any]) -> str:
    """A readable table: the headline, per-class accuracy, the confusion matrix."""
    classes: Sequence[str] = r["classes"]
    lines = [
        f"{r['model']} on {r['count']} {r['split']} images: loss {r['loss']:.4f}, "
        f"accuracy {r['accuracy']:.2f}% ({r['correct']}/{r['count']})",
        f"test-time augmentation: {TTA_WORDS[r.get('tta', 0)]}",
        "",
        "per-class accuracy:",
    ]
    width = max(len(c) for c in classes)
    for i, (name, acc, row) in enumerate(zip(classes, r["per_class_accuracy"], r["confusion"])):
        lines.append(f"  {name:<{width}}  {acc:6.2f}%  ({row[i]}/{sum(row)})")
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
