"""``vitsearch ui``: start Streamlit on the page (:mod:`vitsearch.ui.app`, served by
:mod:`vitsearch.ui.server` behind the Host check)."""

from __future__ import annotations

import os
import sys

import typer

from .common import ALLOWED_HOSTS, COLLECTION, RUNTIME, URI, Runtime, app, settings


@app.command(epilog="Docs: docs/guides/page.md")
def ui(
    uri: str | None = URI,
    collection: str | None = COLLECTION,
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="HTTP port of the page."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on; 0.0.0.0 serves "
        "other machines too (there is no login: only on a trusted network; name the "
        "host they open in --allowed-hosts).",
    ),
    max_upload_mb: int | None = typer.Option(
        None,
        "--max-upload-mb",
        min=1,
        help="Largest query image accepted, in MB. (env VITSEARCH_MAX_UPLOAD_MB; default: 20)",
    ),
    runtime: Runtime | None = RUNTIME,
    allowed_hosts: str | None = ALLOWED_HOSTS,
) -> None:
    """Serve the search page: upload a photo in the browser, see the most similar images.

    Runs `streamlit run` on vitsearch's page. The collection may be indexed meanwhile: a Milvus
    Lite database is shared with `vitsearch index` runs on the same machine. Only requests for the
    Host names it is served on are answered (localhost, 127.0.0.1, [::1], --host, --allowed-hosts).
    """
    from importlib.resources import files

    from vitsearch.search.config import served_hosts

    s = settings(
        uri=uri,
        collection=collection,
        max_upload_mb=max_upload_mb,
        runtime=runtime and runtime.value,
        allowed_hosts=allowed_hosts,
    )
    hosts = served_hosts(host, s.allowed_hosts)
    env = {
        **os.environ,
        "VITSEARCH_URI": s.resolved_uri(),
        "VITSEARCH_COLLECTION": s.collection,
        "VITSEARCH_MAX_UPLOAD_MB": str(s.max_upload_mb),
        "VITSEARCH_ALLOWED_HOSTS": ",".join(hosts),
        **({"VITSEARCH_RUNTIME": s.runtime} if s.runtime else {}),
    }
    page = str(files("vitsearch.ui").joinpath("server.py"))  # the app behind the Host check
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        page,
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.maxUploadSize",
        str(s.max_upload_mb),
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]
    typer.echo(
        f"vitsearch: {s.where()} on http://{host}:{port} (answers to Host {', '.join(hosts)})",
        err=True,
    )
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)
