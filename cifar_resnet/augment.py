"""Learned and random augmentation policies on uint8 batches, per image, on the batch's device:
AutoAugment's CIFAR-10 policy (Cubuk et al., "AutoAugment: Learning Augmentation Policies from
Data", CVPR 2019), RandAugment (Cubuk et al., CVPR-W 2020) and TrivialAugment (Mueller and
Hutter, ICCV 2021, its "wide" ranges).

Each op computes what PIL's ``ImageOps`` / ``ImageEnhance`` / ``Image.transform`` compute
(the operations the papers define by), on whole batches: geometric ops with PIL's nearest
affine sampling and a grey fill (128, as the commonly used CIFAR AutoAugment port), colour
ops with PIL's formulas. kornia has batched versions, but its RandAugment and
TrivialAugment choose the ops once per batch, not per image, and draw from torch's global
generator: written here instead.

Randomness: :func:`draw_plan` draws every image's ops and magnitudes of an epoch up front from
the run's ``(seed, epoch)`` generator (see ``loader``); :func:`apply_plan` is deterministic.
A plan is ``(ops, frac, sign)``, each (N, L): op index per layer (-1: none), magnitude as a
share of the op's range, and sign (+1 / -1) for signed ops.
"""

from __future__ import annotations

import math

import torch

OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
)  # fmt: skip
_OP = {name: i for i, name in enumerate(OPS)}
FILL = 128  # grey fill where a geometric op leaves the image
# The ops RandAugment and TrivialAugment draw from, uniformly (no Invert).
RANDOM_OPS = tuple(range(14))
RANDAUGMENT_MAX_MAGNITUDE = 10  # M on the papers' 0..10 scale
RANDAUGMENT_MAX_OPS = 10

# Cubuk et al. 2019's CIFAR-10 policy: 25 sub-policies of two (op, probability, level 0..9).
CIFAR10_POLICY = (
    (("Invert", 0.1, 0), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 0), ("Equalize", 0.9, 0)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 0), ("Equalize", 0.5, 0)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 0), ("AutoContrast", 0.4, 0)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 0)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 0), ("Equalize", 0.6, 0)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 0)),
    (("AutoContrast", 0.8, 0), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 0)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 0), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 0), ("Invert", 0.1, 0)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 0)),
)

# Each op's range at full magnitude: (shear, translate as a share of the side, rotate in
# degrees, enhance factor 1 +- this, posterize bits removed). AutoAugment and RandAugment use
# the AutoAugment paper's ranges (translate 150/331 of the side); TrivialAugment its wide ones.
RANGES = {
    "standard": (0.3, 150 / 331, 30.0, 0.9, 4),
    "wide": (0.99, 1.0, 135.0, 0.99, 6),
}


def draw_plan(policy: str, rand_n_m: tuple[int, int] | None, trivial: bool, n: int, g):
    """Every image's ops of an epoch (``n`` images) from generator ``g``: (ops, frac, sign)."""
    if policy == "cifar10":
        choice = torch.randint(0, len(CIFAR10_POLICY), (n,), generator=g)
        table = torch.tensor([[_OP[op] for op, _, _ in sub] for sub in CIFAR10_POLICY])
        probs = torch.tensor([[p for _, p, _ in sub] for sub in CIFAR10_POLICY])
        levels = torch.tensor([[lv for _, _, lv in sub] for sub in CIFAR10_POLICY])
        ops = torch.where(torch.rand(n, 2, generator=g) < probs[choice], table[choice], -1)
        frac = levels[choice].double() / 9  # ten levels, 0..9, over the range
    elif rand_n_m is not None:
        layers, magnitude = rand_n_m
        ops = torch.randint(0, len(RANDOM_OPS), (n, layers), generator=g)
        frac = torch.full((n, layers), magnitude / RANDAUGMENT_MAX_MAGNITUDE, dtype=torch.float64)
    elif trivial:
        ops = torch.randint(0, len(RANDOM_OPS), (n, 1), generator=g)
        frac = torch.randint(0, 31, (n, 1), generator=g).double() / 30  # 31 levels
    else:
        return None
    sign = torch.where(torch.rand(ops.shape, generator=g) < 0.5, -1.0, 1.0).double()
    return ops, frac, sign


