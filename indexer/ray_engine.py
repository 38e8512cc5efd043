"""Indexing on a Ray cluster (``vitsearch index SOURCE --engine ray``): the stages of
:mod:`.runner`, executed by Ray Data instead of one process.

    list SOURCE (this process) -> compare with the collection (incremental, in chunks)
      -> read + decode + preprocess: Ray Data tasks on CPUs          [reader.read_one]
      -> embed + upsert: an actor pool, one model per GPU            [Encoder, Store]

The objects are the local engine's: the same :class:`~vitsearch.search.encoder.Encoder` (loaded
once per actor), the same :class:`~vitsearch.search.preprocess.Preprocess`, the same rows
(:func:`.runner.make_row`) and schema, the same incremental rule (path, size, mtime, ctime, inode), lease and space (the vectors
mapped into the collection's space, :mod:`vitsearch.search.whitening`, which is learned at the end
of the run as the local engine does).
Only the execution differs. SOURCE is a folder (local or a shared filesystem mounted on every
node) or a URI that ``pyarrow.fs`` opens (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``,
``file://``), the filesystem layer Ray Data's own readers use.

Why not ``ray.data.read_binary_files(SOURCE, include_paths=True)``: one file that cannot be
read (deleted since the listing, no permission) fails the whole dataset, and it gives no mtime
for the incremental rule. Files are listed here instead, with size and mtime, and each task
reads its files itself; a file that cannot be read or decoded becomes a failure record.

Changed files are processed in waves of :data:`WAVE` files, one Ray Data dataset each, so the
listing is streamed and the driver's memory is bounded on any collection size. Rows are written
by the actors as their batches are embedded: a run stopped at any point keeps them, and the
next run embeds only what is missing. Ray Data retries a task lost with its worker or node, and
restarts a lost encoder actor and gives it the batch again (its defaults: ``max_restarts=-1``,
``max_task_retries=-1``); upserts keyed by path make a batch written twice harmless.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator

import numpy as np

from vitsearch.search.config import DEFAULT_BATCH_SIZE, Settings
from vitsearch.search.encoder import Encoder, EncoderInfo, encoder_for
from vitsearch.search.errors import BadImageError, StoreError, VitsearchError
from vitsearch.search.images import Limits, read_file
from vitsearch.search.paths import path_from_stored, stored_path
from vitsearch.search.preprocess import Preprocess
from vitsearch.search.store import META_FIELDS, Store, is_server_uri, writer_lease
from vitsearch.search.store.bulk import bulk_load
from vitsearch.search.whitening import Space

from .reader import Decoded, Failed, read_one
from .runner import (
    IndexInterrupted,
    IndexReport,
    Progress,
    begin,
    changed,
    chunks,
    finish,
    make_row,
    refreshed,
    storable,
)
from .scan import FileEntry, scan

log = logging.getLogger(__name__)

#: Changed files per Ray Data dataset: bounds the driver's memory (paths held) on huge sources.
WAVE = 100_000
#: Columns the encoder actors report on each file (besides, in bulk mode, its row).
STATUS = ["path", "error", "same", "cpu_s", "embed_s", "write_s"]
#: The columns of a file to read (a :class:`~.scan.FileEntry`; ``sha256`` "" for none).
ENTRY = ["path", "size", "mtime", "ctime_ns", "inode", "sha256"]
#: CPUs a decode task reserves: two per core, as reading from an object store waits on the
#: network. (Also keeps Ray Data from fusing decoding into the encoder actors on a cluster
#: without GPUs: it fuses operators whose resource requests are equal.)
DECODE_CPUS = 0.5


def is_uri(source: str) -> bool:
    """True for ``scheme://...`` sources (object stores, ``file://``), False for plain paths."""
    return "://" in source


