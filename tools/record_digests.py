"""Record the weight digests of tests/test_digests.py's runs on this machine kind.

    .venv/bin/python tools/record_digests.py [--write]

Prints the record (machine kind and the four digests); --write adds it to
tests/fixtures/digests.json, replacing a record of the same kind. Record only from a commit
whose behaviour is the recorded one (the digests of another kind still pass there).
"""

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import test_digests as t  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="add the record to the fixture")
    parser.add_argument("--note", default="", help="what machine this is, in words")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = t.make_data(root / "data")
        digests = {
            name: t.train(data, root / name, *run)["weights_sha256"] for name, run in t.RUNS.items()
        }
        run = root / "v1"
        (run / "checkpoints").mkdir(parents=True)
        with (
            gzip.open(t.FIXTURE) as src,
            open(run / "checkpoints" / "e0002-s0000004.pt", "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
        digests["v1-resume"] = t.train(data, run, "--resume", str(run))["weights_sha256"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    record = {
        "note": f"{args.note} (commit {commit.stdout.strip()})".strip(),
        "kind": t.machine_kind(),
        "digests": digests,
    }
    print(json.dumps(record, indent=2))
    if args.write:
        path = TESTS / "fixtures" / "digests.json"
        fixture = json.loads(path.read_text())
        fixture["records"] = [r for r in fixture["records"] if r["kind"] != record["kind"]] + [
            record
        ]
        path.write_text(json.dumps(fixture, indent=2) + "\n")


if __name__ == "__main__":
    main()
