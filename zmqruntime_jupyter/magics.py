"""``%%zmqexec`` (run a cell on a zmqruntime server) and ``%zmq`` (manage it).

``%%zmqexec`` is non-blocking by default because IO-loop callbacks cannot
run during a synchronous cell: the cell submits, displays the panel and
returns the handle at once; the kernel's ``ZMQStream`` then drives the
panel while the kernel stays free for other cells. ``--block`` waits in the
cell instead, pumping events itself, and turns the kernel's Interrupt into a
remote cancel.

Errors the user can fix (bad options, no server, a syntax error, a remote
failure in ``--block`` mode) are shown as short messages, not as tracebacks
through this module.
"""

from __future__ import annotations

import argparse
import keyword
import shlex
import sys
import time
from typing import Any, Optional, Sequence

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from zmqruntime.errors import (
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionTimeout,
    RemoteError,
    ServerStartError,
    ServerUnavailable,
    ZMQRuntimeError,
)
from zmqruntime.options import (
    format_sessions,
    format_table,
    nonnegative_seconds,
    port_number,
    positive_seconds,
    session_name,
)
from zmqruntime.protocol import ACTIVE_STATES, FINAL_STATES, STATES
from zmqruntime.serialize import SerializationError
from zmqruntime.transport import pid_alive

from .connection import Connection, ExtensionState, default_port
from .handle import ExecutionHandle, handle_from_status
from .stream import pump

#: After an Interrupt in --block mode: how long to wait for the cancel to land
#: (the server escalates SIGINT → SIGTERM → SIGKILL within a few seconds).
CANCEL_WAIT = 15.0
#: %zmq shutdown waits this long for the server process to exit.
SHUTDOWN_WAIT = 10.0

_RED, _BOLD, _RESET = "\x1b[31m", "\x1b[1m", "\x1b[0m"


#: A list limit above any server's max_records: every execution that matches.
EVERY_EXECUTION = 10**9
#: Queued ids ``%zmq status`` names before it says how many more there are.
QUEUED_SHOWN = 10


def _queued_text(info: dict) -> str:
    """``ping``'s queue for a status table: the first ids and the count of the rest."""
    ids = info.get("queued", [])
    total = info.get("queued_total", len(ids))
    shown = ", ".join(ids[:QUEUED_SHOWN])
    rest = total - min(len(ids), QUEUED_SHOWN)
    return (shown + (f" (+{rest} more)" if rest > 0 else "")) or "-"

class ZMQExecError(Exception):
    """An error shown in the cell as a short message (plus a remote traceback)."""

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.message = message
        self.remote_traceback = remote_traceback

    def _render_traceback_(self) -> list[str]:  # IPython uses this instead of a local traceback
        lines = []
        if self.remote_traceback:
            lines += [f"{_BOLD}Remote traceback:{_RESET}", *self.remote_traceback.rstrip("\n").splitlines()]
        lines.append(f"{_RED}{_BOLD}zmqexec:{_RESET} {self.message}")
        return lines


def _identifier(text: str) -> str:
    if not text.isidentifier() or keyword.iskeyword(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid variable name")
    return text


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated variable names, e.g. --push a,b")
    for name in names:
        _identifier(name)
    return names


class _ZmqParser(argparse.ArgumentParser):
    """argparse for ``%zmq``: errors become UsageError, help never exits the kernel."""

    class Done(Exception):
        pass

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")

    def exit(self, status: int = 0, message: Optional[str] = None) -> None:  # type: ignore[override]
        if message:
            print(message, file=sys.stderr)
        raise _ZmqParser.Done()


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=port_number, default=None, help="server data port (default: the current server)")
    p.add_argument("--connection-file", default=None, metavar="FILE", help="the server described by this file")


