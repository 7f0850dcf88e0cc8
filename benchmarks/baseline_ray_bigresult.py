"""Baseline: a fresh 256 MiB numpy result from a Ray task (``ray.init(num_cpus=2)``).

Why: Ray's large-result path is its shared-memory object store: the worker
writes the array into it once and the driver maps it, read-only, without a
copy.  zmqruntime's ``get_results`` of the same array (``zr_bigresult.py``)
is judged against it (target: at least Ray's bandwidth).

Measured like ``zr_bigresult.py``: the task builds the array (untimed:
``ray.wait`` first, so the object is sealed in the store), then the clock runs
around ``ray.get(ref)`` until the array is in hand -> GB/s (``get``).  Also
shown, as the issue quoted it: ``ray.get(make.remote())`` including making
the array (``make_and_get``).  Receiver memory is measured the same way as
for zmqruntime (peak RSS increase over the array size, in this fresh process);
Ray's array is a view of shared memory, so only the pages read count.
"""

from __future__ import annotations

import time

from benchmarks import common
from benchmarks.baseline_ray import import_ray, running_ray
from benchmarks.baseline_zerocopy import FILL, NBYTES


def make_array():
    import numpy as np

    return np.full(NBYTES // 8, FILL, dtype=np.float64)


def check(arr) -> None:
    if getattr(arr, "nbytes", None) != NBYTES or arr[0] != FILL or arr[-1] != FILL:
        raise AssertionError(f"unexpected result {type(arr).__name__} {getattr(arr, 'nbytes', '?')} bytes")


def measure_big(ray) -> dict:
    make = ray.remote(make_array)
    rss_before = common.current_rss_bytes()

    def get_once() -> float:
        ref = make.remote()
        ready, _ = ray.wait([ref], timeout=60)
        if not ready:
            raise TimeoutError("the 256 MiB task did not finish within 60 s")
        t0 = time.perf_counter()
        arr = ray.get(ref, timeout=60)
        elapsed = time.perf_counter() - t0
        check(arr)
        del arr, ref
        return elapsed

    def make_and_get_once() -> float:
        t0 = time.perf_counter()
        arr = ray.get(make.remote(), timeout=60)
        elapsed = time.perf_counter() - t0
        check(arr)
        del arr
        return elapsed

    get_once()  # warmup, as the others
    n = common.scaled(5, minimum=2)
    times = [get_once() for _ in range(n)]
    result = common.transfer_summary(times, NBYTES, rss_before, common.peak_rss_bytes())
    made = common.summarize([make_and_get_once() for _ in range(n)], "ms", 1e3)
    made["gb_per_s"] = NBYTES / 1e9 / (made["median_ms"] / 1e3)
    result["make_and_get"] = made
    return result


def measure() -> dict:
    try:
        ray, _ = import_ray()
    except ImportError as exc:
        return common.not_installed("ray", exc)
    result: dict = {"version": ray.__version__}
    with running_ray(ray) as (_init_s, state):
        result["big_result"] = common.guarded(measure_big, ray)
    result["leftover_processes"] = state["leftover"]
    return result


if __name__ == "__main__":
    common.child_main(measure)
