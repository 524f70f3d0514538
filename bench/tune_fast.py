"""Tune the fast preset on a validation split (never the test set), then measure it on test.

Every trial trains through the package's own ``fit`` on the training images minus a
stratified, seeded 5,000-image validation split and reports validation accuracy at every
test-time-augmentation level (0 none, 1 mirror, 2 mirror + translations) of the final model.

    python bench/tune_fast.py --data DIR --device cuda --stage cpu-scale   # fastnet-s trials
    python bench/tune_fast.py --data DIR --device cuda --stage gpu-scale   # fastnet trials
    python bench/tune_fast.py --data DIR --device cuda --stage test --seeds 0 1 2
    python bench/tune_fast.py --data DIR --device cpu --stage cpu-budget  # 5-minute CPU runs

On a GPU a fastnet-s trial stands in for a CPU run of the same length in epochs: the CPU's
budget fixes the epochs (5 minutes ~ 3-4 epochs of fastnet-s on a 2-core CPU), the trial
chooses the rest. "test" trains the preset unchanged on all training images, 3 seeds.
"cpu-budget" runs the command line itself, one process per trial, under ``--budget`` (the
CPU target's five minutes) on the validation split: what each setting reaches by the deadline
on this machine, its speed included. Run it on a quiet machine. To stand in for a CPU
without native bf16 on one that has it, restrict oneDNN and ATen to AVX2 (fp32 is then what
``--precision auto`` picks) and shorten the budget by the speed ratio (BENCHMARKS.md):

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/tune_fast.py \
        --data DIR --device cpu --stage cpu-budget --budget 3m --only progressive baseline
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cifar_resnet.checkpoint import checkpoint_files, load_checkpoint, load_model  # noqa: E402
from cifar_resnet.config import TrainConfig, preset_config  # noqa: E402
from cifar_resnet.data import DataBundle, load_data, splits_for  # noqa: E402
from cifar_resnet.evaluate import evaluate  # noqa: E402
from cifar_resnet.loader import DeviceLoader, eval_loader  # noqa: E402
from cifar_resnet.models import FastNet, register_model  # noqa: E402
from cifar_resnet.runtime import resolve_device, resolve_runtime  # noqa: E402
from cifar_resnet.train import fit  # noqa: E402


class PlainGroup(torch.nn.Module):
    """airbench's stage exactly (no residual), to check that the residual costs nothing."""

    def __init__(self, group):
        super().__init__()
        self.g = group

    def forward(self, x):
        g = self.g
        x = torch.nn.functional.gelu(g.norm1(torch.nn.functional.max_pool2d(g.conv1(x), 2)))
        return torch.nn.functional.gelu(g.norm2(g.conv2(x)))


def _plain(widths):
    def factory(num_classes=10):
        net = FastNet(widths, num_classes)
        for name in ("layer1", "layer2", "layer3"):
            setattr(net, name, PlainGroup(getattr(net, name)))
        return net

    return factory


register_model("tune-plain-s", "fastnet-s without residuals")(_plain((32, 64, 128)))
register_model("tune-plain", "fastnet without residuals")(_plain((64, 256, 256)))
register_model("tune-m", "48/96/192")(lambda num_classes=10: FastNet((48, 96, 192), num_classes))
register_model("tune-xs", "24/48/96")(lambda num_classes=10: FastNet((24, 48, 96), num_classes))
register_model("tune-w", "96/384/384")(lambda num_classes=10: FastNet((96, 384, 384), num_classes))

