"""Today's CIFAR baselines, layer for layer as the PyTorch code people compare against defines
them, so that its state dicts load strictly here and compute the same logits:

- ``resnet18``, ``resnet34``: kuangliu/pytorch-cifar ``models/resnet.py`` (MIT): a 3x3 stem at
  64 channels, no max pool, BasicBlocks at 64/128/256/512 with 1x1 conv + BN projection
  shortcuts (the block is :class:`cifar_resnet.models.BasicBlock`, passed in).
- ``preact-resnet18``: kuangliu/pytorch-cifar ``models/preact_resnet.py``, after He, Zhang, Ren
  and Sun, "Identity Mappings in Deep Residual Networks" (ECCV 2016): BN-ReLU before each conv,
  1x1 conv shortcuts (no BN) where the shape changes, no BN before the classifier.
- ``wrn-D-K``: xternalz/WideResNet-pytorch ``wideresnet.py`` (MIT), after Zagoruyko and
  Komodakis, "Wide Residual Networks" (BMVC 2016): depth D = 6n+4, stages at 16K/32K/64K,
  pre-activation blocks with dropout between the two convolutions.

Initialisation as each reference does it: kuangliu's models keep PyTorch's defaults; the Wide
ResNet re-initialises convolutions with He et al.'s normal (fan out), BN to (1, 0) and the
classifier's bias to 0. Modules are built in the references' order, so one seed gives the
reference's initial weights. One deliberate difference: the references average-pool with a
fixed window (4 or 8), which is the global pool at 32x32 inputs; here the pool is global at
any input size (the same numbers at 32x32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .names import WRN_MAX_DEPTH, WRN_MAX_WIDTH, parse_wrn  # noqa: F401  (the names, torch-free)


def _stages(module: nn.Module, block: Callable[..., nn.Module], num_blocks: Sequence[int]) -> None:
    """kuangliu's four stages ``layer1..4`` at 64/128/256/512 channels, strides 1/2/2/2."""
    in_planes = 64
    for i, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
        layers = []
        for s in [stride] + [1] * (num_blocks[i] - 1):
            layers.append(block(in_planes, planes, s))
            in_planes = planes
        setattr(module, f"layer{i + 1}", nn.Sequential(*layers))


class KuangliuResNet(nn.Module):
    """kuangliu's ``ResNet(block, num_blocks)``: stem conv-BN-ReLU at 64, four stages at
    64/128/256/512 with strides 1/2/2/2, global average pool, linear classifier."""

    def __init__(self, block: Callable[..., nn.Module], num_blocks: Sequence[int], num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        _stages(self, block, num_blocks)  # (B, 64, 32, 32) ... (B, 512, 4, 4)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (B, 512)
        return self.linear(out)


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; the shortcut (a 1x1 conv where the shape changes) takes the first
    activation, the identity takes the block's input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """kuangliu's ``PreActResNet``: a bare 3x3 stem conv (no BN), pre-activation stages, and
    no BN-ReLU before the pool (as the reference; the paper's net has one)."""

    def __init__(self, num_blocks: Sequence[int], num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        _stages(self, PreActBlock, num_blocks)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (B, 512)
        return self.linear(out)


class WideBlock(nn.Module):
    """Zagoruyko & Komodakis' wide basic block, BN-ReLU-conv3x3-[dropout]-BN-ReLU-conv3x3.
    Where the shape changes the first activation feeds both branches and a 1x1 conv is the
    shortcut. ``convShortcut`` keeps the reference's attribute name: its state dicts load."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal = in_planes == out_planes
        self.convShortcut = (  # noqa: N815 - the reference's name, for its state dicts
            None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class WideStage(nn.Module):
    """``n`` wide blocks; the reference's ``NetworkBlock`` (its blocks under ``layer``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    dropout,
                )
                for i in range(n)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``width``: a 3x3 stem at 16, three stages of (depth - 4) / 6 wide blocks at
    16K/32K/64K channels (strides 1/2/2), BN-ReLU, global average pool, linear classifier."""

    def __init__(self, depth: int, width: int, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(n, channels[0], channels[1], 1, dropout)  # (B, 16K, 32, 32)
        self.block2 = WideStage(n, channels[1], channels[2], 2, dropout)  # (B, 32K, 16, 16)
        self.block3 = WideStage(n, channels[2], channels[3], 2, dropout)  # (B, 64K, 8, 8)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():  # the reference's initialisation, in its order
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (B, 64K)
        return self.fc(out)
