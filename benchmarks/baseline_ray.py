"""Baseline: Ray on one machine with 2 CPUs (``ray.init(num_cpus=2)``).

Why: Ray is what many users pick instead of ipyparallel or dask, and it is the
strongest of the three here: its task path is C++ and its large results sit
in a shared-memory object store that the driver maps without a copy.  The
targets are written against it (no-op >= 3x faster, pipelined >= 3x, 256 MiB
result at least Ray's, cold start <= 1/5 of ``ray.init``, cancel faster).

Measured (one ``ray.init`` per benchmark process, so per round):
  * ``startup``: wall time of ``ray.init(num_cpus=2)`` (import shown apart);
  * ``latency``: ``ray.get(noop.remote())`` one at a time -> median ms;
  * ``pipelined``: 500 ``noop.remote()`` then ``ray.get`` of each ref -> tasks/s;
  * ``map``: ``ray.get([noop.remote(i) for i in range(500)])`` -> tasks/s
    (Ray has no ``map``; a list ``ray.get`` is its batch form);
  * ``cancel``: a pure-Python busy loop, seen running (it writes its pid to a
    file), ``ray.cancel(ref)``; clock from just before the call to
    ``ray.get`` raising; and whether that worker process is still alive after;
  * ``cancel_blocked``: the same with ``time.sleep(30)`` and ``force=True``
    (Ray's way to stop a task blocked in C: it kills the worker).
The 256 MiB result lives in ``baseline_ray_bigresult.py`` (its own group, next
to the raw zero-copy baseline).

Cleanup: ``ray.shutdown()`` in ``finally``; every process Ray started is a
descendant of this one (``gcs_server``, ``raylet``, workers, agents): they are
listed before the shutdown, and any still alive after it is killed and
reported in ``leftover_processes``.  Ray's session files go to a private temp
dir, removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import common

CPUS = 2
INIT_ATTEMPTS = 3
CANCEL_TIMEOUT = 20.0
RUNNING_TIMEOUT = 20.0

BUSY_LOOP_S = 30.0


def ray_environment() -> None:
    """Quiet, local, no telemetry; set before ``import ray``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only; no token noise


def import_ray():
    """``(ray module, import seconds)``; ImportError if it is not installed."""
    ray_environment()
    t0 = time.perf_counter()
    import ray

    return ray, time.perf_counter() - t0


def descendants() -> list:
    import psutil

    return psutil.Process().children(recursive=True)


@contextlib.contextmanager
def running_ray(ray):
    """``ray.init(num_cpus=2)`` on loopback; yields (its wall time, state); shut down and reaped after.

    Ray gives its raylet a fixed 30 s to register, which a loaded 2-core
    machine can miss; a failed start is shut down, reaped, recorded in
    ``state["failed_init_s"]`` and tried again (``INIT_ATTEMPTS`` in all).
    """
    temp = tempfile.mkdtemp(prefix="bench-ray-")
    state: dict = {"leftover": [], "failed_init_s": []}
    try:
        for attempt in range(INIT_ATTEMPTS):
            t0 = time.perf_counter()
            try:
                # On the main thread (Ray's driver fails to reach its GCS when started from
                # another thread); bounded by run.py's hard timeout on this process.
                ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False,
                         _node_ip_address=common.LOOPBACK, _temp_dir=temp, configure_logging=False)
                break
            except Exception:
                state["failed_init_s"].append(time.perf_counter() - t0)
                shutdown(ray, state)
                if attempt + 1 == INIT_ATTEMPTS:
                    raise
        yield time.perf_counter() - t0, state
    finally:
        shutdown(ray, state)
        shutil.rmtree(temp, ignore_errors=True)


def shutdown(ray, state: dict) -> None:
    procs = descendants()
    with contextlib.suppress(Exception):
        common.call_with_timeout(ray.shutdown, 30, "ray.shutdown")
    state["leftover"] += reap_leftovers(procs)


