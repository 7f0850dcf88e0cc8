"""Execution records and result retention, as the server keeps them.

A record is what ``status`` reports: enough for a subscriber that joined
late or dropped events to recover the whole state (status, latest progress,
buffered output, error, sequence number).

Retention (documented in README and docs/protocol.md): results are kept
until fetched *and* evicted, or until a limit is passed. Limits are a count
of executions, a total of result bytes and an age; when one is passed the
oldest *fetched* results go first, then the oldest unfetched ones. Evicting
a result keeps the record (status stays visible; ``results`` answers
``results_expired``). Records themselves are capped by count.

Ages are measured on the monotonic clock (``created_clock`` /
``finished_clock``), so a wall-clock jump (NTP, suspend, a user changing the
time) neither drops results early nor keeps them forever; the epoch
timestamps (``created``, ``finished``) are for display only.

Idempotent submit: a record remembers the client's ``request_id`` and a
fingerprint of the request, and the store indexes records by it, so the
index lives and dies with the records (bounded by ``max_records``).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from .. import spill
from ..protocol import FINAL_STATES, OUTPUT_KEEP_CHARS, progress_state
from .displaylog import OUTPUT_EVENTS, DisplayLog

#: Characters of each output stream kept per execution for late subscribers.
#: Relayed events kept raw before they are folded into the record.
MAX_PENDING_EVENTS = 4096


@dataclass
class ExecutionRecord:
    execution_id: str
    task: dict[str, Any]
    name: str = ""
    session: str = "default"
    status: str = "queued"
    created: float = field(default_factory=time.time)
    created_clock: float = field(default_factory=time.monotonic)
    finished_clock: Optional[float] = None
    started: Optional[float] = None
    finished: Optional[float] = None
    timeout: Optional[float] = None
    seq: int = 0
    progress: Optional[dict[str, Any]] = None
    stdout: str = ""
    stderr: str = ""
    stdout_total: int = 0  # characters ever written, so a late reader knows what it missed
    stderr_total: int = 0
    output_truncated: bool = False
    error: Optional[dict[str, Any]] = None
    reason: Optional[str] = None
    worker_pid: Optional[int] = None
    worker: Optional[str] = None  # where it ran, in the backend's words (a pid, a dask worker address)
    namespace_reset: bool = False
    #: The seq reserved for its 'running' event when it was handed ahead to a worker (0: never was).
    ahead_seq: int = 0
    #: A cancel came while it was handed ahead: only the worker can say whether it had started.
    cancelling: bool = False
    push_frames: list[Any] = field(default_factory=list)
    push_files: list[spill.BufferFile] = field(default_factory=list)  # shared-memory pushes, deleted when final
    # idempotent submit: the client's key and what the request looked like
    request_id: Optional[str] = None
    request_fingerprint: dict[str, Any] = field(default_factory=dict)
    # results
    result_names: list[str] = field(default_factory=list)
    result_frames: list[Any] = field(default_factory=list)
    result_digests: list[Any] = field(default_factory=list)  # HMAC-SHA256 scheme: bytes, Future or b"" (parts.py)
    result_digests_by: dict[str, list[Any]] = field(default_factory=dict)  # other schemes (BLAKE3), the same way
    result_files: list[spill.BufferFile] = field(default_factory=list)  # buffers held in files (spill.py)
    result_nbytes: int = 0
    result_error: Optional[str] = None
    result_json: Optional[str] = None  # the JSON form, when every value is JSON-able (json_results.py)
    results_fetched: bool = False
    results_expired: bool = False
    displays: DisplayLog = field(default_factory=DisplayLog)  # display outputs and tqdm bars
    # worker events relayed but not yet folded into the fields above
    pending_events: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: Told when the results are dropped, by whoever drops them: the store that counts them.
    on_drop: Optional[Callable[[ExecutionRecord], None]] = field(default=None, repr=False, compare=False)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def has_results(self) -> bool:
        return bool(self.result_frames)

    def drop_results(self) -> None:
        """Forget the result buffers and delete the files that held any."""
        if self.on_drop is not None:
            self.on_drop(self)
        spill.delete(self.result_files)
        self.result_files = []
        self.result_frames = []
        self.result_digests = []
        self.result_digests_by = {}
        self.result_json = None

    def drop_push(self) -> None:
        spill.delete(self.push_files)
        self.push_files = []
        self.push_frames = []

    @property
    def result_disk_bytes(self) -> int:
        """Bytes of the result held in spill files on disk (the rest is in memory or shared memory)."""
        return spill.disk_bytes(self.result_files)

    def queue_event(self, header: bytes, content: bytes) -> None:
        self.pending_events.append((header, content))
        if len(self.pending_events) >= MAX_PENDING_EVENTS:
            self.absorb_events()

    def absorb_events(self) -> None:
        """Fold queued progress/stream events into the record's state."""
        pending, self.pending_events = self.pending_events, []
        for header, raw in pending:
            content = json.loads(raw)
            msg_type = json.loads(header)["msg_type"]
            self.seq = max(self.seq, content["seq"])
            if msg_type == "progress":
                self.progress = progress_state(content)
            elif msg_type == "progress_batch":  # only the newest row matters to the record
                latest = dict(zip(content["fields"], content["events"][-1]))
                self.progress = progress_state(latest)
            elif msg_type == "stream":
                self.append_output(content["name"], content["text"], OUTPUT_KEEP_CHARS)
            elif msg_type in OUTPUT_EVENTS:
                self.displays.apply(msg_type, content)

    def append_output(self, name: str, text: str, limit: int) -> None:
        """Keep the last ``limit`` characters of each stream."""
        if name == "stdout":
            self.stdout_total += len(text)
        else:
            self.stderr_total += len(text)
        current = (self.stdout if name == "stdout" else self.stderr) + text
        if len(current) > limit:
            current = current[-limit:]
            self.output_truncated = True
        if name == "stdout":
            self.stdout = current
        else:
            self.stderr = current

    def summary(self) -> dict[str, Any]:
        """The short form used by ``list``."""
        return {
            "execution_id": self.execution_id,
            "name": self.name,
            "session": self.session,
            "kind": self.task.get("kind"),
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "progress": self.progress,
            "has_results": self.has_results,
            "result_nbytes": self.result_nbytes,
            "reason": self.reason,
        }

    def to_status(self, include_output: bool = True) -> dict[str, Any]:
        """The full form used by ``status`` (output only when asked per id)."""
        info = self.summary()
        if include_output:
            info.update(stdout=self.stdout, stderr=self.stderr)
            info.update(self.displays.to_status())
        info.update(stdout_total=self.stdout_total, stderr_total=self.stderr_total)
        info.update(
            seq=self.seq,
            timeout=self.timeout,
            output_truncated=self.output_truncated,
            error=self.error,
            worker_pid=self.worker_pid,
            worker=self.worker,
            namespace_reset=self.namespace_reset,
            result_names=self.result_names,
            result_error=self.result_error,
            results_fetched=self.results_fetched,
            results_expired=self.results_expired,
        )
        return info