def _zmq_parser() -> _ZmqParser:
    parser = _ZmqParser(prog="%zmq", description="Manage the zmqruntime server and its executions.",
                        epilog="Run `%zmq COMMAND --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ZmqParser)
    p = sub.add_parser("status", help="the server (and a table of executions), or one execution in detail")
    p.add_argument("id", nargs="?", help="an execution id")
    _server_options(p)
    p = sub.add_parser("list", help="a table of this notebook's executions (--all: every session's)")
    p.add_argument("--status", choices=list(STATES), default=None)
    p.add_argument("--all", action="store_true", help="every session's executions, not only this notebook's")
    p.add_argument("--session", type=session_name, default=None, help="that session's executions")
    _server_options(p)
    p = sub.add_parser("sessions", help="the server's sessions: worker, queue, idle time")
    _server_options(p)
    p = sub.add_parser("reset", help="drop this notebook's remote namespace (its variables) on purpose")
    p.add_argument("--session", type=session_name, default=None, help="another session (default: this notebook's)")
    _server_options(p)
    p = sub.add_parser("cancel", help="cancel executions (by id, or --all unfinished ones)")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="cancel every queued or running execution")
    _server_options(p)
    p = sub.add_parser("result", help="fetch an execution's result (the value of its last expression)")
    p.add_argument("id")
    _server_options(p)
    p = sub.add_parser("handle", help="a handle (with a live panel) for an execution, e.g. after a kernel restart")
    p.add_argument("id")
    _server_options(p)
    p = sub.add_parser("connect", help="use the server on PORT (started if none answers) or of a connection file")
    p.add_argument("port", nargs="?", type=port_number, default=None, help="data port (default $ZMQRUNTIME_PORT or 7777)")
    p.add_argument("--connection-file", default=None, metavar="FILE")
    p.add_argument("--no-spawn", action="store_true", help="fail instead of starting a server")
    p.add_argument("--backend", default=None, help="for a server started here: where code runs ('local', 'dask')")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="for a server started here: the dask scheduler to use (implies --backend dask)")
    p = sub.add_parser("shutdown", help="stop the server (it is persistent: it outlives kernels)")
    _server_options(p)
    sub.add_parser("help", help="show this help")
    return parser


