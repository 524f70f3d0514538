"""How close a time-budget run ends to its budget beside a CPU hog.

    .venv/bin/python bench/budget_under_load.py [--data DIR] [--budget 2m] [--runs 3] [--hogs 1]
        [--varying 0]

Runs ``cifar-resnet train --preset fast --time-budget BUDGET`` RUNS times, one after another,
each beside HOGS busy-looping processes and VARYING on-and-off ones (each busy for a random
0.5-4 s, then idle for a random 0.5-4 s, seeded), all started with it and stopped when it
ends, and prints
each run's end (``summary.json``'s ``seconds``, counted from the command's start, as the
budget is) against the budget, its steps against its plan, the torch threads it changed to
beside the load (``CPU threads:`` lines), and the CPU it ran on. The runs
go into a temporary folder; the decode cache should be warm (the first decode counts).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOG = "while True: pass"
ON_AND_OFF = """import random, time
random.seed({seed})
while True:
    end = time.time() + random.uniform(0.5, 4)
    while time.time() < end:
        pass
    time.sleep(random.uniform(0.5, 4))
"""
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> str:
    """The CPU's model, its core count and the flags that decide the kernels."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = set((re.search(r"flags\s*:\s*(.*)", text) or [None, ""])[1].split())
    cores = text.count("processor\t:")
    have = [f for f in FLAGS if f in flags]
    return f"{model[1] if model else 'unknown CPU'}, {cores} logical cores, flags: {' '.join(have)}"


def one_run(data: str, budget: str, hogs: int, varying: int, out: Path, seed: int) -> dict:
    cmd = [sys.executable, "-m", "cifar_resnet", "train", "--data", data, "--out", str(out),
           "--preset", "fast", "--time-budget", budget, "--no-report"]  # fmt: skip
    load = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(hogs)]
    code = [ON_AND_OFF.format(seed=seed * 100 + i) for i in range(varying)]
    load += [subprocess.Popen([sys.executable, "-c", c]) for c in code]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        for hog in load:
            hog.kill()
            hog.wait()
    process = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"run failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    summary = json.loads((out / "summary.json").read_text())
    lines = r.stdout.splitlines()
    replans = sum("re-planned" in line for line in lines)
    threads = [line.split()[2] for line in lines if line.startswith("CPU threads: ")]
    return {**summary, "process_seconds": process, "replans_printed": replans, "threads": threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/cifar10-jpeg")
    p.add_argument("--budget", default="2m")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--hogs", type=int, default=1, help="busy-looping processes beside each run")
    p.add_argument("--varying", type=int, default=0, help="on-and-off processes beside each run")
    args = p.parse_args()
    print(f"CPU: {cpu()}")
    print(
        f"{args.runs} runs of --preset fast --time-budget {args.budget} beside {args.hogs} hog(s)"
        f" and {args.varying} on-and-off process(es)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"run{i}"
            s = one_run(args.data, args.budget, args.hogs, args.varying, out, seed=i)
            budget = s["time_budget"]
            print(
                f"run {i + 1}: ended at {s['seconds']:.1f}s of {budget:g}s "
                f"({100 * (s['seconds'] / budget - 1):+.1f}%), "
                f"process {s['process_seconds']:.1f}s, "
                f"steps {s['steps']}/{s['planned_steps']} planned, test accuracy "
                f"{s['test_accuracy']:.2f}%, {s['replans_printed']} re-plan lines, "
                f"CPU threads {' > '.join(s['threads']) or 'as torch started'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
