"""The serial/parallel choice of the numba mat-vec driver (runtime/threads.py)."""
from __future__ import annotations

import numpy as np
import pytest
from edgeslim.runtime.threads import PARALLEL, SERIAL, Chooser

FLOOR = 1000


def _chooser(threads: int = 2) -> Chooser:
    c = Chooser(FLOOR, interval=4, max_interval=64)
    c.threads = threads
    return c


def _run(c: Chooser, cost: dict, calls: int, work: int = 4000) -> list[int]:
    """`calls` calls whose variant v takes cost[v] seconds per unit of work; the variants picked."""
    picked = []
    for _ in range(calls):
        v, b = c.pick(work, False)
        picked.append(v)
        if b is not None:
            c.record(b, v, cost[v] * work, work)
    return picked


def test_small_work_is_serial_and_untimed():
    c = _chooser()
    assert c.pick(FLOOR - 1, False) == (SERIAL, None)
    assert c.pick(10 * FLOOR, False)[1] is not None
    assert _chooser(threads=1).pick(10 * FLOOR, False) == (SERIAL, None)


@pytest.mark.parametrize("winner", [SERIAL, PARALLEL])
def test_settles_on_the_cheaper_copy_and_explores_ever_less(winner):
    c = _chooser()
    cost = {winner: 1.0, 1 - winner: 20.0}
    picked = _run(c, cost, 400)
    assert picked[:2] == [SERIAL, PARALLEL]  # each measured once
    losers = [i for i, v in enumerate(picked) if v != winner]
    assert len(losers) <= 12  # explorations at gaps 8, 16, 32, 64, 64, ... (not one call in 4)
    gaps = np.diff(losers)
    assert (np.diff(gaps) >= 0).all() and gaps[-1] == 64  # backing off to max_interval


def test_follows_a_change_of_load():
    c = _chooser()
    _run(c, {SERIAL: 1.0, PARALLEL: 0.5}, 200)  # idle: parallel wins
    picked = _run(c, {SERIAL: 1.0, PARALLEL: 30.0}, 50)  # busy: regions wait for the scheduler
    assert picked[-10:] == [SERIAL] * 10
    picked = _run(c, {SERIAL: 1.0, PARALLEL: 0.5}, 200)  # idle again: back at the next exploration
    assert picked.index(PARALLEL) <= 4 and picked[-100:].count(PARALLEL) >= 97


def test_buckets_are_separate():
    c = _chooser()
    _run(c, {SERIAL: 1.0, PARALLEL: 9.0}, 100, work=2000)
    _run(c, {SERIAL: 9.0, PARALLEL: 1.0}, 100, work=64000)
    assert _run(c, {SERIAL: 1.0, PARALLEL: 9.0}, 3, work=2000) == [SERIAL] * 3
    assert _run(c, {SERIAL: 9.0, PARALLEL: 1.0}, 3, work=64000) == [PARALLEL] * 3


def test_serial_and_parallel_copies_have_separate_cache_entries():
    """numba keys its disk cache by qualified name and bytecode, not by compile flags."""
    from edgeslim.runtime import cpu_ops
    from edgeslim.runtime.kernels import driver

    for ser, par in [(driver._matvec_serial, driver._matvec), (cpu_ops.attend_serial, cpu_ops.attend_parallel)]:
        assert ser.py_func.__qualname__ != par.py_func.__qualname__
        assert ser.py_func.__code__ is par.py_func.__code__
        assert not ser.targetoptions.get("parallel") and par.targetoptions.get("parallel")