@magics_class
class ZMQMagics(Magics):
    """The magics; all state lives in ``self.state`` (closed on unload)."""

    def __init__(self, shell: Any, state: ExtensionState):
        super().__init__(shell)
        self.state = state

    @property
    def ishell(self) -> Any:
        """The shell these magics are registered with (never None once loaded)."""
        assert self.shell is not None, "the zmqruntime magics are not registered with a shell"
        return self.shell

    # ------------------------------------------------------------------ %%zmqexec
    @magic_arguments()
    @argument("--block", action="store_true",
              help="wait in the cell (the bar keeps moving); the kernel's Interrupt cancels the remote "
                   "execution; the cell's value is the remote result and a remote error is raised here")
    @argument("--timeout", type=positive_seconds, default=None, metavar="SECONDS",
              help="cancel the execution on the server if it runs longer than this")
    @argument("--name", default=None, help="a label for the execution (panel, %%zmq list)")
    @argument("--port", type=port_number, default=None,
              help="data port of the server (default: the current one, else $ZMQRUNTIME_PORT or 7777); "
                   "a persistent server is started there if none answers")
    @argument("--connection-file", default=None, metavar="FILE",
              help="run on exactly the server described by this connection file (never starts one)")
    @argument("--push", type=_names, default=None, metavar="NAMES",
              help="comma-separated notebook variables to send into the remote namespace first (pickled)")
    @argument("--out", type=_identifier, default=None, metavar="NAME",
              help="bind NAME in the notebook: to the handle now, to the value of the cell's last "
                   "expression once it completes")
    @argument("--session", type=session_name, default=None, metavar="NAME",
              help="run in this session (namespace and queue) instead of this notebook's own; "
                   "a name shares one between notebooks")
    @argument("--quiet", action="store_true",
              help="no widgets (scripts, CI); with --block remote output is printed in the cell")
    @argument("--progress-after", type=nonnegative_seconds, default=0.0, metavar="SECONDS",
              help="show the panel only once the execution has run this long (or when it ends)")
    @argument("-h", "--help", action="store_true", help="show this help and do nothing else")
    @cell_magic
    def zmqexec(self, line: str, cell: Optional[str] = None) -> Any:
        """Run this cell on a zmqruntime server, with live progress, output and a Cancel button.

        Non-blocking by default: the cell returns at once with an
        ExecutionHandle (also `_`), displays a panel that follows the
        execution, and the kernel stays free for other cells. The handle
        offers .status, .progress, .output, .wait(), .result(), .cancel()
        and can be awaited (`value = await _`).

        Inside the cell, `from zmqruntime import progress` and wrap a loop:
        `for f in progress(files, desc="segmenting"): ...`. Variables persist
        on the server between %%zmqexec cells.
        """
        args = parse_argstring(self.zmqexec, line)
        if args.help:
            print(self.zmqexec.parser.format_help())
            return None
        code = cell or ""
        if not code.strip():
            raise UsageError("%%zmqexec: the cell is empty; put the code to run remotely below the magic line")
        if args.port is not None and args.connection_file is not None:
            raise UsageError("%%zmqexec: use --port or --connection-file, not both")
        push = self._push_values(args.push)
        block = args.block or self.state.loop is None
        conn = self._connection(args.port, args.connection_file, spawn=True)
        try:
            exec_id = conn.client.execute(code, name=args.name, timeout=args.timeout, push=push, session=args.session)
        except RemoteError as exc:
            if exc.code == "syntax_error":
                text = (exc.details.get("text") or "").rstrip("\n")
                raise ZMQExecError(f"SyntaxError: {exc.message}; nothing was sent to run"
                                   + (f"\n    {text}" if text else "")) from None
            raise ZMQExecError(f"the server refused the cell: {exc}") from None
        except SerializationError as exc:
            raise ZMQExecError(f"--push: could not pickle the variables: {exc}") from None
        except ServerUnavailable as exc:
            self.state.drop(conn, "server unreachable")
            raise ZMQExecError(str(exc)) from None

        quiet = args.quiet or self.state.loop is None  # no kernel (terminal IPython): text only
        panel = None if quiet else self._panel(exec_id, args.name or "", args.progress_after)
        echo = _echo if (quiet and block) else None
        handle = ExecutionHandle(exec_id, conn, name=args.name or "", panel=panel, out_name=args.out,
                                 user_ns=self.ishell.user_ns, echo=echo, result_in_cell=block)
        self.state.register(handle)
        if args.out:
            self.ishell.user_ns[args.out] = handle
        if panel is not None:
            from IPython.display import display

            display(panel)
            handle.displayed_in = self.ishell.execution_count
        if block:
            return self._run_blocking(handle)
        try:
            conn.follow(handle)
        except ServerUnavailable as exc:
            raise ZMQExecError(f"submitted as {exec_id}, but the server stopped answering: {exc}") from None
        return handle

    def _panel(self, exec_id: str, name: str, progress_after: float) -> Any:
        try:
            from .panel import ExecutionPanel
        except ImportError:  # ipywidgets missing: behave like --quiet
            return None
        return ExecutionPanel(exec_id, name, progress_after=progress_after)

    def _push_values(self, names: Optional[Sequence[str]]) -> Optional[dict[str, Any]]:
        if not names:
            return None
        ns = self.ishell.user_ns
        missing = [n for n in names if n not in ns]
        if missing:
            raise UsageError(f"%%zmqexec --push: not defined in the notebook: {', '.join(missing)}")
        return {n: ns[n] for n in names}

    def _connection(self, port: Optional[int], connection_file: Optional[str], spawn: bool) -> Connection:
        try:
            conn, _ = self.state.connect(port=port, connection_file=connection_file, spawn=spawn)
        except (ServerUnavailable, ServerStartError, ValueError, OSError) as exc:
            raise ZMQExecError(_no_server_message(exc, port, connection_file, spawn)) from None
        return conn

    def _run_blocking(self, handle: ExecutionHandle) -> Any:
        """--block: pump in the cell; Interrupt → remote cancel; value or error out."""
        try:
            try:
                pump(handle)
            except KeyboardInterrupt:
                try:
                    handle.cancel(reason="kernel interrupted (--block cell)")
                except ZMQRuntimeError as exc:
                    raise ZMQExecError(f"interrupted; the cancel request for {handle.id} failed: {exc}") from None
                try:
                    pump(handle, timeout=CANCEL_WAIT)
                except (KeyboardInterrupt, ExecutionTimeout):
                    raise ZMQExecError(f"interrupted: cancel of {handle.id} requested; stopped waiting before "
                                       "it ended (see %zmq status)") from None
        except ServerUnavailable as exc:
            raise ZMQExecError(f"lost contact with the server while waiting for {handle.id}: {exc}") from None
        return _outcome(handle)

    # ------------------------------------------------------------------ %zmq
    @line_magic
    def zmq(self, line: str) -> Any:
        """Manage the zmqruntime server: %zmq status [ID] | list | cancel ID... | result ID |
        handle ID | connect [PORT] | shutdown | help   (`%zmq help` for details)."""
        parser = _zmq_parser()
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%zmq: {exc}") from None
        if not argv or argv[0] in ("help", "-h", "--help"):
            parser.print_help()
            return None
        try:
            args = parser.parse_args(argv)
        except _ZmqParser.Done:
            return None
        try:
            return getattr(self, f"_zmq_{args.command}")(args)
        except ExecutionFailed as exc:
            raise ZMQExecError(f"execution {getattr(args, 'id', '')} failed: {exc.message}",
                               exc.remote_traceback) from None
        except ExecutionCancelled as exc:
            raise ZMQExecError(f"execution {getattr(args, 'id', '')} was cancelled: {exc.message}") from None
        except RemoteError as exc:
            raise ZMQExecError(f"server error {exc}") from None
        except ServerUnavailable as exc:
            raise ZMQExecError(str(exc)) from None

    def _existing(self, args: argparse.Namespace) -> Connection:
        """The server to manage: never starts one."""
        return self._connection(getattr(args, "port", None), getattr(args, "connection_file", None), spawn=False)

    def _zmq_connect(self, args: argparse.Namespace) -> None:
        if args.port is not None and args.connection_file is not None:
            raise UsageError("%zmq connect: give a PORT or --connection-file, not both")
        port = args.port if args.port is not None or args.connection_file else default_port()
        try:
            server_args = [*(["--backend", args.backend] if args.backend else []),
                           *(["--scheduler", args.scheduler] if args.scheduler else [])]
            conn, started = self.state.connect(port=port if not args.connection_file else None,
                                               connection_file=args.connection_file,
                                               spawn=not args.no_spawn, make_default=True, server_args=server_args)
        except (ServerUnavailable, ServerStartError, ValueError, OSError) as exc:
            raise ZMQExecError(_no_server_message(exc, port, args.connection_file, not args.no_spawn)) from None
        info = conn.client.ping()
        verb = "started a new" if started else "connected to the"
        print(f"{verb} zmqruntime server {info.get('server_id', '')} (pid {info.get('pid')}) at "
              f"{conn.client.info.control_url}; %%zmqexec cells now run there")

    def _zmq_status(self, args: argparse.Namespace) -> None:
        conn = self._existing(args)
        client = conn.client
        if args.id:
            print(_describe(client.get_status(args.id)))
            return
        info = client.ping()
        workers = ", ".join((w.get("address") or f"pid {w['pid']}")
                            + (f" → {w['execution_id']}" if w.get("execution_id") else "")
                            for w in info.get("workers", []))
        rows = [("server", f"{info.get('server_id', '')} (pid {info.get('pid')})"),
                ("up", f"{info.get('uptime', 0):.1f} s"),
                ("control", client.info.control_url), ("data", client.info.data_url),
                ("concurrency", str(info.get("concurrency", ""))),
                ("backend", " ".join(str(v) for v in ((info.get("backend") or {}).get("name", ""),
                                                      (info.get("backend") or {}).get("scheduler")) if v)),
                ("session", self.state.session),
                ("workers", workers or "-"),
                ("running", ", ".join(info.get("running", [])) or "-"),
                ("queued", _queued_text(info)),
                ("executions", str(info.get("executions", "")))]
        print(_kv_table(rows))
        print()
        print(format_table(client.list_executions()))

    def _zmq_list(self, args: argparse.Namespace) -> None:
        if args.all and args.session:
            raise UsageError("%zmq list: use --all or --session, not both")
        session = None if args.all else (args.session or self.state.session)
        print(format_table(self._existing(args).client.list_executions(status=args.status, session=session)))

    def _zmq_sessions(self, args: argparse.Namespace) -> None:
        rows = self._existing(args).client.sessions()
        print(format_sessions(rows))
        print(f"(this notebook's session: {self.state.session})")

    def _zmq_reset(self, args: argparse.Namespace) -> None:
        session = args.session or self.state.session
        reply = self._existing(args).client.reset_session(session)
        print(f"session {session}: " + ("remote namespace dropped; the next cell starts afresh"
                                         if reply["reset"] else "had no remote namespace; nothing to drop"))

    def _zmq_cancel(self, args: argparse.Namespace) -> None:
        conn = self._existing(args)
        ids = list(args.ids)
        if args.all:
            # every active one, however many: a list returns only the newest 1,000 unless told otherwise
            ids += [r["execution_id"] for state in ACTIVE_STATES
                    for r in conn.client.list_executions(status=state, limit=EVERY_EXECUTION)]
        if not ids:
            raise UsageError("%zmq cancel: give one or more execution ids, or --all")
        rows = [("ID", "RESULT")]
        for exec_id in ids:
            try:
                reply = conn.client.cancel(exec_id, reason="cancelled with %zmq cancel")
            except RemoteError as exc:
                rows.append((exec_id, exc.message))
                continue
            text = f"cancel requested (was {reply['status']})" if reply.get("cancelled") else reply.get("message", "")
            rows.append((exec_id, text))
            handle = self.state.handles.get(exec_id)
            if handle is not None and reply.get("cancelled"):
                handle.note("cancel", "cancel requested (%zmq cancel)…")
        print(_kv_table(rows, header=True))

    def _zmq_result(self, args: argparse.Namespace) -> Any:
        conn = self._existing(args)
        handle = self.state.handles.get(args.id)
        if handle is not None and handle.connection is conn:
            return handle.result()
        return conn.client.get_results(args.id, wait=False).get("_")

    def _zmq_handle(self, args: argparse.Namespace) -> ExecutionHandle:
        conn = self._existing(args)
        handle = self.state.handles.get(args.id)
        if handle is not None and handle.connection is conn:
            handle.displayed_in = None
            return handle
        status = conn.client.get_status(args.id)
        panel = None
        if status["status"] not in FINAL_STATES:
            panel = self._panel(args.id, status.get("name") or "", 0.0)
        handle = handle_from_status(status, conn, panel=panel)
        self.state.register(handle)
        if not handle.final:
            conn.follow(handle)
        return handle

    def _zmq_shutdown(self, args: argparse.Namespace) -> None:
        conn = self._existing(args)
        info = conn.client.ping()
        conn.client.shutdown()
        self.state.drop(conn, "the server was shut down")
        # Wait (bounded) for the process to go, so its ports are free for the next server.
        pid = int(info.get("pid") or 0)
        deadline = time.monotonic() + SHUTDOWN_WAIT
        while pid and pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        gone = not (pid and pid_alive(pid))
        print(f"zmqruntime server {info.get('server_id', '')} (pid {pid}) "
              + ("has shut down" if gone else f"is shutting down (still exiting after {SHUTDOWN_WAIT:g} s)")
              + "; the next %%zmqexec starts a new one")


