"""Side-by-side training throughput: the seed reference program vs cifar-resnet.

Run under the benchmark environment (bench/setup_env.sh builds it), so that both programs use
the same torch build:

    bash bench/setup_env.sh
    .bench-venv/bin/python bench/throughput.py --data /work/shared/data/cifar10-jpeg \
        [--steps 60] [--repeats 3] [--device cpu|cuda] [--threads N] [--ref-workers 0 2]

One run, same device, data, model (``seed``) and batch size (128):

1. times /work/shared/reference/seed_reference.py (``--epochs 1 --max-steps N --no-eval``;
   it prints ``images/s: X`` last) and cifar-resnet's own training loop for the same N steps
   (bench/_ours_steps.py), alternating reference / ours ``--repeats`` times, each in a fresh
   process; prints each median and the ratio ours / reference;
2. the step-only ceiling: a fixed in-memory batch, no loader, for fp32/bf16 x
   contiguous/channels_last, and fp32 with torch.compile;
3. the evaluation pass (cifar_resnet.evaluate.evaluate, 10k test images, batch 1000);
4. the machine: CPU/GPU model, cores, torch version, threads, native bf16, 1024x1024 matmul
   GFLOP/s, and the fraction of the fp32 matmul rate a training step reaches.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_ours_steps.py"
DEFAULT_REFERENCE = "/work/shared/reference/seed_reference.py"
IPS = re.compile(r"^images/s:\s*([0-9.eE+-]+)\s*$")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def run(cmd: list[str], env: dict[str, str], label: str, timeout: float) -> tuple[str, float]:
    """Run ``cmd``; return (stdout, wall seconds). Exit on failure with its output."""
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(
            f"{label} failed (exit {p.returncode}): {' '.join(cmd)}\n"
            f"--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}"
        )
    return p.stdout, wall


def last_ips(stdout: str, label: str) -> float:
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    m = IPS.match(lines[-1]) if lines else None
    if not m:
        sys.exit(f"{label}: the last line is not 'images/s: X':\n{stdout[-2000:]}")
    return float(m.group(1))


def result(stdout: str, label: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    sys.exit(f"{label}: no RESULT line:\n{stdout[-2000:]}")


@dataclass
class Bench:
    """What every stage shares: the arguments, the interpreter, the environments, the
    worker's flags, and the results written by ``--json``."""

    args: argparse.Namespace
    py: str
    env: dict[str, str]
    ref_env: dict[str, str]
    common: list[str]
    ours_flags: list[str]
    out: dict = field(default_factory=dict)

    def worker(self, mode: str, *flags: str) -> dict:
        """Run bench/_ours_steps.py MODE with ``flags``; return its RESULT."""
        cmd = [self.py, str(WORKER), mode, *flags]
        return result(run(cmd, self.env, mode, self.args.timeout)[0], mode)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Seed reference vs cifar-resnet training throughput.")
    p.add_argument("--data", required=True, help="image folder DIR/train/<cls>, DIR/test/<cls>")
    p.add_argument("--steps", type=int, default=60, help="timed training steps per run")
    p.add_argument("--repeats", type=int, default=3, help="reference/ours rounds (>= 3)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for every process (0: torch's default)",
    )
    p.add_argument("--reference", default=DEFAULT_REFERENCE)
    p.add_argument(
        "--ref-workers",
        type=int,
        nargs="+",
        default=[0],
        help="reference DataLoader workers; several values time several variants "
        "(the first is the one the ratio uses; default 0, the reference's own)",
    )
    p.add_argument("--warmup", type=int, default=3, help="ours: untimed steps before timing")
    p.add_argument("--precision", default="auto", help="ours: auto|fp32|bf16")
    p.add_argument("--channels-last", default="auto", help="ours: auto|on|off")
    p.add_argument("--compile", default="auto", help="ours: auto|on|off")
    p.add_argument("--ceiling-steps", type=int, default=10, help="steps per ceiling timing")
    p.add_argument(
        "--bf16-steps",
        type=int,
        default=1,
        help="steps per ceiling timing for bf16 where the CPU emulates bf16",
    )
    p.add_argument(
        "--compile-layouts",
        nargs="*",
        default=["contiguous"],
        choices=["contiguous", "channels_last"],
        help="layouts of the fp32 torch.compile ceiling rows (none: skip compile)",
    )
    p.add_argument("--skip", nargs="*", default=[], choices=["ab", "ceiling", "eval", "machine"])
    p.add_argument(
        "--cache",
        default=os.environ.get("CIFAR_RESNET_CACHE")
        or os.path.join(tempfile.gettempdir(), "cifar_resnet_bench_cache"),
        help="CIFAR_RESNET_CACHE for cifar-resnet's decoded arrays",
    )
    p.add_argument("--json", help="also write all results to this file")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    return p


