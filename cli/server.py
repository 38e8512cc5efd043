"""``vitsearch server start|stop|status``: the Milvus server of :mod:`vitsearch.search.server`."""

from __future__ import annotations

import json
import time

import typer

from vitsearch.search.config import Settings
from vitsearch.search.errors import VitsearchError

from .common import JSON, fail, server_app

#: ``vitsearch server status`` exit code for "not running" (as ``systemctl status`` for an inactive unit).
NOT_RUNNING = 3


def _server():
    from vitsearch.search.server import LocalServer

    return LocalServer.for_data_dir(Settings().data_dir)


@server_app.command("start", epilog="Docs: docs/guides/storage.md")
def start(
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="gRPC port. (default: 19530, or the next free port above it)"
    ),
    timeout: float = typer.Option(120.0, "--timeout", min=1, help="Seconds to wait for the server to be healthy."),
) -> None:
    """Start a Milvus server on this machine and make it every command's default.

    It is Milvus 2.3.5 standalone from the `milvus` PyPI package (pip install 'vitsearch[server]'),
    no Docker: its data, logs and credentials live in the user data folder
    (~/.local/share/vitsearch/server on Linux). It runs in the background until `vitsearch server
    stop`; meanwhile index, search, duplicates, eval, ui and serve use it unless given --uri or
    VITSEARCH_URI. Past ~100k images it answers searches far faster than Milvus Lite
    (docs/benchmarks/search-latency.md).

    Milvus 2.3.5 listens on every network interface: authentication is on, with a random root
    password set at the first start while the server takes only vitsearch's own TLS certificate
    (kept in the server folder's `credentials`, mode 0600, and used by vitsearch for you); keep
    its ports behind your firewall. A Milvus Lite database is not copied: index your folders
    again into the server.
    """
    server = _server()
    try:
        was = server.state()
        running = was is not None and server.alive(was)
        state = server.start(port=port, timeout_s=timeout)
    except VitsearchError as exc:
        fail(str(exc))
    if running:
        typer.echo(f"already running: {state.uri} (pid {state.pid})")
        return
    typer.echo(f"Milvus {state.version} standalone running: {state.uri} (pid {state.pid}); data in {server.root}")
    typer.echo("vitsearch commands now use it; `vitsearch server stop` goes back to Milvus Lite.")
    typer.echo(
        f"warning: Milvus listens on all network interfaces (port {state.port} and its internal ports); "
        f"authentication is on, its root credentials are in {server.root / 'credentials'}. "
        "Keep these ports behind a firewall.",
        err=True,
    )


@server_app.command("stop", epilog="Docs: docs/guides/storage.md")
def stop(
    grace: float = typer.Option(
        30.0,
        "--grace",
        min=0,
        help="Most seconds between SIGTERM and SIGKILL (Milvus "
        "2.3.5 stops its components on SIGTERM, ~1-2 s, but does not exit by itself).",
    ),
) -> None:
    """Stop the server; commands go back to Milvus Lite. Its data stay for the next start."""
    server = _server()
    try:
        alive = server.alive()
        state = server.stop(grace_s=grace)
    except VitsearchError as exc:
        fail(str(exc))
    if state is None:
        typer.echo("not running")
    else:
        typer.echo(
            f"stopped {state.uri} (pid {state.pid})"
            if alive
            else f"{state.uri} (pid {state.pid}) had already exited; its record is removed"
        )


@server_app.command("status", epilog="Docs: docs/guides/storage.md")
def status(as_json: bool = JSON) -> None:
    """Say whether the server runs, its URI, pid and data folder. Exit code 0 when it runs and
    answers its health check, 3 when it is not running (or not healthy)."""
    server = _server()
    try:
        state = server.state()
        alive = state is not None and server.alive(state)
        healthy = alive and server.healthy(state)
    except VitsearchError as exc:
        fail(str(exc))
    report = {
        "running": alive,
        "healthy": healthy,
        "uri": state.uri if state else None,
        "pid": state.pid if state else None,
        "version": state.version if state else None,
        "started": state.started if state else None,
        "folder": str(server.root),
        "log": str(server.log),
        "default": bool(state),
    }
    if as_json:
        typer.echo(json.dumps(report))
    elif state is None:
        typer.echo(f"not running (data folder {server.root}); commands use Milvus Lite")
    elif not alive:
        typer.echo(
            f"{state.uri}: its process (pid {state.pid}) is gone. Commands refuse to run until "
            f"`vitsearch server start` or `vitsearch server stop`. Log: {server.log}"
        )
    else:
        up = time.time() - state.started
        typer.echo(
            f"{'running' if healthy else 'running, NOT healthy'}: {state.uri} (pid {state.pid}, Milvus "
            f"{state.version}, up {up / 60:.0f} min); data in {server.root}; log {server.log}"
        )
    if not healthy:
        raise typer.Exit(NOT_RUNNING)