CPU = preset_config("fast", "cpu")
GPU = preset_config("fast", "cuda")
TRIALS = {
    # Round 1 (2026-11-27, H100, seed 0) is in BENCHMARKS.md; round 2 follows its leads.
    "cpu-scale": [
        ("base e3", CPU, dict(epochs=3)),
        ("lr x2 e3", CPU, dict(epochs=3, lr=1.5)),
        ("lr x3 e3", CPU, dict(epochs=3, lr=2.25)),
        ("lr x2 wd x2 e3", CPU, dict(epochs=3, lr=1.5, weight_decay=2.66e-3)),
        ("lr x2 b256 e3", CPU, dict(epochs=3, lr=0.75, batch_size=256)),
        ("lr x2 ls .1 e3", CPU, dict(epochs=3, lr=1.5, label_smoothing=0.1)),
        ("base e10", CPU, dict(epochs=10)),
        ("lr x2 e10", CPU, dict(epochs=10, lr=1.5)),
    ],
    "gpu-scale": [
        ("base e10", GPU, {}),
        ("base e16", GPU, dict(epochs=16)),
        ("base e20", GPU, dict(epochs=20)),
        ("wide e10", GPU, dict(model="tune-w")),
        ("wide e14", GPU, dict(model="tune-w", epochs=14)),
    ],
}


# Flags over `--preset fast` on a CPU; each trial is `cifar-resnet train` under the budget.
OFF = ["--early-scale", "0"]  # trials recorded before progressive resizing was the default
BUDGET_TRIALS = [
    ("batch 512 lr 1.5 (first CPU values)", ["--batch-size", "512", "--lr", "1.5", *OFF]),
    ("batch 256 lr 0.75", ["--batch-size", "256", "--lr", "0.75", *OFF]),
    (
        "24/48/96 batch 256 lr 0.75",
        ["--model", "tune-xs", "--batch-size", "256", "--lr", "0.75", *OFF],
    ),
    ("batch 128 lr 0.375", ["--batch-size", "128", "--lr", "0.375", *OFF]),
    ("batch 128 lr 0.5", ["--batch-size", "128", "--lr", "0.5", *OFF]),
    ("batch 64 lr 0.1875", ["--batch-size", "64", "--lr", "0.1875", *OFF]),
    # Progressive resizing (2026-11-28): the first half of the steps at 24x24.
    ("baseline (the preset as it was)", OFF),
    ("progressive 0.75", ["--early-scale", "0.75"]),
    ("progressive 0.75 + TTA 2", ["--early-scale", "0.75", "--tta", "2"]),
]


def budget_trial(name, flags, args, seed):
    """One `cifar-resnet train --preset fast --time-budget B --val-split V` in its own process."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, __file__, "cli", "train", "--data", args.data, "--out", str(out)]
        cmd += ["--preset", "fast", "--device", args.device, "--time-budget", args.budget]
        cmd += ["--val-split", str(args.val), "--seed", str(seed), "--no-report", "--quiet"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd + flags, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
        summary = json.loads((out / "summary.json").read_text())
    row = {
        "trial": f"{name} seed {seed}",
        "process_s": round(seconds, 1),
        "run_s": round(summary["seconds"], 1),
        "steps": summary["steps"],
        "val_acc": round(summary["best_val_accuracy"], 2),  # one evaluation: at the end
    }
    print(row, flush=True)
    return row


@dataclass
class Validation:
    """A trial's held-out images, evaluated as ``fit`` evaluates its run."""

    loader: DeviceLoader
    num_classes: int
    amp_dtype: torch.dtype | None


def validation(config: TrainConfig, bundle: DataBundle, device: str) -> Validation:
    """The validation images ``fit`` holds out for ``config`` (``run_splits``, seeded by the
    trial's seed), normalised with the run's statistics, at the run's precision and layout."""
    runtime = resolve_runtime(config, resolve_device(device), distributed=False)
    splits = splits_for(bundle, config)
    loader = eval_loader(
        splits.val.images,
        splits.val.labels,
        config.eval_batch_size,
        mean=splits.mean,
        std=splits.std,
        device=runtime.device,
        channels_last=runtime.channels_last,
    )
    return Validation(loader, len(splits.classes), runtime.amp_dtype)


