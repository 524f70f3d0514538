import numpy as np
import pytest
import torch

from cifar_resnet.loader import DeviceLoader


def make(n=64, h=6, w=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, (n, h, w, 3), dtype=np.uint8)  # no zeros: borders stand out
    return images, np.arange(n) % 10


def identity_norm():
    # mean 0, std 1/255 turns x/255 back into x: the output is the raw pixel values.
    return dict(mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))


def test_crop_offsets_cover_0_to_2p_and_border_is_zero():
    images, labels = make(n=400)
    p = 2
    loader = DeviceLoader(images, labels, 400, padding=p, flip=False, seed=1, **identity_norm())
    perm, offsets, _ = loader.epoch_plan(0)
    assert set(offsets[:, 0].tolist()) == set(range(2 * p + 1))
    assert set(offsets[:, 1].tolist()) == set(range(2 * p + 1))
    ((x, y),) = list(loader)
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    for i in range(len(perm)):
        dy, dx = offsets[i].tolist()
        want = padded[perm[i], dy : dy + 6, dx : dx + 5].transpose(2, 0, 1)
        np.testing.assert_allclose(x[i].numpy(), want, atol=1e-3)
        assert y[i] == labels[perm[i]]
    # A fully shifted image has a zero border row/column of width p.
    i = int(((offsets[:, 0] == 0) & (offsets[:, 1] == 0)).nonzero()[0])
    assert x[i][:, :p, :].abs().max() < 1e-3 and x[i][:, :, :p].abs().max() < 1e-3


def test_flips_are_per_image():
    images, labels = make(n=200)
    loader = DeviceLoader(images, labels, 200, padding=0, flip=True, seed=3, **identity_norm())
    perm, _, flips = loader.epoch_plan(0)
    assert 0 < int(flips.sum()) < 200  # some flipped, some not, within one batch
    ((x, _),) = list(loader)
    for i in range(200):
        want = images[perm[i]].transpose(2, 0, 1)
        if flips[i]:
            want = want[:, :, ::-1]
        np.testing.assert_allclose(x[i].numpy(), want, atol=1e-3)


def test_normalisation_is_exact():
    images, labels = make(n=8)
    mean, std = (0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606)
    loader = DeviceLoader(images, labels, 8, train=False, mean=mean, std=std)
    ((x, _),) = list(loader)
    want = (images.transpose(0, 3, 1, 2) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[
        :, None, None
    ]
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-5, atol=1e-5)


def batches(seed, epoch=0):
    images, labels = make(n=50)
    loader = DeviceLoader(images, labels, 16, padding=1, seed=seed)
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_same_seed_same_batches_other_seed_or_epoch_other_batches():
    a, b = batches(0), batches(0)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], batches(1)[0][0])
    assert not torch.equal(a[0][0], batches(0, epoch=1)[0][0])


def test_last_partial_batch_is_kept_and_every_image_seen_once():
    a = batches(0)
    assert [len(y) for _, y in a] == [16, 16, 16, 2]


def test_resume_mid_epoch_sees_the_same_batches():
    images, labels = make(n=50)
    loader = DeviceLoader(images, labels, 16, padding=1, seed=5)
    full = [x for x, _ in loader.batches(0)]
    tail = [x for x, _ in loader.batches(2)]
    assert all(torch.equal(a, b) for a, b in zip(full[2:], tail))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_each_global_batch_disjointly(world):
    images, labels = make(n=50)
    one = DeviceLoader(images, labels, 16, padding=1, seed=7)
    ranks = [
        DeviceLoader(images, labels, 16, padding=1, seed=7, rank=r, world_size=world)
        for r in range(world)
    ]
    assert all(len(r) == len(one) for r in ranks)
    for (x, y), *parts in zip(one, *ranks):
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_eval_shards_cover_every_image_once():
    images, labels = make(n=23)
    seen = [
        y
        for r in range(3)
        for _, y in DeviceLoader(images, labels, 4, train=False, rank=r, world_size=3)
    ]
    assert sorted(torch.cat(seen).tolist()) == sorted(labels.tolist())
    assert len(torch.cat(seen)) == 23


def test_channels_last_output():
    images, labels = make(n=4)
    x, _ = next(iter(DeviceLoader(images, labels, 4, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    x, _ = next(iter(DeviceLoader(images, labels, 4, channels_last=False)))
    assert x.is_contiguous()
