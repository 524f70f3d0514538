"""On one GPU: several seeds of one recipe one after another against all at once.

For each preset (default: seed and fast), at a fixed ``--epochs`` (default 5), three
commands a user would type, each timed from its start to its end (torch's import and the
data's load included; the decode cache is warmed first):

    one          cifar-resnet train --seed 0                     the time of one run
    sequential   cifar-resnet train --seeds 0-7                  cifar_resnet.seeds.fit_seeds
    concurrent   8 x cifar-resnet train --seed S, started together on the same GPU

It prints each wall time and its ratio to one run, and checks that every concurrent seed's
weights_sha256 equals the sequential run's of that seed (exit 1 if one differs). The runs are
``--deterministic`` by default, so that equal digests are owed: without it cuDNN autotunes
per process and a step is a CUDA graph, and two runs of one seed need not agree bitwise;
``--no-deterministic`` times that default mode and only reports the digests. Results go to
``OUT/results.json`` (OUT: ``--out``, by default a new folder under /tmp).

    python bench/seeds_gpu.py --data /tmp/cifar10-jpeg [--epochs 5] [--seeds 0-7]
    python bench/seeds_gpu.py --device cpu --epochs 1 --limit-train 256   # smoke test, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="default: %(default)s")
    p.add_argument("--presets", default="seed,fast", help="comma-separated (default: seed,fast)")
    p.add_argument("--seeds", default="0-7", help="as train --seeds (default: 0-7)")
    p.add_argument("--epochs", type=int, default=5, help="epochs of every run (default: 5)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke test")
    p.add_argument("--limit-train", type=int, default=0, help="train images per run (0: all)")
    p.add_argument("--limit-test", type=int, default=0, help="test images per run (0: all)")
    p.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bitwise-reproducible runs, so the digests must agree (default: on)",
    )
    p.add_argument("--cache-dir", help="the decode cache (default: the package's)")
    p.add_argument("--out", help="where the runs and results.json go (default: a new /tmp dir)")
    return p.parse_args()


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def train_command(args, preset: str, out: Path, seed_flags: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "cifar_resnet", "train", "--data", args.data]
    cmd += ["--out", str(out), "--preset", preset, "--epochs", str(args.epochs)]
    cmd += ["--device", args.device, "--quiet", "--no-report", *seed_flags]
    cmd += ["--deterministic"] if args.deterministic else []
    cmd += ["--limit-train", str(args.limit_train)] if args.limit_train else []
    cmd += ["--limit-test", str(args.limit_test)] if args.limit_test else []
    cmd += ["--cache-dir", args.cache_dir] if args.cache_dir else []
    return cmd


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(p: subprocess.Popen, what: str) -> dict:
    """Wait for a train command; its JSON result (the last line of --quiet's stdout)."""
    stdout, stderr = p.communicate()
    if p.returncode != 0:
        last = (stderr.strip().splitlines() or ["no message"])[-1]
        fail(f"{what} failed with exit code {p.returncode}: {last}", 1)
    return json.loads(stdout.strip().splitlines()[-1])


def timed(cmds: list[list[str]], what: str) -> tuple[float, list[dict]]:
    """Start every command at once; (seconds until the last one ended, their results)."""
    t0 = time.perf_counter()
    procs = [start(cmd) for cmd in cmds]
    results = [finish(p, f"{what} ({i + 1} of {len(procs)})") for i, p in enumerate(procs)]
    return time.perf_counter() - t0, results


def bench_preset(args, preset: str, seeds: list[int], out: Path) -> dict:
    """The three ways to run the seeds of ``preset``; their times, ratios and digests."""
    listed = ",".join(map(str, seeds))
    one_s, (one,) = timed([train_command(args, preset, out / "one", ["--seed", "0"])], "one")
    seq_s, (seq,) = timed(
        [train_command(args, preset, out / "sequential", ["--seeds", listed])], "sequential"
    )
    conc_cmds = [
        train_command(args, preset, out / "concurrent" / f"seed-{s}", ["--seed", str(s)])
        for s in seeds
    ]
    conc_s, conc = timed(conc_cmds, "concurrent")
    equal = [
        s
        for s, run in zip(seeds, conc)
        if run["weights_sha256"] == seq["runs"][str(s)]["weights_sha256"]
    ]
    accs = [run["test_accuracy"] for run in conc]
    return {
        "preset": preset,
        "one_seconds": one_s,
        "sequential_seconds": seq_s,
        "concurrent_seconds": conc_s,
        "sequential_ratio": seq_s / one_s,
        "concurrent_ratio": conc_s / one_s,
        "digests_equal": len(equal),
        "digests_differ": [s for s in seeds if s not in equal],
        "sequential_test_accuracy": seq["aggregate"]["test_accuracy"],
        "concurrent_test_accuracy_mean": statistics.fmean(accs),
        "one_test_accuracy": one["test_accuracy"],
    }


def show(r: dict, n: int) -> None:
    acc = r["sequential_test_accuracy"]
    rows = [
        ("one run (train --seed 0)", r["one_seconds"], 1.0, ""),
        (
            f"sequential (train --seeds, {n} runs)",
            r["sequential_seconds"],
            r["sequential_ratio"],
            "",
        ),
        (
            f"concurrent ({n} processes)",
            r["concurrent_seconds"],
            r["concurrent_ratio"],
            f"   ({r['sequential_seconds'] / r['concurrent_seconds']:.2f}x the sequential speed)",
        ),
    ]
    for label, seconds, ratio, note in rows:
        print(f"  {label:<36}{seconds:8.1f} s {ratio:6.2f}x{note}")
    print(
        f"  test accuracy: sequential {acc['mean']:.2f} ± {acc['std']:.2f}, concurrent mean "
        f"{r['concurrent_test_accuracy_mean']:.2f}"
    )
    differ = r["digests_differ"]
    print(
        f"  weights: {r['digests_equal']} of {n} concurrent seeds equal their sequential run"
        + (f"; differ: {differ}" if differ else "")
    )


def main() -> int:
    args = parse_args()
    import torch  # after parsing: --help answers without it

    from cifar_resnet.data import load_data
    from cifar_resnet.errors import CifarResnetError
    from cifar_resnet.seeds import parse_seeds

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(
            "no CUDA GPU is visible: this benchmark times seeds sharing one GPU; "
            "pass --device cpu (with --epochs 1 --limit-train 256) for a smoke test of the script"
        )
    try:
        seeds = parse_seeds(args.seeds)
        load_data(args.data, cache_dir=args.cache_dir, progress=False)  # the cache warm
    except CifarResnetError as e:
        fail(str(e))
    out = Path(args.out or tempfile.mkdtemp(prefix="seeds-gpu-"))
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    mode = "deterministic" if args.deterministic else "default mode (not deterministic)"
    results = []
    for preset in args.presets.split(","):
        print(f"{preset} preset, {args.epochs} epochs, seeds {args.seeds}, {device}, {mode}")
        results.append(bench_preset(args, preset, seeds, out / preset))
        show(results[-1], len(seeds))
    (out / "results.json").write_text(
        json.dumps({"args": vars(args), "results": results}, indent=2)
    )
    print(f"results in {out / 'results.json'}")
    if args.deterministic and any(r["digests_differ"] for r in results):
        print("FAIL: a concurrent seed's weights differ from its sequential run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