def make_bench(args: argparse.Namespace) -> Bench:
    env = dict(os.environ, CIFAR_RESNET_CACHE=args.cache, PYTHONUNBUFFERED="1")
    ref_env = dict(env)
    if args.device == "cpu":
        ref_env["CUDA_VISIBLE_DEVICES"] = ""  # the reference picks CUDA whenever it sees one
    common = ["--device", args.device, "--threads", str(args.threads)]
    ours_flags = ["--precision", args.precision, "--channels-last", args.channels_last]
    ours_flags += ["--compile", args.compile]
    return Bench(args, sys.executable, env, ref_env, common, ours_flags, {"args": vars(args)})


# ----------------------------------------------------------------------------- header


def print_header(b: Bench, torch) -> None:
    args = b.args
    print("=" * 78)
    print("cifar-resnet vs seed reference: training throughput")
    print("=" * 78)
    print(f"date            {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"host            {platform.node()}  {platform.platform()}")
    print(
        f"cpu             {cpu_model()} (platform.processor(): {platform.processor() or '-'}); "
        f"{os.cpu_count()} logical cores"
    )
    if args.device == "cuda":
        print(f"gpu             {torch.cuda.get_device_name(0)}")
    print(f"python          {platform.python_version()}  ({b.py})")
    print(f"torch           {torch.__version__} (both programs, this environment)")
    try:
        import torchvision

        print(f"torchvision     {torchvision.__version__} (reference only)")
    except ImportError:
        print("torchvision     NOT INSTALLED: the reference cannot run; run bench/setup_env.sh")
    print(
        f"threads         torch.get_num_threads() = {torch.get_num_threads()}"
        f" ({'--threads ' + str(args.threads) if args.threads else 'torch default'},"
        " same in every process)"
    )
    print(f"device          {args.device}")
    print(
        f"load average    {loadavg()} (1/5/15 min) at start: other work on the machine "
        "skews every number below"
    )
    print(f"data            {args.data}; model seed; batch 128")


# ----------------------------------------------------------------------------- machine


def stage_machine(b: Bench) -> None:
    mach = b.out["machine"] = b.worker("machine", *b.common)
    cuda = b.args.device == "cuda"
    print(
        f"native bf16     {'yes' if mach['native_bf16'] else 'no'}"
        f"{'' if mach['native_bf16'] or cuda else ' (oneDNN emulates it)'}"
    )
    print(
        f"matmul {mach['matmul_size']}^2   fp32 {mach['matmul_fp32_gflops']:.1f} GFLOP/s, "
        f"bf16 {mach['matmul_bf16_gflops']:.1f} GFLOP/s"
    )
    print(
        f"seed model      {mach['forward_macs_per_image'] / 1e6:.2f} M forward conv+linear "
        f"MACs/image -> {mach['train_flops_per_image'] / 1e6:.1f} MFLOP/image per training "
        "step (2 x MACs x 3 for forward+backward)"
    )


# ----------------------------------------------------------------------------- A/B


def print_ab_plan(args: argparse.Namespace) -> None:
    print("-" * 78)
    print(
        f"A/B: {args.steps} training steps per run, {args.repeats} rounds, each run a fresh process"
    )
    print(
        f"  reference: {args.reference} --epochs 1 --max-steps {args.steps} --no-eval --workers W"
    )
    print(
        "             its own images/s: timed over its train() loop from the first step "
        "(no warm-up),"
    )
    print(
        "             torchvision DataLoader decoding the JPEGs with PIL each step "
        "(workers 0 = in the training process)"
    )
    print(
        f"  ours:      bench/_ours_steps.py train: cifar_resnet.loop.train_steps, "
        f"{args.warmup} untimed warm-up steps,"
    )
    print(
        f"             then {args.steps} timed steps including the DeviceLoader "
        "(arrays decoded once, from the cache; loading untimed);"
    )
    print(
        "             'cold' = all warm-up + timed steps from the first, as the reference "
        "times itself"
    )


def warm_cache(b: Bench) -> None:
    """Decode the data into cifar-resnet's cache (the first decode takes tens of seconds)."""
    t0 = time.perf_counter()
    code = "import sys; from cifar_resnet.data import load_data; load_data(sys.argv[1])"
    run([b.py, "-c", code, b.args.data], b.env, "cache warm-up", b.args.timeout)
    print(
        f"  (cifar-resnet decode cache {b.args.cache} ready in "
        f"{time.perf_counter() - t0:.1f}s; untimed)"
    )


def reference_run(b: Bench, rnd: int, workers: int) -> float:
    args = b.args
    cmd = [b.py, args.reference, "--data", args.data, "--epochs", "1"]
    cmd += ["--max-steps", str(args.steps), "--no-eval", "--workers", str(workers)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    stdout, wall = run(cmd, b.ref_env, "reference", args.timeout)
    ips = last_ips(stdout, "reference")
    print(
        f"  round {rnd}  A reference (workers {workers}): {ips:8.1f} images/s   "
        f"(process {wall:5.1f}s, load {loadavg()})",
        flush=True,
    )
    return ips


def ours_run(b: Bench, rnd: int) -> tuple[float, dict]:
    args = b.args
    cmd = [b.py, str(WORKER), "train", "--data", args.data, "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), *b.common, *b.ours_flags]
    stdout, wall = run(cmd, b.env, "ours", args.timeout)
    ips, r = last_ips(stdout, "ours"), result(stdout, "ours")
    print(
        f"  round {rnd}  B ours ({r['precision']}"
        f"{', channels_last' if r['channels_last'] else ''}"
        f"{', compiled' if r['compile'] else ''}"
        f"{', CUDA graph' if r.get('cuda_graph') else ''}):"
        f" {ips:8.1f} images/s   (cold {r['cold_images_per_s']:.1f}; process "
        f"{wall:5.1f}s, load {loadavg()})",
        flush=True,
    )
    return ips, r


def print_ab_summary(b: Bench, ref_ips: dict[int, list[float]], ours_ips, ours_cold) -> float:
    """The medians and ratios; returns the headline ratio (against the first workers)."""
    workers = b.args.ref_workers
    med_ours = statistics.median(ours_ips)
    print()
    for w in workers:
        print(
            f"  median reference (workers {w}): {statistics.median(ref_ips[w]):8.1f} images/s"
            f"   runs {', '.join(f'{v:.1f}' for v in ref_ips[w])}"
        )
    print(
        f"  median ours:                  {med_ours:8.1f} images/s   runs "
        f"{', '.join(f'{v:.1f}' for v in ours_ips)}"
    )
    print(f"  median ours, cold:            {statistics.median(ours_cold):8.1f} images/s")
    for w in workers:
        ratio = med_ours / statistics.median(ref_ips[w])
        print(
            f"  ratio ours / reference (workers {w}): {ratio:.2f}x"
            f"{'   <- headline' if w == workers[0] else ''}"
        )
    return med_ours / statistics.median(ref_ips[workers[0]])


def stage_ab(b: Bench) -> None:
    print_ab_plan(b.args)
    warm_cache(b)
    ref_ips: dict[int, list[float]] = {w: [] for w in b.args.ref_workers}
    ours_ips, ours_cold, ours_rows = [], [], []
    for rnd in range(1, b.args.repeats + 1):
        for w in b.args.ref_workers:
            ref_ips[w].append(reference_run(b, rnd, w))
        ips, r = ours_run(b, rnd)
        ours_ips.append(ips)
        ours_cold.append(r["cold_images_per_s"])
        ours_rows.append(r)
    ratio = print_ab_summary(b, ref_ips, ours_ips, ours_cold)
    b.out["ab"] = {
        "reference": {str(w): v for w, v in ref_ips.items()},
        "ours": ours_ips,
        "ours_cold": ours_cold,
        "ours_runs": ours_rows,
        "ratio": ratio,
    }
    print()


# ----------------------------------------------------------------------------- ceiling


def ceiling_row(row: dict, mach: dict | None) -> str:
    frac = ""
    if mach:
        rate = row["images_per_s"] * mach["train_flops_per_image"] / 1e9
        frac = f"{100 * rate / mach['matmul_fp32_gflops']:.1f}%"
    note = f"{row['steps']} step(s)/timing"
    if row["emulated_bf16"]:
        note += ", bf16 emulated (not native)"
    if row.get("cuda_graph"):
        note += ", CUDA graph"
    if row["compile"]:
        note += f", compile+warm-up {row['warmup_s']:.0f}s"
    return (
        f"  {row['precision']:<10}{row['layout']:<15}"
        f"{'on' if row['compile'] else 'off':<9}{row['images_per_s']:>10.1f}"
        f"{frac:>16}  {note}"
    )


def stage_ceiling(b: Bench) -> None:
    args = b.args
    print("-" * 78)
    print(
        f"step-only ceiling: fixed in-memory batch of 128, no loader; "
        f"cifar_resnet.step.train_step (lr, forward, fp32 loss, "
        f"backward, SGD); median of 3 timings of {args.ceiling_steps} steps"
    )
    flags = [*b.common, "--steps", str(args.ceiling_steps), "--bf16-steps", str(args.bf16_steps)]
    flags += ["--repeats", "3"]
    layouts = args.compile_layouts
    flags += ["--compile-layouts", *layouts] if layouts else ["--no-compile"]
    ceil = b.out["ceiling"] = b.worker("ceiling", *flags)
    print(
        f"  {'precision':<10}{'layout':<15}{'compile':<9}{'images/s':>10}"
        f"{'of fp32 matmul':>16}  note"
    )
    for row in ceil["rows"]:
        print(ceiling_row(row, b.out.get("machine")))
    print("  (% of fp32 matmul: the step's model FLOP rate over the fp32 1024^2 matmul rate)")
    print()


# ----------------------------------------------------------------------------- eval


def stage_eval(b: Bench) -> None:
    print("-" * 78)
    flags = ["--data", b.args.data, "--repeats", "3", *b.common, *b.ours_flags]
    ev = b.out["eval"] = b.worker("eval", *flags)
    print(
        f"evaluation pass: cifar_resnet.evaluate.evaluate on {ev['images']} test images, "
        f"batch {ev['eval_batch_size']}, {ev['precision']}"
        f"{', channels_last' if ev['channels_last'] else ''}: "
        f"{ev['images_per_s']:.1f} images/s (median of 3; "
        f"{', '.join(f'{v:.0f}' for v in ev['all'])})"
    )
    print()


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        p.error("--steps and --repeats must be positive")

    import torch  # after argument parsing: --help stays fast

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU visible to this torch build")
    if args.threads:
        torch.set_num_threads(args.threads)
    b = make_bench(args)
    t_start = time.perf_counter()
    print_header(b, torch)
    if "machine" not in args.skip:
        stage_machine(b)
    print()
    stages = {"ab": stage_ab, "ceiling": stage_ceiling, "eval": stage_eval}
    for name, stage in stages.items():
        if name not in args.skip:
            stage(b)
    print("-" * 78)
    print(f"total {time.perf_counter() - t_start:.0f}s; load average at end {loadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(b.out, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
