"""The CIFAR-10 speed record holders side by side with ours, on one GPU, in one run.

Three programs on the same decoded arrays (``cifar_resnet.data.load_data`` of ``--data``):

    airbench94        ../shared/peers/airbench/airbench94.py, ``main(run)``
    airbench94_muon   ../shared/peers/airbench/airbench94_muon.py, ``main(run, model)`` on a
                      model built and compiled once, as its ``__main__`` does
    cifar-resnet fast ``cifar_resnet.train.fit`` with the ``--preset fast`` values

airbench reads ``cifar10/train.pt`` and ``cifar10/test.pt`` under its working directory; they
are written from the same arrays into ``--work`` (peers/README.md gives the format). Each
program has one untimed warm-up run, then ``--runs`` warm runs in this process, timed the
way airbench times itself: CUDA-synchronised training plus the final test-time-augmented
evaluation (airbench's own time column, caught from its final log line; ours: the summary's
``train_seconds`` plus the last epoch's evaluation, from metrics.csv; ``fit``'s whole time,
set-up and checkpoints included, is reported too). Then each program once more as a whole
command, one subprocess timed from spawn to exit (``python -c`` importing the airbench file
and training once; ``python -m cifar_resnet train --preset fast``, i.e. ``cifar-resnet
train``). A table of mean ± std per program is printed and written as JSON to ``--out``.

The device machine gets only the repository and what its run carries: pack first
(``bench/pack_data.py pack`` also copies the two airbench files into .gpudata/airbench):

    python bench/pack_data.py pack ../shared/data/cifar10-jpeg .gpudata/cifar10-jpeg.npz
    STAGES=record bash bench/gpu_check.sh                     # on the GPU, carry .gpudata
    python bench/record_holders.py --data /tmp/cifar10-jpeg   # or directly
    python bench/record_holders.py --device cpu --epochs 1 --runs 2 --data DIR  # smoke, ours

``--data`` is an image folder (anything ``load_data`` reads) or a .npz packed by
pack_data.py, unpacked once into ``--work``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEERS = ("airbench94", "airbench94_muon")
OURS = "cifar-resnet fast"
DEFAULT_DATA = ROOT / ".gpudata" / "cifar10-jpeg.npz"
DEFAULT_PEERS = ROOT / ".gpudata" / "airbench"
DEFAULT_WORK = Path("/tmp/record-holders")
WARMUP_SEED = 1000  # our untimed warm-up run; the timed runs use seeds 0..runs-1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="warm runs per program (default: 5)")
    p.add_argument(
        "--process-runs", type=int, default=1, help="whole-command runs per program (default: 1)"
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help="image folder or .npz (%(default)s)")
    p.add_argument("--peers", default=str(DEFAULT_PEERS), help="airbench files (%(default)s)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="scratch folder (%(default)s)")
    p.add_argument("--out", help="the JSON results (default: WORK/results.json)")
    p.add_argument("--skip-peers", action="store_true", help="time ours only")
    p.add_argument(
        "--device", default="cuda", help="cuda, cuda:N, or cpu (ours only: a smoke test)"
    )
    p.add_argument("--epochs", type=int, help="override the fast preset's epochs (smoke tests)")
    p.add_argument(
        "--muon-compile",
        default="default",
        help="torch.compile mode of airbench94_muon's model (upstream: max-autotune, minutes "
        "of autotuning; default: %(default)s, as peers/README.md's measurement)",
    )
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="write airbench's cifar10/train.pt and test.pt under --work and stop (no GPU needed)",
    )
    args = p.parse_args(argv)
    if args.runs < 1 or args.process_runs < 0:
        p.error("--runs must be at least 1 and --process-runs at least 0")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be at least 1")
    args.work = Path(args.work).resolve()
    args.out = Path(args.out) if args.out else args.work / "results.json"
    return args


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def check_device(name: str):
    """The torch device; a one-line error when a GPU is asked for and none is visible."""
    import torch

    from cifar_resnet.runtime import resolve_device

    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        fail(f"unknown device {name!r}; valid devices: cuda, cuda:N, cpu")
    if name != "cpu" and not torch.cuda.is_available():
        fail(
            f"--device {name}: no CUDA GPU is visible here; the record holders run only on a "
            "GPU (pass --device cpu to smoke-test our part alone)"
        )
    return resolve_device(name)


def peer_files(args, dev) -> dict[str, Path]:
    """{name: path} of the airbench files to run; empty (with a line saying why) if none."""
    if args.skip_peers:
        print("airbench94, airbench94_muon: skipped (--skip-peers)")
        return {}
    if dev.type != "cuda":
        print(f"airbench94, airbench94_muon: skipped on {dev} (they need CUDA); ours only")
        return {}
    folder = Path(args.peers)
    files = {name: folder / f"{name}.py" for name in PEERS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        fail(
            f"{', '.join(missing)} not found: pack them (bench/pack_data.py pack ...), pass "
            "--peers DIR, or --skip-peers"
        )
    if importlib.util.find_spec("torchvision") is None:
        fail("airbench imports torchvision, which is not installed; or pass --skip-peers")
    return files


def data_folder(args) -> str:
    """What ``load_data`` reads: ``--data``, or the packed .npz unpacked once into --work."""
    data = Path(args.data)
    if data.suffix != ".npz":
        return args.data
    if not data.is_file():
        fail(f"--data {data}: no such packed file (bench/pack_data.py pack makes it)")
    folder = args.work / data.stem
    stamp = f"{data.resolve()} {data.stat().st_size} {data.stat().st_mtime_ns}"
    marker = folder / ".unpacked-from"
    if not (marker.is_file() and marker.read_text() == stamp):
        sys.path.insert(0, str(Path(__file__).parent))
        from pack_data import unpack

        unpack(data, folder)
        marker.write_text(stamp)
    return str(folder)


def write_airbench_data(bundle, work: Path) -> Path:
    """airbench's ``cifar10/train.pt`` and ``test.pt``: {"images": uint8 (N, 32, 32, 3),
    "labels": int64 (N,), "classes": [...]} from the arrays ours trains on."""
    import torch

    side = bundle.train.images.shape[1:]
    if tuple(side) != (32, 32, 3) or len(bundle.classes) != 10:
        fail(
            f"airbench trains 10 classes of 32x32 RGB images; these are {len(bundle.classes)} "
            f"classes of {side}: pass --skip-peers"
        )
    folder = work / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", bundle.train), ("test", bundle.test)):
        data = {
            "images": torch.from_numpy(split.images.copy()),
            "labels": torch.from_numpy(split.labels.astype("int64")),
            "classes": list(bundle.classes),
        }
        torch.save(data, folder / f"{name}.pt")
    print(f"airbench data: {folder}/train.pt ({len(bundle.train)}), test.pt ({len(bundle.test)})")
    return folder


# --------------------------------------------------------------------------------------------
# Warm runs in this process


def spread(values: list[float]) -> dict | None:
    """``seeds.spread`` (mean, std, min, max, n) with the values themselves; None for none."""
    from cifar_resnet.seeds import spread as seeds_spread

    return {**seeds_spread(values), "values": values} if values else None


def final_eval_seconds(run_dir: Path) -> float:
    """The last epoch's evaluation: its wall time less its training (fast: evaluated once)."""
    from cifar_resnet.rundir import read_metrics

    rows = read_metrics(run_dir)
    before = rows[-2]["wall_seconds"] if len(rows) > 1 else 0.0
    last = rows[-1]
    return last["wall_seconds"] - before - last["epoch_seconds"]


