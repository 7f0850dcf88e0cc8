"""Shared plumbing for every benchmark: statistics, ports, processes, memory.

Why this exists: each benchmark module runs in its own fresh Python process
(so peak-RSS figures are clean and a hang can be killed from outside), and most
of them start helper processes of their own.  The rules for that are the same
everywhere -- loopback only, a free port per run, every wait bounded, every
process reaped -- so they live here once instead of being re-typed badly in
each benchmark.

A benchmark module follows one small protocol (see ``child_main``): it prints
exactly one line ``@@BENCH-RESULT@@ <json>`` on stdout, which ``run.py``
parses.  Anything else a module prints is ignored.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

LOOPBACK = "127.0.0.1"
RESULT_MARKER = "@@BENCH-RESULT@@"
REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("BENCHMARKS_QUICK") == "1"
SMOKE = os.environ.get("BENCHMARKS_SMOKE") == "1"
# run.py splits each benchmark's samples over this many interleaved rounds.
ROUNDS = max(1, int(os.environ.get("BENCHMARKS_ROUNDS", "1") or 1))


# --------------------------------------------------------------------- sizes


def scaled(n: int, minimum: int = 1) -> int:
    """Sample count for one round: ``n`` over all rounds, a fifth with --quick.

    --smoke (the test suite's run) takes ``minimum``: it checks that every
    benchmark still runs end to end, and its figures mean nothing.
    """
    if SMOKE:
        return minimum
    n = n // 5 if QUICK else n
    return max(minimum, n // ROUNDS)


def batch_size(full: int = 500) -> int:
    """Tasks per throughput batch: the same in every round (fill level matters)."""
    return sized(full // 5 if QUICK else full, 20)


def sized(full: int, smoke: int) -> int:
    """A problem size (bytes, iterations): the real one, or a tiny one under --smoke."""
    return smoke if SMOKE else full


# --------------------------------------------------------------- statistics


def summarize(samples: Iterable[float], unit: str, scale: float) -> dict:
    """Median-centred summary of timings given in seconds.

    ``scale`` converts seconds to ``unit`` (1e6 for "us", 1e3 for "ms").
    Medians, not means: the reference machine is a noisy 2-core box.
    """
    xs = sorted(x * scale for x in samples)
    if not xs:
        raise ValueError("no samples")
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return {
        f"median_{unit}": statistics.median(xs),
        f"p10_{unit}": q(0.10),
        f"p90_{unit}": q(0.90),
        f"min_{unit}": xs[0],
        "n": len(xs),
    }


def time_each(fn: Callable[[], object], n: int, warmup: int) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``n`` times timed (seconds)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def time_alternating(calls: list[Callable[[], object]], sizes: Iterable[int], warmup: int = 0,
                     block_warmup: int = 0) -> list[list[float]]:
    """Time ``calls`` side by side: each warmed up ``warmup`` times, then one block of each per entry of
    ``sizes`` (that many samples, after ``block_warmup`` untimed), in alternating order (A B, B A, ...)
    so a slow stretch of the machine falls on every side alike. One list of seconds per call."""
    samples: list[list[float]] = [[] for _ in calls]
    for fn in calls:
        time_each(fn, n=0, warmup=warmup)
    indexed = list(enumerate(calls))
    for block, size in enumerate(sizes):
        for i, fn in indexed if block % 2 == 0 else indexed[::-1]:
            samples[i] += time_each(fn, n=size, warmup=block_warmup)
    return samples


def throughput(batch: Callable[[int], object], n_tasks: int, reps: int) -> dict:
    """Median tasks/s of ``batch(n_tasks)`` (submit all, then wait all), after one untimed
    batch of the same size, on every side alike: zmqruntime's first full batch ran 30-40 %
    slower than the next ones (the peers' did not), and a steady state is what is compared."""
    batch(n_tasks)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        batch(n_tasks)
        rates.append(n_tasks / (time.perf_counter() - t0))
    return {
        "tasks_per_s": statistics.median(rates),
        "samples_tasks_per_s": [round(r, 1) for r in rates],
        "tasks_per_batch": n_tasks,
    }


# -------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def free_port_pair(offset: int = 1000, attempts: int = 200) -> int:
    """A port P with P and P + offset both free (zmqruntime's data/control pair)."""
    for _ in range(attempts):
        p = free_port()
        if p + offset < 65536 and port_is_free(p + offset):
            return p
    raise RuntimeError(f"no free port pair (P, P+{offset}) found on {LOOPBACK}")


# ---------------------------------------------------------------- processes


def python_env(extra: dict | None = None) -> dict:
    """Environment for child Pythons: repo importable, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def spawn_python(args: list[str], env: dict | None = None, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE) -> subprocess.Popen:
    """Start ``python <args>`` from the repo root, in its own process group.

    Its own group lets ``reap`` take down anything it forked too.
    """
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO_ROOT, env=env or python_env(),
        stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
        start_new_session=True, text=True)


def read_line(proc: subprocess.Popen, timeout: float, prefix: str) -> str:
    """Wait (bounded) for a stdout line starting with ``prefix``; return the rest.

    Reads the pipe's file descriptor directly (not ``readline``) so that
    ``select`` never misses a line already sitting in a Python-side buffer.
    """
    fd = proc.stdout.fileno()
    buf = getattr(proc, "_bench_buf", b"")
    deadline = time.monotonic() + timeout
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text.startswith(prefix):
                proc._bench_buf = buf
                return text[len(prefix):].strip()
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {prefix!r} line from pid {proc.pid} within {timeout}s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:  # EOF: the child died before saying it was ready
            try:
                rc = proc.wait(5)
            except subprocess.TimeoutExpired:
                rc = None
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"pid {proc.pid} exited (rc={rc}) before "
                               f"{prefix!r}: {err[-2000:]}")
        buf += chunk


def reap(proc: subprocess.Popen | None, grace: float = 3.0) -> None:
    """Stop a process we started, and its process group: TERM, then KILL."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)  # group id == pid (start_new_session=True)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def kill_pid(pid: int, grace: float = 3.0) -> bool:
    """TERM then KILL a single pid we are responsible for; True if it was alive."""
    try:
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def call_with_timeout(fn: Callable[[], object], timeout: float, what: str):
    """Run a blocking call that has no timeout of its own, bounded by ``timeout``.

    The call runs on a daemon thread; if it overruns, TimeoutError is raised
    here and the caller's ``finally`` cleans up (the thread dies with the
    process).
    """
    import threading

    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=target, name=f"bounded:{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{what} did not finish within {timeout}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ------------------------------------------------------------------- memory


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc, no psutil needed)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """High-water RSS of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------- child-side protocol


def error_entry(exc: BaseException, prefix: str = "error") -> dict:
    return {"error": f"{prefix}: {type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8)}


def not_installed(what: str, exc: BaseException) -> dict:
    """The entry of an optional peer that is not installed: said plainly, not a crash."""
    return {"error": f"not installed: {what} ({exc}); pip install -e '.[bench]' adds it",
            "unavailable": True}


def guarded(fn: Callable[..., dict], *args, **kwargs) -> dict:
    """Run one measurement; an exception becomes an ``error`` entry, not a crash."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- a benchmark must report, not die
        return error_entry(exc)


def child_main(measure: Callable[[], dict]) -> None:
    """Entry point of a benchmark module run as ``python -m benchmarks.X``."""
    result = guarded(measure)
    sys.stdout.write(f"\n{RESULT_MARKER} {json.dumps(result, default=str)}\n")
    sys.stdout.flush()


# ------------------------------------------------------ parent-side protocol


def run_benchmark_module(module: str, timeout: float) -> dict:
    """Run ``python -m benchmarks.<module>`` with a hard timeout; return its dict."""
    proc = spawn_python(["-m", f"benchmarks.{module}"])
    t0 = time.perf_counter()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        reap(proc)
        return {"error": f"timed out after {timeout:.0f}s (process group killed)"}
    finally:
        reap(proc)
    elapsed = time.perf_counter() - t0
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
            result.setdefault("_wall_s", round(elapsed, 2))
            return result
    return {"error": f"no result line (rc={proc.returncode}); stderr tail: {err[-1500:]}"}


def touch_pages(arr) -> int:
    """Read one byte of every 4 KiB page of a numpy array: a result mapped from a shared-memory
    file is then really in hand, as one received over a socket is (its pages were written)."""
    flat = arr.reshape(-1).view("uint8")
    return int(flat[::4096].sum())


def transfer_summary(times: list, nbytes: int, rss_before: int, peak: int) -> dict:
    """Bandwidth and receiver memory of a large transfer (same measure for baseline and zmqruntime)."""
    result = summarize(times, "ms", 1e3)
    result.update(
        gb_per_s=nbytes / 1e9 / (result["median_ms"] / 1e3),
        array_bytes=nbytes,
        rss_before_bytes=rss_before,
        peak_rss_bytes=peak,
        peak_rss_increase_ratio=(peak - rss_before) / nbytes,
        peak_rss_total_ratio=peak / nbytes,
    )
    return result
