import pytest
import torch

from cifar_resnet.errors import UsageError
from cifar_resnet.models import (
    ShortcutA,
    count_parameters,
    create_model,
    list_models,
    register_model,
)

# Parameter counts at 10 classes: the seed post, and He et al. 2016 (option A adds none).
EXPECTED = {
    "seed": 175_258,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
}


@pytest.mark.parametrize("name,count", EXPECTED.items())
def test_parameter_counts(name, count):
    assert count_parameters(create_model(name, 10)) == count


def test_option_b_adds_projection_parameters():
    # Two stage changes, each a 1x1 conv (in*out) plus BN (2*out).
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert count_parameters(create_model("resnet20b")) == EXPECTED["resnet20"] + extra


@pytest.mark.parametrize("name", list(list_models()))
def test_output_shape_and_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum()]
    assert trainable and not missing


def test_fastnet_sizes_and_frozen_parameters():
    assert count_parameters(create_model("fastnet")) == 4_424_376
    assert count_parameters(create_model("fastnet-s")) == 295_096
    model = create_model("fastnet-s")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # The whitening filters and every BatchNorm scale are fixed; the stem's bias learns.
    assert "whiten.weight" in frozen and "whiten.bias" not in frozen
    assert {n for n in frozen if n.endswith("norm1.weight")} == {
        f"layer{i}.norm1.weight" for i in (1, 2, 3)
    }


def test_fastnet_stem_whitens_patches():
    torch.manual_seed(0)
    # Correlated channels with unequal scales: the stem's 12 outputs must come out white.
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [0.3, 0.3, 2.0]])
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(200, 3, 16, 16))
    model = create_model("fastnet-s")
    model.init_whitening(x, eps=0.0)
    out = torch.nn.functional.conv2d(x, model.whiten.weight)  # (200, 24, 15, 15)
    first = out[:, :12].permute(1, 0, 2, 3).reshape(12, -1)
    second_moment = first @ first.T / first.shape[1]
    assert torch.allclose(second_moment, torch.eye(12), atol=1e-3)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])
    assert not model.whiten.bias.any()


def test_other_input_sizes_pool_globally():
    assert create_model("resnet20", 3)(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_shortcut_a_subsamples_and_zero_pads():
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).view(2, 2, 4, 4)
    y = ShortcutA(2, 5, stride=2)(x)  # 3 new channels: 1 before the input, 2 after it
    assert y.shape == (2, 5, 2, 2)
    assert torch.equal(y[:, 1:3], x[:, :, ::2, ::2])
    assert not y[:, :1].any() and not y[:, 3:].any()


def test_he_blocks_use_option_a_without_parameters():
    model = create_model("resnet20")
    block = model.layer2[0]
    assert isinstance(block.shortcut, ShortcutA)
    assert count_parameters(block.shortcut) == 0


def test_unknown_model_lists_valid_names():
    with pytest.raises(UsageError, match="valid models: seed, resnet20"):
        create_model("resnet19")


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="twice"):
        register_model("seed", "again")(lambda num_classes: None)


def test_a_model_registered_in_process_passes_the_recipes_name_check(monkeypatch):
    """The torch-free check in TrainConfig.validate knows what register_model adds (the API's
    own models), and still refuses what nobody registered."""
    from cifar_resnet import models, names
    from cifar_resnet.config import TrainConfig

    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    monkeypatch.setattr(models, "_DESCRIPTIONS", dict(models._DESCRIPTIONS))
    monkeypatch.setattr(names, "_REGISTERED", set(names._REGISTERED))
    with pytest.raises(UsageError, match="unknown model 'mynet'"):
        TrainConfig(model="mynet").validate()
    register_model("mynet", "a user's net")(lambda num_classes: torch.nn.Linear(3, num_classes))
    TrainConfig(model="mynet").validate()
    assert isinstance(create_model("mynet", 4), torch.nn.Linear)


def test_the_torch_free_name_table_is_the_registry():
    """names.MODEL_NAMES lets the command line refuse a model before importing torch: a model
    registered here must be added there too."""
    from cifar_resnet.models import list_models
    from cifar_resnet.names import MODEL_NAMES

    assert list(MODEL_NAMES) == list(list_models())
