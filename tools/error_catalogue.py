"""Run cifar-resnet on each bad input of the catalogue and print a Markdown table of the
one-line message and exit code it gives (pasted into README's troubleshooting section).

    python tools/error_catalogue.py
"""

import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def folder(root: Path, size=(8, 8), n=4, classes=("a", "b")) -> Path:
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", size, (i * 30, 90, 0)).save(root / split / cls / f"{i}.png")
    return root


def cifar_archive(path: Path, labels_max=9) -> Path:
    def batch(n, top):
        return pickle.dumps(
            {b"data": np.zeros((n, 3072), np.uint8), b"labels": [top] + [0] * (n - 1)}, protocol=4
        )

    with tarfile.open(path, "w:gz") as tar:
        members = {f"data_batch_{i}": batch(4, 0) for i in range(1, 6)}
        members["test_batch"] = batch(4, labels_max)
        members["batches.meta"] = pickle.dumps(
            {b"label_names": [f"c{i}".encode() for i in range(10)]}
        )
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def crafted_run(tmp: Path, run: Path, ckpt: Path, name: str, change) -> Path:
    """A copy of ``run`` whose newest checkpoint went through ``change(ckpt dict)``."""
    import torch

    copy = tmp / name
    shutil.copytree(run, copy)
    data = torch.load(copy / "checkpoints" / ckpt.name, weights_only=True)
    change(data)
    torch.save(data, copy / "checkpoints" / ckpt.name)
    return copy


