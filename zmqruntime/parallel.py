"""``parallel_map``: fan a function out over many items, with one progress bar.

Inside a task it runs where the task's backend runs work: on the dask cluster
when the task is a dask task (``client.map`` through the worker's own client,
so dask places the items), else on a pool of local processes, about one per
core, separate from the session's worker, so the session's namespace stays
where it is. Functions and lambdas defined in the cell itself are pickled by
value (cloudpickle, as dask does).

Results come back in the order of ``items``; the first item that raises
raises here, with its remote traceback; progress is one bar (items done of
total); a cancel (KeyboardInterrupt in the task) stops every item, running
ones included: the local pool's processes are terminated, dask's futures
cancelled.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from typing import Any, Callable, Iterable, Optional

from .reporting import Reporter

#: The local pool, started on first use and kept (a restart costs a process start per core).
_pool: Any = None
_pool_lock = threading.Lock()
#: The longest the dask path waits for its next item without looking up (a cancel lands between waits).
DASK_POLL = 0.05


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any], *, desc: str = "parallel_map",
                 processes: Optional[int] = None) -> list[Any]:
    """``[fn(x) for x in items]``, computed in parallel; see the module docstring."""
    if not callable(fn):
        raise TypeError(f"parallel_map needs a callable, got {type(fn).__name__}")
    if not isinstance(desc, str):
        raise TypeError(f"desc must be a string, got {type(desc).__name__}")
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 1):
        raise ValueError(f"processes must be a positive int or None, got {processes!r}")
    items = list(items)
    client = _dask_client()
    if client is not None:
        return _dask_map(client, fn, items, desc)
    return _local_map(fn, items, desc, processes)


def pickle_function(fn: Callable[..., Any]) -> bytes:
    """``fn`` pickled by value where it must be; a clear error naming it when it can't be."""
    import cloudpickle

    try:
        return cloudpickle.dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(f"parallel_map: cannot send function {name} to the workers: {exc}") from None


def _call(payload: bytes, item: Any) -> Any:
    import cloudpickle

    return cloudpickle.loads(payload)(item)


def _call_pair(args: tuple[bytes, Any]) -> Any:
    return _call(*args)


def _local_map(fn: Callable[[Any], Any], items: list[Any], desc: str, processes: Optional[int]) -> list[Any]:
    global _pool
    payload = pickle_function(fn)
    if not items:
        return []
    with _pool_lock:
        if _pool is None or processes is not None:
            if _pool is not None:
                _pool.terminate()
            # spawn: a worker process has threads and sockets, which a fork would copy half-alive
            _pool = multiprocessing.get_context("spawn").Pool(processes or os.cpu_count() or 1)
        pool = _pool
    reporter = Reporter(total=len(items), desc=desc)
    results: list[Any] = []
    try:
        for value in pool.imap(_call_pair, [(payload, item) for item in items]):
            results.append(value)
            reporter.update(1)
    except BaseException:
        with _pool_lock:  # a cancel (or an error) stops the items still running: a fresh pool next time
            pool.terminate()
            if _pool is pool:
                _pool = None
        raise
    finally:
        reporter.close()
    return results


def _dask_client() -> Any:
    """The dask client of the worker running this task, if this task is a dask task."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        get_worker()
    except ValueError:
        return None
    from distributed import worker_client

    return worker_client


def _dask_map(worker_client: Any, fn: Callable[[Any], Any], items: list[Any], desc: str) -> list[Any]:
    from distributed import TimeoutError as DaskTimeout
    from distributed import wait

    payload = pickle_function(fn)
    if not items:
        return []
    reporter = Reporter(total=len(items), desc=desc)
    with worker_client() as client:  # secedes: this task's thread slot goes to the items
        futures = client.map(_call, [payload] * len(items), items, pure=False)
        try:
            pending = futures
            while pending:
                # Wakes as soon as an item ends (a fixed sleep cost each map half a
                # period at its end), and at least every DASK_POLL: a cancel's
                # KeyboardInterrupt lands between waits.
                try:
                    wait(pending, timeout=DASK_POLL, return_when="FIRST_COMPLETED")
                except DaskTimeout:
                    pass
                failed = next((f for f in pending if f.status == "error"), None)
                if failed is not None:
                    failed.result()  # raises the item's exception with its traceback
                still = [f for f in pending if not f.done()]
                if len(still) != len(pending):
                    reporter.update(len(pending) - len(still))
                pending = still
            return client.gather(futures)
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            reporter.close()
