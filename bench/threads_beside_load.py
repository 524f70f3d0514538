"""A CPU training step's time by torch thread count, alone and beside busy-looping processes.

    .venv/bin/python bench/threads_beside_load.py [--model fastnet-s] [--hogs 1] [--steps 30]

Each (load, threads) pair runs in a fresh process (``OMP_NUM_THREADS`` fixes its threads):
SGD steps of MODEL on a random batch of 128 32x32 images, channels_last, bf16 autocast where
the CPU has native bf16 (else fp32), the first 5 steps untimed. Prints the median and the
slowest step, and the CPU it ran on. What it shows: why a time budget's run gives threads
back to other work (cifar_resnet/threads.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from budget_under_load import HOG, cpu

STEP = """import statistics, sys, time, torch
from cifar_resnet.models import create_model
from cifar_resnet.runtime import resolve_precision
torch.manual_seed(0)
amp = resolve_precision("auto", torch.device("cpu"))
m = create_model(sys.argv[1], 10).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
x = torch.randn(128, 3, 32, 32).to(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,))
times = []
for _ in range(int(sys.argv[2]) + 5):
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        loss = torch.nn.functional.cross_entropy(m(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t0)
times = times[5:]
print(f"{1e3 * statistics.median(times):.0f} {1e3 * max(times):.0f} {amp}")
"""


def timed(model: str, steps: int, threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-c", STEP, model, str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    median, slowest, amp = out.split()
    return f"{threads} thread(s): median {median} ms, slowest {slowest} ms ({amp})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fastnet-s")
    p.add_argument("--hogs", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"CPU: {cpu()}")
    for hogs in (0, args.hogs):
        load = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(hogs)]
        try:
            time.sleep(0.5 if hogs else 0)
            for threads in sorted({cores, max(1, cores - hogs), 1}, reverse=True):
                print(f"beside {hogs} hog(s), {timed(args.model, args.steps, threads)}", flush=True)
        finally:
            for hog in load:
                hog.kill()
                hog.wait()


if __name__ == "__main__":
    main()