# ---------------------------------------------------------------------------- helpers
def _echo(name: str, text: str) -> None:
    stream = sys.stderr if name == "stderr" else sys.stdout
    stream.write(text)
    stream.flush()


def _outcome(handle: ExecutionHandle) -> Any:
    """The value of a finished --block cell, or a clear error."""
    state = handle.state
    status = state["status"]
    if status == "complete":
        if not state.get("has_results"):
            if state.get("result_error"):
                raise ZMQExecError(f"the result could not be pickled: {state['result_error']}")
            return None
        return handle.result()
    if status == "failed":
        err = state.get("error") or {}
        what = f"{err.get('ename')}: {err.get('evalue')}" if err.get("ename") else (state.get("reason") or "failed")
        tb = "" if handle.panel is not None else "".join(err.get("traceback") or [])
        where = " (traceback in the panel above)" if handle.panel is not None and err.get("traceback") else ""
        raise ZMQExecError(f"remote execution {handle.id} failed: {what}{where}", tb)
    raise ZMQExecError(f"remote execution {handle.id} was cancelled: {state.get('reason') or 'cancelled'}")


def _no_server_message(exc: BaseException, port: Optional[int], connection_file: Optional[str], spawn: bool) -> str:
    if connection_file:
        return f"cannot use the server of connection file {connection_file}: {exc}"
    port = port if port is not None else default_port()
    if isinstance(exc, ServerStartError):
        return f"could not start a zmqruntime server on port {port}: {exc}"
    hint = "" if spawn else "; run a %%zmqexec cell or `%zmq connect` to start one"
    return f"no zmqruntime server on port {port}: {exc}{hint}"


