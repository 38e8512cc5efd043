"""The Milvus server's process (see :mod:`.server`): the binary started as a daemon (a session
of its own, so it outlives the command and the terminal), its health check waited for, its
process group stopped, and the cause of a failed start read from its log."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import ServerError
from .processes import pid_alive

#: The embedded etcd's client and peer ports: fixed in the 2.3.5 binary (its listen addresses
#: are etcd's defaults, whatever ``etcd.endpoints`` says).
ETCD_PORTS = {2379: "client", 2380: "peer"}
#: A Go listener that could not bind, as Milvus logs it.
_BIND_FAILED = re.compile(r"listen tcp [^\s\"]*:(\d+): bind: address already in use")
#: A line Milvus logs at ERROR or FATAL: ``[time] [ERROR] [file:line] ["message"] [error="..."]``.
_LOGGED_ERROR = re.compile(r'\[(?:ERROR|FATAL)\] \[[^\]]*\] \["([^"]*)"\](?: \[error="((?:[^"\\]|\\.)*)"\])?')
#: A Go panic's first line.
_PANIC = re.compile(r"^(?:panic|fatal error): .*$", re.M)


def start_binary(root: Path, log: Path, health_port: int) -> subprocess.Popen:
    """Start ``root/bin/milvus run standalone`` in a session of its own, in ``root``, with umask
    077, its output appended to ``log``; its configuration must be written already."""
    binary = root / "bin" / "milvus"
    env = {
        **os.environ,
        "DEPLOY_MODE": "STANDALONE",
        "METRICS_PORT": str(health_port),
        "MILVUS_RUN_DIR": str(root / "run"),
        "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(binary.parent), os.environ.get("LD_LIBRARY_PATH")])),
        "DYLD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(binary.parent), os.environ.get("DYLD_LIBRARY_PATH")])),
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(binary), "run", "standalone"],
            cwd=root,
            env=env,
            umask=0o077,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def runs_binary(pid: int, binary: Path) -> bool:
    """Whether process ``pid`` runs and is ``binary`` (not another process that took its pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): trust the pid
        return pid_alive(pid)
    return cmdline.split(b"\0")[0] == os.fsencode(binary)


def healthy(health_port: int, timeout_s: float = 2.0) -> bool:
    """Whether Milvus answers its health check on ``health_port`` (``GET /healthz`` says OK)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=timeout_s) as r:
            return b"OK" in r.read()
    except OSError:
        return False


def wait_healthy(proc: subprocess.Popen, health_port: int, deadline: float, log: Path, log_from: int) -> None:
    """Wait until the server ``proc`` answers its health check.

    Raises:
        ServerError: it exited, or was not healthy by ``deadline`` (``time.monotonic()``);
            the cause its ``log`` gives (from byte ``log_from`` on) is in the message.
    """
    started = time.monotonic()
    while not healthy(health_port):
        if proc.poll() is not None:
            raise ServerError(
                f"the Milvus server exited with code {proc.returncode} while starting: "
                f"{log_cause(log, log_from)}. Its log: {log}"
            )
        if time.monotonic() > deadline:
            raise ServerError(
                f"the Milvus server was not healthy after {time.monotonic() - started:.0f} s "
                f"({log_cause(log, log_from)}); its log: {log}"
            )
        time.sleep(0.25)


def terminate(pid: int, port: int, running: Callable[[], bool], grace_s: float) -> None:
    """Stop the process group of ``pid``: SIGTERM; then SIGKILL, a second after ``port`` closed
    or after ``grace_s`` seconds, if ``running()`` still says it runs (the 2.3.5 binary does
    not exit by itself after its cleanup). Returns once ``running()`` says it has gone."""
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while running() and listening(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))  # the last components' cleanup
    if running():
        os.killpg(pid, signal.SIGKILL)
        while running():
            time.sleep(0.05)


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def log_cause(log: Path, log_from: int) -> str:
    """What ``log`` from byte ``log_from`` on (one start's part) says went wrong, in one line: a
    port that was taken, else the first error Milvus logged, else a Go panic, else its last line."""
    try:
        with open(log, "rb") as f:
            f.seek(log_from)
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"its log cannot be read ({exc.strerror or exc})"
    if bound := _BIND_FAILED.search(text):
        port = int(bound.group(1))
        needs = f" (Milvus 2.3.5's embedded etcd needs it: its {ETCD_PORTS[port]} port)" if port in ETCD_PORTS else ""
        return f"port {port} is taken{needs}: stop the program that listens there"
    if logged := _LOGGED_ERROR.search(text):
        return ": ".join(filter(None, (logged.group(1), logged.group(2))))
    if panic := _PANIC.search(text):
        return panic.group(0)
    lines = text.strip().splitlines()
    return lines[-1][:500] if lines else "it wrote nothing"
