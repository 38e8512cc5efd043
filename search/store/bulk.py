"""Loading Parquet shards into a collection by Milvus bulk import (a Milvus server 2.4+, through
its REST API: ``pymilvus.bulk_writer``), for first loads too large to upsert
(``vitsearch index --engine ray --bulk-dir``)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

from ..errors import StoreError
from .collection import Store

log = logging.getLogger(__name__)


def bulk_import(store: Store, files: Sequence[str], timeout_s: float = 24 * 3600, poll_s: float = 5.0) -> int:
    """Load Parquet files into ``store``'s collection, one file per import task, and wait for the job.

    Args:
        files: object keys within the server's own bucket; each file has one column per
            field (``vector`` a list of float32; ``path`` and ``folder`` stored text).
        timeout_s, poll_s: how long to wait for the job, and how often to ask, in seconds.

    Returns:
        rows imported.

    Raises:
        StoreError: a Milvus Lite URI, the server refused the job, or it failed or timed out.
    """
    from pymilvus.bulk_writer import bulk_import as start
    from pymilvus.bulk_writer import get_import_progress

    if not store.profile.bulk_import:
        raise StoreError(f"bulk import needs a Milvus server, not Milvus Lite ({store.uri})")
    with _refusals(store, f"the bulk import of {len(files)} files"):
        reply = start(
            url=store.uri, collection_name=store.physical, api_key=store.token, files=[[f] for f in files]
        ).json()
    job = (reply.get("data") or {}).get("jobId")
    if not job:
        raise StoreError(
            f"Milvus at {store.uri} refused the bulk import of {len(files)} files: {reply.get('message', reply)}"
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with _refusals(store, f"bulk import job {job}"):
            state = get_import_progress(url=store.uri, job_id=job, api_key=store.token).json().get("data") or {}
        if state.get("state") == "Completed":
            return int(state.get("importedRows") or 0)
        if state.get("state") == "Failed":
            raise StoreError(f"bulk import job {job} at {store.uri} failed: {state.get('reason')}")
        time.sleep(poll_s)
    raise StoreError(f"bulk import job {job} at {store.uri} did not finish in {timeout_s:.0f} s")


@contextlib.contextmanager
def _refusals(store: Store, what: str):
    """pymilvus' own errors of a bulk import call (a refusal, a server without the REST import
    API, one that cannot be reached) as a :class:`StoreError` naming ``what``."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as exc:
        raise StoreError(
            f"Milvus at {store.uri} refused {what}: {exc.message} (bulk import needs a Milvus 2.4+ server "
            f"with its REST API; `vitsearch server` runs 2.3.5, which has none)"
        ) from exc


def bulk_load(store: Store, bulk_dir: str) -> int:
    """Load the Parquet shards under ``bulk_dir`` (``s3://BUCKET/prefix``, BUCKET the Milvus
    server's own bucket) into ``store``'s collection by :func:`bulk_import`.

    Returns:
        rows imported.

    Raises:
        StoreError: the server refused the job, or the job failed or timed out.
    """
    from pyarrow import fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(bulk_dir)
    bucket = root.split("/", 1)[0]
    files = sorted(
        i.path for i in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)) if i.path.endswith(".parquet")
    )
    rows = bulk_import(store, [f[len(bucket) + 1 :] for f in files])  # keys within the bucket
    log.info("bulk import of %d files: %d rows", len(files), rows)
    return rows
