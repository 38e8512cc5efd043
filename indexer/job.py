"""One indexing run of a source into a collection (:class:`IndexJob`), whoever executes its stages.

    setup: the store, the encoder for the collection, the batch size      [IndexJob.open]
    check the source, start what executes the stages                     [Executor.prepare]
    create the collection, take the writer lease
      -> upgrade an older schema, finish a rewrite a stopped run left
      -> scan, compare, read, embed, write                                [Executor.execute]
      -> prune, or load bulk shards                                       [Executor.complete]
      -> bring the space up to date, persist
    the report (Ctrl-C: :class:`IndexInterrupted`, with it)

The executors are this process's pipeline (:class:`~.runner.LocalExecutor`) and a Ray cluster
(:class:`~.ray_engine.RayExecutor`); the job is the same for both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vitsearch.search.capture import with_capture
from vitsearch.search.config import Settings
from vitsearch.search.encoder import Encoder, EncoderInfo, encoder_for
from vitsearch.search.store import SCHEMA_VERSION, Store, writer_lease
from vitsearch.search.store.lease import WATCH_WAIT_S
from vitsearch.search.store.space import read_space, resume_rewrite, update_space
from vitsearch.search.whitening import Space

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What an indexing run did, and where its time went.

    Attributes:
        indexed: files embedded and written (new or changed).
        unchanged: files not embedded: their row matches (path, size, mtime, ctime and inode), or
            their bytes still hash to the row's sha256.
        rehashed: files with a row that were read to compare their bytes with its sha256 (their
            metadata changed, or ``verify``); each is then counted as unchanged or indexed.
        removed: rows deleted because their path is no longer a regular file (``prune``).
        moved: rows given a new path without embedding, their file renamed or moved with the
            same bytes (``vitsearch watch``).
        failures: ``(path, reason)`` of files that could not be read or decoded.
        seconds: wall time of the run, model loading excluded.
        decode_seconds: read + decode + preprocess CPU time, summed over the worker processes.
        embed_seconds: time in the encoder's forward passes.
        write_seconds: time in Milvus upserts (in the background).
        wait_seconds: time the encoder waited for decoded input (0 when decoding keeps up).
        space: what the run did to the collection's space: ``""`` (nothing), ``"learned"``,
            ``"re-learned"`` or ``"removed"`` (whitening), ``"resumed"`` (a rewrite a stopped
            run left).
        rewritten: rows whose vectors were rewritten into the new space (no image embedded).
        rewrite_seconds: wall time of that rewrite (learning included), within ``seconds``.
        unsupported: files under the folder that are not of an image type vitsearch reads,
            skipped unread, counted by extension in lower case (``{".mov": 12, ".mp4": 3}``;
            ``""`` for a name without one); hidden files are not counted.
    """

    indexed: int = 0
    unchanged: int = 0
    rehashed: int = 0
    removed: int = 0
    moved: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    decode_seconds: float = 0.0
    embed_seconds: float = 0.0
    write_seconds: float = 0.0
    wait_seconds: float = 0.0
    space: str = ""
    rewritten: int = 0
    rewrite_seconds: float = 0.0
    unsupported: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Number of files that failed."""
        return len(self.failures)

    @property
    def images_per_s(self) -> float:
        """Indexed images per second of wall time."""
        return self.indexed / self.seconds if self.seconds else 0.0

    def stages(self) -> str:
        """One line: where the time went."""
        return (
            f"decode {self.decode_seconds:.1f} s (CPU, workers summed), embed {self.embed_seconds:.1f} s, "
            f"write {self.write_seconds:.1f} s (background), waited for input {self.wait_seconds:.1f} s"
        )


class IndexInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped an indexing run (:func:`~.runner.index_folder`, :meth:`IndexJob.run`)
    after it wrote every row it had embedded.

    Attributes:
        report: the :class:`IndexReport` of the work done until then.
    """

    def __init__(self, report: IndexReport):
        super().__init__("indexing interrupted")
        self.report = report