def ours_once(args, bundle, dev, seed: int) -> dict:
    """One ``fit`` of the fast preset (its device's values, --epochs over them)."""
    import torch

    from cifar_resnet.config import resolve_config
    from cifar_resnet.train import fit

    flags = {"seed": seed, **({"epochs": args.epochs} if args.epochs else {})}
    _, config = resolve_config("fast", None, flags, device_type=dev.type)
    out = args.work / "ours" / f"seed-{seed}"
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    s = fit(
        config,
        bundle,
        out,
        preset="fast",
        device=str(dev),
        overwrite=True,
        quiet=True,
        progress=False,
    )
    eval_s = final_eval_seconds(out)
    return {
        "seed": seed,
        "accuracy": s["test_accuracy"],
        "seconds": s["train_seconds"] + eval_s,
        "train_seconds": s["train_seconds"],
        "eval_seconds": eval_s,
        "fit_seconds": s["seconds"],
        "epochs": s["epochs"],
    }


def ours_warm(args, bundle, dev, runs: list[dict]) -> None:
    """An untimed warm-up run, then ``args.runs`` timed ones appended to ``runs``."""
    ours_once(args, bundle, dev, WARMUP_SEED)
    for seed in range(args.runs):
        r = ours_once(args, bundle, dev, seed)
        print(
            f"{OURS} run {seed + 1}: {r['accuracy']:.2f}% in {r['seconds']:.2f}s "
            f"(training {r['train_seconds']:.2f}s + evaluation {r['eval_seconds']:.2f}s; "
            f"fit {r['fit_seconds']:.2f}s)"
        )
        runs.append(r)


