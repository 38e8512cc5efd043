"""A Milvus server on this machine, run for the user: ``vitsearch server start|stop|status``.

Milvus Lite's search time grows with every stored row (docs/benchmarks/search-latency.md), so
past ~100k images a server is the way to stay fast. This module runs the one
that needs no Docker: the ``milvus`` PyPI package (``pip install 'vitsearch[server]'``), Milvus
2.3.5 standalone with embedded etcd, local storage and rocksmq, the same server the tests run.
Its binary is unpacked and its ``milvus.yaml`` written by the package's own
``MilvusServerConfig``; this module starts the binary as a daemon (a session of its own, so it
outlives the command and the terminal), waits for its health check, and records it.

Files, all under ``<data_dir>/server`` (the user data folder, see
:class:`~vitsearch.search.config.Settings`), a folder of mode 0700: ``bin/``, ``configs/``,
``data/`` (the vectors; Milvus runs with umask 077, so its files are 0600), ``logs/``
(``server.log`` is the process's output), ``credentials`` (``root:<password>``, mode 0600, kept
across restarts) and ``vitsearch-server.json`` (pid, URI, ports), which exists from ``start``
until ``stop``. While it exists every vitsearch command that is not given a URI uses the server
(:meth:`Settings.resolved_uri`), and its token.

Security: the Milvus 2.3.5 binary listens on all network interfaces (its proxy port, default
19530, and its internal ports; only the embedded etcd is on loopback), and has no setting to
change that (its proxy listens on ``":<port>"``), nor one for the built-in ``root:Milvus``
password it starts with. So authentication is turned on, and a server whose data are new (the
first start, or a data folder removed) is first started on its own: with mutual TLS on its
port (:mod:`.certificates`: only the client holding the certificate made for this start can
connect) and its HTTP API off, while the built-in password is replaced by the kept one or a
random one (:func:`secrets.token_urlsafe`, 32 bytes); then it is stopped and started for
use. Nobody else can log in as ``root:Milvus`` meanwhile. The internal ports have no
authentication: keep them behind the machine's firewall.

This module runs the start and the stop; :mod:`.server_config` checks the folder and writes
``milvus.yaml``, :mod:`.server_process` starts, waits for and stops the binary and reads its
log, :mod:`.server_state` keeps the record and the credentials.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

from . import certificates, server_config, server_process, server_state
from .errors import ServerError
from .server_process import ETCD_PORTS
from .server_state import CREDENTIALS, DEFAULT_TOKEN, ServerState

__all__ = ["DEFAULT_PORT", "ETCD_PORTS", "LocalServer", "ServerState"]

DEFAULT_PORT = 19530


class LocalServer:
    """The Milvus server that ``vitsearch server`` runs for this user.

    Args:
        root: its folder, ``<data_dir>/server`` (created on start).
    """

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().absolute()
        self._log_from = 0  # where the last start's output begins in the log, in bytes

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> LocalServer:
        """The server of the vitsearch data folder ``data_dir``."""
        return cls(Path(data_dir) / "server")

    @property
    def log(self) -> Path:
        """The server process's output (stdout and stderr)."""
        return self.root / "logs" / "server.log"

    def state(self) -> ServerState | None:
        """The recorded server, or None when none was started (or it was stopped). A recorded
        server may have died since: see :meth:`alive`."""
        return server_state.read_state(self.root)

    def alive(self, state: ServerState | None = None) -> bool:
        """Whether the recorded server's process still runs (and is this server's ``milvus``,
        not another process that took its pid)."""
        state = state or self.state()
        if state is None:
            return False
        return server_process.runs_binary(state.pid, self.root / "bin" / "milvus")

    def token(self) -> str | None:
        """``root:<password>`` of the server, or None before its first start."""
        return server_state.read_token(self.root)

    def healthy(self, state: ServerState, timeout_s: float = 2.0) -> bool:
        """Whether Milvus answers its health check (``GET /healthz`` says OK)."""
        return server_process.healthy(state.health_port, timeout_s)

    def start(self, port: int | None = None, timeout_s: float = 120.0) -> ServerState:
        """Start the server and wait until it is healthy; a running one is returned as it is.
        Two starts at once are serialised (a lock file in the server folder). A server whose
        data are new is first set up on its own (mutual TLS, see the module's docstring).

        Args:
            port: gRPC port; None: 19530, or the next free one above it.
            timeout_s: seconds to wait for the health check (for each start of a setup).

        Returns:
            the started server.

        Raises:
            ServerError: the ``milvus`` package is not installed, a port it needs is taken, the
                folder cannot be written, its data do not take the kept password, or the server
                did not become healthy; one line that names the cause (from its log) and what to
                do. A server that did start is stopped again.
        """
        server_config.check_yaml_safe(self.root)
        with self._locked():
            return self._start(port, timeout_s)

    def _start(self, port: int | None, timeout_s: float) -> ServerState:
        state = self.state()
        if state is not None and self.alive(state):
            return state
        try:
            import milvus
        except ImportError as exc:
            raise ServerError(
                "the Milvus server is not installed: pip install 'vitsearch[server]' "
                "(the milvus package, Milvus 2.3.5 standalone)"
            ) from exc
        for taken, role in ETCD_PORTS.items():
            if server_process.listening(taken):
                raise ServerError(
                    f"port {taken} on 127.0.0.1 is taken: Milvus 2.3.5's embedded etcd needs it (its "
                    f"{role} port, fixed in the binary), so another Milvus server (or etcd) runs on this "
                    f"machine; stop it, or point vitsearch at it with --uri"
                )
        server_config.make_private(self.root)
        if self.token() is None or not (self.root / "data" / "etcd.data").is_dir():
            self._set_up(milvus, port, timeout_s)
        proc, state = self._launch(milvus, port, {})
        try:
            self._wait_healthy(proc, state, time.monotonic() + timeout_s)
            self._wait_served(state, time.monotonic() + timeout_s)
        except BaseException:  # KeyboardInterrupt included: no server left running unrecorded
            self._stop(grace_s=5)
            raise
        return state

    def _launch(self, milvus, port: int | None, settings: dict) -> tuple[subprocess.Popen, ServerState]:
        """Write ``milvus.yaml`` (with ``settings`` over vitsearch's) and start the binary,
        recorded in ``vitsearch-server.json``; not yet healthy."""
        proxy_port, health_port = server_config.write_config(milvus, self.root, port, settings)
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        proc = server_process.start_binary(self.root, self.log, health_port)
        state = ServerState(
            pid=proc.pid,
            uri=f"http://127.0.0.1:{proxy_port}",
            port=proxy_port,
            health_port=health_port,
            started=time.time(),
            version=milvus.__version__,
        )
        server_state.write_state(self.root, state)
        return proc, state

    def _wait_healthy(self, proc: subprocess.Popen, state: ServerState, deadline: float) -> None:
        """Wait until the server answers its health check (see :func:`.server_process.wait_healthy`)."""
        server_process.wait_healthy(proc, state.health_port, deadline, self.log, self._log_from)

    def _set_up(self, milvus, port: int | None, timeout_s: float) -> None:
        """Start a server whose data are new with mutual TLS on its port (nobody without the
        client certificate made here can connect), replace the built-in ``root:Milvus`` by the
        kept password (or a new random one, then kept in ``credentials``), and stop it.

        Raises:
            ServerError: it did not start, or its data do not take ``root:Milvus`` (made with
                another password than ``credentials`` holds, or with none kept).
        """
        password = server_state.kept_password(self.root) or secrets.token_urlsafe(32)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".setup-") as folder:  # 0700
            tls = certificates.make(Path(folder))
            proc, state = self._launch(
                milvus,
                port,
                {
                    "tls_mode": 2,
                    "server_pem_path": str(tls.server_cert),
                    "server_key_path": str(tls.server_key),
                    "ca_pem_path": str(tls.ca),
                    "proxy.http.enabled": "false",
                },
            )
            try:
                self._wait_healthy(proc, state, time.monotonic() + timeout_s)
                self._replace_default_password(state, tls, password)
            finally:
                self._stop(grace_s=5)
        server_state.write_credentials(self.root, password)

    def _replace_default_password(self, state: ServerState, tls: certificates.MutualTLS, password: str) -> None:
        """Log in to the set-up server as ``root:Milvus`` over mutual TLS and make root's
        password ``password``.

        Raises:
            ServerError: its data do not take ``root:Milvus``.
        """
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(
                uri=f"https://127.0.0.1:{state.port}",
                token=DEFAULT_TOKEN,
                secure=True,
                client_pem_path=str(tls.client_cert),
                client_key_path=str(tls.client_key),
                ca_pem_path=str(tls.ca),
                server_name=certificates.SERVER_NAME,
                timeout=30,
            )
            client.update_password("root", "Milvus", password)
            client.close()
        except Exception as exc:  # pymilvus raises assorted types
            raise ServerError(
                f"the Milvus server's data in {self.root / 'data'} do not take the built-in root:Milvus "
                f"login ({_one_line(exc)}): they were made with another root password than the one in "
                f"{self.root / CREDENTIALS} (or that file is gone). Put back the credentials file made with "
                f"them, or move {self.root / 'data'} away to start afresh"
            ) from None

    def stop(self, grace_s: float = 30.0) -> ServerState | None:
        """Stop the recorded server: SIGTERM, which makes Milvus stop its components (its gRPC
        port closes, its log says "All cleanup done"); then SIGKILL, a second after the port
        closed or after ``grace_s`` seconds, because the 2.3.5 binary does not exit by itself
        after its cleanup (it is still running 30 s later). What Milvus acknowledged
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
            server_state.remove_state(self.root)
            return None
        if state is None:
            return None
        if self.alive(state):
            server_process.terminate(state.pid, state.port, lambda: self.alive(state), grace_s)
        server_state.remove_state(self.root, missing_ok=True)
        return state

    @contextlib.contextmanager
    def _locked(self):
        """Hold ``.lock`` in the server folder (``fcntl.flock``, released when the process
        ends); file system errors become :class:`ServerError`."""
        import fcntl

        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self.root / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
        except OSError as exc:
            raise ServerError(
                f"{self.root}: {exc.strerror or exc} (the server's folder must be writable; "
                "VITSEARCH_DATA_DIR moves it)"
            ) from exc

    def _wait_served(self, state: ServerState, deadline: float) -> None:
        """Wait until every collection that Milvus loads again after a restart answers a query:
        until then a search can come back empty instead of failing.

        Raises:
            ServerError: the kept password is refused, a collection was still loading at
                ``deadline`` (``time.monotonic()``), or one did not answer.
        """
        from pymilvus import MilvusClient
        from pymilvus.client.types import LoadState

        try:
            client = MilvusClient(
                uri=state.uri, token=self.token() or "", timeout=max(1.0, deadline - time.monotonic())
            )
        except Exception as exc:  # pymilvus raises assorted types; the server is healthy, so it refused the login
            raise ServerError(
                f"the Milvus server does not take the root password in {self.root / CREDENTIALS} "
                f"({_one_line(exc)}): its data in {self.root / 'data'} were made with another one. Put "
                f"back the credentials file made with them, or move {self.root / 'data'} away to start "
                f"afresh"
            ) from None
        try:
            for name in client.list_collections():
                while client.get_load_state(name)["state"] == LoadState.Loading:
                    if time.monotonic() > deadline:
                        raise ServerError(
                            f"collection {name!r} was still loading when the start timed out; see {self.log}"
                        )
                    time.sleep(0.25)
                if client.get_load_state(name)["state"] == LoadState.Loaded:
                    client.query(name, filter="", output_fields=["count(*)"])
        except ServerError:
            raise
        except Exception as exc:  # pymilvus raises assorted types
            raise ServerError(
                f"the Milvus server started, but its collections do not answer ({_one_line(exc)}); its log: {self.log}"
            ) from None
        finally:
            client.close()


def _one_line(exc: BaseException) -> str:
    """An exception as one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