class RecordStore:
    """Records by id in creation order, with the retention policy."""

    def __init__(self, max_records: int, max_results: int, max_result_bytes: int, max_result_age: float,
                 max_spill_bytes: int = 1 << 62):
        self.records: OrderedDict[str, ExecutionRecord] = OrderedDict()
        self.by_request: dict[str, str] = {}  # request_id -> execution_id, for remembered records only
        # Records that hold results, with their memory and disk bytes as held, in the order they
        # finished (each is held as it finishes), and the totals: retention looks at these, never
        # at every record, and a record leaves them when its results are dropped (``on_drop``).
        self.holding: dict[str, tuple[ExecutionRecord, int, int]] = {}
        self._held_memory = 0
        self._held_disk = 0
        self._held_fetched = 0
        # final records in the order they finished: the ones max_records may forget, oldest first
        self.final_order: dict[str, ExecutionRecord] = {}
        self.max_records = max_records
        self.max_results = max_results
        self.max_result_bytes = max_result_bytes
        self.max_result_age = max_result_age
        self.max_spill_bytes = max_spill_bytes

    def __contains__(self, exec_id: str) -> bool:
        return exec_id in self.records

    def __iter__(self) -> Iterator[ExecutionRecord]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)

    def newest_first(self) -> Iterator[ExecutionRecord]:
        return reversed(self.records.values())

    def get(self, exec_id: str) -> Optional[ExecutionRecord]:
        return self.records.get(exec_id)

    def by_request_id(self, request_id: str) -> Optional[ExecutionRecord]:
        exec_id = self.by_request.get(request_id)
        return self.records.get(exec_id) if exec_id is not None else None

    def add(self, record: ExecutionRecord) -> None:
        self.records[record.execution_id] = record
        self.hold(record)
        if record.request_id is not None:
            self.by_request[record.request_id] = record.execution_id
        if record.final:
            self.final_order[record.execution_id] = record
        self._trim_records()

    def finished(self, record: ExecutionRecord) -> None:
        """``record`` reached a final state: it may now be forgotten, oldest finished first."""
        if record.execution_id in self.records:
            self.final_order[record.execution_id] = record

    def _trim_records(self) -> None:
        """Forget the oldest finished records past ``max_records``: O(records forgotten).

        Scanning the records for finished ones cost O(n) per ``execute`` once the
        store was full of queued ones (2,000 pipelined no-ops: 200 us each).
        """
        excess = len(self.records) - self.max_records
        doomed: list[ExecutionRecord] = []
        while excess > len(doomed) and self.final_order:
            doomed.append(self.final_order.pop(next(iter(self.final_order))))
        for rec in doomed:
            del self.records[rec.execution_id]
            rec.drop_results()
            if rec.request_id is not None:
                self.by_request.pop(rec.request_id, None)

    def hold(self, record: ExecutionRecord) -> None:
        """``record`` now holds results: retention counts them until they are dropped."""
        exec_id = record.execution_id
        if not record.has_results or exec_id in self.holding:
            return
        disk = record.result_disk_bytes
        memory = record.result_nbytes - disk
        self._held_memory += memory
        self._held_disk += disk
        self._held_fetched += record.results_fetched
        newest = next(reversed(self.holding.values()), None)
        self.holding[exec_id] = (record, memory, disk)
        if newest is not None and _clock(newest[0]) > _clock(record):  # held out of finishing order: rare
            self.holding = dict(sorted(self.holding.items(), key=lambda item: _clock(item[1][0])))
        record.on_drop = self._released

    def _released(self, record: ExecutionRecord) -> None:
        held = self.holding.pop(record.execution_id, None)
        record.on_drop = None
        if held is None:
            return
        self._held_memory -= held[1]
        self._held_disk -= held[2]
        self._held_fetched -= record.results_fetched

    def mark_fetched(self, record: ExecutionRecord) -> None:
        """``record``'s results were sent to a client: they are the first to go past a limit."""
        if not record.results_fetched:
            record.results_fetched = True
            self._held_fetched += record.execution_id in self.holding

    def enforce(self, now: Optional[float] = None) -> list[str]:
        """Evict results past the limits; return the ids evicted.

        ``now`` is a ``time.monotonic()`` reading, like the records' clocks.
        Results too old go first (the oldest are first in ``holding``); then,
        while a count or byte limit is passed, the oldest fetched result that
        helps, else the oldest unfetched one. Within the limits it costs O(1):
        it runs after every execution that keeps a result (summing and sorting
        the held results each time cost 100 us at the default 100).
        """
        now = time.monotonic() if now is None else now
        evicted: list[str] = []
        while self.holding:
            oldest = next(iter(self.holding.values()))[0]
            if now - _clock(oldest) <= self.max_result_age:
                break
            self._evict(oldest, evicted)
        while True:
            victim = self._next_victim()
            if victim is None:
                return evicted
            self._evict(victim, evicted)

    def _next_victim(self) -> Optional[ExecutionRecord]:
        """The first result, fetched ones first, oldest first, whose eviction brings a passed limit down."""
        count_over = len(self.holding) > self.max_results
        memory_over = self._held_memory > self.max_result_bytes
        disk_over = self._held_disk > self.max_spill_bytes
        if not (count_over or memory_over or disk_over):
            return None
        first_unfetched = None
        for rec, memory, disk in self.holding.values():
            if not (count_over or (memory_over and memory) or (disk_over and disk)):
                continue
            if rec.results_fetched or not self._held_fetched:
                return rec
            first_unfetched = first_unfetched or rec
        return first_unfetched

    def _evict(self, rec: ExecutionRecord, evicted: list[str]) -> None:
        rec.drop_results()
        self._released(rec)  # done by drop_results (on_drop); enforce's loops must never see it again
        rec.results_expired = True
        evicted.append(rec.execution_id)


def _clock(record: ExecutionRecord) -> float:
    """When a record finished (or, not finished, was made), on the monotonic clock."""
    return record.finished_clock or record.created_clock
