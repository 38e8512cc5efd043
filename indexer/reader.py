"""Reading stage: file bytes to model input, in worker processes fed from a bounded queue.

A feeder thread takes files from a stream (the scan, filtered by the incremental rules) and puts
them on a queue of at most a few batches; the DataLoader's worker processes take files from it,
read, decode (a JPEG at reduced scale where the model's resize allows: ``Image.draft``) and
preprocess them, and hand back batches (pinned on CUDA). Nothing waits for the whole folder to be
scanned, and memory holds a bounded number of files and batches, whatever the folder's size.

Each file is read once: its sha256 is taken from the same bytes that are decoded. A file whose
row is already stored (``FileEntry.sha256``) and whose bytes hash to it is not decoded at all.
A file that cannot be read or decoded becomes a failure record; it never stops the batch.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from vitsearch.search.capture import capture_from_bytes
from vitsearch.search.errors import BadImageError
from vitsearch.search.images import Limits, read_file
from vitsearch.search.preprocess import Preprocess

from .scan import FileEntry

#: Files waiting for a worker, per batch of each worker: enough to keep them busy, bounded.
QUEUED_BATCHES = 2
#: Batches each worker prepares ahead (DataLoader ``prefetch_factor``).
PREFETCH = 2
#: What is read from a file beside its pixels, and each one's type: the upright image's size in
#: pixels, the sha256 of its bytes, its capture facts (:mod:`vitsearch.search.capture`).
INFO_TYPES = {"width": int, "height": int, "sha256": str, "taken_at": float, "date_source": str, "camera": str}
INFO_FIELDS = tuple(INFO_TYPES)
#: Scheduling niceness added to worker processes (see :func:`_init_worker`).
WORKER_NICENESS = 10


@dataclass
class Batch:
    """Decoded, preprocessed images ready for the encoder.

    Attributes:
        pixel_values: ``(B, 3, H, W) float32`` model input.
        entries: the B files, in the same order.
        info: per file :data:`INFO_FIELDS` of the original image (upright).
        unchanged: files whose bytes still hash to their row's sha256 (not decoded).
        failures: ``(path, reason)`` of files of this batch that could not be used.
        decode_seconds: CPU time the worker spent reading, decoding and preprocessing these files.
    """

    pixel_values: torch.Tensor
    entries: list[FileEntry]
    info: list[dict[str, Any]]
    unchanged: list[FileEntry]
    failures: list[tuple[str, str]]
    decode_seconds: float

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread (CUDA only): page-lock the pixels."""
        self.pixel_values = self.pixel_values.pin_memory()
        return self


@dataclass(frozen=True)
class Decoded:
    """A file read and turned into model input: ``pixels`` ``(3, H, W) float32``, ``info`` its
    :data:`INFO_FIELDS`, ``cpu_s`` the CPU seconds it took."""

    entry: FileEntry
    pixels: np.ndarray
    info: dict[str, Any]
    cpu_s: float


@dataclass(frozen=True)
class Unchanged:
    """A file read whose bytes hash to its row's sha256: its vector stands."""

    entry: FileEntry
    cpu_s: float


@dataclass(frozen=True)
class Failed:
    """A file that could not be read or decoded, and why (one line)."""

    entry: FileEntry
    reason: str
    cpu_s: float


def read_one(
    entry: FileEntry, preprocess: Preprocess, limits: Limits = Limits(), read: Callable[..., bytes] = read_file
) -> Decoded | Unchanged | Failed:
    """Read one file and make its model input, or find its bytes unchanged, or say why not.

    ``read(path, limits)`` returns the file's bytes or raises :class:`BadImageError` (default: a
    local file, refused unread over ``limits.max_file_bytes``).
    """
    started = time.thread_time()
    try:
        data = read(entry.path, limits)
        sha256 = hashlib.sha256(data).hexdigest()
        if entry.sha256 == sha256:
            return Unchanged(entry, time.thread_time() - started)
        image, (width, height) = preprocess.decode(data, entry.path, limits)
        pixels = preprocess(image)
        taken = capture_from_bytes(data, entry.mtime)
    except BadImageError as exc:
        return Failed(entry, exc.reason, time.thread_time() - started)
    except (ValueError, OSError) as exc:  # a checkpoint's own processor refusing an odd image
        return Failed(entry, f"preprocessing failed: {type(exc).__name__}: {exc}", time.thread_time() - started)
    info = {"width": width, "height": height, "sha256": sha256, **taken.fields()}
    return Decoded(entry, pixels, info, time.thread_time() - started)


class _Files(IterableDataset):
    """Each worker's stream: files from the shared queue until its ``None``."""

    def __init__(self, files, preprocess: Preprocess, limits: Limits):
        self.files = files
        self.preprocess = preprocess
        self.limits = limits

    def __iter__(self):
        while (entry := self.files.get()) is not None:
            yield read_one(entry, self.preprocess, self.limits)


def _init_worker(worker_id: int) -> None:
    """Workers yield the CPU to the encoder's threads (decoding only needs to keep ahead of it),
    and on Linux die with the indexer: a killed run must not leave them holding the Milvus Lite
    database's lock (inherited with the forked file descriptors)."""
    os.nice(WORKER_NICENESS)
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the line above
            os._exit(1)


def collate(items: list[Decoded | Unchanged | Failed]) -> Batch:
    """Stack the decoded items of a batch; keep the unchanged and failed files beside them."""
    good = [it for it in items if isinstance(it, Decoded)]
    pixels = torch.from_numpy(np.stack([it.pixels for it in good])) if good else torch.empty(0)
    return Batch(
        pixels,
        [it.entry for it in good],
        [it.info for it in good],
        [it.entry for it in items if isinstance(it, Unchanged)],
        [(it.entry.path, it.reason) for it in items if isinstance(it, Failed)],
        sum(it.cpu_s for it in items),
    )


def read_batches(
    files: Iterable[FileEntry],
    preprocess: Preprocess,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    limits: Limits = Limits(),
) -> Iterator[Batch]:
    """Batches of decoded images for the files of a stream, made by ``workers`` processes (0: in
    this process). ``files`` is consumed by a feeder thread as the workers need it; an error it
    raises is raised here once the files before it are done."""
    ctx = multiprocessing.get_context("fork") if workers else None
    size = QUEUED_BATCHES * batch_size * max(1, workers)
    queue_ = ctx.Queue(size) if ctx else queue.Queue(size)
    loader = DataLoader(
        _Files(queue_, preprocess, limits),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        multiprocessing_context=ctx,
        prefetch_factor=PREFETCH if workers else None,
        worker_init_fn=_init_worker,
    )
    batches = iter(loader)  # fork the workers now, before the feeder thread exists
    stop = threading.Event()
    error: list[BaseException] = []

    def put(item) -> bool:
        while not stop.is_set():
            try:
                queue_.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for entry in files:
                if not put(entry):
                    return
        except BaseException as exc:  # raised in the consumer's thread, see below
            error.append(exc)
        finally:
            for _ in range(max(1, workers)):
                put(None)

    feeder = threading.Thread(target=feed, name="vitsearch-feed", daemon=True)
    feeder.start()
    try:
        yield from batches
        feeder.join()
        if error:
            raise error[0]
    finally:
        stop.set()
        del batches  # shuts the workers down
