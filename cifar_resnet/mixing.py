"""Batch regularisers drawn per image from the run's ``(seed, epoch)`` generator: cutout,
mixup and CutMix, the policies of :mod:`.augment`, and the loss and accuracy over the mixed
(soft) targets they produce.

- Cutout (DeVries and Taylor, "Improved Regularization of Convolutional Neural Networks with
  Cutout", 2017): one N x N square per image set to 0 after normalisation (their code applies
  the mask after ``Normalize``, so the square is the dataset mean), centred at a uniform pixel,
  clipped at the border. Their code cuts ``N // 2`` each side (N - 1 pixels for odd N); here
  the side is N for every N.
- mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019) as timm's ``Mixup`` in
  its per-image mode: each image is mixed with probability ``mix_prob`` with its partner, the
  image at the mirrored position of the same global batch (timm: ``x.flip(0)``); with both
  on, CutMix with probability ``switch_prob``; lambda ~ Beta(alpha, alpha); CutMix pastes the
  partner's box of side ``sqrt(1 - lambda)`` x the image's, centred uniformly and clipped,
  and lambda is recomputed from the clipped box (timm's ``correct_lam``; timm cuts
  ``side // 2`` each way from the centre, an even side; here the side itself, as cutout).
  The target is ``lambda one_hot(a) + (1 - lambda) one_hot(b)``; :func:`mixed_loss` applies
  label smoothing to it, which equals timm's mixing of smoothed one-hot targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import augment


def mixed_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0):
    """Mean cross-entropy against class indices (B,) or soft targets (B, C). For mixed targets
    ``lam a + (1 - lam) b`` it equals ``lam CE(a) + (1 - lam) CE(b)`` per image (CE is
    linear in the target), with label smoothing applied to both labels."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """The label the train accuracy counts: the class itself, or under mixup / CutMix the
    dominant label of the mixed target (the larger lambda; at 0.5 the lower class index)."""
    return targets if targets.ndim == 1 else targets.argmax(1)


@dataclass(frozen=True)
class BatchAugment:
    """The regularisers a training loader applies on top of crop and flip."""

    cutout: int = 0  # side of the square, pixels (0 = off)
    mixup: float = 0.0  # Beta alpha (0 = off)
    cutmix: float = 0.0  # Beta alpha (0 = off)
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    policy: str = ""  # "cifar10": AutoAugment's CIFAR-10 policy
    randaugment: tuple[int, int] | None = None  # (N ops, magnitude M of 10)
    trivial: bool = False
    num_classes: int = 0

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def active(self) -> bool:
        return bool(self.cutout or self.mixing or self.policy or self.randaugment or self.trivial)

    def draw(self, n: int, h: int, w: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Every per-image parameter of an epoch of ``n`` images, indexed by position."""
        plan: dict[str, torch.Tensor] = {}
        ops = augment.draw_plan(self.policy, self.randaugment, self.trivial, n, g)
        if ops is not None:
            plan["ops"], plan["frac"], plan["sign"] = ops
        if self.cutout:
            plan["cutout"] = torch.stack(
                [torch.randint(0, h, (n,), generator=g), torch.randint(0, w, (n,), generator=g)], 1
            )
        if self.mixing:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
            use_cutmix = np.zeros(n, dtype=bool)
            if self.mixup > 0 and self.cutmix > 0:
                use_cutmix = rng.random(n) < self.switch_prob
                lam = np.where(
                    use_cutmix,
                    rng.beta(self.cutmix, self.cutmix, n),
                    rng.beta(self.mixup, self.mixup, n),
                )
            elif self.mixup > 0:
                lam = rng.beta(self.mixup, self.mixup, n)
            else:
                use_cutmix = np.ones(n, dtype=bool)
                lam = rng.beta(self.cutmix, self.cutmix, n)
            lam = np.where(rng.random(n) < self.mix_prob, lam, 1.0)
            plan["lam"] = torch.from_numpy(lam.astype(np.float32))
            plan["use_cutmix"] = torch.from_numpy(use_cutmix)
            plan["box"] = torch.stack(
                [torch.randint(0, h, (n,), generator=g), torch.randint(0, w, (n,), generator=g)], 1
            )
        return plan

    def policy_ops(self, x: torch.Tensor, plan: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 (B, H, W, 3) through the policy's ops (``plan`` rows for these images)."""
        if "ops" not in plan:
            return x
        return augment.apply_plan(x, (plan["ops"], plan["frac"], plan["sign"]), self.trivial)

    def apply_cutout(self, x: torch.Tensor, plan: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised (B, 3, H, W) with each image's square zeroed."""
        if not self.cutout:
            return x
        inside = box_mask(plan["cutout"].to(x.device), self.cutout, self.cutout, *x.shape[2:])
        return x.masked_fill(inside[:, None], 0.0)

    def mix(self, x, y, x2, y2, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, soft targets (B, C)): ``x`` mixed with its partners ``x2``."""
        h, w = x.shape[2:]
        lam = plan["lam"].to(x.device)
        cut = plan["use_cutmix"].to(x.device)
        ratio = (1 - lam).sqrt()
        ch, cw = (h * ratio).long(), (w * ratio).long()  # timm: int(side * sqrt(1 - lam))
        inside = box_mask(plan["box"].to(x.device), ch, cw, h, w) & cut.view(-1, 1, 1)
        area = inside.sum(dim=(1, 2)).float()
        lam = torch.where(cut, 1 - area / (h * w), lam)  # recomputed from the clipped box
        lam_x = lam.view(-1, 1, 1, 1).to(x.dtype)
        mixed = torch.where(cut.view(-1, 1, 1, 1), x, x * lam_x + x2 * (1 - lam_x))
        mixed = torch.where(inside[:, None], x2, mixed)
        if x.is_contiguous(memory_format=torch.channels_last):
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        c = self.num_classes
        soft = lam[:, None] * F.one_hot(y, c) + (1 - lam[:, None]) * F.one_hot(y2, c)
        return mixed, soft


def box_mask(centres: torch.Tensor, bh, bw, h: int, w: int) -> torch.Tensor:
    """(B, H, W) bool: each image's box of ``bh`` x ``bw`` (ints or per-image tensors) at
    ``centres`` (B, 2) (row, col), from ``centre - side // 2``, clipped at the border."""
    top = centres[:, 0] - torch.as_tensor(bh, device=centres.device) // 2
    left = centres[:, 1] - torch.as_tensor(bw, device=centres.device) // 2
    rows = torch.arange(h, device=centres.device).view(1, h)
    cols = torch.arange(w, device=centres.device).view(1, w)
    in_rows = (rows >= top.view(-1, 1)) & (rows < (top + bh).view(-1, 1))
    in_cols = (cols >= left.view(-1, 1)) & (cols < (left + bw).view(-1, 1))
    return in_rows[:, :, None] & in_cols[:, None, :]
