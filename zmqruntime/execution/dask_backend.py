"""The dask backend: sessions run as tasks on a dask.distributed cluster.

``zmqruntime serve --backend dask`` starts a ``distributed.LocalCluster``
(processes, one thread each, one per core); ``--scheduler tcp://host:8786``
connects to an existing cluster; ``--DaskBackend.cluster=module:Class`` (with
``--DaskBackend.cluster_kwargs``) builds any dask cluster object, e.g.
``dask_jobqueue.SLURMCluster``, so a batch system is configuration, not code.
Dask places and runs the tasks; the server keeps only its session scheduler
(which session's execution goes next). Nothing here schedules work itself.

Each session is *pinned* to one worker (the one with the fewest sessions when
it first runs): its namespace lives in that worker process
(``dask_task.NAMESPACES``), and every execution of the session is submitted
with ``workers=[that address]``. When the worker leaves the cluster (it died,
or was restarted to stop a task blocked in C), its sessions lose their
namespace and their next execution says ``namespace_reset``, exactly as with
a crashed local worker.

Events come back on a dask event topic of this server's, progress batched
at the source (see ``dask_task.py``); the server signs them. Results are the
task's return value: the outcome plus pickle-5 frames.

Cancel: KeyboardInterrupt in the task's thread (``Client.run`` on its
worker); a task still running ``cancel_grace_period`` later (blocked in C)
gets its worker restarted through the scheduler (``Client.restart_workers``),
so a cancelled task never keeps a worker busy.

Threads: dask calls back on its own threads (the client's event loop, the
future-callback thread); everything reaches the server through
``host.call_soon_threadsafe``. Calls that wait on the cluster run on a small
thread pool, never on the server's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import uuid
from typing import Any, Optional, Sequence

from traitlets import Any as AnyTrait
from traitlets import Dict, Float, Int, Unicode

from ..errors import ServerStartError
from .backend import BackendHost, ExecutionBackend, Job, Loss
from .worker_process import DEFAULT_SERVER_CLASS

log = logging.getLogger("zmqruntime.execution")

#: How often the worker table (addresses, threads) is refreshed from the scheduler.
REFRESH_INTERVAL = 1.0
#: Seconds a finished execution's future is kept at most when no submit takes its release along.
RELEASE_AFTER = 1.0


class DaskBackend(ExecutionBackend):
    name = "dask"
    runs_threads = True  # the dask client's event loop: a server spinning for 2 ms delayed its callbacks

    scheduler_address = Unicode("", help="An existing cluster's scheduler (tcp://host:8786); empty: start a "
                                         "LocalCluster, or use `cluster`.").tag(config=True)
    cluster = AnyTrait(None, allow_none=True,
                       help="A dask cluster object, or 'module:Class' built with cluster_kwargs "
                            "(e.g. dask_jobqueue:SLURMCluster).").tag(config=True)
    cluster_kwargs = Dict(help="Keyword arguments for `cluster` when it is 'module:Class'.").tag(config=True)
    n_workers = Int(0, help="Workers of the LocalCluster started when no scheduler is given (0: the cores).").tag(
        config=True)
    connect_timeout = Float(10.0, help="Seconds to reach the scheduler before serve fails.").tag(config=True)
    cancel_grace_period = Float(2.0, help="Seconds after the interrupt before the task's worker is "
                                          "restarted.").tag(config=True)
    kill_grace_period = Float(1.0, help="Unused by dask (the scheduler restarts workers); kept so the "
                                        "server's setting applies to every backend.").tag(config=True)
    server_class = Unicode(DEFAULT_SERVER_CLASS,
                           help="module:Class whose execute_task runs tasks on the workers.").tag(config=True)
    task_kind_classes = Dict(Unicode(), help="Extra task kinds the workers load (name -> module:Class).").tag(
        config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.host: Optional[BackendHost] = None
        self.client: Any = None
        self.own_cluster: Any = None
        self.topic = f"zmqr-{uuid.uuid4().hex[:12]}"
        self.workers: dict[str, int] = {}  # address -> threads
        self.pins: dict[str, str] = {}  # session -> worker address
        self.incarnations: dict[str, str] = {}  # session -> worker incarnation that holds its namespace
        self.running: dict[str, tuple[Any, Job, str]] = {}  # execution id -> (future, job, address)
        # Futures of finished executions, released with the next submit (or RELEASE_AFTER s later):
        # each release is a message from the dask client, which sends at most one batch per 10 ms,
        # so a release sent alone just before the next submit made that submit wait out the rest
        # of the window (a no-op took 15-17 ms against raw dask's 11).
        self.done_futures: list[Any] = []
        self.escalated: set[str] = set()
        self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="zmqruntime-dask")
        self.stopping = False
        self.error: Optional[str] = None

    # -- lifecycle ----------------------------------------------------------
    def start(self, host: BackendHost) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise ServerStartError("the dask backend needs dask.distributed: pip install 'zmqruntime[dask]'") from None
        self.host = host
        try:
            self.client = Client(self._cluster_or_address(), timeout=self.connect_timeout, set_as_default=False)
        except ServerStartError:
            raise
        except Exception as exc:  # OSError, TimeoutError, a cluster class failing to start …
            where = self.scheduler_address or "the cluster"
            raise ServerStartError(f"cannot reach the dask scheduler at {where}: {exc}") from None
        self.client.subscribe_topic(self.topic, self._on_task_event)
        self.client.subscribe_topic("all", self._on_cluster_event)
        self._refresh()
        host.call_every(RELEASE_AFTER, self._release_done)
        log.info("dask backend: scheduler %s, %d workers", self.client.scheduler.address, len(self.workers))

    def _cluster_or_address(self) -> Any:
        if self.cluster is not None and self.scheduler_address:
            raise ServerStartError("give the dask backend a scheduler address or a cluster, not both")
        if self.cluster is not None:
            if not isinstance(self.cluster, str):
                return self.cluster
            from ..options import load_class

            try:
                factory = load_class(self.cluster)
            except (ImportError, AttributeError, ValueError) as exc:
                raise ServerStartError(f"cannot import dask cluster class {self.cluster!r}: {exc}") from None
            self.own_cluster = factory(**self.cluster_kwargs)
            return self.own_cluster
        if self.scheduler_address:
            return self.scheduler_address
        from distributed import LocalCluster

        n = self.n_workers or os.cpu_count() or 1
        self.own_cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                        silence_logs=logging.WARNING)
        return self.own_cluster

    def stop(self) -> None:
        self.stopping = True
        for future, _, _ in list(self.running.values()):
            future.cancel()
        if self.client is not None:
            try:
                self.client.close(timeout=5)
            except Exception as exc:  # closing must not stop the server's shutdown
                log.warning("closing the dask client: %s", exc)
        if self.own_cluster is not None:
            try:
                self.own_cluster.close(timeout=10)
            except Exception as exc:
                log.warning("closing the dask cluster: %s", exc)
        self.pool.shutdown(wait=False)

    # -- the interface the server uses -----------------------------------------
    @property
    def capacity(self) -> Optional[int]:
        return max(1, sum(self.workers.values())) if self.workers else 1

    def submit(self, job: Job, ahead: Sequence[Job] = ()) -> bool:  # max_ahead() is 0: never given any
        address = self._pin(job.session)
        if address is None:  # the server keeps it queued until a worker joins
            self._report("the dask cluster has no workers; waiting for one to join")
            return False
        from .dask_task import run_execution

        buffers = [bytes(b.buffer) if hasattr(b, "buffer") else bytes(b) for b in job.buffers]
        future = self.client.submit(run_execution, self.topic, job.execution_id, job.session, job.task, buffers,
                                    job.seq, self.server_class, dict(self.task_kind_classes),
                                    key=f"zmqr-{job.execution_id}", workers=[address],
                                    allow_other_workers=False, pure=False, retries=0)
        self.running[job.execution_id] = (future, job, address)
        self.client.loop.add_callback(self._collect, job, future)
        self.done_futures.clear()  # their releases follow this submit in the same batch
        return True

    def _release_done(self) -> None:
        """Release finished futures no submit has taken along (their results leave the workers)."""
        if not self.stopping:
            self.done_futures.clear()

    def _report(self, message: Optional[str]) -> None:
        if message != self.error:
            self.error = message
            assert self.host is not None
            self.host.backend_error(message)

    def cancel(self, execution_id: str) -> bool:
        entry = self.running.get(execution_id)
        if entry is None or execution_id in self.escalated:
            return False
        future, job, address = entry
        self.escalated.add(execution_id)

        def interrupt() -> None:
            from .dask_task import interrupt as interrupt_task

            found = self.client.run(interrupt_task, execution_id, workers=[address]).get(address)
            if not found:  # not started on the worker yet: dask can simply drop it
                future.cancel()

        self.pool.submit(_logged(interrupt))
        assert self.host is not None
        self.host.call_later(self.cancel_grace_period, lambda: self._escalate(execution_id))
        return True

    def release_session(self, session: str) -> None:
        address = self.pins.pop(session, None)
        self.incarnations.pop(session, None)
        if address is not None:
            from .dask_task import drop_namespace

            self.pool.submit(_logged(lambda: self.client.run(drop_namespace, session, workers=[address])))

    def describe(self) -> dict[str, Any]:
        by_worker: dict[str, list[str]] = {}
        for session, address in self.pins.items():
            by_worker.setdefault(address, []).append(session)
        running = {address: eid for eid, (_, _, address) in self.running.items()}
        return {"name": self.name, "error": self.error,
                "scheduler": self.client.scheduler.address if self.client else None,
                "dashboard": getattr(self.client, "dashboard_link", None) if self.own_cluster is None else None,
                "workers": [{"address": a, "nthreads": n, "sessions": sorted(by_worker.get(a, [])),
                             "execution_id": running.get(a), "session": None, "pid": None}
                            for a, n in sorted(self.workers.items())]}

    def session_worker(self, session: str) -> Optional[dict[str, Any]]:
        address = self.pins.get(session)
        return None if address is None else {"address": address}

    def where(self, execution_id: str) -> Optional[str]:
        entry = self.running.get(execution_id)
        return None if entry is None else entry[2]

    # -- internals --------------------------------------------------------------
    def _pin(self, session: str) -> Optional[str]:
        address = self.pins.get(session)
        if address in self.workers:
            return address
        if not self.workers:
            self._refresh()
            if not self.workers:
                return None
        load = {a: 0 for a in self.workers}
        for pinned in self.pins.values():
            if pinned in load:
                load[pinned] += 1
        address = min(load, key=lambda a: (load[a], a))
        self.pins[session] = address
        return address

    def _refresh(self) -> None:
        info = self.client.scheduler_info(n_workers=-1)
        self.workers = {a: w.get("nthreads", 1) for a, w in info.get("workers", {}).items()}

    def _escalate(self, execution_id: str) -> None:
        entry = self.running.get(execution_id)
        if entry is None:
            return
        _, _, address = entry
        log.info("cancel %s: still running after %.1f s; restarting dask worker %s", execution_id,
                 self.cancel_grace_period, address)
        self.pool.submit(_logged(lambda: self.client.restart_workers([address], raise_for_error=False)))

    def _on_task_event(self, event: Any) -> None:
        """Client loop thread: an event a task logged on our topic."""
        _, msg = event
        assert self.host is not None
        host = self.host
        host.call_soon_threadsafe(lambda: host.backend_event(msg["id"], msg["type"], msg["content"]))

    def _on_cluster_event(self, event: Any) -> None:
        """Client loop thread: workers joining and leaving."""
        _, msg = event
        if not isinstance(msg, dict) or msg.get("action") not in ("add-worker", "remove-worker"):
            return
        assert self.host is not None
        if msg["action"] == "remove-worker":
            self.host.call_soon_threadsafe(lambda: self._worker_left(msg["worker"]))
        else:
            self.pool.submit(_logged(lambda: self._refreshed_soon()))

    def _refreshed_soon(self) -> None:
        info = self.client.scheduler_info(n_workers=-1)
        workers = {a: w.get("nthreads", 1) for a, w in info.get("workers", {}).items()}
        assert self.host is not None
        self.host.call_soon_threadsafe(lambda: self._set_workers(workers))

    def _set_workers(self, workers: dict[str, int]) -> None:
        self.workers = workers
        if workers and self.error is not None:
            self._report(None)

    def _worker_left(self, address: str) -> None:
        """Loop: a worker is gone; its sessions lost their namespaces, its executions failed."""
        assert self.host is not None
        self.workers.pop(address, None)
        if self.stopping:
            return
        lost_sessions = [s for s, a in self.pins.items() if a == address]
        for session in lost_sessions:
            del self.pins[session]
            self.incarnations.pop(session, None)
        for execution_id, (future, job, where) in list(self.running.items()):
            if where != address:
                continue
            del self.running[execution_id]
            future.cancel()
            escalated = execution_id in self.escalated
            self.escalated.discard(execution_id)
            if job.session in lost_sessions:
                lost_sessions.remove(job.session)
            how = (f"dask worker {address} was restarted" if escalated else f"dask worker {address} left the cluster")
            self.host.backend_lost(Loss(job.session, execution_id, how, escalated=escalated,
                                        detail={"worker": address}))
        for session in lost_sessions:
            self.host.backend_lost(Loss(session, None, f"dask worker {address} left the cluster",
                                        detail={"worker": address}))
        self.pool.submit(_logged(self._refreshed_soon))

    async def _collect(self, job: Job, future: Any) -> None:
        """The dask client's event loop: await the outcome there (no hop through dask's callback
        thread and back for the result), then hand it to the server's loop."""
        try:
            out = await future
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            out = {"message": _cancelled(), "frames": []}
        except Exception as exc:  # the task could not even run (unpicklable argument, worker lost …)
            out = {"message": _failed(type(exc).__name__, str(exc)), "frames": []}
        assert self.host is not None
        self.host.call_soon_threadsafe(lambda: self._finished(job, out))

    def _finished(self, job: Job, out: dict[str, Any]) -> None:
        entry = self.running.pop(job.execution_id, None)
        if entry is None:  # already reported (its worker left)
            return
        self.done_futures.append(entry[0])
        self.escalated.discard(job.execution_id)
        msg = dict(out["message"], execution_id=job.execution_id)
        msg.setdefault("seq", job.seq)
        incarnation = out.get("incarnation")
        if incarnation is not None:
            known = self.incarnations.get(job.session)
            if out.get("fresh") and known is not None:
                msg["namespace_reset"] = True  # its worker was replaced behind our back
            self.incarnations[job.session] = incarnation
        self._report_finished(job, msg, out.get("frames") or [])

    def _report_finished(self, job: Job, msg: dict[str, Any], frames: list[Any]) -> None:
        assert self.host is not None
        msg = dict(msg, execution_id=job.execution_id)
        msg.setdefault("seq", job.seq)
        self.host.backend_finished(job.execution_id, msg, frames)


def _failed(ename: str, evalue: str) -> dict[str, Any]:
    return {"type": "finished", "status": "failed", "error": {"ename": ename, "evalue": evalue, "traceback": []},
            "result": {"names": [], "digests": [], "nbytes": 0, "error": None}}


def _cancelled() -> dict[str, Any]:
    return {"type": "finished", "status": "cancelled",
            "error": {"ename": "CancelledError", "evalue": "cancelled before it started", "traceback": []},
            "result": {"names": [], "digests": [], "nbytes": 0, "error": None}}


def _logged(fn: Any) -> Any:
    """A pool job that logs its failure instead of losing it."""
    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("dask backend background call failed")
    return run
