"""Deliberate attacks (issue 21): crafted files, symlinks, sizes, kills and hostile servers
must never corrupt memory, run code, redirect or delete files, or exhaust memory and disk.
Each test makes the attack itself; memory is bounded with setrlimit in the child process."""

import http.server
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from PIL import Image

from cifar_resnet.checkpoint import checkpoint_files, load_checkpoint
from cifar_resnet.errors import (
    EXIT_CHECKPOINT,
    EXIT_DATA,
    EXIT_DIVERGED,
    EXIT_OUTPUT,
    EXIT_USAGE,
)

QUICK = ["--epochs", "2", "--batch-size", "8", "--device", "cpu", "--quiet", "--no-report"]
MEMORY_LIMIT = 6 << 30  # bytes of address space for a child that must not allocate much


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run(*args, env=None, limit=False, **kw):
    return subprocess.run(
        [sys.executable, "-m", "cifar_resnet", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=_limit_memory if limit else None,
        **kw,
    )


def images(root: Path, n=(12, 4), size=(8, 8), classes=("bright", "dark")) -> Path:
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), n):
        for i, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                pixels = np.clip(60 + 120 * i + rng.integers(-30, 30, (*size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{j}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data, run folder) of a 2-epoch run (6 steps) with lookahead and an EMA."""
    root = tmp_path_factory.mktemp("attacks")
    os.environ.setdefault("CIFAR_RESNET_CACHE", str(root / "cache"))
    data = images(root / "data")
    out = root / "run"
    r = run("train", "--data", data, "--out", out, *QUICK, "--lookahead", "2", "--ema", "0.9")
    assert r.returncode == 0, r.stderr
    return data, out


def copy_run(trained, tmp_path, change=None) -> Path:
    """A copy of the trained run whose newest checkpoint went through ``change(ckpt)``."""
    out = tmp_path / "copy"
    shutil.copytree(trained[1], out)
    if change is not None:
        newest = checkpoint_files(out)[0]
        ckpt = torch.load(newest, weights_only=True)
        change(ckpt)
        torch.save(ckpt, newest)
    return out


def _first_momentum(ckpt):
    return next(iter(ckpt["optimizer"]["state"].values()))


# 1. Every tensor of a checkpoint is checked against a fresh model's and optimizer's.


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda c: _first_momentum(c).update(momentum_buffer=torch.zeros(3)), "shape (3,)"),
        (
            lambda c: _first_momentum(c).update(
                momentum_buffer=torch.zeros(1).expand(_first_momentum(c)["momentum_buffer"].shape)
            ),
            "strides",
        ),
        (lambda c: c["model"]["linear.weight"].fill_(float("nan")), "non-finite"),
        (lambda c: c["ema"]["linear.bias"].fill_(float("inf")), "EMA"),
        (lambda c: c["lookahead"].update({"0": torch.zeros(2, 2)}), "lookahead"),
        (lambda c: c["rng"].update(torch=torch.zeros(5, dtype=torch.uint8)), "RNG"),
        (lambda c: c["state"].update(epoch="x"), "'epoch'"),
        (lambda c: c["state"].update(step=-100), "'step'"),
        (lambda c: c["state"].update(metrics="a string"), "'metrics'"),
        (lambda c: c["state"].update(epoch_sums=[1.0]), "'epoch_sums'"),
    ],
)
def test_a_crafted_checkpoint_is_refused_before_any_tensor_is_used(
    trained, tmp_path, change, match
):
    out = copy_run(trained, tmp_path, change)
    r = run("train", "--resume", out, "--epochs", "3", limit=True)
    assert match in one_line_error(r, EXIT_CHECKPOINT)


# 2. TorchScript is code: predict runs it only when asked.


def test_predict_never_runs_torchscript_named_like_a_checkpoint(trained, tmp_path):
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"\0" * 4)

    class Evil(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path

        def forward(self, x):
            t = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
            t.fill_(88)
            return torch.zeros(x.shape[0], 2)

    meta = {"format": "cifar-resnet", "classes": '["bright", "dark"]', "mean": "[0.5, 0.5, 0.5]"}
    meta.update(std="[0.2, 0.2, 0.2]", model_name="seed", image_size="8")
    evil = tmp_path / "e0002-s0000006.pt"
    torch.jit.save(
        torch.jit.script(Evil(str(victim))), str(evil), {"cifar_resnet.json": json.dumps(meta)}
    )
    image = next((trained[0] / "test").rglob("*.png"))
    r = run("predict", evil, image)
    assert "TorchScript" in one_line_error(r, EXIT_CHECKPOINT)
    assert victim.read_bytes() == b"\0" * 4  # nothing ran
    exported = tmp_path / "model.pt"
    assert run("export", trained[1], "--format", "torchscript", "--out", exported).returncode == 0
    assert "--torchscript" in one_line_error(run("predict", exported, image), EXIT_CHECKPOINT)
    r = run("predict", "--torchscript", exported, image)
    assert r.returncode == 0 and ("bright" in r.stdout or "dark" in r.stdout), r.stderr


# 3. No file of a run is reached through a symlink in its own name.


def test_a_symlinked_lock_is_refused_and_its_target_untouched(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(victim)
    assert "lock" in one_line_error(run("train", "--resume", out), EXIT_OUTPUT)
    assert victim.read_text() == "precious"


def test_symlinked_run_files_are_refused_and_never_written_through(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / ".write-test").symlink_to(victim)  # the old probe's name
    (out / "metrics.csv").unlink()
    (out / "metrics.csv").symlink_to(victim)
    r = run("train", "--resume", out, "--epochs", "3")
    assert "symlink" in one_line_error(r, EXIT_OUTPUT)
    assert victim.read_text() == "precious"


def test_a_checkpoints_folder_symlinked_to_another_disk_keeps_working(trained, tmp_path):
    elsewhere = tmp_path / "bigger-disk"
    elsewhere.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    r = run("train", "--data", trained[0], "--out", out, *QUICK)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["e0001-s0000003.pt", "e0002-s0000006.pt"]
    r = run("train", "--resume", out, "--epochs", "3", "--quiet", "--no-report")
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "e0003-s0000009.pt").is_file()


# 4. train --out never deletes files it did not write.


def test_train_refuses_a_folder_of_another_tools_files_and_deletes_nothing(trained, tmp_path):
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "tensorboard").mkdir()
    for name in ("checkpoints/model_v1.pth", "tensorboard/events", "report.md"):
        (other / name).write_text(name)
    before = sorted(str(p.relative_to(other)) for p in other.rglob("*"))
    for extra in ([], ["--overwrite"]):
        r = run("train", "--data", trained[0], "--out", other, *QUICK, *extra)
        assert "no cifar-resnet run wrote" in one_line_error(r, EXIT_USAGE)
        assert sorted(str(p.relative_to(other)) for p in other.rglob("*")) == before


def test_overwrite_removes_only_what_the_run_recorded(trained, tmp_path):
    looks_ours = tmp_path / "looks-ours"  # our file names, written by someone else
    (looks_ours / "checkpoints").mkdir(parents=True)
    for name in ("config.toml", "report.md", "checkpoints/e0001-s0000001.pt"):
        (looks_ours / name).write_text("theirs")
    r = run("train", "--data", trained[0], "--out", looks_ours, *QUICK, "--overwrite")
    assert "recorded writing" in one_line_error(r, EXIT_USAGE)
    assert (looks_ours / "config.toml").read_text() == "theirs"
    out = copy_run(trained, tmp_path)
    (out / "notes.txt").write_text("mine")
    r = run("train", "--data", trained[0], "--out", out, *QUICK, "--overwrite")
    assert "notes.txt" in one_line_error(r, EXIT_USAGE)
    assert (out / "notes.txt").read_text() == "mine" and (out / "summary.json").is_file()
    (out / "notes.txt").unlink()
    r = run("train", "--data", trained[0], "--out", out, *QUICK, "--overwrite")
    assert r.returncode == 0, r.stderr


# 5. --resume OUT --seeds adds seeds.


def test_resume_with_seeds_adds_them_to_the_earlier_ones(trained, tmp_path):
    out = tmp_path / "seeds"
    args = ["--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet", "--no-report"]
    assert run("train", "--data", trained[0], "--out", out, "--seeds", "0", *args).returncode == 0
    r = run("train", "--resume", out, "--seeds", "5", "--quiet", "--no-report")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [0, 5]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 5] and sorted(summary["runs"]) == ["0", "5"]


# 6. Every size that decides memory is bounded before anything is allocated.


def test_sizes_from_files_and_flags_are_bounded_before_allocating(trained, tmp_path):
    import safetensors.torch as st

    data, out = trained
    image = next((data / "test").rglob("*.png"))
    meta = {"format": "cifar-resnet", "classes": '["bright", "dark"]', "model_name": "seed"}
    meta.update(mean="[0.5, 0.5, 0.5]", std="[0.2, 0.2, 0.2]", image_size="100000")
    st.save_file({"x": torch.zeros(1)}, str(tmp_path / "m.safetensors"), metadata=meta)
    r = run("predict", tmp_path / "m.safetensors", image, limit=True)
    assert "image_size 100000" in one_line_error(r, EXIT_CHECKPOINT)

    r = run("evaluate", out, "--image-size", "5000", limit=True)
    assert "at most" in one_line_error(r, EXIT_USAGE)

    big = checkpoint_files(copy_run(trained, tmp_path, lambda c: c.update(input_size=20000)))[0]
    for args in (("predict", big, image), ("export", big, "--format", "onnx", "--out", "m.onnx")):
        r = run(*args, limit=True, cwd=tmp_path)
        assert "input_size" in one_line_error(r, EXIT_CHECKPOINT)

    r = run("train", "--data", data, "--out", tmp_path / "p", *QUICK, "--padding", "2000")
    assert "padding 2000" in one_line_error(r, EXIT_USAGE)
    r = run("train", "--data", data, "--out", tmp_path / "c", *QUICK, "--config", "/dev/zero")
    assert "larger than" in one_line_error(r, EXIT_USAGE)


def test_a_tiny_png_of_huge_dimensions_is_refused_before_decoding(trained, tmp_path):
    Image.new("L", (1, 1_000_000)).save(tmp_path / "tall.png")
    assert (tmp_path / "tall.png").stat().st_size < 10_000
    r = run("predict", trained[1], tmp_path / "tall.png", "--image-size", "32", limit=True)
    assert "too large" in r.stderr and "no readable image" in one_line_error_last(r, EXIT_DATA)


def one_line_error_last(result, code):
    """A failed command whose last stderr line is its one error line (warnings before it)."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_cache_header_declaring_huge_arrays_is_rebuilt_not_allocated(tmp_path, capsys):
    import io
    import zipfile

    from cifar_resnet.data.cache import _read_cache

    path = tmp_path / "x.npz"
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 4, 4, 3), np.uint8))
    header = buf.getvalue().replace(b"(2, 4, 4, 3)", b"(9999999, 4096, 4096, 3)")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("train_images.npy", header)
    assert _read_cache(path) is None
    assert "declares" in capsys.readouterr().err


