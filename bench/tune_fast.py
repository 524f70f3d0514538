"""Tune the fast preset's CPU values with `cifar-resnet tune`, then decide on validation.

One command runs the whole protocol (BENCHMARKS.md, "Tuning the fast preset's CPU values"):

1. a study of ``--trials`` trials of ``--preset fast --device cpu --time-budget TRIAL_BUDGET``
   on a ``--val``-image validation split (`cifar-resnet tune`, the fast preset evaluates only
   at the end, so no pruner);
2. its best recipe (STUDY/best.toml) and the preset's current CPU values, each trained with
   the full ``--budget`` for ``--seeds`` seeds, alternating, side by side in one sitting, on
   the same validation split;
3. the verdict on validation against ``--margin`` (points, fixed before running): the preset
   should take the new values only if their mean wins by at least the margin;
4. then, once, the test accuracy of those same runs.

    python bench/tune_fast.py --data ../shared/data/cifar10-jpeg --out runs/tune-fast

Run it on a quiet machine: every trial and every run is timed. ``--jobs N`` runs N trials at
once on 1/N of the cores each (trials then compare with each other, not with step 2's runs).
The earlier hand-written trials of this script (issue 7 and 11) are in git history before
`tune` replaced it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SPACE = [
    "lr=0.2..1.5:log",
    "weight_decay=3e-4..3e-3:log",
    "label_smoothing=0..0.3",
    "batch_size=64|128|256",
]


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "cifar_resnet", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def train(args, out: Path, seed: int, recipe: list[str]) -> dict:
    if not (out / "summary.json").exists():
        cli("train", "--data", args.data, "--out", str(out), "--device", "cpu", "--overwrite",
            "--time-budget", args.budget, "--val-split", str(args.val), "--seed", str(seed),
            "--no-report", "--quiet", *recipe)  # fmt: skip
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/tune-fast")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--trial-budget", default="90s", help="each trial's --time-budget")
    p.add_argument("--budget", default="5m", help="step 2: each run's --time-budget")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--margin", type=float, default=0.3, help="validation points to win by")
    p.add_argument("--val", type=int, default=5000, help="validation images held out")
    p.add_argument("--jobs", type=int, default=1)
    args = p.parse_args()
    out = Path(args.out)
    study = out / "study"
    params = [a for s in SPACE for a in ("--param", s)]
    cli("tune", "--data", args.data, "--out", str(study), "--preset", "fast", "--device", "cpu",
        "--time-budget", args.trial_budget, "--trials", str(args.trials), "--val-split",
        str(args.val), "--pruner", "none", "--jobs", str(args.jobs), *params)  # fmt: skip
    recipes = {"preset": ["--preset", "fast"], "tuned": ["--config", str(study / "best.toml")]}
    runs: dict[str, list[dict]] = {name: [] for name in recipes}
    for seed in range(args.seeds):  # alternating: both see the machine as it is
        for name, recipe in recipes.items():
            runs[name].append(train(args, out / name / f"seed-{seed}", seed, recipe))
    val = {n: [r["best_val_accuracy"] for r in rs] for n, rs in runs.items()}
    for name, values in val.items():
        print(f"{name}: validation {statistics.mean(values):.2f}% (seeds: {values})")
    gain = statistics.mean(val["tuned"]) - statistics.mean(val["preset"])
    verdict = "takes" if gain >= args.margin else "does not take"
    print(f"tuned - preset: {gain:+.2f} points (margin {args.margin}): the preset {verdict} them")
    for name, rs in runs.items():  # the test set, once, afterwards
        test = [r["test_accuracy"] for r in rs]
        spread = statistics.stdev(test) if len(test) > 1 else 0.0
        print(f"{name}: test {statistics.mean(test):.2f}% ± {spread:.2f} (seeds: {test})")


if __name__ == "__main__":
    main()
