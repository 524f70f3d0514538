"""The device-resident loader: the whole split is one uint8 tensor on the training device and
every batch is cropped, flipped and normalised there, in a handful of batched tensor ops.

Every random choice of an epoch (the permutation, each image's crop offset and flip) is drawn
up front from a generator seeded with ``(seed, epoch)``. Batch ``i`` of epoch ``e`` is therefore
a pure function of ``(seed, e, i)``: a run resumed mid-epoch sees exactly the batches the
uninterrupted run would have seen, and every rank of a distributed run agrees on them.

Distributed rule: ``batch_size`` is the global batch. Global batch ``i`` is the slice
``perm[i*B:(i+1)*B]``; rank ``r`` of ``W`` trains on the ``r``-th of ``W`` near-equal parts
of it. Two ranks at batch 128 therefore see the same images per step as one process at 128.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import RunSplits
from .mixing import BatchAugment
from .runtime import Runtime


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside 0..size-1 mirrored back in (``-1 -> 1``, ``size -> size - 2``)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    # Mix seed and epoch into one 63-bit value; different (seed, epoch) give different streams.
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1))
    return g


class DeviceLoader:
    """Batches of ``(images, labels)`` from uint8 images held on ``device``.

    images: uint8 array or tensor (N, H, W, 3). labels: int (N,).
    train=True shuffles and augments (crop with ``padding`` pixels of zeros or, with
    ``pad_mode="reflect"``, of the mirrored border; flip with p=0.5, or with ``alt_flip``
    each image flipped in every other epoch, its first flip drawn at random);
    train=False yields the split in order, unaugmented, sharded contiguously across ranks.
    Yielded images are float32 (N, 3, H, W), normalised with ``mean``/``std`` on the 0..1 scale,
    in channels_last memory format when ``channels_last``.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        train: bool = True,
        padding: int = 0,
        pad_mode: str = "zeros",
        flip: bool = True,
        alt_flip: bool = False,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        chunk: int = 4096,
        extra: BatchAugment | None = None,
    ):
        self.device = torch.device(device)
        self.images = torch.as_tensor(images).to(self.device)  # (N, H, W, 3) uint8
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {tuple(self.images.shape)}")
        self.batch_size = batch_size
        self.train = train
        self.padding = padding
        self.pad_mode = pad_mode
        self.flip = flip
        self.alt_flip = alt_flip
        self.seed = seed
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.chunk = chunk
        # Cutout, mixup/CutMix and the policies (train only); mixing yields soft targets (B, C).
        self.extra = extra if extra is not None and extra.active and train else None
        # (x / 255 - mean) / std == x * scale + shift, per channel.
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1)
        self.shift = (-mean_t / std_t).view(1, 3, 1, 1)

    def __len__(self) -> int:
        """Batches per epoch (global steps); the last partial batch is kept."""
        n = len(self.labels)
        if not self.train:
            n = len(self._eval_shard())
        return -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The permutation, crop offsets (N, 2) in 0..2P and flips (N,) of ``epoch``."""
        n = len(self.labels)
        g = _epoch_generator(self.seed, epoch)
        perm = torch.randperm(n, generator=g)
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        if self.alt_flip:
            # airbench's alternating flip: a random choice once, inverted every other epoch,
            # so each image is seen both ways in any two consecutive epochs.
            first = torch.rand(n, generator=_epoch_generator(self.seed, -1)) < 0.5
            flips = first ^ bool(epoch % 2)
        if not self.flip:
            flips.zero_()
        return perm, offsets, flips

    def extra_plan(self, epoch: int) -> dict[str, torch.Tensor]:
        """The regularisers' per-image parameters of ``epoch``, by position in its order: from
        a generator of their own, so that the permutation, crops and flips are the same with
        and without them."""
        if self.extra is None:
            return {}
        g = _epoch_generator(self.seed ^ 0x5EED_A06, epoch)
        return self.extra.draw(len(self.labels), *self.images.shape[1:3], g)

    def _eval_shard(self) -> torch.Tensor:
        n = len(self.labels)
        return torch.tensor_split(torch.arange(n), self.world_size)[self.rank]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(start=0)

    def _local_positions(self) -> tuple[torch.Tensor, list[int]]:
        """Positions (into the epoch's order) of this rank's images, and its batch sizes."""
        n, b = len(self.labels), self.batch_size
        if not self.train:
            shard = self._eval_shard()
            sizes = [len(c) for c in torch.split(shard, b)]
            return shard, sizes
        parts = [
            torch.tensor_split(torch.arange(i, min(i + b, n)), self.world_size)[self.rank]
            for i in range(0, n, b)
        ]
        return torch.cat(parts), [len(p) for p in parts]

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from global step ``start`` of the current epoch to its end.

        Images are augmented ``chunk`` at a time (a few thousand per kernel launch) and each
        batch is a slice of the chunk: a batch costs no kernel launches of its own.
        """
        positions, sizes = self._local_positions()
        bounds = [0]
        for s in sizes:
            bounds.append(bounds[-1] + s)
        per_chunk = max(1, self.chunk // self.batch_size)
        plan = self._plan() if self.train else None
        for c in range(start, len(sizes), per_chunk):
            lo, hi = bounds[c], bounds[min(c + per_chunk, len(sizes))]
            x, y = self._chunk(positions[lo:hi], plan)
            for i in range(c, min(c + per_chunk, len(sizes))):
                a, z = bounds[i] - lo, bounds[i + 1] - lo
                yield x[a:z], y[a:z]

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        return (*self.epoch_plan(self.epoch), self.extra_plan(self.epoch))

    def _chunk(self, pos: torch.Tensor, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and targets at positions ``pos`` of the epoch's order, augmented; with
        mixup / CutMix mixed with their partners (the mirrored position in the same global
        batch, augmented as on the rank that trains it): soft targets (B, C)."""
        if plan is None:
            idx = pos.to(self.device)
            return self.augment(self.images[idx]), self.labels[idx]
        x, y = self._augmented(pos, plan)
        if self.extra is not None and self.extra.mixing:
            n, b = len(self.labels), self.batch_size
            first = pos // b * b
            partner = first + torch.clamp(first + b, max=n) - 1 - pos
            x2, y2 = self._augmented(partner, plan)
            x, y = self.extra.mix(x, y, x2, y2, {k: v[pos] for k, v in plan[3].items()})
        return x, y

    def _augmented(self, pos: torch.Tensor, plan) -> tuple[torch.Tensor, torch.Tensor]:
        perm, offsets, flips, extra = plan
        idx = perm[pos].to(self.device)
        x = self.augment(
            self.images[idx],
            offsets[pos].to(self.device),
            flips[pos].to(self.device),
            {k: v[pos] for k, v in extra.items()},
        )
        return x, self.labels[idx]

    def augment(
        self,
        x: torch.Tensor,
        offsets: torch.Tensor | None = None,
        flips: torch.Tensor | None = None,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), cropped and flipped if given,
        then (with ``extra``'s rows for these images) the policy's ops before normalising and
        cutout after."""
        b, h, w, _ = x.shape
        if offsets is not None and self.padding > 0 and self.train:
            p = self.padding
            rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B, H) in padded coords
            cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
            if self.pad_mode == "reflect":  # mirror without repeating the edge, as F.pad
                rows, cols = _reflect(rows - p, h), _reflect(cols - p, w)
            else:
                x = F.pad(x, (0, 0, p, p, p, p))  # zero border: (B, H+2P, W+2P, 3)
            x = x[
                torch.arange(b, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]
            ]
        if flips is not None:
            x = torch.where(flips[:, None, None, None], x.flip(2), x)
        if extra and self.extra is not None:
            x = self.extra.policy_ops(x, extra)
        x = x.permute(0, 3, 1, 2)  # (B, 3, H, W) view, channels_last in memory
        x = x.float().mul_(self.scale).add_(self.shift)
        if extra and self.extra is not None:
            x = self.extra.apply_cutout(x, extra)
        if not self.channels_last:
            x = x.contiguous()
        return x


def downscale(x: torch.Tensor, size: int) -> torch.Tensor:
    """A batch (B, 3, H, W) resized to ``size`` x ``size`` (bilinear, antialiased), in the
    memory format it came in: progressive resizing's early, cheaper steps."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def _placement(splits: RunSplits, runtime: Runtime) -> dict[str, Any]:
    """Where and how a run's loaders hand out batches: normalised with the run's statistics,
    this process's shard, on its device, in its memory layout."""
    return dict(
        mean=splits.mean,
        std=splits.std,
        device=runtime.device,
        channels_last=runtime.channels_last,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )


def train_loader(splits: RunSplits, config: TrainConfig, runtime: Runtime) -> DeviceLoader:
    """The run's training loader: its training images, shuffled and augmented as ``config``
    says (crop, flip and the regularisers; mixup / CutMix's soft targets over the run's
    classes), normalised with the run's statistics, this process's shard on its device."""
    return DeviceLoader(
        splits.train.images,
        splits.train.labels,
        config.batch_size,
        train=True,
        padding=config.padding,
        pad_mode=config.pad_mode,
        flip=config.flip,
        alt_flip=config.alt_flip,
        seed=config.seed,
        extra=batch_augment(config, len(splits.classes)),
        **_placement(splits, runtime),
    )


def batch_augment(config: TrainConfig, num_classes: int) -> BatchAugment:
    """The regularisers ``config`` asks for beyond crop and flip."""
    return BatchAugment(
        cutout=config.cutout,
        mixup=config.mixup,
        cutmix=config.cutmix,
        mix_prob=config.mix_prob,
        switch_prob=config.switch_prob,
        policy=config.autoaugment,
        randaugment=tuple(config.randaugment) if config.randaugment else None,
        trivial=config.trivialaugment,
        num_classes=num_classes,
    )


def eval_loaders(
    splits: RunSplits, config: TrainConfig, runtime: Runtime
) -> tuple[DeviceLoader, DeviceLoader | None]:
    """The run's test loader and its validation loader (None without a validation split)."""
    kw = _placement(splits, runtime)
    test = eval_loader(splits.test.images, splits.test.labels, config.eval_batch_size, **kw)
    if splits.val is None:
        return test, None
    return test, eval_loader(splits.val.images, splits.val.labels, config.eval_batch_size, **kw)


def eval_loader(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DeviceLoader:
    """An evaluation loader: the images in order, unaugmented, sharded across ranks."""
    return DeviceLoader(
        images,
        labels,
        batch_size,
        device=device,
        train=False,
        mean=mean,
        std=std,
        channels_last=channels_last,
        rank=rank,
        world_size=world_size,
    )
