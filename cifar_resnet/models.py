"""ResNets for 32x32 images, in a registry.

- ``seed``: the network of the seed post (a blog port of "3-minute deep learning with
  PyTorch"): 3 stages of 2 BasicBlocks at 16/32/64 channels with 1x1 conv+BN projection
  shortcuts where the shape changes, 175,258 parameters for 10 classes.
- ``resnet20`` ... ``resnet110``: He, Zhang, Ren and Sun, "Deep Residual Learning for Image
  Recognition" (CVPR 2016), section 4.2: 6n+2 layers, n blocks per stage at 16/32/64 channels,
  option A shortcuts (identity; stride-2 subsampling with zero-padded extra channels, so no
  extra parameters). The paper leaves open where the zero channels go; we put the input's
  channels in the middle, as the PyTorch implementation whose weights people download
  (akamaster/pytorch_resnet_cifar10) does, so its published weights load and mean what they
  meant. The ``...b`` names use option B (1x1 projection + BN where the shape changes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError
from .models_baselines import KuangliuResNet, PreActResNet, WideResNet, parse_wrn
from .names import add_model_name, check_model

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}
# Where option A puts the zero channels: "both" (the input in the middle, as the published
# PyTorch weights expect; the default since checkpoint version 2) or "end" (after the input:
# what cifar-resnet did before, kept so that older checkpoints compute what they computed).
OPTION_A_PADS = ("both", "end")
# Published weights each model loads strictly and computes as they were trained
# (`cifar-resnet evaluate --weights FILE --model NAME --normalize imagenet`).
PUBLISHED_WEIGHTS = {
    f"resnet{d}": "akamaster/pytorch_resnet_cifar10 pretrained_models/resnet"
    f"{d}-*.th (trained with --normalize imagenet)"
    for d in (20, 32, 44, 56, 110)
}


HE_DEPTHS = (20, 32, 44, 56, 110)  # He et al. 2016 section 4.2's CIFAR ResNets


def register_model(name: str, description: str):
    """Add a factory ``fn(num_classes) -> nn.Module`` to the registry under ``name``."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description
        add_model_name(name)  # the recipe's torch-free name check knows it too
        return fn

    return wrap


def list_models() -> dict[str, str]:
    """Registered model names with a one-line description each."""
    return dict(_DESCRIPTIONS)


def has_option_a(name: str) -> bool:
    """True for the He et al. ResNets with option A shortcuts (``resnetN``, not ``resnetNb``)."""
    return name in {f"resnet{d}" for d in HE_DEPTHS}


def has_dropout(name: str) -> bool:
    """True for the models that take ``dropout`` (the Wide ResNets)."""
    return name.startswith("wrn-")


def check_model_name(name: str, dropout: float = 0.0) -> None:
    """A UsageError unless ``name`` is a registered model or a valid ``wrn-D-K``, and
    ``dropout`` (if any) applies to it."""
    if name not in _REGISTRY:
        check_model(name)  # a valid wrn-D-K passes; else the reason, or the nearest name
    if dropout and not has_dropout(name):
        raise UsageError(
            f"--dropout applies to the Wide ResNets (wrn-D-K) only; {name} has no dropout: "
            "drop --dropout or choose a wrn model"
        )


def create_model(
    name: str, num_classes: int = 10, option_a_pad: str | None = None, dropout: float = 0.0
) -> nn.Module:
    """Build a registered model (or ``wrn-D-K``); an unknown name is a UsageError listing the
    valid ones. ``option_a_pad`` (see OPTION_A_PADS) only for models with option A shortcuts;
    ``dropout`` (probability) only for the Wide ResNets."""
    check_model_name(name, dropout)
    if num_classes < 2:
        raise UsageError(f"a classifier needs at least 2 classes, got {num_classes}")
    wrn = parse_wrn(name)
    if wrn is not None:
        return WideResNet(*wrn, num_classes=num_classes, dropout=dropout)
    if option_a_pad is None:
        return _REGISTRY[name](num_classes=num_classes)
    if not has_option_a(name) or option_a_pad not in OPTION_A_PADS:
        raise UsageError(f"option_a_pad {option_a_pad!r} does not apply to model {name!r}")
    return _REGISTRY[name](num_classes=num_classes, option_a_pad=option_a_pad)


@dataclass(frozen=True)
class ModelSpec:
    """All that builds a model, resolved once: the registry name (a run's ``shortcut``
    already folded into it), the class count, and for option A ResNets where the shortcut's
    zero channels go, and the Wide ResNets' dropout (training only: not a checkpoint option,
    the run's recipe holds it). Training and checkpoints build their models from it alike."""

    name: str
    num_classes: int = 10
    option_a_pad: str | None = None
    dropout: float = 0.0

    @classmethod
    def new(cls, name: str, num_classes: int, dropout: float = 0.0) -> ModelSpec:
        """A new model's spec: option A ResNets pad as the published PyTorch weights expect."""
        return cls(name, num_classes, "both" if has_option_a(name) else None, dropout)

    @property
    def options(self) -> dict[str, str]:
        """The build options as checkpoints record them (none for most models)."""
        return {} if self.option_a_pad is None else {"option_a_pad": self.option_a_pad}

    def build(self) -> nn.Module:
        return create_model(self.name, self.num_classes, self.option_a_pad, self.dropout)


