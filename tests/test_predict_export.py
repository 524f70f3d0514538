"""predict and export: on a model trained for two epochs on a real CIFAR-10 subset."""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SUBSET_PER_CLASS, cli_main, load_subset
from PIL import Image

from cifar_resnet import export
from cifar_resnet.checkpoint import build_model, resolve_checkpoint
from cifar_resnet.errors import CheckpointError, UsageError
from cifar_resnet.evaluate import evaluate_checkpoint
from cifar_resnet.export import export_model
from cifar_resnet.predict import load_predictor, predict_images

TEST_PER_CLASS = SUBSET_PER_CLASS["test"]


def top1(results) -> dict[str, str]:
    return {Path(r["path"]).name + Path(r["path"]).parent.name: r["class"] for r in results}


def test_predict_agrees_with_evaluation(subset_run, capsys):
    run, data, cache = subset_run
    results = predict_images(run, [data / "test"], top_k=3)
    assert len(results) == len(list((data / "test").rglob("*.*")))
    _, ckpt = resolve_checkpoint(run)
    classes = ckpt["classes"]
    confusion = np.zeros((len(classes),) * 2, dtype=int)
    for r in results:
        assert len(r["top_k"]) == 3 and r["top_k"][0]["class"] == r["class"]
        assert [t["probability"] for t in r["top_k"]] == sorted(
            (t["probability"] for t in r["top_k"]), reverse=True
        )
        confusion[classes.index(Path(r["path"]).parent.name), classes.index(r["class"])] += 1
    evaluated = evaluate_checkpoint(ckpt, load_subset(data, cache), device="cpu")
    assert confusion.tolist() == evaluated["confusion"]  # the same class for every image

    assert cli_main("predict", run, data / "test" / classes[0], "--json", "--top-k", 2) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == TEST_PER_CLASS
    assert all(len(json.loads(line)["top_k"]) == 2 for line in lines)


def test_predict_any_size_and_mode_skips_bad_files(subset_run, tmp_path, capsys):
    run, data, _ = subset_run
    src = sorted((data / "test").rglob("*.*"))[0]
    big = tmp_path / "imgs" / "nested" / "big.png"
    big.parent.mkdir(parents=True)
    Image.open(src).convert("RGBA").resize((100, 60)).save(big)
    Image.open(src).convert("L").save(tmp_path / "imgs" / "gray.png")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image: ignored inside folders")
    missing = tmp_path / "missing.png"

    assert cli_main("predict", run, tmp_path / "imgs", missing, "--tta") == 0
    out, err = capsys.readouterr()
    assert sorted(Path(line.split(":")[0]).name for line in out.splitlines()) == [
        "big.png",
        "gray.png",
    ]
    assert len(err.splitlines()) == 2
    assert "broken.jpg" in err and "missing.png" in err and "notes.txt" not in err

    assert cli_main("predict", run, big, "--tta", 2, "--json") == 0  # --tta LEVEL as evaluate's
    assert json.loads(capsys.readouterr().out)["path"] == str(big)
    with pytest.raises(SystemExit) as exited:  # not a level: argparse's usage error
        cli_main("predict", run, big, "--tta", 3)
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err

    assert cli_main("predict", run, missing) == 3  # nothing readable: a data error
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: no readable image")
    with pytest.raises(UsageError):
        predict_images(run, [big], top_k=0)


def test_onnx_export_matches_pytorch_and_predicts_the_same(subset_run, tmp_path, capsys):
    import onnx  # noqa: F401
    import onnxruntime as ort

    run, data, cache = subset_run
    out = tmp_path / "model.onnx"
    result = export_model(run, "onnx", out, bundle=load_subset(data, cache))
    check = result["check"]
    assert check["images"] == 100 and "test images" in check["on"]
    assert check["max_abs_diff"] < 1e-4 and check["predictions_equal"]
    meta = (
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map
    )
    _, ckpt = resolve_checkpoint(run)
    assert json.loads(meta["classes"]) == ckpt["classes"]
    assert json.loads(meta["mean"]) == list(ckpt["mean"]) and meta["model_name"] == "seed"
    # dynamic batch axis: any batch size runs
    pred = load_predictor(out)
    assert pred.logits(np.zeros((3, 32, 32, 3), np.uint8)).shape == (3, len(ckpt["classes"]))

    images = [data / "test"]
    assert top1(predict_images(out, images)) == top1(predict_images(run, images))
    assert top1(predict_images(out, images, tta=1)) == top1(predict_images(run, images, tta=1))

    assert cli_main("export", run, "--format", "onnx", "--out", tmp_path / "b.onnx") == 0
    printed = capsys.readouterr().out
    assert "random images" in printed and "predictions equal" in printed
    c = tmp_path / "c.onnx"  # --data: checked on the run's test images, decoded by the CLI
    assert cli_main("export", run, "--format", "onnx", "--out", c, "--data", data, "--json") == 0
    check = json.loads(capsys.readouterr().out)["check"]
    assert check["images"] == 100 and "test images" in check["on"] and check["predictions_equal"]
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary files left behind


def test_torchscript_and_safetensors_round_trip(subset_run, tmp_path):
    run, data, _ = subset_run
    path, ckpt = resolve_checkpoint(run)
    model = build_model(ckpt)
    x = torch.randn(4, 3, 32, 32)
    images = [data / "test"]
    expected = top1(predict_images(run, images))

    ts = tmp_path / "model.pt"  # the same suffix as a checkpoint: run only when asked
    export_model(path, "torchscript", ts)
    extra = {export.METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, not gone
        loaded = torch.jit.load(str(ts), _extra_files=extra)
    assert json.loads(json.loads(extra[export.METADATA_FILE])["classes"]) == ckpt["classes"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-5)
    assert top1(predict_images(ts, images, torchscript=True)) == expected
    with pytest.raises(CheckpointError, match="TorchScript"):
        predict_images(ts, images)  # TorchScript is code: never run unless asked

    import safetensors.torch as safetensors

    st = tmp_path / "model.safetensors"
    export_model(ckpt, "safetensors", st)
    state = safetensors.load_file(str(st))
    assert state.keys() == ckpt["model"].keys()
    assert all(torch.equal(state[k], ckpt["model"][k]) for k in state)
    from safetensors import safe_open

    with safe_open(str(st), framework="pt") as f:
        assert json.loads(f.metadata()["std"]) == list(ckpt["std"])
    assert top1(predict_images(st, images)) == expected


def test_missing_package_and_bad_target_are_one_line_errors(
    subset_run, tmp_path, monkeypatch, capsys
):
    run, _, _ = subset_run
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert cli_main("export", run, "--format", "onnx", "--out", tmp_path / "m.onnx") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'cifar-resnet[export]'" in err
    assert not (tmp_path / "m.onnx").exists()

    assert (
        cli_main("export", tmp_path, "--format", "torchscript", "--out", tmp_path / "m.pt") == 4
    )  # no checkpoint in the folder
    assert capsys.readouterr().err.count("\n") == 1
    assert cli_main("predict", tmp_path / "nothing.pt", tmp_path) == 4
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: checkpoint")


def test_command_line_formats_are_the_library_formats():
    from cifar_resnet.cli import export as export_command  # torch-free, so it repeats them

    assert export_command.FORMATS == export.FORMATS
