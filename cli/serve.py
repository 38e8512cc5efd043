"""``vitsearch serve``: the HTTP API (:mod:`vitsearch.api`) on uvicorn."""

from __future__ import annotations

import os

import typer

from .common import ALLOWED_HOSTS, COLLECTION, URI, app, fail, settings


@app.command(epilog="Docs: docs/guides/http-api.md")
def serve(
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on; 0.0.0.0 serves other machines "
        "too (set VITSEARCH_API_TOKEN then: without it there is no login; and name the "
        "host they call in --allowed-hosts).",
    ),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="HTTP port."),
    uri: str | None = URI,
    collection: str | None = COLLECTION,
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="Server processes, each with its own copy of the "
        "encoder and its own batches. One is best on one GPU (one forward pass per "
        "batch) and on a CPU (torch uses every core); more help stored-vector searches. "
        "A Milvus Lite database is shared by the processes.",
    ),
    max_upload_mb: int | None = typer.Option(
        None,
        "--max-upload-mb",
        min=1,
        help="Largest query image accepted, in MB (413 above). (env VITSEARCH_MAX_UPLOAD_MB; default: 20)",
    ),
    allowed_hosts: str | None = ALLOWED_HOSTS,
    index_roots: list[str] | None = typer.Option(
        None,
        "--index-root",
        help="Allow POST /index to index files and folders under DIR (repeatable); it also needs "
        "VITSEARCH_API_TOKEN. (env VITSEARCH_API_INDEX_ROOTS, separated by ':'; default: none, indexing over "
        "HTTP off)",
        metavar="DIR",
    ),
) -> None:
    """Serve the HTTP search API: POST /search (multipart `image`), /search/similar, /search/vector;
    GET /stats, /healthz, /readyz, /thumbnail; POST /index, GET /index/status with --index-root;
    OpenAPI at /docs.

    Image searches of concurrent requests are embedded in one forward pass (a few-ms window,
    VITSEARCH_API_BATCH_WINDOW_MS, up to VITSEARCH_API_MAX_BATCH images), and the searches of
    concurrent requests share Milvus calls. VITSEARCH_API_TOKEN set: every route but /healthz and the
    OpenAPI pages needs `Authorization: Bearer TOKEN`. VITSEARCH_API_CORS_ORIGINS: comma-separated
    origins browsers may call from. Only requests for the Host names it is served on are answered
    (localhost, 127.0.0.1, [::1], --host, --allowed-hosts); others get 400. The server starts also
    while Milvus is down or the collection is not indexed yet: /readyz and the searches answer 503
    (Retry-After) until it is.
    """
    from pydantic import ValidationError

    from vitsearch.api.settings import ApiSettings
    from vitsearch.search.config import served_hosts

    s = settings(uri=uri, collection=collection, max_upload_mb=max_upload_mb, allowed_hosts=allowed_hosts)
    try:
        api = ApiSettings()
    except ValidationError as exc:
        error = exc.errors()[0]
        fail(f"VITSEARCH_API_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}", code=2)
    if index_roots:
        missing = [r for r in index_roots if not os.path.isdir(r)]
        if missing:
            fail(f"--index-root {missing[0]} is not a folder", code=2)
        if api.token is None:
            fail("--index-root needs VITSEARCH_API_TOKEN: indexing over HTTP is never open", code=2)
        os.environ["VITSEARCH_API_INDEX_ROOTS"] = os.pathsep.join(os.path.realpath(r) for r in index_roots)
    hosts = served_hosts(host, s.allowed_hosts)
    # The worker processes build the app from the environment (uvicorn imports the factory in each).
    os.environ.update(
        {
            "VITSEARCH_URI": s.resolved_uri(),
            "VITSEARCH_COLLECTION": s.collection,
            "VITSEARCH_MAX_UPLOAD_MB": str(s.max_upload_mb),
            "VITSEARCH_ALLOWED_HOSTS": ",".join(hosts),
        }
    )
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:  # N processes share the cores, not N x all of them
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    import uvicorn

    login = "token required" if api.token else "no token"
    typer.echo(
        f"vitsearch: {s.where()} on http://{host}:{port} "
        f"({workers} worker{'s' if workers > 1 else ''}, {login}; OpenAPI at /docs; answers to Host "
        f"{', '.join(hosts)})",
        err=True,
    )
    uvicorn.run(
        "vitsearch.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