class Progress:
    """Callbacks the runner reports to; the CLI passes a tqdm-backed one. Default: silent."""

    def found(self, n: int) -> None:
        """``n`` more files are to be embedded (the scan streams, so the total grows)."""

    def advance(self, n: int) -> None:
        """``n`` more files are done (embedded or failed)."""

    def close(self) -> None:
        """The embedding stage is over."""

    def rewriting(self, kind: str, rows: int) -> None:
        """The collection's ``rows`` vectors are being rewritten into a new space (``kind``:
        ``"learning"``, ``"re-learning"`` or ``"removing"`` whitening, ``"resuming"`` a rewrite
        a stopped run left; see :mod:`vitsearch.search.store.space`), or copied to the current
        schema (``"upgrading"``: :meth:`~vitsearch.search.store.Store.upgrade`)."""

    def rewritten(self, n: int) -> None:
        """``n`` more rows are rewritten."""


@dataclass
class Run:
    """The state of one :meth:`IndexJob.run` that its executor reads and fills.

    Attributes:
        source: the folder or URI indexed (:meth:`Executor.prepare` may normalise it).
        on_failure: called with ``(path, reason)`` for each file that cannot be indexed.
        report: the run's report, counted into by the executor.
        space: the space to write the run's vectors in (set once the lease is held).
    """

    source: str
    on_failure: Callable[[str, str], None] | None = None
    report: IndexReport = field(default_factory=IndexReport)
    space: Space = field(default_factory=Space)

    def failed(self, path: str, reason: str) -> None:
        """Record that ``path`` could not be indexed, and why; tell ``on_failure``."""
        self.report.failures.append((path, reason))
        log.debug("skipped %s: %s", path, reason)
        if self.on_failure:
            self.on_failure(path, reason)


class Executor(Protocol):
    """What executes the stages of an :class:`IndexJob`: scan, compare, read, embed, write.

    :meth:`execute` must write every row it embedded before it returns or raises (a
    ``KeyboardInterrupt`` included): the job then reports the run as interrupted.
    """

    def encoder_settings(self, settings: Settings, recorded: EncoderInfo | None) -> Settings:
        """The settings to load this process's encoder with, for a collection that records
        ``recorded`` (None: a new one)."""

    def default_batch_size(self, encoder: Encoder) -> int:
        """Images per forward pass when the settings give none."""

    def prepare(self, job: IndexJob, run: Run) -> None:
        """Before the collection is touched: check ``run.source``, start what runs the stages.

        Raises:
            NotADirectoryError: the source is not a folder.
            VitsearchError: the executor cannot start.
        """

    def execute(self, job: IndexJob, run: Run) -> None:
        """The stages, holding the lease: every changed file embedded into ``run.space`` and
        written, counted in ``run.report``, failures reported to ``run.failed``."""

    def complete(self, job: IndexJob, run: Run) -> None:
        """After :meth:`execute`, still holding the lease: what the executor does last (prune
        rows, load shards)."""


