"""The paper's ResNets and the world's published weights: option A as PyTorch users know it,
external weights loaded safely, fine-tuning from them, old checkpoints unchanged."""

import os

import numpy as np
import pytest
import torch
from conftest import CIFAR_JPEG, SHARED, cli_result, run_cli

from cifar_resnet.checkpoint import build_model, model_options
from cifar_resnet.errors import CheckpointError
from cifar_resnet.models import ShortcutA, create_model
from cifar_resnet.weights import init_weights, load_weights_file

AKAMASTER = SHARED / "peers" / "akamaster"
needs_weights = pytest.mark.skipif(
    not (AKAMASTER.is_dir() and CIFAR_JPEG.is_dir()),
    reason="needs ../shared/peers/akamaster and ../shared/data/cifar10-jpeg",
)


def published(depth: int):
    return next(AKAMASTER.glob(f"resnet{depth}-*.th"))


def test_option_a_puts_the_input_in_the_middle_as_the_published_models():
    x = torch.randn(2, 16, 8, 8)
    both, end = ShortcutA(16, 32, 2, "both")(x), ShortcutA(16, 32, 2, "end")(x)
    expected = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    assert torch.equal(both, expected)  # their F.pad(x[..., ::2, ::2], (.., planes // 4, ..))
    assert torch.equal(end[:, :16], x[:, :, ::2, ::2]) and not end[:, 16:].any()


def test_old_checkpoints_keep_their_padding():
    ckpt = {"model_name": "resnet20", "version": 1}
    assert model_options(ckpt) == {"option_a_pad": "end"}
    assert model_options({**ckpt, "version": 2}) == {"option_a_pad": "both"}
    assert model_options({"model_name": "resnet20b", "version": 1}) == {}


# The published models score 91.7-93.4% on the 10,000 test images; a loading or preprocessing
# mistake (padding, normalisation, channel order) falls far below 80% on any sizeable subset.
# resnet20 is checked on the whole test set (the copy holds all 10,000); the deeper ones, up to
# 3x its compute an image, on a stratified 2,000: the same verdict for a fifth of the time.
@needs_weights
@pytest.mark.parametrize("depth,images", [(20, 10000), (32, 2000), (44, 2000), (56, 2000)],
                         ids=["20", "32", "44", "56"])  # fmt: skip
def test_published_weights_score_as_published_on_this_copy(depth, images, cifar_jpeg, capsys):
    r = cli_result(capsys, "evaluate", "--weights", published(depth), "--model", f"resnet{depth}",
            "--data", CIFAR_JPEG, "--normalize", "imagenet", "--json",
            "--limit-test", images if images < 10000 else 0)  # fmt: skip
    assert r.returncode == 0, r.stderr
    import json

    result = json.loads(r.stdout)
    assert result["count"] == images and result["accuracy"] >= 80.0, result["accuracy"]


@needs_weights
def test_fine_tuning_starts_from_the_published_weights(tmp_path, cifar_jpeg, capsys):
    r = cli_result(capsys, "train", "--data", CIFAR_JPEG, "--out", tmp_path / "ft",
            "--preset", "paper", "--steps", 4, "--lr", 0.001, "--lr-milestones", 1000,
            "--normalize", "imagenet", "--init-from", published(20), "--limit-train", 512,
            "--limit-test", 1000, "--no-report", "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    import json

    summary = json.loads(r.stdout)
    assert summary["test_accuracy"] >= 75.0  # 4 steps from scratch: near chance
    r = cli_result(capsys, "train", "--data", CIFAR_JPEG, "--out", tmp_path / "bad",
            "--model", "resnet32", "--init-from", published(20), "--quiet")  # fmt: skip
    assert r.returncode == 4 and "does not fit the model" in r.stderr, r.stderr


def _state(model="resnet20"):
    return create_model(model).state_dict()


def test_state_dict_files_in_every_published_form(tmp_path):
    state = _state()
    forms = {
        "bare.pt": state,
        "wrapped.th": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        # An old-style file with a numpy number beside the weights: loaded through the
        # allow-list of numpy scalar types, nothing more.
        "numpy.th": {"state_dict": state, "best_prec1": np.float64(91.7)},
    }
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
        loaded = load_weights_file(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Evil.marker}",))


def test_weights_that_would_run_code_are_refused(tmp_path):
    Evil.marker = tmp_path / "pwned"
    torch.save({"state_dict": _state(), "extra": Evil()}, tmp_path / "evil.th")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_weights_file(tmp_path / "evil.th")
    with pytest.raises(CheckpointError, match="refusing to load"):
        init_weights(tmp_path / "evil.th", "resnet20")
    assert not Evil.marker.exists()


def test_mismatched_weights_are_one_line_errors_naming_keys(
    tmp_path, tiny_folder, cache_dir, capsys
):
    torch.save({"state_dict": _state("resnet32")}, tmp_path / "r32.th")
    r = cli_result(capsys, "evaluate", "--weights", tmp_path / "r32.th", "--model", "resnet20",
            "--data", tiny_folder)  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 4 and len(lines) == 1, r.stderr
    assert "does not fit the model" in lines[0] and "layer1.3" in lines[0]
    torch.save({"nothing": 1}, tmp_path / "empty.th")
    r = cli_result(capsys, "evaluate", "--weights", tmp_path / "empty.th", "--model", "resnet20",
            "--data", tiny_folder)  # fmt: skip
    assert r.returncode == 4 and "holds no state dict" in r.stderr


def test_models_lists_the_published_weights():
    r = run_cli("models")
    line = next(x for x in r.stdout.splitlines() if "resnet20-*.th" in x)
    assert "akamaster/pytorch_resnet_cifar10" in line and "--normalize imagenet" in line


def test_a_safetensors_export_keeps_option_a_padding(tmp_path):
    from cifar_resnet.export import metadata

    meta = metadata(["a", "b"], [0.5] * 3, [0.5] * 3, "resnet20", 32, {"option_a_pad": "both"})
    assert meta["option_a_pad"] == "both"
    ckpt = {"model_name": "resnet20", "classes": ["a", "b"], "model": _state_for(2),
            "option_a_pad": "both"}  # fmt: skip
    model = build_model(ckpt)
    assert model.layer2[0].shortcut.channels == (8, 8)


def _state_for(classes):
    return create_model("resnet20", classes).state_dict()