def apply_plan(x: torch.Tensor, plan, wide: bool = False) -> torch.Tensor:
    """uint8 images (B, H, W, 3) with each image's ops of ``plan`` (rows for these images,
    on the CPU) applied in order; ``wide``: TrivialAugment's ranges."""
    ops, frac, sign = plan
    ranges = RANGES["wide" if wide else "standard"]
    x = x.clone()
    for layer in range(ops.shape[1]):
        for k in range(1, len(OPS)):
            rows = (ops[:, layer] == k).nonzero().flatten()  # on the CPU: no device sync
            if len(rows):
                value = frac[rows, layer] * sign[rows, layer]
                idx = rows.to(x.device)
                x[idx] = apply_op(OPS[k], x[idx], value, frac[rows, layer], ranges)
    return x


def apply_op(name: str, x: torch.Tensor, signed, frac, ranges) -> torch.Tensor:
    """Op ``name`` on uint8 (B, H, W, 3) with per-image magnitudes (CPU float64 (B,):
    ``signed`` = sign x share of the range, ``frac`` = the share)."""
    shear, translate, rotate, enhance, bits = ranges
    side = x.shape[2] if name == "TranslateX" else x.shape[1]
    geometric = {
        "ShearX": lambda: shear_matrix(signed * shear, horizontal=True),
        "ShearY": lambda: shear_matrix(signed * shear, horizontal=False),
        "TranslateX": lambda: translate_matrix(signed * translate * side, horizontal=True),
        "TranslateY": lambda: translate_matrix(signed * translate * side, horizontal=False),
        "Rotate": lambda: rotate_matrix(signed * rotate, x.shape[2], x.shape[1]),
    }
    if name in geometric:
        return affine(x, geometric[name]())
    factor = (1 + signed * enhance).to(x.device, torch.float32)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return ENHANCE[name](x, factor)
    if name == "Posterize":
        return posterize(x, (8 - (frac * bits).round()).long().to(x.device))
    if name == "Solarize":
        return solarize(x, (256 - (frac * 256).round()).long().to(x.device))
    return {"AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert}[name](x)


# ------------------------------------------------------------------------- geometric ops
# PIL's affine: output pixel (x, y) samples the input at (a, b, c, d, e, f) applied to its
# centre, (a(x+.5) + b(y+.5) + c, d(x+.5) + e(y+.5) + f), truncated (nearest), or the fill.


def shear_matrix(s: torch.Tensor, horizontal: bool) -> torch.Tensor:
    """PIL ``transform(AFFINE, (1, s, 0, 0, 1, 0))`` (ShearX) or ``(1, 0, 0, s, 1, 0)``."""
    m = torch.zeros(len(s), 6, dtype=torch.float64)
    m[:, 0] = m[:, 4] = 1
    m[:, 1 if horizontal else 3] = s
    return m


def translate_matrix(t: torch.Tensor, horizontal: bool) -> torch.Tensor:
    """PIL ``transform(AFFINE, (1, 0, t, 0, 1, 0))`` (TranslateX) or ``(1, 0, 0, 0, 1, t)``."""
    m = shear_matrix(torch.zeros_like(t), True)
    m[:, 2 if horizontal else 5] = t
    return m


def rotate_matrix(degrees: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """PIL ``Image.rotate(degrees)``'s matrix: counter-clockwise about the centre (w/2, h/2),
    its cos and sin rounded to 15 digits as PIL rounds them."""
    m = torch.zeros(len(degrees), 6, dtype=torch.float64)
    for i, deg in enumerate(degrees.tolist()):
        a = -math.radians(deg % 360.0)
        c, s = round(math.cos(a), 15), round(math.sin(a), 15)
        cx, cy = w / 2.0, h / 2.0
        m[i] = torch.tensor(
            [c, s, c * -cx + s * -cy + cx, -s, c, -s * -cx + c * -cy + cy], dtype=torch.float64
        )
    return m


def affine(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) resampled by per-image PIL affine coefficients ``m`` (B, 6)."""
    b, h, w, _ = x.shape
    m = m.to(x.device)
    ys = torch.arange(h, device=x.device, dtype=torch.float64).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device, dtype=torch.float64).view(1, 1, w) + 0.5
    coef = [m[:, i].view(b, 1, 1) for i in range(6)]
    sx = coef[0] * xs + coef[1] * ys + coef[2]  # (B, H, W) source coordinates
    sy = coef[3] * xs + coef[4] * ys + coef[5]
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    ix = sx.floor().long().clamp(0, w - 1)
    iy = sy.floor().long().clamp(0, h - 1)
    out = x[torch.arange(b, device=x.device).view(b, 1, 1), iy, ix]  # (B, H, W, 3)
    return torch.where(inside[..., None], out, torch.full_like(out, FILL))


# ---------------------------------------------------------------------------- colour ops


def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")``: (R 19595 + G 38470 + B 7471 + 2^15) >> 16, (B, H, W) int."""
    x = x.long()
    return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, x, factor)``: d + f (x - d), clipped, truncated."""
    f = factor.view(-1, 1, 1, 1)
    d = degenerate.float()
    return (d + f * (x.float() - d)).clamp(0, 255).trunc().to(torch.uint8)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return _blend(torch.zeros_like(x), x, factor)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Color``: blend with the image's greyscale."""
    return _blend(_grey(x)[..., None].expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with the mean grey level, rounded."""
    mean = (_grey(x).double().mean(dim=(1, 2)) + 0.5).floor()
    return _blend(mean.view(-1, 1, 1, 1).expand(x.shape), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Sharpness``: blend with PIL's SMOOTH filter (3x3, centre 5, others 1,
    / 13, rounded), the border pixels unfiltered."""
    k = torch.ones(3, 3, device=x.device)
    k[1, 1] = 5
    planes = x.permute(0, 3, 1, 2).float().reshape(-1, 1, *x.shape[1:3])
    smooth = torch.nn.functional.conv2d(planes, (k / 13).view(1, 1, 3, 3))
    smooth = (smooth + 0.5).floor().clamp(0, 255).view(x.shape[0], 3, *smooth.shape[2:])
    degenerate = x.clone()
    degenerate[:, 1:-1, 1:-1, :] = smooth.permute(0, 2, 3, 1).to(torch.uint8)
    return _blend(degenerate, x, factor)


ENHANCE = {"Brightness": brightness, "Color": color, "Contrast": contrast, "Sharpness": sharpness}


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """``ImageOps.posterize(bits)``: keep the top ``bits`` (per image) of each value."""
    mask = (255 - ((1 << (8 - bits)) - 1)).view(-1, 1, 1, 1)
    return (x.long() & mask).to(torch.uint8)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``ImageOps.solarize(threshold)``: values at or above ``threshold`` inverted."""
    return torch.where(x.long() >= threshold.view(-1, 1, 1, 1), 255 - x, x)


def invert(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.invert``."""
    return 255 - x


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast()``: each channel stretched so its darkest value is 0 and its
    brightest 255 (``int(v * scale + offset)``); a flat channel is left as it is."""
    lo = x.amin(dim=(1, 2), keepdim=True).float()
    hi = x.amax(dim=(1, 2), keepdim=True).float()
    scale = 255.0 / (hi - lo).clamp(min=1)
    out = (x.float() * scale - lo * scale).clamp(0, 255).trunc().to(torch.uint8)
    return torch.where(hi > lo, out, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize()``, per image and channel: step = (pixels - count of the top
    value) // 255, lut[i] = (step // 2 + pixels below i) // step; identity where step is 0."""
    b, h, w, c = x.shape
    planes = x.permute(0, 3, 1, 2).reshape(b * c, h * w).long()
    # One bincount over (plane, value) pairs: deterministic on GPUs too (no weights).
    offset = 256 * torch.arange(b * c, device=x.device)[:, None]
    hist = torch.bincount((planes + offset).flatten(), minlength=256 * b * c).view(b * c, 256)
    top = 255 - (hist.flip(1) > 0).long().argmax(1)  # the brightest value present
    step = (h * w - hist.gather(1, top[:, None]).squeeze(1)) // 255
    below = hist.cumsum(1) - hist  # pixels with a smaller value
    lut = ((step[:, None] // 2 + below) // step.clamp(min=1)[:, None]).clamp(max=255)
    lut = torch.where(step[:, None] > 0, lut, torch.arange(256, device=x.device))
    out = lut.gather(1, planes).view(b, c, h, w).permute(0, 2, 3, 1)
    return out.to(torch.uint8)