@dataclass
class IndexJob:
    """One collection indexed by one :class:`Executor`: the store, the encoder (this process's,
    which gives the collection's :class:`~vitsearch.search.encoder.EncoderInfo` and the
    preprocessing), the batch size, and what happens around the executor's stages: the writer
    lease, the schema upgrade, the space (:mod:`vitsearch.search.whitening`), Ctrl-C, persisting
    and the report.

    Attributes:
        store, encoder, executor: what is indexed into, with what, by what.
        batch_size: images per forward pass.
        progress: told of files found, files done and rewrites.
        on_failure: called with ``(path, reason)`` for each file that cannot be indexed.
        whitening: ``"auto"`` or ``"none"`` to change the collection's setting; None keeps it.
        relearn: learn the whitening again at the end of each run.
        release: :meth:`close` releases a Milvus Lite database (so that its folder can be removed).
        model_seconds: time :meth:`open` took to load the encoder (0 for a job built directly).
        lease_kind: what the writer lease says holds it (:func:`~vitsearch.search.store.writer_lease`):
            ``"index"``, or ``"watch"`` for a watcher's batch (which then does not wait for
            another watcher's lease).
    """

    store: Store
    encoder: Encoder
    executor: Executor
    batch_size: int
    progress: Progress = field(default_factory=Progress)
    on_failure: Callable[[str, str], None] | None = None
    whitening: str | None = None
    relearn: bool = False
    release: bool = False
    model_seconds: float = 0.0
    lease_kind: str = "index"

    @classmethod
    def open(
        cls,
        settings: Settings,
        executor: Executor,
        *,
        progress: Progress | None = None,
        on_failure: Callable[[str, str], None] | None = None,
        whitening: str | None = None,
        relearn: bool = False,
        release: bool = False,
    ) -> IndexJob:
        """The job for the collection ``settings`` name: its store opened, the encoder chosen for
        it (:func:`~vitsearch.search.encoder.encoder_for`, with the executor's
        :meth:`~Executor.encoder_settings`), the batch size ``settings.batch_size`` or the
        executor's default. Close it (:meth:`close`, or ``with``) to close the store.

        Raises:
            StoreError: Milvus cannot be opened or reached.
            EncoderMismatchError: the model asked for is not the one the collection records.
            VitsearchError: the model cannot be loaded.
        """
        store = Store.from_settings(settings)
        try:
            recorded = store.recorded_encoder()
            loading = time.perf_counter()
            encoder = encoder_for(recorded, executor.encoder_settings(settings, recorded), store.where)
            model_seconds = time.perf_counter() - loading
            batch_size = settings.batch_size or executor.default_batch_size(encoder)
        except BaseException:
            store.close(release=release)
            raise
        return cls(
            store,
            encoder,
            executor,
            batch_size,
            progress or Progress(),
            on_failure,
            whitening,
            relearn,
            release,
            model_seconds,
        )

    def run(self, source: str) -> IndexReport:
        """Index the image files under ``source`` (see :func:`~.runner.index_folder` for the
        contract: incremental, failures reported and skipped, one run per collection, every
        written row complete) and return what was done.

        Raises:
            NotADirectoryError: ``source`` is not a folder (or cannot be listed).
            IndexInterrupted: Ctrl-C; carries the report of the work done (all of it written).
            CollectionBusyError: another run is indexing into the collection.
            EncoderMismatchError: the collection was filled by another encoder.
            StoreError: Milvus refused a request or stayed unreachable.
            VitsearchError: the executor could not start or failed.
        """
        run = Run(source, self.on_failure)
        started = time.perf_counter()
        self.executor.prepare(self, run)
        self.store.ensure(self.encoder.info)
        wait_s = 0.0 if self.lease_kind == "watch" else WATCH_WAIT_S
        with writer_lease(self.store, kind=self.lease_kind, wait_s=wait_s):
            run.space = self._begin(run.report)
            log.debug("scanning %s", run.source)
            try:
                self.executor.execute(self, run)
            except KeyboardInterrupt:
                run.report.seconds = time.perf_counter() - started
                raise IndexInterrupted(run.report) from None
            finally:
                self.progress.close()
            self.executor.complete(self, run)
            self._finish(run.report)
        run.report.seconds = time.perf_counter() - started
        return run.report

    def close(self) -> None:
        """Close the store (releasing a Milvus Lite database with :attr:`release`)."""
        self.store.close(release=self.release)

    def __enter__(self) -> IndexJob:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _begin(self, report: IndexReport) -> Space:
        """What a run does first, holding the lease: upgrade an older schema (its rows given the
        capture facts of their files, :func:`~vitsearch.search.capture.with_capture`), finish a rewrite a
        stopped run left (:func:`~vitsearch.search.store.space.resume_rewrite`); the space to
        write the run's vectors in."""
        if self.store.schema_version() != SCHEMA_VERSION:
            self.progress.rewriting("upgrading", self.store.count())
            self.store.upgrade(on_rows=self.progress.rewritten, complete=with_capture)
        started = time.perf_counter()
        resumed = resume_rewrite(self.store, on_rows=self.progress.rewritten, on_start=self.progress.rewriting)
        if resumed:
            report.space, report.rewritten = "resumed", resumed
            report.rewrite_seconds += time.perf_counter() - started
        return read_space(self.store)

    def _finish(self, report: IndexReport) -> None:
        """What a run does last, holding the lease: bring the collection's space up to date
        (:func:`~vitsearch.search.store.space.update_space`) and, on Milvus Lite, write the data
        and index files while the run owns the disk."""
        started = time.perf_counter()
        kinds = {"learning": "learned", "re-learning": "re-learned", "removing": "removed"}

        def rewriting(kind: str, rows: int) -> None:
            report.space = kinds.get(kind, kind)
            self.progress.rewriting(kind, rows)

        def rewritten(n: int) -> None:
            report.rewritten += n
            self.progress.rewritten(n)

        before = report.space
        update_space(self.store, self.whitening, self.relearn, on_rows=rewritten, on_start=rewriting)
        if report.space != before:
            report.rewrite_seconds += time.perf_counter() - started
        self.store.persist()
