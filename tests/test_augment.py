"""The regularisers' semantics on real images: each policy op against PIL's ImageOps /
ImageEnhance / Image.transform fed the same parameters (within one grey level), cutout's
square, mixup's lambda and loss, CutMix's box and recomputed lambda."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CIFAR_JPEG
from PIL import Image, ImageEnhance, ImageOps

from cifar_resnet import augment
from cifar_resnet.mixing import BatchAugment, box_mask, hard_labels, mixed_loss


@pytest.fixture(scope="module")
def images():
    """Eight real CIFAR-10 test images (uint8 (8, 32, 32, 3)), or textured noise without the
    shared data copy."""
    files = sorted(CIFAR_JPEG.glob("test/*/*.jp*g"))[::997][:8]
    if len(files) == 8:
        return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, 8, 8, 3)).repeat(4, 1).repeat(4, 2)
    noisy = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255)
    return torch.from_numpy(noisy.astype(np.uint8))


def pil(x):
    return Image.fromarray(x.numpy())


def close(ours, theirs, tol=1):
    diff = (ours.int() - torch.from_numpy(np.array(theirs)).int()).abs()
    assert diff.max() <= tol, diff.max()


FACTORS = torch.tensor([0.1, 0.55, 1.0, 1.45, 1.9, 0.3, 1.2, 0.8], dtype=torch.float64)


@pytest.mark.parametrize("name", ["Brightness", "Color", "Contrast", "Sharpness"])
def test_enhance_ops_match_pil(images, name):
    ours = augment.ENHANCE[name](images, FACTORS.float())
    for i in range(len(images)):
        theirs = getattr(ImageEnhance, name)(pil(images[i])).enhance(float(FACTORS[i]))
        close(ours[i], theirs)


def test_imageops_match_pil(images):
    bits = torch.tensor([4, 5, 6, 7, 8, 4, 5, 6])
    thresholds = torch.tensor([0, 26, 128, 200, 256, 77, 154, 230])
    post, sol = augment.posterize(images, bits), augment.solarize(images, thresholds)
    auto, eq, inv = augment.autocontrast(images), augment.equalize(images), augment.invert(images)
    for i in range(len(images)):
        im = pil(images[i])
        close(post[i], ImageOps.posterize(im, int(bits[i])), 0)
        close(sol[i], ImageOps.solarize(im, int(thresholds[i])), 0)
        close(auto[i], ImageOps.autocontrast(im), 1)
        close(eq[i], ImageOps.equalize(im), 1)
        close(inv[i], ImageOps.invert(im), 0)


def test_equalize_and_autocontrast_of_flat_images_are_identity():
    flat = torch.full((2, 4, 4, 3), 77, dtype=torch.uint8)
    assert torch.equal(augment.equalize(flat), flat)
    assert torch.equal(augment.autocontrast(flat), flat)


@pytest.mark.parametrize("name", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_geometric_ops_match_pil(images, name):
    signed = torch.tensor([-1.0, -0.7, -0.33, 0.0, 0.2, 0.5, 0.81, 1.0], dtype=torch.float64)
    ranges = augment.RANGES["standard"]
    ours = augment.apply_op(name, images, signed, signed.abs(), ranges)
    shear, translate, rotate = ranges[:3]
    fill = (augment.FILL,) * 3
    for i in range(len(images)):
        im, v = pil(images[i]), float(signed[i])
        if name == "Rotate":
            theirs = im.rotate(v * rotate, resample=Image.NEAREST, fillcolor=fill)
        else:
            coeffs = {
                "ShearX": (1, v * shear, 0, 0, 1, 0),
                "ShearY": (1, 0, 0, v * shear, 1, 0),
                "TranslateX": (1, 0, v * translate * 32, 0, 1, 0),
                "TranslateY": (1, 0, 0, 0, 1, v * translate * 32),
            }[name]
            theirs = im.transform(im.size, Image.AFFINE, coeffs, Image.NEAREST, fillcolor=fill)
        close(ours[i], theirs)


# Cubuk et al. 2019, the CIFAR-10 policy (their appendix table), as the AutoAugment authors'
# released code and torchvision's AutoAugmentPolicy.CIFAR10 list it: (op, probability, level;
# 0 where the op takes none), written out here apart from the package's table.
PAPER_CIFAR10 = """
Invert .1 0 Contrast .2 6; Rotate .7 2 TranslateX .3 9; Sharpness .8 1 Sharpness .9 3;
ShearY .5 8 TranslateY .7 9; AutoContrast .5 0 Equalize .9 0; ShearY .2 7 Posterize .3 7;
Color .4 3 Brightness .6 7; Sharpness .3 9 Brightness .7 9; Equalize .6 0 Equalize .5 0;
Contrast .6 7 Sharpness .6 5; Color .7 7 TranslateX .5 8; Equalize .3 0 AutoContrast .4 0;
TranslateY .4 3 Sharpness .2 6; Brightness .9 6 Color .2 8; Solarize .5 2 Invert 0 0;
Equalize .2 0 AutoContrast .6 0; Equalize .2 0 Equalize .6 0; Color .9 9 Equalize .6 0;
AutoContrast .8 0 Solarize .2 8; Brightness .1 3 Color .7 0; Solarize .4 5 AutoContrast .9 0;
TranslateY .9 9 TranslateY .7 9; AutoContrast .9 0 Solarize .8 3; Equalize .8 0 Invert .1 0;
TranslateY .7 9 AutoContrast .9 0
"""


def test_the_autoaugment_table_is_the_papers():
    subs = [s.split() for s in PAPER_CIFAR10.split(";")]
    paper = [tuple((w[i], float(w[i + 1]), int(w[i + 2])) for i in (0, 3)) for w in subs]
    assert list(augment.CIFAR10_POLICY) == paper  # sub-policy 23's Solarize had 0.2, not 0.8


def test_policy_plans_are_per_image_and_deterministic():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = augment.draw_plan("cifar10", None, False, 500, g1)
    b = augment.draw_plan("cifar10", None, False, 500, g2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    ops, frac, _ = a
    assert ops.shape == (500, 2) and len(torch.unique(ops[:, 0])) > 5  # differ per image
    assert (ops == -1).any() and frac.max() <= 1
    ops, frac, _ = augment.draw_plan("", (3, 5), False, 400, g1)
    assert ops.shape == (400, 3) and torch.all(frac == 0.5)
    assert set(ops.unique().tolist()) == set(augment.RANDOM_OPS)
    ops, frac, _ = augment.draw_plan("", None, True, 400, g1)
    assert ops.shape == (400, 1) and len(frac.unique()) > 20


def test_apply_plan_applies_each_images_own_op(images):
    ops = torch.tensor([[augment.OPS.index("Invert")], [-1]] * 4)
    plan = (ops, torch.zeros(8, 1, dtype=torch.float64), torch.ones(8, 1, dtype=torch.float64))
    out = augment.apply_plan(images, plan)
    assert torch.equal(out[0::2], 255 - images[0::2]) and torch.equal(out[1::2], images[1::2])


# --------------------------------------------------------------------------------- cutout


def test_cutout_zeroes_one_clipped_square_per_image():
    aug = BatchAugment(cutout=8)
    centres = torch.tensor([[16, 16], [0, 0], [31, 5], [2, 30]])
    x = aug.apply_cutout(torch.ones(4, 3, 32, 32), {"cutout": centres})
    zero = x[:, 0] == 0
    assert torch.equal(zero, (x == 0).all(1))  # all channels together
    assert zero.sum(dim=(1, 2)).tolist() == [64, 4 * 4, 5 * 8, 6 * 6]  # clipped at the border
    for i, (r, c) in enumerate(centres.tolist()):
        rows, cols = zero[i].any(1).nonzero().flatten(), zero[i].any(0).nonzero().flatten()
        assert rows.min() == max(r - 4, 0) and rows.max() == min(r + 3, 31)
        assert cols.min() == max(c - 4, 0) and cols.max() == min(c + 3, 31)
        assert zero[i].sum() == len(rows) * len(cols)  # one rectangle


def test_cutout_centres_are_uniform():
    plan = BatchAugment(cutout=16).draw(20000, 32, 32, torch.Generator().manual_seed(0))
    counts = torch.bincount(plan["cutout"][:, 0], minlength=32).float()
    assert counts.min() > 0.8 * 20000 / 32 and counts.max() < 1.2 * 20000 / 32


# ----------------------------------------------------------------------- mixup and CutMix


def test_mixup_lambda_is_beta_distributed():
    for alpha in (0.2, 1.0):
        plan = BatchAugment(mixup=alpha, num_classes=10).draw(
            20000, 32, 32, torch.Generator().manual_seed(1)
        )
        lam = plan["lam"].double()
        var = 1 / (4 * (2 * alpha + 1))  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
        assert abs(lam.mean() - 0.5) < 0.01 and abs(lam.var() - var) < 0.01
        assert not plan["use_cutmix"].any()
    plan = BatchAugment(mixup=1.0, mix_prob=0.3).draw(20000, 32, 32, torch.Generator())
    assert abs((plan["lam"] < 1).float().mean() - 0.3) < 0.02


def test_mixup_mixes_images_and_the_loss_is_the_mixed_cross_entropy():
    torch.manual_seed(0)
    aug = BatchAugment(mixup=1.0, num_classes=5)
    x, x2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    y, y2 = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([4, 3, 2, 1, 0, 1])
    lam = torch.tensor([1.0, 0.9, 0.5, 0.3, 0.05, 0.7])
    no_cut = torch.zeros(6, dtype=torch.bool)
    plan = {"lam": lam, "use_cutmix": no_cut, "box": torch.zeros(6, 2).long()}
    mixed, soft = aug.mix(x, y, x2, y2, plan)
    lam4 = lam.view(-1, 1, 1, 1)
    assert torch.allclose(mixed, lam4 * x + (1 - lam4) * x2)
    logits = torch.randn(6, 5)
    for smoothing in (0.0, 0.1):
        expected = (
            lam * F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
            + (1 - lam) * F.cross_entropy(logits, y2, reduction="none", label_smoothing=smoothing)
        ).mean()
        assert torch.allclose(mixed_loss(logits, soft, smoothing), expected, atol=1e-6)
    # Train accuracy counts the dominant label.
    assert hard_labels(soft).tolist() == [0, 1, 2, 1, 0, 0]


def test_cutmix_box_area_and_recomputed_lambda():
    aug = BatchAugment(cutmix=1.0, num_classes=3)
    x, x2 = torch.zeros(4, 3, 32, 32), torch.ones(4, 3, 32, 32)
    lam = torch.tensor([0.75, 0.75, 0.5, 0.9])
    box = torch.tensor([[16, 16], [0, 0], [31, 31], [10, 20]])
    plan = {"lam": lam, "use_cutmix": torch.ones(4, dtype=torch.bool), "box": box}
    y, y2 = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2])
    mixed, soft = aug.mix(x, y, x2, y2, plan)
    pasted = mixed[:, 0] == 1
    side = [int(32 * math.sqrt(1 - v)) for v in lam.tolist()]  # 16, 16, 22, 10
    expected_area = [16 * 16, 8 * 8, 12 * 12, 10 * 10]  # the second and third clipped
    assert pasted.sum(dim=(1, 2)).tolist() == expected_area
    assert side == [16, 16, 22, 10]
    new_lam = 1 - torch.tensor(expected_area) / 1024
    assert torch.allclose(soft[torch.arange(4), y], new_lam)
    assert torch.allclose(soft[torch.arange(4), y2], 1 - new_lam)
    assert torch.equal(mixed[:, 1], mixed[:, 0])  # every channel pasted


def test_switch_prob_chooses_cutmix_per_image():
    plan = BatchAugment(mixup=1.0, cutmix=1.0, switch_prob=0.25).draw(
        20000, 32, 32, torch.Generator().manual_seed(2)
    )
    assert abs(plan["use_cutmix"].float().mean() - 0.25) < 0.02


def test_box_mask_takes_per_image_sizes():
    sides = torch.tensor([2, 4])
    mask = box_mask(torch.tensor([[4, 4], [4, 4]]), sides, sides, 8, 8)
    assert mask.sum(dim=(1, 2)).tolist() == [4, 16]
