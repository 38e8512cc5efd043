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
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from . import certificates
from .errors import ServerError
from .files import write_atomic
from .processes import pid_alive

DEFAULT_PORT = 19530
#: What the first start replaces: Milvus's built-in credentials (Milvus docs, "Authenticate User Access").
_DEFAULT_TOKEN = "root:Milvus"
#: The embedded etcd's client and peer ports: fixed in the 2.3.5 binary (its listen addresses
#: are etcd's defaults, whatever ``etcd.endpoints`` says).
ETCD_PORTS = {2379: "client", 2380: "peer"}
#: A Go listener that could not bind, as Milvus logs it.
_BIND_FAILED = re.compile(r"listen tcp [^\s\"]*:(\d+): bind: address already in use")
#: A line Milvus logs at ERROR or FATAL: ``[time] [ERROR] [file:line] ["message"] [error="..."]``.
_LOGGED_ERROR = re.compile(r'\[(?:ERROR|FATAL)\] \[[^\]]*\] \["([^"]*)"\](?: \[error="((?:[^"\\]|\\.)*)"\])?')
#: A Go panic's first line.
_PANIC = re.compile(r"^(?:panic|fatal error): .*$", re.M)
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
        try:
            return ServerState(**json.loads((self.root / _STATE).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise ServerError(
                f"{self.root / _STATE} is unreadable ({exc}): stop the server with "
                f"`vitsearch server stop`, then start it again"
            ) from exc

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
            raise ServerError(
                "the Milvus server is not installed: pip install 'vitsearch[server]' "
                "(the milvus package, Milvus 2.3.5 standalone)"
            ) from exc
        for taken, role in ETCD_PORTS.items():
            if _listening(taken):
                raise ServerError(
                    f"port {taken} on 127.0.0.1 is taken: Milvus 2.3.5's embedded etcd needs it (its "
                    f"{role} port, fixed in the binary), so another Milvus server (or etcd) runs on this "
                    f"machine; stop it, or point vitsearch at it with --uri"
                )
        self._private()
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

    def _private(self) -> None:
        """Make the server's folder and its data this user's alone (0700), also where an older
        vitsearch made them 0755 (the rows' paths are in Milvus's files)."""
        for folder in (self.root, self.root / "data"):
            folder.mkdir(mode=0o700, exist_ok=True)
            folder.chmod(0o700)

    def _launch(self, milvus, port: int | None, settings: dict) -> tuple[subprocess.Popen, ServerState]:
        """Write ``milvus.yaml`` (with ``settings`` over vitsearch's) and start the binary,
        recorded in ``vitsearch-server.json``; not yet healthy."""
        config = _config(milvus)
        config.configs.update(data_dir=str(self.root))
        if port is not None:
            config.configs.update(proxy_port=port)
        config.set("authorization_enabled", True)
        # Milvus 2.3.5 does not exit after a SIGTERM (see stop), so its components' etcd sessions
        # outlive it, and the next start waits for them to expire before it serves the
        # collections again: shorter than the defaults of 1800 s and 30 s.
        config.set("common.gracefulStopTimeout", 5)
        config.set("common.session.ttl", 10)
        for key, value in settings.items():
            config.set(key, value)
        try:
            config.resolve()  # binds (and releases) the ports, writes configs/milvus.yaml
        except RuntimeError as exc:
            raise ServerError(
                f"cannot start the Milvus server: {exc} (a port it needs is taken: stop what listens "
                f"there, or give another --port)"
            ) from None
        milvus._initialize_data_files(str(self.root))  # unpacks bin/milvus once
        health_port, sock = config.resolve_port(9091)
        sock.close()
        binary = self.root / "bin" / "milvus"
        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(health_port),
            "MILVUS_RUN_DIR": str(self.root / "run"),
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(binary.parent), os.environ.get("LD_LIBRARY_PATH")])),
            "DYLD_LIBRARY_PATH": os.pathsep.join(
                filter(None, [str(binary.parent), os.environ.get("DYLD_LIBRARY_PATH")])
            ),
        }
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                [str(binary), "run", "standalone"],
                cwd=self.root,
                env=env,
                umask=0o077,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        proxy_port = int(config.get("proxy_port"))
        state = ServerState(
            pid=proc.pid,
            uri=f"http://127.0.0.1:{proxy_port}",
            port=proxy_port,
            health_port=health_port,
            started=time.time(),
            version=milvus.__version__,
        )
        self._write(_STATE, json.dumps(asdict(state)))
        return proc, state

    def _wait_healthy(self, proc: subprocess.Popen, state: ServerState, deadline: float) -> None:
        """Wait until the server answers its health check.

        Raises:
            ServerError: it exited, or was not healthy by ``deadline`` (``time.monotonic()``);
                the cause its log gives is in the message.
        """
        started = time.monotonic()
        while not self.healthy(state):
            if proc.poll() is not None:
                raise ServerError(
                    f"the Milvus server exited with code {proc.returncode} while starting: "
                    f"{self._cause()}. Its log: {self.log}"
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the Milvus server was not healthy after {time.monotonic() - started:.0f} s "
                    f"({self._cause()}); its log: {self.log}"
                )
            time.sleep(0.25)

    def _set_up(self, milvus, port: int | None, timeout_s: float) -> None:
        """Start a server whose data are new with mutual TLS on its port (nobody without the
        client certificate made here can connect), replace the built-in ``root:Milvus`` by the
        kept password (or a new random one, then kept in ``credentials``), and stop it.

        Raises:
            ServerError: it did not start, or its data do not take ``root:Milvus`` (made with
                another password than ``credentials`` holds, or with none kept).
        """
        from pymilvus import MilvusClient

        password = self._kept_password() or secrets.token_urlsafe(32)
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
                try:
                    client = MilvusClient(
                        uri=f"https://127.0.0.1:{state.port}",
                        token=_DEFAULT_TOKEN,
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
                        f"{self.root / _CREDENTIALS} (or that file is gone). Put back the credentials file made with "
                        f"them, or move {self.root / 'data'} away to start afresh"
                    ) from None
            finally:
                self._stop(grace_s=5)
        self._write(_CREDENTIALS, f"root:{password}\n")

    def _kept_password(self) -> str | None:
        """root's password in ``credentials``, or None where there is none.

        Raises:
            ServerError: the file is not ``root:<password>``.
        """
        token = self.token()
        if token is None:
            return None
        user, _, password = token.partition(":")
        if user != "root" or not password:
            raise ServerError(
                f"{self.root / _CREDENTIALS} does not hold root:<password>: remove it, and the data "
                f"folder {self.root / 'data'} made with it, to start afresh"
            )
        return password

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
                f"the Milvus server does not take the root password in {self.root / _CREDENTIALS} "
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

    def _write(self, name: str, text: str) -> None:
        """Write ``root/name`` atomically, readable by this user only (it may hold a password)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / name, text, mode=0o600)

    def _cause(self) -> str:
        """What this start's part of the log says went wrong, in one line: a port that was taken,
        else the first error Milvus logged, else a Go panic, else its last line."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._log_from)
                text = f.read().decode(errors="replace")
        except OSError as exc:
            return f"its log cannot be read ({exc.strerror or exc})"
        if bound := _BIND_FAILED.search(text):
            port = int(bound.group(1))
            needs = (
                f" (Milvus 2.3.5's embedded etcd needs it: its {ETCD_PORTS[port]} port)" if port in ETCD_PORTS else ""
            )
            return f"port {port} is taken{needs}: stop the program that listens there"
        if logged := _LOGGED_ERROR.search(text):
            return ": ".join(filter(None, (logged.group(1), logged.group(2))))
        if panic := _PANIC.search(text):
            return panic.group(0)
        lines = text.strip().splitlines()
        return lines[-1][:500] if lines else "it wrote nothing"


def _config(milvus):
    """A ``milvus.MilvusServerConfig`` whose probe of a free port (it binds each port it hands
    out, then releases it) allows a port whose old connections are in TIME_WAIT, as the Go
    listeners of the binary do (SO_REUSEADDR). The package's own probe refuses such a port, so a
    server started again within a minute of the last stop got other ports for its components,
    while the last one's etcd sessions (alive for ``common.session.ttl`` after it) still named the
    old ones: its proxy then reached another component at a stale address and exited ("unknown
    service milvus.proto.query.QueryCoord", seen after the first start's set-up)."""

    class Config(milvus.MilvusServerConfig):
        def try_bind_port(self, port):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except (OSError, OverflowError):
                sock.close()
                return None

    return Config()


def _one_line(exc: BaseException) -> str:
    """An exception as one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


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
        raise ServerError(
            f"{text!r}: the Milvus server cannot use a folder whose path holds a line break, a tab, "
            "' #' or ': ' (its configuration file writes paths unquoted): set VITSEARCH_DATA_DIR "
            "to another folder"
        )
