"""Indexing on a Ray cluster (``vitsearch index SOURCE --engine ray``): the stages of
:mod:`.runner`, executed by Ray Data instead of one process (:class:`RayExecutor`, the executor of
an :class:`~.job.IndexJob`, which holds the lease and brings the space up to date around it). The
workers' side (tasks, actors) is :mod:`.ray_tasks`; the listing and reading of SOURCE :mod:`.sources`.

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
for the incremental rule. Files are listed by this process instead (:func:`.sources.list_source`),
with size and mtime, and each task reads its files itself; a file that cannot be read or decoded
becomes a failure record.

Changed files are processed in waves of :data:`WAVE` files, one Ray Data dataset each, so the
listing is streamed and the driver's memory is bounded on any collection size. Rows are written
by the actors as their batches are embedded: a run stopped at any point keeps them, and the
next run embeds only what is missing. Ray Data retries a task lost with its worker or node, and
restarts a lost encoder actor and gives it the batch again (its defaults: ``max_restarts=-1``,
``max_task_retries=-1``); upserts keyed by path make a batch written twice harmless.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np

from vitsearch.search.config import DEFAULT_BATCH_SIZE, Settings
from vitsearch.search.encoder import Encoder, EncoderInfo
from vitsearch.search.errors import VitsearchError
from vitsearch.search.paths import path_from_stored
from vitsearch.search.store import META_FIELDS, Store
from vitsearch.search.store.bulk import bulk_load
from vitsearch.search.whitening import Space

from .job import IndexJob, IndexReport, Progress, Run
from .ray_tasks import STATUS, EmbedAndWrite, decode, entry_columns
from .runner import changed, chunks, storable
from .scan import FileEntry
from .sources import is_uri, list_source

log = logging.getLogger(__name__)

#: Changed files per Ray Data dataset: bounds the driver's memory (paths held) on huge sources.
WAVE = 100_000
#: CPUs a decode task reserves: two per core, as reading from an object store waits on the
#: network. (Also keeps Ray Data from fusing decoding into the encoder actors on a cluster
#: without GPUs: it fuses operators whose resource requests are equal.)
DECODE_CPUS = 0.5


class RayExecutor:
    """The stages on a Ray cluster (:class:`~.job.Executor`): decoding in Ray Data tasks, the
    encoder in an actor pool writing the rows (or, with ``bulk_dir``, Parquet shards).

    Attributes:
        settings: model folder, device, dtype, token... for the actors (and, through
            :meth:`encoder_settings`, for this process's encoder).
        ray_address, num_gpus_per_worker, concurrency, bulk_dir: as :func:`index_with_ray`.
    """

    def __init__(
        self,
        settings: Settings,
        ray_address: str | None = None,
        num_gpus_per_worker: float | None = None,
        concurrency: int | None = None,
        bulk_dir: str | None = None,
    ):
        self.settings, self.ray_address, self.bulk_dir = settings, ray_address, bulk_dir
        self.num_gpus_per_worker, self.concurrency = num_gpus_per_worker, concurrency
        self._pool: dict = {}  # the actors' resources, set by prepare

    def encoder_settings(self, settings: Settings, recorded: EncoderInfo | None) -> Settings:
        """This process's encoder gives the collection's encoder info and the preprocessing the
        tasks run, and embeds nothing (the actors load their own): it loads on the CPU,
        uncompiled, and for a new collection where no runtime is asked for, on torch."""
        driver = {"device": "cpu", "compile": False}
        if recorded is None and "runtime" not in settings.model_fields_set:
            driver["runtime"] = "torch"  # the workers' default on GPUs, which ONNX does not run on
        return settings.model_copy(update=driver)

    def default_batch_size(self, encoder: Encoder) -> int:
        """:data:`~vitsearch.search.config.DEFAULT_BATCH_SIZE` (this process's device is not the workers')."""
        return DEFAULT_BATCH_SIZE

    def prepare(self, job: IndexJob, run: Run) -> None:
        """Connect to the cluster, or start a local one, and size the encoder pool.

        Raises:
            VitsearchError: Ray is not installed (``pip install 'vitsearch[ray]'``), or the
                cluster could not be reached or started.
        """
        try:
            import ray
        except ImportError:
            raise VitsearchError("--engine ray needs Ray: pip install 'vitsearch[ray]'") from None
        verbose = log.isEnabledFor(logging.DEBUG)
        if not ray.is_initialized():
            try:
                _start(ray, self.ray_address, self.settings.ray_start_s, verbose)
            except VitsearchError:
                job.progress.close()  # the error is the last line
                raise
        ray.data.DataContext.get_current().enable_progress_bars = verbose  # ours is the tqdm bar
        for name in ("ray", "ray.data"):  # Ray Data logs each dataset's start and end at INFO
            logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
        gpus = ray.cluster_resources().get("GPU", 0)
        gpus_each = self.num_gpus_per_worker if self.num_gpus_per_worker is not None else (1 if gpus else 0)
        actors = self.concurrency or (max(1, int(gpus // gpus_each)) if gpus_each else 1)
        # Without GPUs the encoders run on CPUs: they share the cluster's, less one decode task's.
        cpus_each = 0 if gpus_each else max(1.0, (ray.cluster_resources().get("CPU", 1) - DECODE_CPUS) / actors)
        self._pool = {"num_gpus": gpus_each, "num_cpus": cpus_each, "actors": actors}
        log.debug("ray: %d encoder actors, %s GPUs each, %s", actors, gpus_each, ray.cluster_resources())

    def execute(self, job: IndexJob, run: Run) -> None:
        """The changed files in waves of :data:`WAVE`, one Ray Data dataset each.

        Raises:
            NotADirectoryError: ``run.source`` cannot be listed.
            VitsearchError: an actor or task failed (its own error when it raised one).
        """
        import ray

        listing = list_source(run.source, run.failed)  # a generator: checks the source at the first file
        todo = changed(storable(listing, run.failed), job.store, run.report, job.progress)
        try:
            for n, wave in enumerate(chunks(todo, WAVE)):
                ds = self._dataset(ray, job, run.space, wave)
                if self.bulk_dir is not None:  # computed once, then read twice: the status, the shards
                    from ray.data.expressions import col

                    ds = ds.materialize()
                    (
                        ds.filter(expr=(col("error") == "") & ~col("same"))
                        .select_columns(["path", "vector", *META_FIELDS[1:]])
                        .write_parquet(f"{self.bulk_dir.rstrip('/')}/wave-{n:05d}")
                    )
                for out in ds.select_columns(STATUS).iter_batches(batch_size=None, batch_format="numpy"):
                    _count(out, run, job.progress)
        except ray.exceptions.RayError as exc:
            raise _unwrap(exc) from None

    def complete(self, job: IndexJob, run: Run) -> None:
        """With ``bulk_dir`` in a Milvus server's bucket (a URI), load the shards by bulk import.

        Raises:
            StoreError: the server refused the job, or the job failed or timed out.
        """
        if self.bulk_dir is not None and not job.store.is_lite and is_uri(self.bulk_dir):
            bulk_load(job.store, self.bulk_dir)

    def _dataset(self, ray, job: IndexJob, space: Space, wave: list[FileEntry]):
        """One wave's Ray Data dataset: decoded by tasks, embedded (and written) by the actor pool."""
        h, w = job.encoder.info.image_size
        ds = ray.data.from_items(
            [entry_columns(e) for e in wave], override_num_blocks=max(1, len(wave) // job.batch_size)
        )
        ds = ds.map_batches(
            decode,
            batch_size=job.batch_size,
            batch_format="numpy",
            num_cpus=DECODE_CPUS,
            fn_kwargs={"preprocess": job.encoder.preprocessor, "limits": job.encoder.limits, "shape": (3, h, w)},
        )
        return ds.map_batches(
            EmbedAndWrite,
            batch_size=job.batch_size,
            batch_format="numpy",
            num_gpus=self._pool["num_gpus"],
            num_cpus=self._pool["num_cpus"],
            compute=ray.data.ActorPoolStrategy(size=self._pool["actors"]),
            fn_constructor_kwargs={
                "settings": self.settings,
                "info_json": job.encoder.info.to_json(),
                "uri": job.store.uri,
                "collection": job.store.collection,
                "driver_node": ray.util.get_node_ip_address(),
                "write": self.bulk_dir is None,
                "space": space,
            },
        )


def _count(out: dict[str, np.ndarray], run: Run, progress: Progress) -> None:
    """Count a batch of the actors' status columns (:data:`STATUS`) into the run's report."""
    report, errors = run.report, out["error"]
    report.unchanged += int(out["same"].sum())
    report.indexed += int(((errors == "") & ~out["same"]).sum())
    report.decode_seconds += float(out["cpu_s"].sum())
    report.embed_seconds += float(out["embed_s"].sum())
    report.write_seconds += float(out["write_s"].sum())
    for i in np.flatnonzero(errors != ""):
        run.failed(path_from_stored(str(out["path"][i])), str(errors[i]))
    progress.advance(len(errors))


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
    executor = RayExecutor(settings, ray_address, num_gpus_per_worker, concurrency, bulk_dir)
    job = IndexJob(
        store,
        encoder,
        executor,
        batch_size,
        progress=progress or Progress(),
        on_failure=on_failure,
        whitening=whitening,
        relearn=relearn,
    )
    return job.run(source)


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
