"""Writing stage: upserts to Milvus in a background thread, so the encoder never waits for them.

At most ``max_pending`` batches of rows wait to be written (bounded memory); beyond that
:meth:`Writer.put` blocks. A write that fails stops the writer; the error is raised by the next
:meth:`~Writer.put` or by :meth:`~Writer.close`, and rows written before it stay written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from vitsearch.search.store import Store

log = logging.getLogger(__name__)

#: Batches of rows that may wait for Milvus before the encoder is held up.
MAX_PENDING = 4


class Writer:
    """Background upserts into ``store``.

    Attributes:
        written: rows of newly embedded files written so far (not counting rows only refreshed,
            see :meth:`put`).
        seconds: time spent in upsert calls.
    """

    def __init__(self, store: Store, max_pending: int = MAX_PENDING):
        self.store = store
        self.written = 0
        self.seconds = 0.0
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vitsearch-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            rows, embedded = item
            if self._error is not None or not rows:
                continue  # drain without writing after a failure
            started = time.perf_counter()
            try:
                self.store.upsert(rows)
            except BaseException as exc:
                self._error = exc
                continue
            elapsed = time.perf_counter() - started
            self.seconds += elapsed
            self.written += len(rows) if embedded else 0
            log.debug("wrote %d rows in %.0f ms", len(rows), 1000 * elapsed)

    def put(self, rows: Sequence[dict[str, Any]], embedded: bool = True) -> None:
        """Queue rows for upsert (blocks while ``max_pending`` batches wait); ``embedded=False``
        for rows that only refresh the metadata of a stored vector (not counted in :attr:`written`).

        Raises:
            StoreError: an earlier write failed.
        """
        self._raise()
        self._queue.put((list(rows), embedded))

    def close(self) -> None:
        """Write what is queued and stop.

        Raises:
            StoreError: a write failed.
        """
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
