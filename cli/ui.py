"""``vitsearch ui``: start Streamlit on the page (:mod:`vitsearch.ui.app`)."""
from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from .common import COLLECTION, RUNTIME, URI, Runtime, app, settings


@app.command()
def ui(
    uri: Optional[str] = URI,
    collection: Optional[str] = COLLECTION,
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="HTTP port of the page."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 serves "
                             "other machines too (there is no login: only on a trusted network)."),
    max_upload_mb: Optional[int] = typer.Option(None, "--max-upload-mb", min=1, help="Largest query "
                                                "image accepted, in MB. (env VITSEARCH_MAX_UPLOAD_MB; default: 20)"),
    runtime: Optional[Runtime] = RUNTIME,
) -> None:
    """Serve the search page: upload a photo in the browser, see the most similar images.

    Runs `streamlit run` on vitsearch's page. The collection may be indexed meanwhile: a Milvus
    Lite database is shared with `vitsearch index` runs on the same machine.
    """
    from importlib.resources import files

    s = settings(uri=uri, collection=collection, max_upload_mb=max_upload_mb, runtime=runtime and runtime.value)
    env = {**os.environ, "VITSEARCH_URI": s.resolved_uri(), "VITSEARCH_COLLECTION": s.collection,
           "VITSEARCH_MAX_UPLOAD_MB": str(s.max_upload_mb), **({"VITSEARCH_RUNTIME": s.runtime} if s.runtime else {})}
    page = str(files("vitsearch.ui").joinpath("app.py"))
    cmd = [sys.executable, "-m", "streamlit", "run", page, "--server.address", host,
           "--server.port", str(port), "--server.headless", "true",
           "--server.maxUploadSize", str(s.max_upload_mb), "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    typer.echo(f"vitsearch: collection {s.collection!r} at {s.resolved_uri()} on http://{host}:{port}", err=True)
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)