# 7. Decode workers die with their parent.

ORPHAN_SCRIPT = """
import sys
import cifar_resnet.data.decode as d
d.PARALLEL_THRESHOLD = 0
d._worker_count = lambda: 2
d._decode_all([sys.argv[1]] * 40000, 64, False)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP])
def test_decode_workers_exit_when_their_parent_is_killed(tmp_path, signum):
    Image.fromarray(np.zeros((128, 96, 3), np.uint8)).save(tmp_path / "a.png")
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, str(tmp_path / "a.png")])
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = _children(parent.pid)
    assert len(workers) >= 2, "the pool did not start"
    time.sleep(1.0)  # the workers are decoding (and soon blocked writing results)
    os.kill(parent.pid, signum)
    parent.wait()
    deadline = time.monotonic() + 15
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [w for w in workers if Path(f"/proc/{w}").exists() and not _zombie(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their parent"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


# 8. --resume with --config is refused in one line.


def test_resume_with_config_is_refused(trained, tmp_path):
    config = tmp_path / "f.toml"
    config.write_text("epochs = 9\n")
    r = run("train", "--resume", trained[1], "--config", config)
    assert "--config with --resume" in one_line_error(r, EXIT_USAGE)


# 9. One line, never a traceback.


def test_a_class_folder_name_that_is_not_utf8_is_one_line(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained[0], data)
    for split in ("train", "test"):
        os.rename(data / split / "dark", os.path.join(os.fsencode(data / split), b"d\xffrk"))
    r = run("train", "--data", data, "--out", tmp_path / "r", *QUICK)
    assert "not valid UTF-8" in one_line_error(r, EXIT_DATA)


def test_predict_prints_a_file_name_that_is_not_utf8(trained, tmp_path):
    image = next((trained[0] / "test").rglob("*.png"))
    odd = os.path.join(os.fsencode(tmp_path), b"p\xffx.png")
    shutil.copy(image, odd)
    env = {"PYTHONIOENCODING": "utf-8"}
    r = run("predict", trained[1], tmp_path, env=env)
    assert r.returncode == 0 and "p\\xffx.png: " in r.stdout, r.stderr
    r = run("predict", trained[1], tmp_path, "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["path"].endswith("p\\xffx.png"), r.stderr


@pytest.mark.parametrize(
    "row", ["garbage,row,x\n", ",,,,,,,,,,,,,\n", "1,3,0.1,1,2,3,4,5,6,7,8,9,10,11,12,13\n"]
)
def test_a_damaged_metrics_row_is_one_line_for_report(trained, tmp_path, row):
    out = copy_run(trained, tmp_path)
    with open(out / "metrics.csv", "a") as f:
        f.write(row)
    assert "metrics.csv is damaged" in one_line_error(run("report", out), EXIT_USAGE)


def test_wrong_types_in_run_files_read_as_missing(trained, tmp_path):
    from cifar_resnet.config import TrainConfig
    from cifar_resnet.seeds import finished_summary

    out = copy_run(trained, tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    summary.update(steps="x", parameters="many", wall_seconds=[1], model=3)
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "run.json").write_text(json.dumps({"steps_per_epoch": "x", "classes": 5}))
    r = run("report", out)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert finished_summary(out, TrainConfig(epochs=2)) is None  # continued, not kept


def test_a_lock_that_is_a_folder_is_one_line(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    (out / ".lock").unlink()
    (out / ".lock").mkdir()
    assert ".lock" in one_line_error(run("train", "--resume", out), EXIT_OUTPUT)


@pytest.mark.parametrize(
    "field,value,match",
    [("mean", '["a", "b", "c"]', "normalisation"), ("mean", "[0.5, 0.5]", "normalisation"),
     ("std", "[0, 0.2, 0.2]", "std")],
)  # fmt: skip
def test_damaged_export_metadata_is_one_line(trained, tmp_path, field, value, match):
    import safetensors.torch as st
    from safetensors import safe_open

    good = tmp_path / "m.safetensors"
    assert run("export", trained[1], "--format", "safetensors", "--out", good).returncode == 0
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    meta[field] = value
    st.save_file(st.load_file(str(good)), str(good), metadata=meta)
    image = next((trained[0] / "test").rglob("*.png"))
    assert match in one_line_error(run("predict", good, image), EXIT_CHECKPOINT)


def test_a_batch_of_one_image_at_a_one_pixel_feature_map_is_one_line(tmp_path):
    data = images(tmp_path / "data", n=(3, 2), size=(9, 9))
    r = run("train", "--data", data, "--out", tmp_path / "r", "--model", "fastnet-s",
            "--epochs", "1", "--batch-size", "1", "--device", "cpu", "--quiet")  # fmt: skip
    assert "BatchNorm" in one_line_error(r, EXIT_USAGE)


@pytest.mark.parametrize("damage", ["label", "classes"])
def test_a_cache_with_labels_beyond_its_classes_is_rebuilt(tmp_path, capsys, damage):
    from cifar_resnet.data.cache import _read_cache

    labels = np.array([0, 1, 5 if damage == "label" else 1], np.int64)
    split = {"images": np.zeros((3, 4, 4, 3), np.uint8), "labels": labels}
    np.savez(
        tmp_path / "c.npz",
        train_images=split["images"],
        train_labels=split["labels"],
        test_images=split["images"],
        test_labels=split["labels"],
        classes=np.array(["a", "b"] if damage == "label" else ["a"]),
        source=np.array("x"),
    )
    assert _read_cache(tmp_path / "c.npz") is None
    assert "class names" in capsys.readouterr().err


# 10. Temporary files of killed writers are removed by the next command, nothing else.

KILLED_WRITER = """
import sys, time
from cifar_resnet.files import write_atomic
def write(tmp):
    tmp.write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(600)