def reap_leftovers(procs: list, grace: float = 5.0) -> list[str]:
    """Wait for Ray's processes to exit after shutdown; kill and name any that did not."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=grace)
    names = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            names.append(f"{p.name()}({p.pid})")
            p.kill()
    psutil.wait_procs(alive, timeout=grace)
    return names


def measure_calls(ray) -> dict:
    @ray.remote
    def noop(_=None):
        return None

    latency = common.summarize(
        common.time_each(lambda: ray.get(noop.remote(), timeout=30), n=common.scaled(500), warmup=50),
        "ms", 1e3)

    def pipelined(n: int) -> None:
        refs = [noop.remote() for _ in range(n)]
        for ref in refs:
            ray.get(ref, timeout=60)

    return {
        "latency": latency,
        "pipelined": common.throughput(pipelined, common.batch_size(), reps=3),
        "map": common.throughput(lambda n: ray.get([noop.remote(i) for i in range(n)], timeout=60),
                                 common.batch_size(), reps=3),
    }


def busy_loop(marker: str) -> int:
    Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + BUSY_LOOP_S
    i = 0
    while time.monotonic() < deadline:
        i += 1
    return i


def blocked_in_c(marker: str) -> None:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(BUSY_LOOP_S)


def wait_marker(marker: Path) -> int:
    deadline = time.monotonic() + RUNNING_TIMEOUT
    while not marker.exists() or not marker.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the task did not start within {RUNNING_TIMEOUT}s")
        time.sleep(0.002)
    return int(marker.read_text())


def cancel_once(ray, remote_fn, force: bool, workdir: Path, i: int) -> tuple[float, bool]:
    """Seconds from ``ray.cancel`` to ``ray.get`` raising; whether the worker survived."""
    import psutil

    marker = workdir / f"started-{force}-{i}"
    ref = remote_fn.remote(str(marker))
    pid = wait_marker(marker)
    time.sleep(0.05)  # well under way, not just starting (as zr_cancel.py)
    t0 = time.perf_counter()
    ray.cancel(ref, force=force)
    try:
        ray.get(ref, timeout=CANCEL_TIMEOUT)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"ray.cancel(force={force}) did not stop the task within {CANCEL_TIMEOUT}s") from None
    except (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError, KeyboardInterrupt):
        pass
    else:
        raise RuntimeError("the task finished instead of being cancelled")
    elapsed = time.perf_counter() - t0
    time.sleep(0.2)  # a killed worker needs a moment to be gone
    try:
        survived = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        survived = False
    return elapsed, survived


def measure_cancel(ray, fn, force: bool) -> dict:
    remote_fn = ray.remote(max_retries=0)(fn)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ray-cancel-"))
    try:
        samples, survived = [], []
        for i in range(common.scaled(5, minimum=2)):
            t, alive = cancel_once(ray, remote_fn, force, workdir, i)
            samples.append(t)
            survived.append(alive)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = common.summarize(samples, "ms", 1e3)
    result.update(force=force, worker_survived=sum(survived), of=len(survived))
    return result


def measure() -> dict:
    try:
        ray, import_s = import_ray()
    except ImportError as exc:
        return common.not_installed("ray", exc)
    try:
        import psutil  # noqa: F401 -- reaping Ray's processes needs it
    except ImportError as exc:
        return common.not_installed("psutil", exc)
    result: dict = {"version": ray.__version__, "cpus": CPUS}
    with running_ray(ray) as (init_s, state):
        result["startup"] = {"init_s": init_s, "import_s": import_s, "failed_init_s": state["failed_init_s"]}
        result.update(common.guarded(measure_calls, ray))
        result["cancel"] = common.guarded(measure_cancel, ray, busy_loop, False)
        result["cancel_blocked"] = common.guarded(measure_cancel, ray, blocked_in_c, True)
    result["leftover_processes"] = state["leftover"]
    return result


if __name__ == "__main__":
    common.child_main(measure)