def min_input_size(name: str) -> int:
    """The smallest image side a registered model takes: ``fastnet``'s 2x2 stem without
    padding and three 2x2 max-pools need 9 pixels; the ResNets pad and take any size."""
    return 9 if name.startswith("fastnet") else 1


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ShortcutA(nn.Module):
    """He et al. option A: identity, subsampled by ``stride`` and zero-padded to ``planes``
    channels, so a stage change adds no parameters. ``pad`` "both" puts the zeros on both
    sides (the input in the middle: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4,
    planes // 4))`` in the PyTorch models with published weights); "end" after the input."""

    def __init__(self, in_planes: int, planes: int, stride: int, pad: str = "both"):
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.channels = (extra // 2, extra - extra // 2) if pad == "both" else (0, extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        if any(self.channels):
            # (B, C, H, W) -> (B, C + extra, H, W); the paper pads the new channels with zeros.
            x = F.pad(x, (0, 0, 0, 0, *self.channels))
        return x


def _projection(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Option B (and the seed post): 1x1 conv + BN where the shape changes."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers; ReLU after the first and after the residual sum."""

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B", pad: str = "both"
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(in_planes, planes, stride, pad)
        else:
            self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem at 16 channels, three stages at 16/32/64 channels with strides
    1/2/2, global 8x8 average pool, linear classifier."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        shortcut: str = "A",
        he_init: bool = True,
        option_a_pad: str = "both",
    ):
        super().__init__()
        self.in_planes, self.option_a_pad = 16, option_a_pad
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, blocks_per_stage, 1, shortcut)  # (B, 16, 32, 32)
        self.layer2 = self._make_layer(32, blocks_per_stage, 2, shortcut)  # (B, 32, 16, 16)
        self.layer3 = self._make_layer(64, blocks_per_stage, 2, shortcut)  # (B, 64, 8, 8)
        self.linear = nn.Linear(64, num_classes)
        if he_init:
            # He et al. 2015 ("Delving deep into rectifiers") initialisation, as section 4.2 uses.
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int, shortcut: str) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, shortcut, self.option_a_pad))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # Global average pool: the post's avg_pool2d(out, 8) at 32x32 inputs, any size here.
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (B, 64)
        return self.linear(out)


@register_model("seed", "the seed post's ResNet: 2 blocks per stage, projection shortcuts")
def seed(num_classes: int = 10) -> ResNet:
    """The seed post's network, with PyTorch's default initialisation as in the post."""
    return ResNet(2, num_classes, shortcut="B", he_init=False)


def _register_he(depth: int) -> None:
    n = (depth - 2) // 6
    for option in ("A", "B"):
        name = f"resnet{depth}" + ("b" if option == "B" else "")

        def factory(num_classes: int = 10, n=n, option=option, **options) -> ResNet:
            return ResNet(n, num_classes, shortcut=option, **options)

        factory.__doc__ = f"ResNet-{depth}, He et al. 2016 section 4.2, option {option} shortcuts."
        kind = "identity/zero-pad" if option == "A" else "1x1 projection"
        register_model(name, f"He et al. 2016 ResNet-{depth} ({kind} shortcuts)")(factory)


for _depth in HE_DEPTHS:
    _register_he(_depth)


# ------------------------------------------------------------ today's baselines (kuangliu)


@register_model("resnet18", "ResNet-18 of kuangliu/pytorch-cifar models/resnet.py (64-512)")
def resnet18(num_classes: int = 10) -> KuangliuResNet:
    """kuangliu/pytorch-cifar's ``ResNet18()``: He et al. 2016's ImageNet ResNet-18 with a 3x3
    stem and no max pool; 11,173,962 parameters for 10 classes."""
    return KuangliuResNet(BasicBlock, (2, 2, 2, 2), num_classes)


@register_model("resnet34", "ResNet-34 of kuangliu/pytorch-cifar models/resnet.py (64-512)")
def resnet34(num_classes: int = 10) -> KuangliuResNet:
    """kuangliu/pytorch-cifar's ``ResNet34()``: 21,282,122 parameters for 10 classes."""
    return KuangliuResNet(BasicBlock, (3, 4, 6, 3), num_classes)


@register_model("preact-resnet18", "PreAct ResNet-18 of kuangliu/pytorch-cifar (He et al. 2016b)")
def preact_resnet18(num_classes: int = 10) -> PreActResNet:
    """kuangliu/pytorch-cifar's ``PreActResNet18()``: 11,171,146 parameters for 10 classes."""
    return PreActResNet((2, 2, 2, 2), num_classes)


