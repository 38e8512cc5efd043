"""A Milvus server on this machine, run for the user: ``vitsearch server start|stop|status``.

Milvus Lite spends ~0.4 us per stored row on every search (README, "Why Milvus Lite is slow
past 100k"), so past ~100k images a server is the way to stay fast. This module runs the one
that needs no Docker: the ``milvus`` PyPI package (``pip install 'vitsearch[server]'``), Milvus
2.3.5 standalone with embedded etcd, local storage and rocksmq, the same server the tests run.
Its binary is unpacked and its ``milvus.yaml`` written by the package's own
``MilvusServerConfig``; this module starts the binary as a daemon (a session of its own, so it
outlives the command and the terminal), waits for its health check, and records it.

Files, all under ``<data_dir>/server`` (the user data folder, see
:class:`~vitsearch.search.config.Settings`): ``bin/``, ``configs/``, ``data/`` (the vectors),
``logs/`` (``server.log`` is the process's output), ``credentials`` (``root:<password>``, mode
0600, kept across restarts) and ``vitsearch-server.json`` (pid, URI, ports), which exists from
``start`` until ``stop``. While it exists every vitsearch command that is not given a URI uses
the server (:meth:`Settings.resolved_uri`), and its token.

Security: the Milvus 2.3.5 binary listens on all network interfaces (its proxy port, default
19530, and its internal ports; only the embedded etcd is on loopback), and has no setting to
change that. So authentication is turned on, and on the first start the default ``root:Milvus``
password is replaced by a random one (:func:`secrets.token_urlsafe`, 32 bytes). The internal
ports have no authentication: keep them behind the machine's firewall.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ServerError
from .processes import pid_alive

DEFAULT_PORT = 19530
#: What the first start replaces: Milvus's built-in credentials (Milvus docs, "Authenticate User Access").
_DEFAULT_TOKEN = "root:Milvus"
#: The embedded etcd's peer port: fixed in the 2.3.5 binary (not in its configuration).
_ETCD_PEER_PORT = 2380
_STATE = "vitsearch-server.json"
_CREDENTIALS = "credentials"


@dataclass(frozen=True)
class ServerState:
    """A started server, as recorded in ``vitsearch-server.json``.

    Attributes:
        pid: the ``milvus`` process id.
        uri: the URI clients connect to, ``http://127.0.0.1:<port>``.
        port: the gRPC port (Milvus's proxy).
        health_port: the port of Milvus's ``/healthz`` (its metrics port).
        started: when it was started, Unix time in seconds.
        version: the ``milvus`` package version.
    """

    pid: int
    uri: str
    port: int
    health_port: int
    started: float
    version: str


class LocalServer:
    """The Milvus server that ``vitsearch server`` runs for this user.

    Args:
        root: its folder, ``<data_dir>/server`` (created on start).
    """

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().absolute()

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> "LocalServer":
        """The server of the vitsearch data folder ``data_dir``."""
        return cls(Path(data_dir) / "server")

    @property
    def log(self) -> Path:
        """The server process's output (stdout and stderr)."""
        return self.root / "logs" / "server.log"

    def state(self) -> ServerState | None:
        """The recorded server, or None when none was started (or it was stopped). A recorded
        server may have died since: see :meth:`alive`."""
        try:
            return ServerState(**json.loads((self.root / _STATE).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise ServerError(f"{self.root / _STATE} is unreadable ({exc}): stop the server with "
                              f"`vitsearch server stop`, then start it again") from exc

    def alive(self, state: ServerState | None = None) -> bool:
        """Whether the recorded server's process still runs (and is this server's ``milvus``,
        not another process that took its pid)."""
        state = state or self.state()
        if state is None:
            return False
        try:
            cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return False
        except OSError:  # no /proc (macOS): trust the pid
            return pid_alive(state.pid)
        return cmdline.split(b"\0")[0] == os.fsencode(self.root / "bin" / "milvus")

    def token(self) -> str | None:
        """``root:<password>`` of the server, or None before its first start."""
        try:
            return (self.root / _CREDENTIALS).read_text().strip() or None
        except FileNotFoundError:
            return None

    def healthy(self, state: ServerState, timeout_s: float = 2.0) -> bool:
        """Whether Milvus answers its health check (``GET /healthz`` says OK)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{state.health_port}/healthz", timeout=timeout_s) as r:
                return b"OK" in r.read()
        except OSError:
            return False

    def start(self, port: int | None = None, timeout_s: float = 120.0) -> ServerState:
        """Start the server and wait until it is healthy; a running one is returned as it is.
        Two starts at once are serialised (a lock file in the server folder).

        Args:
            port: gRPC port; None: 19530, or the next free one above it.
            timeout_s: seconds to wait for the health check.

        Returns:
            the started server.

        Raises:
            ServerError: the ``milvus`` package is not installed, the port is taken, the
                folder cannot be written, or the server did not become healthy (its log's last
                lines are in the message; a server that did start is stopped again).
        """
        _check_yaml_safe(self.root)
        with self._locked():
            return self._start(port, timeout_s)

    def _start(self, port: int | None, timeout_s: float) -> ServerState:
        state = self.state()
        if state is not None and self.alive(state):
            return state
        try:
            import milvus
        except ImportError as exc:
            raise ServerError("the Milvus server is not installed: pip install 'vitsearch[server]' "
                              "(the milvus package, Milvus 2.3.5 standalone)") from exc
        if _listening(_ETCD_PEER_PORT):
            raise ServerError(f"port {_ETCD_PEER_PORT} on 127.0.0.1 is taken: Milvus 2.3.5's embedded etcd needs it "
                              "(it cannot be moved), so another Milvus server (or etcd) runs on this machine; stop it, "
                              "or point vitsearch at it with --uri")
        config = milvus.MilvusServerConfig()
        config.configs.update(data_dir=str(self.root))
        if port is not None:
            config.configs.update(proxy_port=port)
        config.set("authorization_enabled", True)
        # Milvus 2.3.5 does not exit after a SIGTERM (see stop), so its components' etcd sessions
        # outlive it, and the next start waits for them to expire before it serves the
        # collections again: shorter than the defaults of 1800 s and 30 s.
        config.set("common.gracefulStopTimeout", 5)
        config.set("common.session.ttl", 10)
        try:
            config.resolve()  # binds (and releases) the ports, writes configs/milvus.yaml
        except RuntimeError as exc:
            raise ServerError(f"cannot start the Milvus server: {exc} (is another server on that port?)") from exc
        milvus._initialize_data_files(str(self.root))  # unpacks bin/milvus once
        health_port, sock = config.resolve_port(9091)
        sock.close()
        binary = self.root / "bin" / "milvus"
        env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(health_port),
               "MILVUS_RUN_DIR": str(self.root / "run"),
               "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(binary.parent), os.environ.get("LD_LIBRARY_PATH")])),
               "DYLD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(binary.parent), os.environ.get("DYLD_LIBRARY_PATH")]))}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            proc = subprocess.Popen([str(binary), "run", "standalone"], cwd=self.root, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        proxy_port = int(config.get("proxy_port"))
        state = ServerState(pid=proc.pid, uri=f"http://127.0.0.1:{proxy_port}", port=proxy_port,
                            health_port=health_port, started=time.time(), version=milvus.__version__)
        self._write(_STATE, json.dumps(asdict(state)))
        try:
            deadline = time.monotonic() + timeout_s
            while not self.healthy(state):
                if proc.poll() is not None:
                    raise ServerError(f"the Milvus server exited with code {proc.returncode} while starting; "
                                      f"its log ({self.log}) ends:\n{self._log_tail()}")
                if time.monotonic() > deadline:
                    raise ServerError(f"the Milvus server was not healthy after {timeout_s:.0f} s; "
                                      f"its log ({self.log}) ends:\n{self._log_tail()}")
                time.sleep(0.25)
            if self.token() is None:
                self._set_password(state)
            self._wait_served(state, deadline)
        except BaseException:  # KeyboardInterrupt included: no server left running unrecorded
            self._stop(grace_s=5)
            raise
        return state

    def stop(self, grace_s: float = 30.0) -> ServerState | None:
        """Stop the recorded server: SIGTERM, which makes Milvus stop its components (its gRPC
        port closes, its log says "All cleanup done"); then SIGKILL, a second after the port
        closed or after ``grace_s`` seconds, because the 2.3.5 binary does not exit by itself
        after its cleanup (measured here: still running 30 s later). What Milvus acknowledged
        is in its write-ahead log (rocksmq) and is kept, as after a crash. Commands go back to
        Milvus Lite afterwards.

        Returns:
            the server that was stopped (or found dead), or None when none was recorded (or
            its record was unreadable: it is removed).
        """
        with self._locked():
            return self._stop(grace_s)

    def _stop(self, grace_s: float) -> ServerState | None:
        try:
            state = self.state()
        except ServerError:
            (self.root / _STATE).unlink()
            return None
        if state is None:
            return None
        if self.alive(state):
            os.killpg(state.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while self.alive(state) and _listening(state.port) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))  # the last components' cleanup
            if self.alive(state):
                os.killpg(state.pid, signal.SIGKILL)
                while self.alive(state):
                    time.sleep(0.05)
        (self.root / _STATE).unlink(missing_ok=True)
        return state

    @contextlib.contextmanager
    def _locked(self):
        """Hold ``.lock`` in the server folder (``fcntl.flock``, released when the process
        ends); file system errors become :class:`ServerError`."""
        import fcntl

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
        except OSError as exc:
            raise ServerError(f"{self.root}: {exc.strerror or exc} (the server's folder must be writable; "
                              "VITSEARCH_DATA_DIR moves it)") from exc

    def _wait_served(self, state: ServerState, deadline: float) -> None:
        """Wait until every collection that Milvus loads again after a restart answers a query:
        until then a search can come back empty instead of failing."""
        from pymilvus import MilvusClient
        from pymilvus.client.types import LoadState

        client = MilvusClient(uri=state.uri, token=self.token() or "", timeout=max(1.0, deadline - time.monotonic()))
        try:
            for name in client.list_collections():
                while client.get_load_state(name)["state"] == LoadState.Loading:
                    if time.monotonic() > deadline:
                        raise ServerError(f"collection {name!r} was still loading when the start timed out; "
                                          f"see {self.log}")
                    time.sleep(0.25)
                if client.get_load_state(name)["state"] == LoadState.Loaded:
                    client.query(name, filter="", output_fields=["count(*)"])
        finally:
            client.close()

    def _set_password(self, state: ServerState) -> None:
        """Replace the default ``root:Milvus`` by a random password, kept in ``credentials``."""
        from pymilvus import MilvusClient

        password = secrets.token_urlsafe(32)
        try:
            client = MilvusClient(uri=state.uri, token=_DEFAULT_TOKEN, timeout=30)
            client.update_password("root", "Milvus", password)
            client.close()
        except Exception as exc:  # pymilvus raises assorted types
            raise ServerError(f"cannot set the server's password: {type(exc).__name__}: {exc}. Its data in "
                              f"{self.root / 'data'} was made without vitsearch's credentials file: move it "
                              f"away to start afresh") from exc
        self._write(_CREDENTIALS, f"root:{password}\n")

    def _write(self, name: str, text: str) -> None:
        """Write ``root/name`` atomically, readable by this user only (it may hold a password)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / name)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _check_yaml_safe(folder: Path) -> None:
    """Refuse a folder that the ``milvus`` package would write unquoted into ``milvus.yaml`` in
    a way YAML reads back differently (a comment, a mapping, another line).

    Raises:
        ServerError: the folder's path holds such characters.
    """
    text = str(folder)
    if not text.isprintable() or " #" in text or ": " in text or text.endswith(":"):
        raise ServerError(f"{text!r}: the Milvus server cannot use a folder whose path holds a line break, a tab, "
                          "' #' or ': ' (its configuration file writes paths unquoted): set VITSEARCH_DATA_DIR "
                          "to another folder")
