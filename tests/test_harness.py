"""The test harness itself: under pytest-xdist a test marked ``alone`` runs with no other
test beside it (its bound is on the wall clock)."""

from pathlib import Path

TESTS = """
import os, time, pytest

def record(name):
    start = time.monotonic()
    time.sleep(0.3)
    with open(os.environ["SPANS"], "a") as f:
        f.write(f"{name} {start} {time.monotonic()}\\n")

@pytest.mark.alone
def test_alone_1():
    record("alone")

@pytest.mark.alone
def test_alone_2():
    record("alone")

@pytest.mark.parametrize("i", range(6))
def test_beside(i):
    record("beside")
"""


def test_a_test_marked_alone_overlaps_no_other(pytester, tmp_path, monkeypatch):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_spans=TESTS)
    pytester.makeini("[pytest]\nmarkers = alone: no test beside it\n")
    monkeypatch.setenv("SPANS", str(tmp_path / "spans"))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # this run's own, if any
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=8)
    spans = [line.split() for line in (tmp_path / "spans").read_text().splitlines()]
    spans = [(name, float(a), float(b)) for name, a, b in spans]
    assert len(spans) == 8
    beside = [(a, b) for name, a, b in spans if name == "beside"]
    assert any(a < d and c < b for a, b in beside for c, d in beside if (a, b) != (c, d))
    for name, start, end in spans:
        if name == "alone":
            others = [(a, b) for n, a, b in spans if (n, a, b) != (name, start, end)]
            assert all(b <= start or a >= end for a, b in others), (start, end, others)
