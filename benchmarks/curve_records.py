"""Curve: request latency and server memory vs retained execution records.

Why: a long-lived server remembers up to ``max_records`` finished executions.
A request about one execution (``execute``, ``status`` of one id) should cost
the same with 100 records as with 100,000, and so should ``list`` and
``status`` of all, which return the newest 1,000 by default; asking for every
record (``limit`` = all) grows with them by design (shown per record).  Memory
per record tells what ``max_records`` costs.

The server under test runs with ``--ExecutionServer.max_records`` above the
largest level.  It is filled with no-op executions (async client,
``execute_many`` batches) up to each level (100, 1,000, 10,000, 100,000); at each level:

  * ``execute``: ``execute("None")`` -> result, one at a time (median, p90);
  * ``execute_value``: the same with ``"1"`` (a value to keep: finishing it
    runs the server's result-retention check);
  * ``status``: ``get_status(id)`` of the oldest execution;
  * ``list`` / ``status_all``: ``list_executions()`` / ``get_status()`` as a
    user calls them (the newest 1,000);
  * ``list_all``: ``list_executions(limit=<all>)``, per record (O(n) by design);
  * ``ping_during_status_all_ms``: another client's ping sent while a
    ``get_status()`` of all is being served (the server answers requests
    one at a time, so an O(n) request would delay everyone);
  * ``server_rss_bytes``: the server process's VmRSS; ``bytes_per_record``
    is the slope from the first level.

"Flat" means ``execute`` and ``status`` at the last level within 1.5x of the
first.  At the last level the server is sampled with py-spy while it serves
no-op executions, and the hottest functions (inclusive share of samples) are
recorded under ``profile``: O(n) work is named, not guessed.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import common, zr_server

NOOP = "None"
if common.SMOKE:
    LEVELS = (10, 100)
else:  # --quick keeps the 100,000 level (filling it takes ~1 min): fewer samples instead
    LEVELS = (100, 1_000, 10_000, 100_000)
SAMPLES = common.sized(100 if common.QUICK else 200, 5)
LIST_SAMPLES = common.sized(5, 2)
FILL_CHUNK = 1000
BIG_TIMEOUT = 120.0  # a request over every record, on a loaded machine
FLAT = 1.5  # "flat": the last level within 1.5x of the first
PROFILE_S = common.sized(5, 1)


def fill(port: int, n: int) -> None:
    """Add ``n`` finished no-op executions (batched by the async client)."""
    from zmqruntime import AsyncExecutionClient, ExecutionClient

    info = ExecutionClient(port=port, auto_spawn=False)
    try:
        conn = info.info

        async def go() -> None:
            aclient = AsyncExecutionClient(conn)
            try:
                left = n
                while left > 0:
                    k = min(FILL_CHUNK, left)
                    ids = await asyncio.gather(*(aclient.execute(NOOP) for _ in range(k)))
                    await asyncio.gather(*(aclient.result(eid, timeout=120) for eid in ids))
                    left -= k
            finally:
                aclient.close()

        asyncio.run(go())
    finally:
        info.close()


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


EVERY = 10**9  # a list limit above any level: every record
LIST_LIMIT = 1000  # what list / status of all return by default (the newest)


def timed(fn, n: int) -> dict:
    return common.summarize(common.time_each(fn, n=n, warmup=min(5, n)), "ms", 1e3)


def ping_during(client, port: int, request) -> float:
    """A second client's ping (ms) sent while ``request`` runs: what an O(n) request costs everyone else."""
    ExecutionClient, _ = zr_server.import_api()
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(r=common.guarded(request)), daemon=True)
    with ExecutionClient(port=port, auto_spawn=False) as other:
        other.ping(timeout=BIG_TIMEOUT)
        thread.start()
        time.sleep(0.02)  # the request is in the server by now
        t0 = time.perf_counter()
        other.ping(timeout=BIG_TIMEOUT)
        elapsed = time.perf_counter() - t0
        thread.join(BIG_TIMEOUT)
    return elapsed * 1e3