def _kv_table(rows: list[tuple[str, str]], header: bool = False) -> str:
    width = max(len(str(r[0])) for r in rows)
    lines = [f"{str(k).ljust(width)}  {v}".rstrip() for k, v in rows]
    if header:
        lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def _describe(st: dict[str, Any]) -> str:
    """One execution in detail, for %zmq status ID."""
    def ts(t: Any) -> str:
        return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"

    p = st.get("progress") or {}
    prog = "-"
    if p:
        from .panel import progress_text

        prog = f"{p.get('desc') or ''} {progress_text(p)}".strip()
    rows = [("id", st["execution_id"]), ("name", st.get("name") or "-"), ("session", st.get("session") or "-"),
            ("worker", st.get("worker") or "-"), ("status", st["status"]),
            ("reason", st.get("reason") or "-"), ("progress", prog),
            ("created", ts(st.get("created"))), ("started", ts(st.get("started"))),
            ("finished", ts(st.get("finished"))),
            ("result", f"{st.get('result_nbytes', 0)} B ({', '.join(st.get('result_names') or [])})"
             if st.get("has_results") else ("expired" if st.get("results_expired") else "-")),
            ("namespace reset", "yes" if st.get("namespace_reset") else "no")]
    out = [_kv_table(rows)]
    err = st.get("error")
    if err and st["status"] == "failed":
        tb = "".join(err.get("traceback") or []).rstrip() or f"{err.get('ename')}: {err.get('evalue')}"
        out += ["", "Remote traceback:", tb]
    tail = (st.get("stdout") or "") + (st.get("stderr") or "")
    if tail:
        lines = tail.rstrip("\n").splitlines()[-15:]
        out += ["", f"Output (last {len(lines)} lines):", *lines]
    return "\n".join(out)


__all__ = ["ZMQMagics", "ZMQExecError"]
