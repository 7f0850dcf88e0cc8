"""The ``zmqruntime`` command line.

    zmqruntime serve                 start a server in the foreground (Ctrl-C stops it)
    zmqruntime ping                  is a server there? (identity, uptime, queue)
    zmqruntime submit FILE [--wait]  run a Python file remotely; --wait shows progress and output
    zmqruntime status [ID]           one execution in detail, or all
    zmqruntime cancel ID             cancel one execution
    zmqruntime list                  a table of executions
    zmqruntime watch [ID]            follow events live (progress bar, output)
    zmqruntime shutdown              stop the server

``serve`` also takes any configurable trait, traitlets style, e.g.
``--ExecutionServer.max_results=10 --ExecutionServer.cancel_grace_period=0.5``.

Every client command takes --port (default 7777) or --connection-file; only
``submit`` starts a server when none is running (``--no-spawn`` to refuse).
Exit codes: 0 ok, 1 the execution failed or was cancelled, 2 bad usage,
3 no server / server error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .errors import RemoteError, ServerStartError, ServerUnavailable
from .options import (  # noqa: F401 (re-exported)
    format_sessions,
    format_table,
    load_class,
    nonnegative_seconds,
    port_number,
    positive_count,
    positive_seconds,
    session_name,
)
from .transport import DEFAULT_PORT

if TYPE_CHECKING:
    from .execution.worker_process import WorkerHandle


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqruntime",
        description="Run Python remotely over ZeroMQ: start a server, submit code, watch progress, cancel, fetch results.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: zmqruntime submit job.py --wait   (starts a server on port 7777 if none is running)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def client_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="data port of the server (default 7777)")
        p.add_argument("--transport", choices=["tcp", "ipc"], default=None,
                       help="default: whichever server is registered for the port; a new one is IPC")
        p.add_argument("--name", default=None, help="IPC server name")
        p.add_argument("--connection-file", default=None, help="connect to the server described by this file")
        p.add_argument("--timeout", type=positive_seconds, default=10.0, help="request timeout in seconds (default 10)")

    p = sub.add_parser("serve", help="start a server in the foreground",
                       description="Start a server in the foreground. Any trait of ExecutionServer can also be set, "
                                   "e.g. --ExecutionServer.max_results=10 (see docs/protocol.md for retention).")
    # These flags default to None: a flag not given leaves its trait alone, so
    # --ExecutionServer.concurrency=2 (or a config value) is not overridden by a default here.
    p.add_argument("--port", type=port_number, default=None, help="data port (default 7777); control = port + offset")
    p.add_argument("--control-port-offset", type=int, default=None, help="default 1000")
    p.add_argument("--ip", default=None, help="interface to bind (default 127.0.0.1); implies --transport tcp")
    p.add_argument("--allow-public-bind", action="store_true", default=None, help="allow a non-loopback --ip")
    p.add_argument("--curve", action="store_true", default=None,
                   help="encrypt and authenticate both channels with CurveZMQ (the default for TCP; "
                        "clients pick the keys up from the connection file)")
    p.add_argument("--no-curve", dest="curve", action="store_false",
                   help="TCP without CurveZMQ: signed but NOT encrypted, and any local user can subscribe "
                        "to the data channel and read its events")
    p.add_argument("--transport", choices=["tcp", "ipc"], default=None,
                   help="default ipc (in the private runtime directory); tcp for remote use")
    p.add_argument("--name", default=None, help="IPC server name (default: the port)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="executions run at once over all sessions (default: the machine's cores)")
    p.add_argument("--backend", default=None,
                   help="where code runs: 'local' (default, worker processes) or 'dask' (see the README's Scale out)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="with --backend dask: an existing cluster's scheduler, e.g. tcp://127.0.0.1:8786 "
                        "(default: start a LocalCluster)")
    p.add_argument("--session-idle-timeout", type=positive_seconds, default=None,
                   help="seconds before an idle session's worker is released (default 1800)")
    p.add_argument("--connection-file", default=None, help="where to write the connection file")
    p.add_argument("--parent-pid", type=int, default=None, help="child mode: exit when this pid dies")
    p.add_argument("--server-class", default="", help="module:Class, an ExecutionServer subclass")
    p.add_argument("--cancel-grace-period", type=positive_seconds, default=None)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    p = sub.add_parser("ping", help="check that a server answers")
    client_opts(p)

    p = sub.add_parser("submit", help="run a Python file on the server")
    client_opts(p)
    p.add_argument("--session", default="cli", type=session_name,
                   help="the session (namespace and queue) to run in (default 'cli', shared by every submit)")
    p.add_argument("file", help="Python file to run ('-' for standard input)")
    p.add_argument("--wait", action="store_true", help="wait, showing progress and output, then print the result")
    p.add_argument("--exec-timeout", type=positive_seconds, default=None, help="cancel the execution after N seconds")
    p.add_argument("--label", default=None, help="a name for the execution")
    p.add_argument("--no-spawn", action="store_true", help="do not start a server if none is running")

    p = sub.add_parser("status", help="show one execution in detail, or all")
    client_opts(p)
    p.add_argument("id", nargs="?")
    p.add_argument("--json", action="store_true", help="print raw JSON")

    p = sub.add_parser("cancel", help="cancel an execution")
    client_opts(p)
    p.add_argument("id")

    p = sub.add_parser("list", help="list executions")
    client_opts(p)
    p.add_argument("--json", action="store_true", help="print raw JSON")
    p.add_argument("--session", default=None, type=session_name, help="only this session's executions")
    p.add_argument("--sessions", action="store_true", help="list sessions instead (as 'zmqruntime sessions')")
    p.add_argument("--limit", type=positive_count, default=None,
                   help="the newest N executions (default: the server's, 1000)")

    p = sub.add_parser("sessions", help="list sessions: worker, queue, idle time")
    client_opts(p)
    p.add_argument("--json", action="store_true", help="print raw JSON")

    p = sub.add_parser("watch", help="follow progress and output live (Ctrl-C to stop watching)")
    client_opts(p)
    p.add_argument("id", nargs="?")

    p = sub.add_parser("shutdown", help="stop the server")
    client_opts(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "serve":
        early = _start_early_worker(args, extra)  # first: it boots while the server's modules load
        return serve(args, _traitlets_config(parser, extra) if extra else None, early)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except (ServerUnavailable, ServerStartError) as exc:
        print(f"zmqruntime: {exc}", file=sys.stderr)
        return 3
    except RemoteError as exc:
        print(f"zmqruntime: server error {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


def _traitlets_config(parser: argparse.ArgumentParser, extra: list[str]) -> Any:
    """``--ExecutionServer.max_results=10`` style options, via traitlets."""
    from traitlets.config.loader import KVArgParseConfigLoader

    bad = [a for a in extra if not (a.startswith("--") and "." in a.split("=", 1)[0])]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    try:
        from .execution.dask_backend import DaskBackend
        from .execution.local import LocalBackend
        from .execution.server import ExecutionServer

        # with the classes, values are parsed by their traits' types (a Dict from JSON, …)
        return KVArgParseConfigLoader(extra, classes=[ExecutionServer, LocalBackend, DaskBackend]).load_config()
    except Exception as exc:  # traitlets raises several types for bad syntax
        parser.error(f"bad configuration option {' '.join(extra)}: {exc}")


def _start_early_worker(args: argparse.Namespace, extra: list[str]) -> Optional[WorkerHandle]:
    """The server's first spare worker, started before the server is imported (a ``WorkerHandle``).

    A cold start then waits for the slower of the two interpreters' boots, not
    for both in turn. Only for the local backend with no configuration
    options, which could change what a worker is started with (the server
    discards a worker started for other settings). None: the server starts
    its own, and reports why if it cannot.
    """
    if args.backend not in (None, "local") or args.scheduler is not None or extra:
        return None
    from .execution.worker_process import DEFAULT_SERVER_CLASS, WorkerSpec, start_worker
    from .protocol import new_key
    from .transport import runtime_dir

    try:
        return start_worker(WorkerSpec(new_key(), args.server_class or DEFAULT_SERVER_CLASS, {}, str(runtime_dir())))
    except Exception:  # an optimisation only: the server meets the same problem and reports it
        return None


def serve(args: argparse.Namespace, config: Any = None, early_worker: Optional[WorkerHandle] = None) -> int:
    """Run a server in the foreground; ``early_worker`` (``_start_early_worker``) becomes its first spare."""
    not_handed_over = [early_worker] if early_worker is not None else []
    try:
        return _serve(args, config, not_handed_over)
    finally:
        if not_handed_over:  # the server never got as far as its backend: nobody else will stop it
            from .execution.worker_process import discard_worker

            discard_worker(not_handed_over.pop())


def _serve(args: argparse.Namespace, config: Any, early_worker: list[WorkerHandle]) -> int:
    from traitlets import TraitError

    from .execution.server import ExecutionServer

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cls = load_class(args.server_class) if args.server_class else ExecutionServer
    given = dict(
        port=args.port, control_port_offset=args.control_port_offset, ip=args.ip, transport=args.transport,
        name=args.name, concurrency=args.concurrency, connection_file=args.connection_file,
        backend_class=args.backend, session_idle_timeout=args.session_idle_timeout,
        parent_pid=args.parent_pid, allow_public_bind=args.allow_public_bind, curve=args.curve,
        cancel_grace_period=args.cancel_grace_period,
        worker_server_class=args.server_class or None, key=early_worker[0].spec.key if early_worker else None,
    )
    if args.scheduler is not None:
        if args.backend not in (None, "dask"):
            print("zmqruntime serve: --scheduler goes with --backend dask", file=sys.stderr)
            return 2
        from traitlets.config import Config

        config = config if config is not None else Config()
        config.DaskBackend.scheduler_address = args.scheduler
        given["backend_class"] = "dask"
    if args.transport is None and args.ip is not None:
        given["transport"] = "tcp"  # an interface only means something for TCP
    kwargs: dict[str, Any] = {"config": config, **{k: v for k, v in given.items() if v is not None}}
    try:
        server = cls(**kwargs)
        info = server.bind()
    except (ServerStartError, ValueError, TraitError) as exc:
        print(f"zmqruntime serve: {exc}", file=sys.stderr)
        return 3
    adopt = getattr(server.backend, "adopt_spare", None)
    if early_worker and adopt is not None:
        adopt(early_worker.pop())  # the backend's from here: kept as a spare if started for its settings
    print(f"zmqruntime server pid {os.getpid()} ready: control {info.control_url}, data {info.data_url}", flush=True)
    try:
        server.serve_forever()
    except ServerStartError as exc:  # the backend could not start (an unreachable scheduler …)
        print(f"zmqruntime serve: {exc}", file=sys.stderr)
        return 3
    return 0


def _client(args: argparse.Namespace, spawn: bool = False):
    from .execution.client import ExecutionClient

    return ExecutionClient(args.port, transport=args.transport, name=args.name,
                           connection_file=args.connection_file, timeout=args.timeout, auto_spawn=spawn,
                           session=getattr(args, "session", None) if args.command == "submit" else None)


def cmd_ping(args: argparse.Namespace) -> int:
    with _client(args) as client:
        t0 = time.perf_counter()
        info = client.ping()
        rtt = (time.perf_counter() - t0) * 1e6
    print(f"server {info['server_id']} pid {info['pid']} up {info['uptime']:.1f} s, {info['transport']} "
          f"{info['control_url']}; running {len(info['running'])}, queued {info.get('queued_total', len(info['queued']))}; round trip {rtt:.0f} µs")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    if args.file == "-":
        code = sys.stdin.read()
    else:
        try:
            with open(args.file, encoding="utf-8") as fh:
                code = fh.read()
        except OSError as exc:
            print(f"zmqruntime submit: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
    with _client(args, spawn=not args.no_spawn) as client:
        exec_id = client.execute(code, name=args.label or os.path.basename(args.file), timeout=args.exec_timeout)
        print(exec_id, flush=True)
        if not args.wait:
            return 0
        return _follow(client, exec_id, show_result=True)


def _follow(client: Any, exec_id: Optional[str], show_result: bool = False) -> int:
    """Print output and a progress bar until ``exec_id`` (or Ctrl-C) is done."""
    bar = TerminalBar(sys.stderr)
    finished = threading.Event()
    final: dict[str, Any] = {}

    def on_event(event: Any) -> None:
        if event.type == "progress":
            bar.update(event.execution_id, event.content)
        elif event.type == "bar":  # a tqdm bar of the task: one row each, nested ones indented
            row = event.content
            key = f"{event.execution_id}:{row['bar']}"
            if row.get("closed") and not row.get("leave"):
                bar.remove(key)
            else:
                bar.update(key, {"done": row.get("n") or 0, "total": row.get("total"), "rate": row.get("rate") or 0,
                                 "desc": "  " * int(row.get("position") or 0) + (row.get("desc") or "")},
                           final=bool(row.get("closed")))
        elif event.type in ("display_data", "update_display_data"):
            if show_result and event.get("result"):
                return  # _report prints the value itself
            bar.clear()
            print(describe_output(event.content), flush=True)
            bar.redraw()
        elif event.type == "stream":
            bar.clear()
            (sys.stdout if event["name"] == "stdout" else sys.stderr).write(event["text"])
            (sys.stdout if event["name"] == "stdout" else sys.stderr).flush()
            bar.redraw()
        elif event.type == "status" and exec_id is None:
            bar.clear()
            print(f"[{event.execution_id}] {event['status']}" + (f": {event['reason']}" if event.get("reason") else ""),
                  file=sys.stderr)
        elif event.type == "done" and (exec_id is None or event.execution_id == exec_id):
            if exec_id is not None:
                final.update(event.content)
                finished.set()

    sub = client.subscribe(on_event, execution_id=exec_id)
    try:
        if exec_id is None:
            while True:
                time.sleep(0.5)
                client.ping(brief=True)  # notice a dead server
        status = client.wait(exec_id)
        finished.wait(1.0)  # let the last events print
    finally:
        sub.close()
        bar.finish()
    return _report(client, status, show_result)


def _report(client: Any, status: dict[str, Any], show_result: bool) -> int:
    state = status["status"]
    if state == "complete":
        if show_result and status.get("has_results"):
            results = client.get_results(status["execution_id"])
            if "_" in results:
                print(repr(results["_"]))
        print(f"complete in {(status['finished'] or 0) - (status['started'] or 0):.2f} s", file=sys.stderr)
        return 0
    if state == "failed":
        err = status.get("error") or {}
        sys.stderr.write("".join(err.get("traceback") or []) or f"{status.get('reason')}\n")
        print(f"failed: {status.get('reason') or err.get('ename')}", file=sys.stderr)
        return 1
    print(f"cancelled: {status.get('reason')}", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        data = client.get_status(args.id)
    if args.json or args.id is not None:
        print(json.dumps(data, indent=1, default=str))
    else:
        print(format_table(data))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.cancel(args.id)
    print(f"{args.id}: {'cancel requested' if reply['cancelled'] else reply.get('message')} (status {reply['status']})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.sessions:
        return cmd_sessions(args)
    with _client(args) as client:
        rows = client.list_executions(session=args.session, limit=args.limit)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rows = client.sessions()
    print(json.dumps(rows, indent=1) if args.json else format_sessions(rows))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, args.id)


def cmd_shutdown(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.ping()
        client.shutdown()
    print(f"server {info['server_id']} (pid {info['pid']}) is shutting down")
    return 0


COMMANDS = {"ping": cmd_ping, "submit": cmd_submit, "status": cmd_status, "cancel": cmd_cancel,
            "list": cmd_list, "sessions": cmd_sessions, "watch": cmd_watch, "shutdown": cmd_shutdown}


def describe_output(content: dict[str, Any]) -> str:
    """One display output as terminal text: its text/plain, or what it is and where to get it."""
    data = content.get("data") or {}
    rich = [m for m in data if m != "text/plain"]
    text = str(data.get("text/plain", ""))
    if rich and not content.get("result"):
        size = (content.get("metadata") or {}).get("image/png") or {}
        dims = f" {size['width']}x{size['height']}" if size.get("width") else ""
        return f"[{', '.join(rich)} output{dims}: {text}; `zmqruntime status ID` has it under 'outputs']"
    return text


class TerminalBar:
    """Progress rows on a terminal stream, redrawn in place (plain lines, at most one a second, when not a tty)."""

    def __init__(self, stream: Any, width: int = 30):
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.rows: dict[str, str] = {}
        self.drawn = 0
        self._last_plain: dict[str, float] = {}
        self._printed: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def line(self) -> str:
        return "\n".join(self.rows.values())

    def update(self, key: str, p: dict[str, Any], final: bool = False) -> None:
        done, total = p.get("done") or 0, p.get("total")
        if total:
            filled = int(self.width * min(1.0, done / total))
            bar = "#" * filled + "-" * (self.width - filled)
            text = f"{p.get('desc') or key} [{bar}] {done:g}/{total:g} {p.get('rate') or 0:.1f}/s"
        else:
            text = f"{p.get('desc') or key} {done:g} {p.get('rate') or 0:.1f}/s"
        with self._lock:
            self.rows[key] = text
            if self.tty:
                self._erase()
                self._draw()
            elif self._printed.get(key) != text and (
                    final or time.monotonic() - self._last_plain.get(key, 0.0) > 1.0 or (total and done >= total)):
                self._last_plain[key] = time.monotonic()
                self._printed[key] = text
                self.stream.write(text + "\n")
                self.stream.flush()

    def remove(self, key: str) -> None:
        with self._lock:
            if self.rows.pop(key, None) is not None and self.tty:
                self._erase()
                self._draw()

    def _erase(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[2K" + "\x1b[1A\x1b[2K" * (self.drawn - 1))
            self.drawn = 0

    def _draw(self) -> None:
        if self.rows:
            self.stream.write("\n".join(self.rows.values()))
            self.drawn = len(self.rows)
        self.stream.flush()

    def clear(self) -> None:
        if self.tty:
            with self._lock:
                self._erase()

    def redraw(self) -> None:
        if self.tty:
            with self._lock:
                self._erase()
                self._draw()

    def finish(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = 0