def level_point(client, port: int, oldest: str, records: int, pid: int) -> dict:
    point = {
        "records": records,
        "execute": timed(lambda: zr_server.run_to_result(client, NOOP), SAMPLES),
        # an execution with a value: finishing it runs the server's result-retention check
        "execute_value": timed(lambda: zr_server.run_to_result(client, "1"), SAMPLES),
        "status": timed(lambda: client.get_status(oldest), SAMPLES),
        "status_all": common.guarded(timed, lambda: client.get_status(timeout=BIG_TIMEOUT), LIST_SAMPLES),
        "server_rss_bytes": rss_of(pid),
        "retained": len(client.list_executions(limit=EVERY, timeout=BIG_TIMEOUT)),
    }
    # list_executions() has no timeout argument: the 'list' request is timed on a
    # thread, so a server that takes longer than the client's default is reported.
    point["list"] = common.guarded(timed, lambda: common.call_with_timeout(
        client.list_executions, BIG_TIMEOUT, "list"), LIST_SAMPLES)
    point["list_all"] = common.guarded(timed, lambda: client.list_executions(limit=EVERY, timeout=BIG_TIMEOUT),
                                       LIST_SAMPLES)
    point["ping_during_status_all_ms"] = common.guarded(
        ping_during, client, port, lambda: client.get_status(timeout=BIG_TIMEOUT))
    for key in ("list", "status_all", "list_all"):
        if "median_ms" in point[key]:
            point[key]["us_per_record"] = 1e3 * point[key]["median_ms"] / max(1, point["retained"])
    return point


def profile_server(client, pid: int, code: str = NOOP) -> dict:
    """py-spy the server for PROFILE_S seconds while it serves executions of ``code``."""
    exe = shutil.which("py-spy") or str(Path(os.sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    out = Path(tempfile.mkdtemp(prefix="bench-pyspy-")) / "server.txt"
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(PROFILE_S),
                             "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + PROFILE_S + 1
        while time.monotonic() < end and proc.poll() is None:
            zr_server.run_to_result(client, code)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    if not out.exists():
        return {"error": f"py-spy wrote nothing: {err[-400:]}"}
    return hottest(out.read_text())


def hottest(collapsed: str, top: int = 12) -> dict:
    """Where the samples went, from py-spy's collapsed stacks.

    ``inclusive_pct``: share of samples with the function anywhere on the stack
    (frames on over 99 % of stacks -- ``main``, ``serve`` -- left out);
    ``self_pct``: share with the function on top (where the time is spent).
    """
    inclusive: collections.Counter = collections.Counter()
    leaf: collections.Counter = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {"samples": 0}
    pct = {f: round(100 * c / total, 1) for f, c in inclusive.most_common() if c < 0.99 * total}
    return {"samples": total,
            "inclusive_pct": dict(list(pct.items())[:top]),
            "self_pct": {f: round(100 * c / total, 1) for f, c in leaf.most_common(top)}}


def measure_curve(client, port: int) -> dict:
    pid = zr_server.server_pid(Path(os.environ["ZMQRUNTIME_RUNTIME_DIR"]), port)
    if not pid:
        raise RuntimeError("no server pid in the connection file")
    oldest = client.execute(NOOP)
    client.wait(oldest, timeout=30)
    points, have = [], 1
    for level in LEVELS:
        if level > have:
            fill(port, level - have)
            have = level
        points.append(level_point(client, port, oldest, level, pid))
        have += SAMPLES + 5  # the execute samples are records too
    first, last = points[0], points[-1]
    slope = (last["server_rss_bytes"] - first["server_rss_bytes"]) / max(1, last["retained"] - first["retained"])
    growth = {k: last[k]["median_ms"] / first[k]["median_ms"]
              for k in ("execute", "execute_value", "status")
              if "median_ms" in last[k] and "median_ms" in first[k]}
    # list / status of all return up to LIST_LIMIT records: flat means from the first level
    # that fills a reply (below it they return fewer records, so they are cheaper).
    full = next((p for p in points if p["retained"] >= LIST_LIMIT), first)
    growth.update({k: last[k]["median_ms"] / full[k]["median_ms"] for k in ("list", "status_all")
                   if "median_ms" in last[k] and "median_ms" in full[k]})
    out_full_level = full["records"]
    out = {"levels": list(LEVELS), "points": points, "bytes_per_record": slope, "growth": growth,
           "list_growth_from": out_full_level}
    out["flat"] = growth["execute"] <= FLAT and growth["status"] <= FLAT
    out["execute_p90_growth"] = last["execute"]["p90_ms"] / first["execute"]["p90_ms"]
    if not common.SMOKE:  # at the last level: where the server's time goes, flat or not
        out["profile"] = common.guarded(profile_server, client, pid)
        out["profile_value"] = common.guarded(profile_server, client, pid, "1")
    return out


def measure() -> dict:
    return zr_server.measure_curve(measure_curve, (f"--ExecutionServer.max_records={LEVELS[-1] * 2 + 10_000}",))


if __name__ == "__main__":
    common.child_main(measure)