def trial(name, config, bundle, device, val: Validation | None = None):
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = fit(config, bundle, out, preset="fast", device=device, quiet=True)
        seconds = time.perf_counter() - t0
        ckpt = load_checkpoint(checkpoint_files(Path(out))[0])
    epochs = [m["epoch_seconds"] for m in ckpt["state"]["metrics"]]
    row = {
        "trial": name,
        "seconds": round(seconds, 1),
        "train_s": round(summary["train_seconds"], 2),
        "first_epoch_s": round(epochs[0], 2),  # cudnn autotuning and CUDA-graph capture
        "later_epoch_s": round(sorted(epochs[1:])[len(epochs[1:]) // 2], 3) if epochs[1:] else None,
    }
    if val is not None:
        model = load_model(ckpt, device)
        for level in (0, 1, 2):
            result = evaluate(
                model, val.loader, num_classes=val.num_classes, amp_dtype=val.amp_dtype, tta=level
            )
            row[f"val_tta{level}"] = round(result["accuracy"], 2)
    else:
        row["test_acc"] = round(summary["test_accuracy"], 2)
    print(row, flush=True)
    return row


def test_best(results, args, bundle) -> None:
    """Train the trial with the best validation accuracy among those whose training fits
    --max-seconds on all training images, --test-best seeds, on test."""
    fits = {
        n: v
        for n, v in results.items()
        if sum(r["train_s"] for r in v[2]) / len(v[2]) <= args.max_seconds
    }
    best = max(fits, key=lambda n: sum(r["val_tta2"] for r in fits[n][2]))
    base, changes, _ = fits[best]
    print(f"best on validation within {args.max_seconds}s: {best} {changes}; test:")
    for s in range(args.test_best):
        config = dataclasses.replace(base, seed=s, **changes).validate()
        trial(f"{best} test seed {s}", config, bundle, args.device)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--stage", choices=("cpu-scale", "gpu-scale", "test", "cpu-budget"), required=True
    )
    p.add_argument("--budget", default="5m", help="cpu-budget: each trial's --time-budget")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="*", help="run only trials whose name contains one of these")
    p.add_argument("--val", type=int, default=5000, help="validation images held out")
    p.add_argument("--limit-train", type=int, default=0, help="for a quick check of the script")
    p.add_argument(
        "--test-best",
        type=int,
        default=0,
        metavar="SEEDS",
        help="then train the best trial on all training images, SEEDS seeds, on test",
    )
    p.add_argument("--max-seconds", type=float, default=1e9, help="--test-best: time limit")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {args.device}, stage {args.stage}, seeds {args.seeds}")
    if args.stage == "cpu-budget":
        for name, flags in BUDGET_TRIALS:
            if not args.only or any(o in name for o in args.only):
                for s in args.seeds:
                    budget_trial(name, flags, args, s)
        return
    bundle = load_data(args.data, progress=False)
    if args.stage == "test":
        for s in args.seeds:
            base = GPU if args.device != "cpu" else CPU
            trial(f"fast seed {s}", dataclasses.replace(base, seed=s), bundle, args.device)
        return
    results = {}
    for name, base, changes in TRIALS[args.stage]:
        if args.only and not any(o in name for o in args.only):
            continue
        for s in args.seeds:
            config = dataclasses.replace(
                base, val_split=args.val, seed=s, limit_train=args.limit_train, **changes
            ).validate()
            val = validation(config, bundle, args.device)
            row = trial(f"{name} seed {s}", config, bundle, args.device, val)
            results.setdefault(name, (base, changes, []))[2].append(row)
    print("mean over seeds:")
    for name, (_, _, rows) in results.items():
        mean = {k: round(sum(r[k] for r in rows) / len(rows), 2) for k in ("train_s", "val_tta2")}
        print(f"  {name:18s} {mean}")
    if args.test_best:
        test_best(results, args, bundle)


if __name__ == "__main__":
    if sys.argv[1:2] == ["cli"]:  # a budget trial's process: the command line, tune nets known
        from cifar_resnet.cli import main as cli

        sys.exit(cli(sys.argv[2:]))
    main()
