"""Serial or parallel: two compiled copies of a numba function, and which one runs a call.

    serial, parallel = serial_and_parallel(fn, fastmath=True)
    chooser = Chooser(floor)
    chooser.call(work, batched, (serial, parallel), *args)    # or pick() / record() around a call

A parallel region costs a thread wake-up and a barrier.  On an idle machine
that is a few microseconds, more than a small matrix takes (measured with
`scripts/probe_parallel_threshold.py`, 2 threads, weights in cache: the
parallel copy first wins at about 2^19 weights x activations, Q8_0 and Q4_K
alike).  On a machine whose cores are all busy it is far worse: a woken
worker waits for the scheduler, and the same probe measured median parallel
calls of 0.5-2 ms against 3-240 us serial, for every size up to a 5632 x 2048
matrix.  No fixed size threshold is right for both, so:

  * below `floor` (weights x activations) a call always runs serially, untimed;
  * above it, calls are grouped into buckets (power of two of the work; one
    activation or several) and each bucket keeps the running cost per unit of
    work of both copies, runs the cheaper one and times it, and every
    `interval` calls runs the other one once (its latest time is its cost; the
    chosen copy is timed one call in TIME_EVERY, a running average).  An
    exploration that loses doubles that bucket's interval (up to `max_interval`),
    one that wins switches the bucket over and resets it.  So a busy machine
    settles on serial calls within a few dozen calls, and parallel regions come
    back soon after the load goes.

The state is per process (it describes the machine, not a model); with one
thread (NUMBA_NUM_THREADS=1) every call is serial.

Two copies of one function: wrapping it twice (`njit(cache=True)(f)` and
`njit(cache=True, parallel=True)(f)`) is not enough: numba's disk cache names
its files after the function's qualified name and keys the entries by bytecode
and signature, not by the compile flags, so the two copies would read each
other's cached machine code in the next process.  The serial copy is a renamed
clone of the function (same code object, qualified name + "_serial"): its own
cache files.
"""
from __future__ import annotations

import types as pytypes
from time import perf_counter

from numba import get_num_threads, njit

SERIAL, PARALLEL = 0, 1


def _renamed(fn, suffix: str):
    clone = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__,
                                 fn.__closure__)
    clone.__qualname__ = fn.__qualname__ + suffix
    clone.__doc__ = fn.__doc__
    return clone


def serial_and_parallel(fn, **flags):
    """(serial, parallel) numba dispatchers of `fn` (`prange` runs as `range` in the serial one),
    both `cache=True` with separate cache entries; `flags` go to both (fastmath=...)."""
    return njit(cache=True, **flags)(_renamed(fn, "_serial")), njit(cache=True, parallel=True, **flags)(fn)


class Bucket:
    """Costs (seconds per unit of work) of the serial and parallel copies in one work range."""

    __slots__ = ("best", "cost", "countdown", "exploring", "interval")

    def __init__(self, interval: int):
        self.cost = [0.0, 0.0]  # 0.0: not measured yet
        self.best = SERIAL
        self.countdown = 0  # calls until the next exploration (<= 0: the next call explores)
        self.interval = interval
        self.exploring = False


class Chooser:
    """pick(work, batched) -> (variant, bucket or None); after a call picked with a bucket,
    record(bucket, variant, seconds, work)."""

    TIME_EVERY = 4  # between explorations one call in 4 of the chosen copy is timed (a timing costs ~1 us)

    def __init__(self, floor: int, interval: int = 32, max_interval: int = 4096, alpha: float = 0.25):
        self.floor, self.base, self.max_interval, self.alpha = floor, interval, max_interval, alpha
        self._buckets: list[Bucket | None] = [None] * 140  # by 2 * work.bit_length() + batched
        self.threads = 0  # asked on the first large call (asking starts numba's thread pool)
        self._warm: set = set()  # copies already called once through call()

    def pick(self, work: int, batched: bool):
        if work < self.floor:
            return SERIAL, None
        b = self._buckets[2 * work.bit_length() + batched]
        if b is None:
            b = self._new_bucket(work, batched)
            if b is None:
                return SERIAL, None
        b.countdown -= 1
        left = b.countdown
        if left > 0:
            if left % self.TIME_EVERY:
                return b.best, None
            b.exploring = False
            return b.best, b
        b.exploring = True
        for v in (SERIAL, PARALLEL):  # measure each copy once before choosing
            if b.cost[v] == 0.0:
                return v, b
        b.countdown = b.interval
        return 1 - b.best, b

    def call(self, work: int, batched: bool, copies, *args):
        """copies[variant](*args) for the variant picked, timed when the pick asks for it (never a
        copy's first call here, which may compile)."""
        v, b = self.pick(work, batched)
        fn = copies[v]
        if b is None or fn not in self._warm:
            self._warm.add(fn)
            return fn(*args)
        t0 = perf_counter()
        out = fn(*args)
        self.record(b, v, perf_counter() - t0, work)
        return out

    def _new_bucket(self, work: int, batched: bool) -> Bucket | None:
        if self.threads == 0:
            self.threads = get_num_threads()
        if self.threads < 2:
            self.floor = 1 << 62  # one thread: every call serial, untimed
            return None
        b = self._buckets[2 * work.bit_length() + batched] = Bucket(self.base)
        return b

    def record(self, b: Bucket, variant: int, seconds: float, work: int) -> None:
        c = max(seconds / work, 1e-15)
        old = b.cost[variant]
        b.cost[variant] = c if b.exploring or old == 0.0 else old + self.alpha * (c - old)
        if b.cost[1 - variant] == 0.0:
            return
        best = SERIAL if b.cost[SERIAL] <= b.cost[PARALLEL] else PARALLEL
        if b.exploring and best == variant != b.best:  # the other copy won: switch, watch closely
            b.interval = b.countdown = self.base
        elif b.exploring and best != variant:  # it lost again: ask less often
            b.interval = b.countdown = min(2 * b.interval, self.max_interval)
        b.best = best


class Fixed:
    """A stand-in for a Chooser that always picks `variant`, untimed (tests and probes)."""

    def __init__(self, variant: int):
        self.variant = variant
        self.floor = 0 if variant == PARALLEL else 1 << 62  # row dequantization follows the same copy

    def pick(self, work: int, batched: bool):
        return self.variant, None