def attacks(tmp: Path, good: Path, run: Path, ckpt: Path, case, quick) -> None:
    """The deliberate attacks of issue 21: crafted files, symlinks, sizes."""
    import json

    import torch

    def momentum(c):
        next(iter(c["optimizer"]["state"].values()))["momentum_buffer"] = torch.zeros(3)

    bad = crafted_run(tmp, run, ckpt, "momentum", momentum)
    case("a checkpoint whose momentum buffer has the wrong shape", "train", "--resume", bad)
    bad = crafted_run(tmp, run, ckpt, "epoch-x", lambda c: c["state"].update(epoch="x"))
    case("a checkpoint whose run state has a wrong type", "train", "--resume", bad)
    image = next((good / "test").rglob("*.png"))

    class Model(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2)

    script = tmp / "e0001-s0000002.pt"
    torch.jit.save(torch.jit.script(Model()), str(script))
    case("a TorchScript file named like a checkpoint (predict)", "predict", script, image)
    linked = tmp / "linked"
    shutil.copytree(run, linked)
    (linked / "metrics.csv").unlink()
    (linked / "metrics.csv").symlink_to(tmp / "victim.txt")
    case("a symlink where a run file should be", "train", "--resume", linked, "--epochs", "2")
    lockdir = tmp / "lockdir"
    shutil.copytree(run, lockdir)
    (lockdir / ".lock").unlink()
    (lockdir / ".lock").mkdir()
    case("a .lock that is a folder", "train", "--resume", lockdir)
    other = tmp / "other-tool"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "model_v1.pth").write_text("x")
    (other / "report.md").write_text("x")
    case("--out a folder of another tool's files", "train", "--data", good, "--out", other, *quick)
    case("--overwrite a folder of another tool's files", "train", "--data", good, "--out", other,
         *quick, "--overwrite")  # fmt: skip
    case("--padding 2000", "train", "--data", good, "--out", tmp / "r", *quick, "--padding", "2000")
    case("--config /dev/zero", "train", "--data", good, "--out", tmp / "r", "--config", "/dev/zero")
    toml = tmp / "f.toml"
    toml.write_text("epochs = 3\n")
    case("--config with --resume", "train", "--resume", run, "--config", toml)
    case("evaluate --image-size 5000", "evaluate", run, "--image-size", "5000")
    from PIL import Image as PILImage

    PILImage.new("L", (1, 1_000_000)).save(tmp / "tall.png")
    case("a 1x1,000,000 PNG resized to 32 (predict)", "predict", run, tmp / "tall.png",
         "--image-size", "32")  # fmt: skip
    odd = folder(tmp / "odd")
    for split in ("train", "test"):
        os.rename(odd / split / "b", os.path.join(os.fsencode(odd / split), b"b\xff"))
    case("a class folder not named in UTF-8", "train", "--data", odd, "--out", tmp / "r", *quick)
    garbage = tmp / "garbage"
    shutil.copytree(run, garbage)
    with open(garbage / "metrics.csv", "a") as f:
        f.write("garbage,row\n")
    case("a garbage row in metrics.csv (report)", "report", garbage)
    small = folder(tmp / "nine", size=(9, 9), n=3)
    one = ["--model", "fastnet-s", "--epochs", "1", "--batch-size", "1", "--device", "cpu"]
    case("fastnet-s at 9x9 with batch 1", "train", "--data", small, "--out", tmp / "r9", *one)
    case("export --out onto the run's checkpoint", "export", run, "--format", "torchscript",
         "--out", ckpt)  # fmt: skip
    seeds = tmp / "seeds"
    seeds.mkdir()
    plan = {"seeds": [0, "/../../victimrun"], "preset": "seed", "config": {}, "data": None}
    (seeds / "seeds.json").write_text(json.dumps(plan))
    case("a seeds.json naming a folder outside (report)", "report", seeds)
    st = tmp / "std0.safetensors"
    import safetensors.torch as safetensors

    meta = {"format": "cifar-resnet", "classes": '["a", "b"]', "model_name": "seed"}
    meta.update(mean="[0.5, 0.5, 0.5]", std="[0, 0.2, 0.2]", image_size="8")
    safetensors.save_file({"x": torch.zeros(1)}, str(st), metadata=meta)
    case("export metadata with a std of 0 (predict)", "predict", st, image)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    os.environ["CIFAR_RESNET_CACHE"] = str(tmp / "cache")
    good = folder(tmp / "good")
    cases = []

    def case(what, *args):
        cases.append((what, [str(a) for a in args]))

    quick = ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--quiet"]
    case("data path missing", "train", "--data", tmp / "nope", "--out", tmp / "r", *quick)
    (tmp / "nosplit" / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp / "nosplit" / "train" / "a" / "0.png")
    case("split folder missing", "train", "--data", tmp / "nosplit", "--out", tmp / "r", *quick)
    empty = folder(tmp / "empty")
    for f in (empty / "train" / "b").iterdir():
        f.unlink()
    case("a class folder empty", "train", "--data", empty, "--out", tmp / "r", *quick)
    notimg = folder(tmp / "notimg")
    (notimg / "train" / "a" / "notes.png").write_text("not an image")
    case("a file that is not an image", "train", "--data", notimg, "--out", tmp / "r", *quick)
    trunc = folder(tmp / "trunc")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(
        buf, "JPEG"
    )
    (trunc / "train" / "a" / "cut.jpg").write_bytes(buf.getvalue()[:300])
    case("a truncated JPEG", "train", "--data", trunc, "--out", tmp / "r", *quick)
    mixed = folder(tmp / "mixed")
    Image.new("RGB", (12, 12)).save(mixed / "train" / "a" / "big.png")
    case("mixed sizes without --image-size", "train", "--data", mixed, "--out", tmp / "r", *quick)
    modes = folder(tmp / "modes")
    Image.new("I;16", (8, 8), 40000).save(modes / "train" / "a" / "deep.png")
    Image.new("CMYK", (8, 8), (0, 50, 100, 0)).save(modes / "train" / "b" / "print.jpg")
    case(
        "16-bit and CMYK images (converted by the documented rule)",
        "train",
        "--data",
        modes,
        "--out",
        tmp / "r16",
        *quick,
    )
    arch = cifar_archive(tmp / "cifar-10-python.tar.gz")
    case("official archive with a wrong md5", "train", "--data", arch, "--out", tmp / "r", *quick)
    arch2 = tmp / "mine" / "cifar10-small.tar.gz"
    arch2.parent.mkdir()
    cifar_archive(arch2, labels_max=12)
    case("labels out of range", "train", "--data", arch2, "--out", tmp / "r", *quick)
    case("unknown model", "train", "--data", good, "--out", tmp / "r", "--model", "resnet19")
    case("unknown preset", "train", "--data", good, "--out", tmp / "r", "--preset", "turbo")
    case("unknown option", "train", "--data", good, "--out", tmp / "r", "--lr-decay", "3")
    case("zero epochs", "train", "--data", good, "--out", tmp / "r", "--epochs", "0")
    case("negative batch size", "train", "--data", good, "--out", tmp / "r", "--batch-size", "-8")
    case("zero learning rate", "train", "--data", good, "--out", tmp / "r", "--lr", "0")
    case(
        "batch size larger than the dataset (one batch per epoch)",
        "train",
        "--data",
        good,
        "--out",
        tmp / "rbig",
        "--epochs",
        "1",
        "--batch-size",
        "4096",
        "--quiet",
    )
    blocker = tmp / "file"
    blocker.write_text("")
    case("output folder not writable", "train", "--data", good, "--out", blocker / "r", *quick)
    case(
        "diverging loss (--lr 1e4)",
        "train",
        "--data",
        good,
        "--out",
        tmp / "rdiv",
        "--epochs",
        "80",
        "--batch-size",
        "4",
        "--lr",
        "1e4",
        "--device",
        "cpu",
    )
    run = tmp / "run"
    subprocess.run(
        [sys.executable, "-m", "cifar_resnet", "train", "--data", good, "--out", run, *quick],
        check=True,
        capture_output=True,
    )
    case(
        "resuming with a different model",
        "train",
        "--resume",
        run,
        "--data",
        good,
        "--model",
        "resnet20",
    )
    other = folder(tmp / "other", classes=("x", "y"))
    case("resuming with a different class list", "train", "--resume", run, "--data", other)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    bad = tmp / "bad.pt"
    bad.write_bytes(ckpt.read_bytes()[:200])
    case("a truncated checkpoint", "evaluate", bad, "--data", good)
    case("a new run into a folder that holds a run", "train", "--data", good, "--out", run, *quick)
    case("resuming with another batch size", "train", "--resume", run, "--batch-size", "7")
    case("--epochs with a recipe defined in steps", "train", "--data", good, "--out", tmp / "r",
         "--preset", "paper", "--epochs", "2")  # fmt: skip
    for what, extra in (
        ("a learning rate of 1e308", ["--lr", "1e308"]),
        ("a negative seed", ["--seed", "-1", "--limit-train", "2"]),
        ("a seed of 2**64", ["--seed", str(2**64)]),
        ("a GPU that is not there", ["--device", "cuda:0"]),
        ("a device name that is not one", ["--device", "cuda:abc"]),
        ("an image size too small for the model", ["--preset", "fast", "--image-size", "1"]),
        ("an image size too large", ["--image-size", "20000"]),
        ("an early scale that is not a share of the image", ["--early-scale", "1.5"]),
        ("a cutout larger than the images", ["--cutout", "9"]),
        ("a negative cutout", ["--cutout", "-1"]),
        ("a negative mixup alpha", ["--mixup", "-1"]),
        ("--randaugment without its magnitude", ["--randaugment", "2"]),
        ("an unknown AutoAugment policy", ["--autoaugment", "imagenet"]),
        ("--dropout for a model without dropout", ["--model", "resnet20", "--dropout", "0.3"]),
        ("a Wide ResNet depth that is not 6n+4", ["--model", "wrn-27-10"]),
    ):
        case(what, "train", "--data", good, "--out", tmp / "r", *quick, *extra)
    image = next((good / "test").rglob("*.png"))
    case("predict --image-size too large", "predict", run, image, "--image-size", "100000")
    loop_folder = folder(tmp / "loop")
    (loop_folder / "train" / "a" / "self.png").symlink_to(loop_folder / "train" / "a" / "self.png")
    case("a symlink loop in the data folder", "train", "--data", loop_folder, "--out", tmp / "r",
         *quick)  # fmt: skip
    import torch

    crafted = torch.load(ckpt, weights_only=True)
    del crafted["config"]
    (tmp / "crafted" / "checkpoints").mkdir(parents=True)
    torch.save(crafted, tmp / "crafted" / "checkpoints" / ckpt.name)
    case("a checkpoint without its config", "train", "--resume", tmp / "crafted", "--data", good)
    busy = tmp / "busy"
    shutil.copytree(run, busy)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cifar_resnet.rundir import RunDir; "
         "RunDir(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(600)", busy],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    holder.stdout.readline()
    case("a second training into a run folder in use", "train", "--resume", busy, "--data", good)
    case("a misspelt model (refused before torch loads)", "train", "--data", good, "--out",
         tmp / "r", "--model", "ResNet20")  # fmt: skip
    runs = tmp / "runs"
    shutil.copytree(run, runs / "seed")
    case("--resume of a folder of runs", "train", "--resume", runs)
    case("--resume of a checkpoint file", "train", "--resume", ckpt)
    case("--resume of a run folder that does not exist", "train", "--resume", tmp / "gone")
    case("report of a run folder that does not exist", "report", tmp / "gone")
    case("evaluate of a run folder that does not exist", "evaluate", tmp / "gone")
    stopped = tmp / "stopped"
    (stopped / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.toml", stopped / "config.toml")
    case("report of a run stopped in its first epoch", "report", stopped)
    attacks(tmp, good, run, ckpt, case, quick)

    print("| bad input | exit | message |\n|---|---|---|")
    for what, args in cases:
        r = subprocess.run(
            [sys.executable, "-m", "cifar_resnet", *args], capture_output=True, text=True
        )
        msg = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "(runs)"
        msg = msg.replace(str(tmp), "…").replace("|", "\\|")
        msg = re.sub(r"pid \d+", "pid N", msg)
        code = f"`` {msg} ``" if "`" in msg else f"`{msg}`"  # a hint's `command` inside
        print(f"| {what} | {r.returncode} | {code} |", flush=True)
    holder.kill()


if __name__ == "__main__":
    main()
