"""Time to 85% and 90% test accuracy, the fast preset against the seed preset, side by side.

Each run is the command a user would type, timed from its start (data already cached):

    cifar-resnet train --preset P --seed S --time-budget CAP --eval-every 1 \\
        --target-accuracy 90 --target-split test

so both presets get the same wall-clock cap with their schedules laid over it, test accuracy is
measured after every epoch (its cost counted), and a run stops once the highest target is
reached. A target not reached within the cap is printed as such, with the best accuracy seen.

    python bench/time_to_accuracy.py --data ../shared/data/cifar10-jpeg --cap 10m --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cifar_resnet.cli.flags import parse_duration  # noqa: E402
from cifar_resnet.rundir import read_metrics  # noqa: E402


def run(data, preset, seed, cap, targets, device):
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "cifar_resnet",
            "train",
            "--data",
            data,
            "--out",
            out,
            "--preset",
            preset,
            "--seed",
            str(seed),
            "--time-budget",
            f"{cap}s",
            "--eval-every",
            "1",
            "--target-accuracy",
            str(max(targets)),
            "--target-split",
            "test",
            "--device",
            device,
            "--quiet",
            "--no-report",
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{preset} seed {seed} failed ({proc.returncode}): {proc.stderr.strip()}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        rows = read_metrics(out)
    # The loop's clock (wall_seconds) plus what the command spent outside it (start-up,
    # planning, the end): time from the command's start to the end of each epoch.
    outside = seconds - float(rows[-1]["wall_seconds"])
    reached = {}
    for t in targets:
        hit = next((r for r in rows if float(r["test_acc"]) >= t), None)
        reached[t] = None if hit is None else float(hit["wall_seconds"]) + outside
    best = max(float(r["test_acc"]) for r in rows)
    return {
        "seconds": seconds,
        "epochs": len(rows),
        "final": float(rows[-1]["test_acc"]),
        "best": best,
        "reached": reached,
        "planned": summary.get("planned_steps"),
    }


def fmt(values, best):
    got = [v for v in values if v is not None]
    if len(got) < len(values):
        return f"not reached in {len(values) - len(got)}/{len(values)} (best {max(best):.2f}%)"
    spread = f" ± {statistics.pstdev(got):.0f}" if len(got) > 1 else ""
    return f"{statistics.mean(got):.0f}s{spread}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--presets", nargs="+", default=["fast", "seed"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cap", type=parse_duration, default=600.0, help="wall-time cap per run")
    p.add_argument("--targets", type=float, nargs="+", default=[85.0, 90.0])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
    )
    print(f"cap {args.cap:g}s per run, seeds {args.seeds}, targets {args.targets}")
    results = {}
    for preset in args.presets:
        for seed in args.seeds:
            r = run(args.data, preset, seed, args.cap, args.targets, args.device)
            results.setdefault(preset, []).append(r)
            hits = ", ".join(
                f"{t:g}%: {'-' if s is None else f'{s:.0f}s'}" for t, s in r["reached"].items()
            )
            print(
                f"  {preset} seed {seed}: {r['epochs']} epochs, final {r['final']:.2f}%, "
                f"{r['seconds']:.0f}s; reached {hits}",
                flush=True,
            )
    head = f"{'preset':8s} {'seeds':>5s} " + " ".join(
        f"{f'time to {t:g}%':>30s}" for t in args.targets
    )
    print("\n" + head + f" {'final acc (mean)':>17s}")
    for preset, rs in results.items():
        cols = [fmt([r["reached"][t] for r in rs], [r["best"] for r in rs]) for t in args.targets]
        final = statistics.mean(r["final"] for r in rs)
        print(
            f"{preset:8s} {len(rs):>5d} "
            + " ".join(f"{c:>30s}" for c in cols)
            + f" {final:>16.2f}%"
        )


if __name__ == "__main__":
    main()