def list_source(source: str, on_error: Callable[[str, str], None]) -> Iterator[FileEntry]:
    """Image files under ``source`` with size and mtime: :func:`.scan.scan` for a folder, a
    recursive ``pyarrow.fs`` listing for a URI (rows keyed by the full URI).

    Raises:
        NotADirectoryError: ``source`` is neither a folder nor a listable URI prefix.
    """
    if not is_uri(source):
        if not os.path.isdir(source):
            raise NotADirectoryError(f"{source} is not a folder")
        yield from scan(os.path.abspath(source), on_error)
        return
    from pyarrow import fs as pafs

    from vitsearch.search.images import is_image_file

    try:
        filesystem, root = pafs.FileSystem.from_uri(source)
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as exc:
        raise NotADirectoryError(f"cannot list {source}: {exc}") from None
    scheme = source.split("://", 1)[0]
    for info in sorted(infos, key=lambda i: i.path):  # an object store has no ctime or inode: -1
        if info.type == pafs.FileType.File and is_image_file(info.path):
            yield FileEntry(f"{scheme}://{info.path}", int(info.size), info.mtime.timestamp())


@functools.lru_cache(maxsize=8)
def _filesystem(root: str):
    """One ``pyarrow.fs`` filesystem per ``scheme://host`` and process (opening an object
    store's resolves credentials and region: once, not per file)."""
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(root)[0]


def read_uri(uri: str, limits: Limits = Limits()) -> bytes:
    """A file's bytes through ``pyarrow.fs`` (``s3://bucket/key``, ``file:///path``...), at most
    ``limits.max_file_bytes`` of them (the size is checked before reading).

    Raises:
        BadImageError: the file cannot be opened or read, or is over the limit, naming the URI.
    """
    scheme, path = uri.split("://", 1)  # pyarrow's path: "bucket/key", or "/path" for file://
    host = path.split("/", 1)[0]  # the bucket; "" for file:///path
    try:
        filesystem = _filesystem(f"{scheme}://{host or '/'}")
        limits.check_size(filesystem.get_file_info(path).size or 0, uri)
        with filesystem.open_input_stream(path) as f:
            data = f.read(limits.max_file_bytes + 1)
    except (OSError, ValueError) as exc:
        raise BadImageError(uri, str(exc)) from None
    limits.check_size(len(data), uri)
    return data