write_atomic(sys.argv[1], write)
"""


def _killed_writer(target: Path) -> Path:
    p = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    tmp = Path(p.stdout.readline().strip())
    p.kill()
    p.wait()
    assert tmp.is_file()
    return tmp


def test_temporary_files_of_killed_writers_are_cleaned_and_nothing_else(trained, tmp_path):
    from cifar_resnet.data import load_data

    cache = tmp_path / "cache"
    cache.mkdir()
    stale = _killed_writer(cache / "0123.npz")
    live = cache / f".x.npz.{os.getpid()}.abcdefgh.tmp"  # a live writer's
    other = cache / ".notes.tmp"  # not our pattern
    for f in (live, other):
        f.write_text("keep")
    load_data(str(trained[0]), cache_dir=str(cache))
    assert not stale.exists() and live.exists() and other.exists()

    out = copy_run(trained, tmp_path)
    stale = _killed_writer(out / "report.md")
    assert run("report", out).returncode == 0
    assert not stale.exists()
    stale = _killed_writer(tmp_path / "m.safetensors")
    r = run("export", out, "--format", "safetensors", "--out", tmp_path / "m.safetensors")
    assert r.returncode == 0 and not stale.exists(), r.stderr


# 11. Downloads have a deadline and a size limit.


class _Trickle(http.server.BaseHTTPRequestHandler):
    endless = False

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"x" * (65536 if self.endless else 1))
                self.wfile.flush()
                if not self.endless:
                    time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def _serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"


def test_a_trickling_server_is_cut_off_at_the_deadline(tmp_path):
    server, url = _serve(_Trickle)
    try:
        t0 = time.monotonic()
        r = run("train", "--data", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "r",
                *QUICK, env={"CIFAR_RESNET_CIFAR10_URL": url,
                             "CIFAR_RESNET_DOWNLOAD_TIMEOUT": "2"}, timeout=120)  # fmt: skip
        assert "deadline" in one_line_error(r, EXIT_DATA)
        assert time.monotonic() - t0 < 60
        assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
    finally:
        server.shutdown()


def test_an_endless_body_stops_at_the_size_limit(tmp_path):
    from cifar_resnet.data.download import _Cutoff, _fetch

    handler = type("Endless", (_Trickle,), {"endless": True})
    server, url = _serve(handler)
    try:
        with open(tmp_path / "x", "wb") as f, pytest.raises(_Cutoff, match="bytes expected"):
            _fetch(url, f, "x", False, time.monotonic() + 30, 4 << 20)
        assert (tmp_path / "x").stat().st_size <= 4 << 20
    finally:
        server.shutdown()


# 12. Non-finite weights are never kept; export never replaces a checkpoint; seed names stay.


def test_a_diverging_run_keeps_only_finite_checkpoints(trained, tmp_path):
    out = tmp_path / "div"
    r = run("train", "--data", trained[0], "--out", out, "--epochs", "15", "--batch-size", "8",
            "--lr", "5000", "--save-every-steps", "1", "--keep", "50", "--device", "cpu",
            "--quiet", "--no-report")  # fmt: skip
    one_line_error(r, EXIT_DIVERGED)
    assert checkpoint_files(out)  # the finite ones before the weights diverged are kept
    for path in checkpoint_files(out):
        ckpt = torch.load(path, weights_only=True)
        for part in ("model", "optimizer"):
            tensors = ckpt[part].values() if part == "model" else [
                t for s in ckpt[part]["state"].values() for t in s.values()
            ]  # fmt: skip
            assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()), path


def test_export_never_replaces_a_checkpoint_or_another_file(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    newest = checkpoint_files(out)[0]
    before = newest.read_bytes()
    r = run("export", out, "--format", "torchscript", "--out", newest)
    assert "checkpoints/" in one_line_error(r, EXIT_OUTPUT)
    other = tmp_path / "notes.pt"
    other.write_text("mine")
    r = run("export", out, "--format", "torchscript", "--out", other)
    assert "not a file" in one_line_error(r, EXIT_OUTPUT)
    assert newest.read_bytes() == before and other.read_text() == "mine"
    mine = tmp_path / "model.pt"  # an export of ours is replaced, as before
    for _ in range(2):
        assert run("export", out, "--format", "torchscript", "--out", mine).returncode == 0
    load_checkpoint(newest)


def test_seed_names_from_seeds_json_never_leave_the_folder(trained, tmp_path):
    out = tmp_path / "seeds"
    (out / "seed-0").mkdir(parents=True)
    shutil.copytree(trained[1], out / "seed-0", dirs_exist_ok=True)
    victim = tmp_path / "victimrun"
    victim.mkdir()
    plan = {"seeds": [0, "/../../victimrun"], "preset": "seed", "config": {}, "data": None}
    (out / "seeds.json").write_text(json.dumps(plan))
    r = run("report", out)
    assert "seeds.json is damaged" in one_line_error(r, EXIT_USAGE)
    assert list(victim.iterdir()) == []