# Wide ResNets are built for any wrn-D-K name (create_model); `cifar-resnet models` lists these.
WRN_EXAMPLES = ("wrn-16-4", "wrn-16-8", "wrn-28-10", "wrn-40-4")
WRN_ABOUT = (
    "Wide ResNet-D-K, D = 6n+4, of xternalz/WideResNet-pytorch (Zagoruyko & Komodakis 2016); "
    "--dropout P"
)


# ----------------------------------------------------------------------------- fast preset


class ConvGroup(nn.Module):
    """One stage of ``FastNet``: conv, 2x2 max-pool, BN, GELU, then a residual conv-BN-GELU.

    The residual branch adds to its input after the activation, as in Page's ResNet-9
    ("How to train your ResNet", 2018); the conv-pool-BN order and GELU follow airbench
    (Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024).
    """

    def __init__(self, in_planes: int, planes: int, bn_momentum: float):
        super().__init__()
        self.conv1 = _dirac_conv(in_planes, planes)
        self.norm1 = _frozen_scale_bn(planes, bn_momentum)
        self.conv2 = _dirac_conv(planes, planes)
        self.norm2 = _frozen_scale_bn(planes, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))  # (B, C, H/2, W/2)
        return x + F.gelu(self.norm2(self.conv2(x)))


def _dirac_conv(in_planes: int, planes: int) -> nn.Conv2d:
    """A 3x3 conv whose first ``in_planes`` filters start as the identity (airbench): the
    untrained net passes its input through, which speeds up the first epochs."""
    conv = nn.Conv2d(in_planes, planes, 3, padding=1, bias=False)
    nn.init.dirac_(conv.weight.data[: min(in_planes, planes)])
    return conv


def _frozen_scale_bn(planes: int, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm with a fixed scale of 1 and a learned shift (airbench: learning the scale
    does not help at this length). ``momentum`` is torch's (weight of the new batch)."""
    bn = nn.BatchNorm2d(planes, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


class FastNet(nn.Module):
    """The ``fast`` preset's network: a whitening stem and three residual ``ConvGroup`` s.

    The stem is a 2x2 convolution (no padding) whose filters are fixed to the whitening
    transform of the training images' 2x2 patches and their negatives (Page 2018, airbench),
    set by :meth:`init_whitening` from the data before training; only its bias learns, for
    the first part of the run. The logits are scaled by 1/9, a temperature airbench tuned.
    """

    def __init__(self, widths: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.layer1 = ConvGroup(24, widths[0], 0.4)  # (B, w0, 15, 15) at 32x32 input
        self.layer2 = ConvGroup(widths[0], widths[1], 0.4)  # (B, w1, 7, 7)
        self.layer3 = ConvGroup(widths[1], widths[2], 0.4)  # (B, w2, 3, 3)
        self.linear = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = 1 / 9

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten 2x2 patches of ``images`` (normalised, (N, 3, H, W)).

        The 12 eigenvectors of the patch covariance, each divided by the square root of its
        eigenvalue, and their negatives: 24 filters whose outputs are decorrelated with unit
        variance (the GELU after the stem sees both signs).
        """
        cov = torch.zeros(12, 12, dtype=torch.float64, device=images.device)
        count = 0
        for x in images.float().split(500):  # bounded memory: 500 images of patches at a time
            patches = x.unfold(2, 2, 1).unfold(3, 2, 1)  # (n, 3, H-1, W-1, 2, 2)
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
            cov += patches.T @ patches  # uncentred, as airbench: the stem's bias learns
            count += len(patches)
        cov /= count
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        filters = (eigenvectors.T / (eigenvalues.clamp(min=0) + eps).sqrt()[:, None]).flip(0)
        filters = filters.reshape(12, 3, 2, 2).to(self.whiten.weight)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
        self.whiten.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.gelu(self.whiten(x))  # (B, 24, H-1, W-1)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_max_pool2d(out, 1), 1)  # (B, w2)
        return self.linear(out) * self.scale


@register_model("fastnet", "the fast preset's GPU net: whitening stem, residual 96/384/384")
def fastnet(num_classes: int = 10) -> FastNet:
    """airbench94's design (Jordan 2024) at 1.5x its widths, with residual stages: on a
    validation split of this data copy 91.9% after 14 epochs against 90.8% for airbench's
    64/256/256 after 10, both within 6 s on an H100 (BENCHMARKS.md)."""
    return FastNet((96, 384, 384), num_classes)


@register_model("fastnet-s", "the fast preset's CPU net: whitening stem, residual 32/64/128")
def fastnet_s(num_classes: int = 10) -> FastNet:
    """A 2-core CPU trains it ~5x faster per image than 64/256/256 (bench/net_speed.py)."""
    return FastNet((32, 64, 128), num_classes)