def _decode(
    batch: dict[str, np.ndarray], preprocess: Preprocess, limits: Limits, shape: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    """Ray Data task: read, decode and preprocess a batch of files with :func:`.reader.read_one`.

    A file keeps its place: decoded (``error`` ""), unchanged (``same``: its bytes hash to its
    row's sha256, zero pixels) or failed (zero pixels, the reason in ``error``).
    """
    pixels = np.zeros((len(batch["path"]), *shape), np.float32)
    out: dict[str, list] = {"width": [], "height": [], "sha256": [], "error": [], "same": [], "cpu_s": []}
    for i, entry in enumerate(_entries(batch)):
        result = read_one(entry, preprocess, limits, read=read_uri if is_uri(entry.path) else read_file)
        info = result.info if isinstance(result, Decoded) else {"width": 0, "height": 0, "sha256": ""}
        if isinstance(result, Decoded):
            pixels[i] = result.pixels
        for key in ("width", "height", "sha256"):
            out[key].append(info[key])
        out["error"].append(result.reason if isinstance(result, Failed) else "")
        out["same"].append(not isinstance(result, (Decoded, Failed)))
        out["cpu_s"].append(result.cpu_s)
    return {
        **{k: batch[k] for k in ENTRY if k != "sha256"},
        "pixel_values": pixels,
        **{k: np.asarray(v) for k, v in out.items()},
    }


def _columns(entry: FileEntry) -> dict:
    """A file to read as a Ray Data row: Arrow strings are UTF-8, so the path is its stored text."""
    return {**{k: getattr(entry, k) for k in ENTRY}, "path": stored_path(entry.path), "sha256": entry.sha256 or ""}


def _entries(batch: dict[str, np.ndarray]) -> Iterator[FileEntry]:
    """The files of a batch of :func:`_columns` rows."""
    for path, size, mtime, ctime_ns, inode, sha256 in zip(*(batch[k] for k in ENTRY)):
        yield FileEntry(
            path_from_stored(str(path)), int(size), float(mtime), int(ctime_ns), int(inode), str(sha256) or None
        )


class EmbedAndWrite:
    """Ray Data actor: one :class:`Encoder` (on the GPU Ray gave it, if any) and one
    :class:`Store`; embeds each decoded batch and upserts its rows.

    Raises (in the constructor, failing the run):
        EncoderMismatchError: the model on this node is not the driver's (another local copy).
        StoreError: a Milvus Lite database on another node than the driver's (Lite is local to
            one machine: a cluster needs a Milvus server), or Milvus unreachable.
    """

    def __init__(
        self,
        settings: Settings,
        info_json: str,
        uri: str,
        collection: str,
        driver_node: str,
        write: bool = True,
        space: Space = Space(),
    ):
        import ray

        node = ray.util.get_node_ip_address()
        if not is_server_uri(uri) and node != driver_node:
            raise StoreError(
                f"Milvus Lite database {uri} is on {driver_node}, this Ray worker on {node}: "
                f"a Ray cluster over several machines needs a Milvus server (--uri http://HOST:19530)"
            )
        expected = EncoderInfo.from_json(info_json)
        if not ray.get_gpu_ids():  # Ray sets OMP_NUM_THREADS to 1: use the CPUs this actor reserved
            import torch

            torch.set_num_threads(max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        self.encoder = encoder_for(expected, settings, f"the collection being indexed (Ray worker on {node})")
        self.store = Store.from_settings(settings, uri=uri, collection=collection) if write else None
        self.space = space  # the run's: the driver holds the lease, so it cannot change during it

    def __call__(self, batch: dict[str, np.ndarray]):
        """Embed the decoded files of ``batch``; upsert their rows (and refresh those of files
        found unchanged), or (bulk mode, no store) return them as a ``pyarrow.Table`` with the
        status columns."""
        import torch

        good = np.flatnonzero((batch["error"] == "") & ~batch["same"])
        entries = list(_entries({**batch, "sha256": np.full(len(batch["path"]), "")}))
        embed_s = write_s = 0.0
        rows = []
        started = time.perf_counter()
        if len(good):
            vectors = self.space.to_search(self.encoder.embed_pixels(torch.from_numpy(batch["pixel_values"][good])))
            embed_s = time.perf_counter() - started
            now = time.time()
            rows = [
                make_row(
                    entries[i],
                    v,
                    {
                        "width": int(batch["width"][i]),
                        "height": int(batch["height"][i]),
                        "sha256": str(batch["sha256"][i]),
                    },
                    now,
                )
                for i, v in zip(good, vectors)
            ]
        if self.store is not None:
            same = [entries[i] for i in np.flatnonzero(batch["same"])]
            self.store.upsert(rows + (refreshed(self.store, same) if same else []))
            write_s = time.perf_counter() - started - embed_s
        n = len(batch["path"])
        status = {
            "path": batch["path"],
            "error": batch["error"],
            "same": batch["same"],
            "cpu_s": batch["cpu_s"],
            "embed_s": np.full(n, embed_s / n),
            "write_s": np.full(n, write_s / n),
        }
        return status if self.store is not None else _with_rows(status, rows, good)


def _with_rows(status: dict[str, np.ndarray], rows: list[dict], good: np.ndarray):
    """``status`` plus the collection's fields, one column each as Milvus's bulk import reads
    Parquet (``vector`` a ``list<float32>``); failed files get empty values."""
    import pyarrow as pa

    n = len(status["path"])
    columns: dict[str, list] = {name: [None] * n for name in ("vector", *META_FIELDS[1:])}
    for i, row in zip(good, rows):
        for name in columns:
            columns[name][i] = stored_path(row[name]) if name == "folder" else row[name]
    columns["vector"] = pa.array([[] if v is None else v for v in columns["vector"]], pa.list_(pa.float32()))
    return pa.table({**status, **columns})


def index_with_ray(
    source: str,
    *,
    encoder: Encoder,
    store: Store,
    settings: Settings,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ray_address: str | None = None,
    num_gpus_per_worker: float | None = None,
    concurrency: int | None = None,
    progress: Progress | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    bulk_dir: str | None = None,
    whitening: str | None = None,
    relearn: bool = False,
) -> IndexReport:
    """Index the image files under ``source`` into ``store``'s collection on a Ray cluster.

    Same contract as :func:`.runner.index_folder` (incremental, failures reported and skipped,
    one run per collection, every written row complete), executed by Ray Data.

    Args:
        source: a folder (on a cluster: mounted at the same path on every node) or a URI that
            ``pyarrow.fs`` opens (``s3://bucket/prefix``).
        encoder: gives the collection's :class:`EncoderInfo` and the preprocessing the tasks run;
            each actor loads the same model again (same weights checked) on its own device.
        store: the collection; on a cluster of several machines a Milvus server.
        settings: model folder, device, dtype, token... for the actors.
        ray_address: ``auto``, ``ray://host:10001``; default: the Ray instance already
            initialised in this process, else a local one started for this run.
        num_gpus_per_worker: GPUs per encoder actor (default 1 when the cluster has GPUs, else 0).
        concurrency: encoder actors (default: cluster GPUs / ``num_gpus_per_worker``, or 1 on a
            cluster without GPUs, where the actors share the cluster's CPUs but half of one,
            left to decoding, and run that many torch threads each).
        bulk_dir: write the rows as Parquet shards under this folder or URI
            (``wave-NNNNN/*.parquet``, one column per field) instead of upserting them; on a
            Milvus server, with ``bulk_dir`` in the server's own bucket (``s3://BUCKET/prefix``),
            they are then loaded by Milvus bulk import (:func:`~vitsearch.search.store.bulk.bulk_load`).

    Raises:
        VitsearchError: Ray is not installed (``pip install 'vitsearch[ray]'``).
        NotADirectoryError: ``source`` cannot be listed.
        IndexInterrupted, CollectionBusyError, EncoderMismatchError, StoreError: as
            :func:`.runner.index_folder`.
    """
    try:
        import ray
    except ImportError:
        raise VitsearchError("--engine ray needs Ray: pip install 'vitsearch[ray]'") from None
    progress = progress or Progress()
    report = IndexReport()
    started = time.perf_counter()

    def failed(path: str, reason: str) -> None:
        report.failures.append((path, reason))
        if on_failure:
            on_failure(path, reason)

    listing = list_source(source, failed)  # a generator: checks the source at the first file
    verbose = log.isEnabledFor(logging.DEBUG)
    if not ray.is_initialized():
        try:
            _start(ray, ray_address, settings.ray_start_s, verbose)
        except VitsearchError:
            progress.close()  # the error is the last line
            raise
    ray.data.DataContext.get_current().enable_progress_bars = verbose  # ours is the tqdm bar
    for name in ("ray", "ray.data"):  # Ray Data logs each dataset's start and end at INFO
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    gpus = ray.cluster_resources().get("GPU", 0)
    gpus_each = num_gpus_per_worker if num_gpus_per_worker is not None else (1 if gpus else 0)
    actors = concurrency or (max(1, int(gpus // gpus_each)) if gpus_each else 1)
    # Without GPUs the encoders run on CPUs: they share the cluster's, less one decode task's.
    cpus_each = 0 if gpus_each else max(1.0, (ray.cluster_resources().get("CPU", 1) - DECODE_CPUS) / actors)
    h, w = encoder.info.image_size
    log.debug("ray: %d encoder actors, %s GPUs each, %s", actors, gpus_each, ray.cluster_resources())

    store.ensure(encoder.info)
    with writer_lease(store):
        space = begin(store, progress, report)
        try:
            for n, wave in enumerate(chunks(changed(storable(listing, failed), store, report, progress), WAVE)):
                ds = ray.data.from_items(
                    [_columns(e) for e in wave], override_num_blocks=max(1, len(wave) // batch_size)
                )
                ds = ds.map_batches(
                    _decode,
                    batch_size=batch_size,
                    batch_format="numpy",
                    num_cpus=DECODE_CPUS,
                    fn_kwargs={"preprocess": encoder.preprocessor, "limits": encoder.limits, "shape": (3, h, w)},
                )
                ds = ds.map_batches(
                    EmbedAndWrite,
                    batch_size=batch_size,
                    batch_format="numpy",
                    num_gpus=gpus_each,
                    num_cpus=cpus_each,
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    fn_constructor_kwargs={
                        "settings": settings,
                        "info_json": encoder.info.to_json(),
                        "uri": store.uri,
                        "collection": store.collection,
                        "driver_node": ray.util.get_node_ip_address(),
                        "write": bulk_dir is None,
                        "space": space,
                    },
                )
                if bulk_dir is not None:  # computed once, then read twice: the status, the shards
                    from ray.data.expressions import col

                    ds = ds.materialize()
                    (
                        ds.filter(expr=(col("error") == "") & ~col("same"))
                        .select_columns(["path", "vector", *META_FIELDS[1:]])
                        .write_parquet(f"{bulk_dir.rstrip('/')}/wave-{n:05d}")
                    )
                for out in ds.select_columns(STATUS).iter_batches(batch_size=None, batch_format="numpy"):
                    errors = out["error"]
                    report.unchanged += int(out["same"].sum())
                    report.indexed += int(((errors == "") & ~out["same"]).sum())
                    report.decode_seconds += float(out["cpu_s"].sum())
                    report.embed_seconds += float(out["embed_s"].sum())
                    report.write_seconds += float(out["write_s"].sum())
                    for i in np.flatnonzero(errors != ""):
                        failed(path_from_stored(str(out["path"][i])), str(errors[i]))
                    progress.advance(len(errors))
        except KeyboardInterrupt:
            report.seconds = time.perf_counter() - started
            raise IndexInterrupted(report) from None
        except ray.exceptions.RayError as exc:
            raise _unwrap(exc) from None
        finally:
            progress.close()
        if bulk_dir is not None and is_server_uri(store.uri) and is_uri(bulk_dir):
            bulk_load(store, bulk_dir)
        finish(store, whitening, relearn, progress, report)
    report.seconds = time.perf_counter() - started
    return report


def _start(ray, address: str | None, wait_s: int, verbose: bool) -> None:
    """Connect to the Ray cluster at ``address``, or (None) start a local one, waiting ``wait_s``
    seconds for it (a busy machine can take longer than Ray's 30) and trying a second time.

    Raises:
        VitsearchError: the cluster could not be reached or started, in one line that says what to do.
    """
    if address is not None:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=verbose)
            return
        except (RuntimeError, ConnectionError, TimeoutError, ValueError) as exc:
            ray.shutdown()
            raise VitsearchError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}") from None
    os.environ["RAY_gcs_server_port_wait_time_s"] = str(wait_s)  # read by ray.init when it starts the head
    for attempt in (1, 2):
        try:
            ray.init(logging_level=logging.WARNING, log_to_driver=verbose, include_dashboard=False)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception ("node timed out during startup") too
            ray.shutdown()  # stops what the failed start left running
            if attempt == 2:
                raise VitsearchError(
                    f"the local Ray cluster did not start within {wait_s} s ({_first_line(exc)}); the machine may "
                    f"be busy: wait longer (VITSEARCH_RAY_START_S=300), or start one with `ray start --head` and "
                    f"pass --ray-address auto"
                ) from None
            log.warning(
                "the local Ray cluster did not start within %d s (%s); trying once more", wait_s, _first_line(exc)
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unwrap(exc: BaseException) -> BaseException:
    """The vitsearch error an actor or task raised, out of Ray's wrappers; else a StoreError-like
    :class:`VitsearchError` with Ray's message."""
    seen = exc
    while seen is not None:
        if isinstance(seen, VitsearchError):
            return seen
        cause = getattr(seen, "cause", None) or seen.__cause__
        seen = cause if cause is not seen else None
    return VitsearchError(f"the Ray job failed: {type(exc).__name__}: {_first_line(exc)}")
