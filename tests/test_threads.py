"""A time budget's CPU threads follow the cores other work leaves free."""

import os
import re
import time

import pytest
from conftest import busy_loops, run_cli, torch_threads_env

from cifar_resnet.threads import ThreadGovernor, busy_note, busy_seconds, governor

STAT = """cpu  100 0 50 1000 0 0 0 0 0 0
cpu0 {a} 0 {b} 500 7 1 1 2 0 0
cpu1 40 0 20 500 0 0 0 0 0 0
cpu2 900 0 0 0 0 0 0 0 0 0
intr 12345
"""


def test_busy_time_is_summed_over_the_cores_asked_for_and_unreadable_is_none():
    hz = os.sysconf("SC_CLK_TCK")
    # user + nice + system + irq + softirq + steal; idle and iowait are not busy
    assert busy_seconds(frozenset({0, 1}), STAT.format(a=10, b=5)) == pytest.approx(79 / hz)
    assert busy_seconds(frozenset({3}), STAT.format(a=10, b=5)) is None  # no such core
    assert busy_seconds(frozenset({0}), "garbage\n\n") is None
    assert busy_seconds(frozenset({0}), "cpu0 1 two 3\n") is None


class Machine:
    """A clock, the cores' busy seconds and this process's CPU seconds, moved by hand."""

    def __init__(self):
        self.now, self.busy, self.mine, self.set = 0.0, 0.0, 0.0, []

    def governor(self, most, cores):
        return ThreadGovernor(
            most,
            frozenset(range(cores)),
            read=lambda: self.busy,
            clock=lambda: self.now,
            own=lambda: self.mine,
            set_threads=self.set.append,
        )

    def second(self, others: float, mine: float):
        self.now += 1.0
        self.mine += mine
        self.busy += others + mine


def test_threads_shrink_to_the_free_cores_and_grow_back_when_they_free_up():
    m = Machine()
    g = m.governor(most=2, cores=2)
    m.second(others=0.0, mine=2.0)
    assert not g.tick() and g.threads == 2  # alone: torch's own count
    m.second(others=1.0, mine=1.0)  # a busy-looping process takes a core
    assert g.tick() and g.threads == 1 and m.set == [1]
    assert g.others == pytest.approx(1.0)
    m.now += 0.5
    m.second(others=0.0, mine=1.0)
    assert g.tick() and g.threads == 2 and m.set == [1, 2]
    m.now += 0.5  # looked at less than a second ago: no look
    assert not g.tick() and g.changes == 2


def test_with_more_cores_the_threads_keep_their_share_of_the_free_ones():
    m = Machine()
    g = m.governor(most=8, cores=16)  # torch on 8 physical cores of 16 logical
    m.second(others=4.0, mine=8.0)
    assert g.tick() and g.threads == 6  # 12 of 16 free: 6 of 8 threads
    m.second(others=16.0, mine=0.1)
    assert g.tick() and g.threads == 1  # never fewer than one
    g.restore()
    assert g.threads == 8 and m.set[-1] == 8


def test_only_a_cpu_process_whose_threads_the_user_left_to_torch_is_governed(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert governor("cpu", False) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert governor("cuda", False) is None and governor("cpu", True) is None


@pytest.mark.alone
def test_a_real_busy_process_takes_threads_away_and_gives_them_back():
    """Real /proc/stat, a real busy-looping process beside this idle one (half the cores
    busy), then none."""
    cpus = frozenset(os.sched_getaffinity(0))
    assert len(cpus) >= 2, "the governor has threads to take away only with 2 or more cores"
    chosen = []
    g = ThreadGovernor(len(cpus), cpus, set_threads=chosen.append)
    with busy_loops(len(cpus) // 2) as hogs:
        time.sleep(1.5)
        assert g.tick() and g.threads < len(cpus), g.others
        assert g.others >= 0.6 * len(hogs)
    time.sleep(1.5)
    assert g.tick() and g.threads == len(cpus), g.others
    assert len(chosen) == 2 and chosen[-1] == len(cpus)


def test_a_run_that_keeps_its_threads_is_told_when_other_work_was_busy():
    m = Machine()
    g = m.governor(most=2, cores=2)
    m.second(others=0.1, mine=2.0)
    assert busy_note(g) is None  # a quiet machine: nothing to say
    m.second(others=1.0, mine=1.0)
    note = busy_note(g)
    assert note.startswith("note: other work is keeping about 1.0 of this machine's 2 cores")
    assert "OMP_NUM_THREADS=1 in the command's environment" in note
    assert m.set == [] and g.threads == 2  # told, not changed


@pytest.mark.alone
def test_a_training_beside_a_real_busy_process_says_what_it_costs(tiny_folder, tmp_path):
    """No OMP_NUM_THREADS (pytest-xdist's workers set it): torch's own threads, one per core,
    and half the cores kept busy from before the run starts."""
    cores = len(os.sched_getaffinity(0))
    with busy_loops(cores // 2):
        time.sleep(0.5)
        args = ["train", "--data", tiny_folder, "--out", tmp_path / "run", "--epochs", 1,
                "--batch-size", 8, "--device", "cpu", "--no-report"]  # fmt: skip
        r = run_cli(*args, env=torch_threads_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stdout.splitlines() if line.startswith("note: other work")]
    assert len(notes) == 1, r.stdout
    assert int(re.search(r"OMP_NUM_THREADS=(\d+) ", notes[0])[1]) < cores, notes[0]