def load_peer(name: str, path: Path):
    """The airbench file as a module (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def catch_times(module) -> list[float]:
    """airbench's own time column of each run's final log line, as the runs go."""
    times, original = [], module.print_training_details

    def wrapper(variables, is_final_entry):
        if is_final_entry:
            times.append(variables.get("total_time_seconds", variables.get("time_seconds")))
        original(variables, is_final_entry)

    module.print_training_details = wrapper
    return times


@contextlib.contextmanager
def working_dir(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def peer_trainer(name: str, module, compile_mode: str):
    """``run -> accuracy``: main(run), or main(run, model) on a model compiled once."""
    if name != "airbench94_muon":
        return module.main
    import torch

    model = module.CifarNet().cuda().to(memory_format=torch.channels_last)
    model.compile(mode=compile_mode)
    return lambda run: module.main(run, model)


def peer_warm(name: str, path: Path, args, runs: list[dict]) -> None:
    """A warm-up run (airbench's own: random labels), then ``args.runs`` timed runs appended
    to ``runs``; airbench's log lines go to WORK/<name>.log."""
    module = load_peer(name, path)
    times, shown = catch_times(module), sys.stdout
    with (
        working_dir(args.work),
        open(args.work / f"{name}.log", "w") as log,
        contextlib.redirect_stdout(log),
    ):
        train = peer_trainer(name, module, args.muon_compile)
        train("warmup")
        for i in range(args.runs):
            accuracy = 100.0 * train(i)
            runs.append({"run": i, "accuracy": accuracy, "seconds": times[-1]})
            print(f"{name} run {i + 1}: {accuracy:.2f}% in {times[-1]:.2f}s", file=shown)
            shown.flush()


# --------------------------------------------------------------------------------------------
# Whole commands, one process each

PEER_COMMAND = """\
import importlib.util, json, sys
sys.argv = [{path!r}]  # airbench94_muon reads its own source from sys.argv[0]
spec = importlib.util.spec_from_file_location({name!r}, {path!r})
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
if {muon}:
    import torch
    model = m.CifarNet().cuda().to(memory_format=torch.channels_last)
    model.compile(mode={mode!r})
    accuracy = m.main(0, model)
else:
    accuracy = m.main(0)
print(json.dumps({{"accuracy": 100 * accuracy}}))
"""


def command_of(name: str, args, dev, data: str, seed: int) -> tuple[list[str], Path]:
    """(the command line, its working directory)."""
    if name == OURS:
        out = args.work / "process" / f"seed-{seed}"
        cmd = [sys.executable, "-m", "cifar_resnet", "train", "--preset", "fast"]
        cmd += ["--data", data, "--out", str(out), "--overwrite", "--device", str(dev)]
        cmd += ["--seed", str(seed), "--quiet", "--no-report"]
        cmd += ["--epochs", str(args.epochs)] if args.epochs else []
        return cmd, ROOT
    path = str(Path(args.peers, f"{name}.py").resolve())
    muon = name == "airbench94_muon"
    code = PEER_COMMAND.format(path=path, name=name, muon=muon, mode=args.muon_compile)
    return [sys.executable, "-c", code], args.work


def process_once(name: str, args, dev, data: str, seed: int) -> dict:
    cmd, cwd = command_of(name, args, dev, data, seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"exit code {done.returncode}: {last}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    accuracy = result.get("accuracy", result.get("test_accuracy"))
    print(f"{name} as a command: {accuracy:.2f}% in {seconds:.2f}s from spawn to exit")
    return {"seed": seed, "accuracy": accuracy, "seconds": seconds}


def processes(name: str, args, dev, data: str, runs: list[dict]) -> None:
    for seed in range(args.process_runs):
        runs.append(process_once(name, args, dev, data, seed))


def guarded(name: str, what: str, fn, *args) -> tuple[list[dict], str | None]:
    """``fn(*args, runs)``'s runs, or what went wrong: one program failing (a CUDA error, a
    compile failure) must not lose the others' figures. The runs done before stay."""
    runs: list[dict] = []
    try:
        fn(*args, runs)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"{name}: {what} failed after {len(runs)} runs: {type(e).__name__}: {first}")
        return runs, f"{what}: {type(e).__name__}: {first}"
    return runs, None


# --------------------------------------------------------------------------------------------
# The table


def summarise(name: str, warm: list[dict], process: list[dict], errors: list[str]) -> dict:
    entry = {
        "program": name,
        "warm_runs": warm,
        "accuracy": spread([r["accuracy"] for r in warm]),
        "seconds": spread([r["seconds"] for r in warm]),
        "process_runs": process,
        "process_seconds": spread([r["seconds"] for r in process]),
        "errors": errors,
    }
    if name == OURS:
        entry["fit_seconds"] = spread([r["fit_seconds"] for r in warm])
    return entry


def pm(s: dict | None, digits: int = 2) -> str:
    if s is None:
        return "-"
    if len(s["values"]) == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def table(results: dict) -> str:
    head = ["program", "runs", "accuracy %", "train+TTA eval s", "fit s", "process s"]
    rows = [head]
    for e in results["programs"]:
        rows.append(
            [
                e["program"],
                str(len(e["warm_runs"])),
                pm(e["accuracy"]),
                pm(e["seconds"]),
                pm(e.get("fit_seconds")),
                pm(e["process_seconds"]),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for e in results["programs"]:
        lines += [f"{e['program']}: {error}" for error in e["errors"]]
    return "\n".join(lines)


def machine(dev) -> dict:
    import torch

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "python": sys.version.split()[0]}


def prepare(args):
    """The decoded arrays (and, unless only ours runs, airbench's files of them)."""
    from cifar_resnet.data import load_data

    args.work.mkdir(parents=True, exist_ok=True)
    data = data_folder(args)
    t0 = time.perf_counter()
    bundle = load_data(data)
    seconds = time.perf_counter() - t0
    counts = f"{len(bundle.train)} train, {len(bundle.test)} test images"
    print(f"data: {bundle.source}: {counts} ({seconds:.1f}s)")
    return data, bundle


def run_all(args, dev, data: str, bundle, peers: dict[str, Path]) -> dict:
    """Warm runs of each program in this process, then each as a whole command."""
    warm = {OURS: guarded(OURS, "warm runs", ours_warm, args, bundle, dev)}
    for name, path in peers.items():
        warm[name] = guarded(name, "warm runs", peer_warm, name, path, args)
    if dev.type == "cuda":
        import torch

        torch.cuda.empty_cache()  # the commands below get the GPU's memory
    programs = []
    for name in [*peers, OURS]:
        process = guarded(name, "command", processes, name, args, dev, data)
        errors = [e for e in (warm[name][1], process[1]) if e]
        programs.append(summarise(name, warm[name][0], process[0], errors))
    return {
        **machine(dev),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "data": bundle.source,
        "runs": args.runs,
        "epochs_override": args.epochs,
        "muon_compile": args.muon_compile if peers else None,
        "timing": "warm runs: CUDA-synchronised training + final TTA evaluation; process: "
        "spawn to exit of one whole command",
        "programs": programs,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cifar_resnet.errors import CifarResnetError

    try:
        if args.prepare_only:
            write_airbench_data(prepare(args)[1], args.work)
            return 0
        dev = check_device(args.device)
        peers = peer_files(args, dev)
        data, bundle = prepare(args)
        if peers:
            write_airbench_data(bundle, args.work)
        results = run_all(args, dev, data, bundle, peers)
    except CifarResnetError as e:
        fail(str(e), e.exit_code)
    print()
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.out}")
    return 1 if any(e["errors"] for e in results["programs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
