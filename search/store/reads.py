"""The rows of one collection (:class:`Rows`): paged reads in primary-key order, lookups by path,
counts, writes, and searches by vector, through the store's connection and on the collection's
current generation."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from pymilvus.exceptions import MilvusException

from ..errors import BadQueryError, StoreError
from ..hit import META_FIELDS, Hit
from ..paths import path_from_stored
from .connection import Connection, ReplyTooLarge
from .expr import all_of, check_filter, literal, path_is_not, paths_in, taken_between, under, values_in
from .generations import Generations
from .profile import BackendProfile
from .schema import from_milvus, readable_fields, request_batches

log = logging.getLogger(__name__)
#: How Milvus Lite and Milvus servers word a filter they cannot parse or apply.
_FILTER_ERROR = re.compile(r"expression|parse|field|column|syntax|unterminated|operator|token", re.I)


class Rows:
    """Reads, writes and searches of one collection's rows (what :class:`~.collection.Store`
    does with them; its methods document each).

    Args:
        conn: the store's connection. names: the collection's generations (its current one).
        profile: the backend's sizes (rows a read, consistency of searches, bytes an upsert).
        filter_limits: the longest and the deepest user's filter (see :func:`~.expr.check_filter`).
    """

    def __init__(self, conn: Connection, names: Generations, profile: BackendProfile, filter_limits: tuple[int, int]):
        self.conn = conn
        self.names = names
        self.profile = profile
        self.filter_limits = filter_limits

    def fields(self, fields: Sequence[str]) -> list[str]:
        """``path`` and ``fields``, less those the collection's schema lacks."""
        return readable_fields(fields, self.names.known_schema())

    def batches(
        self,
        collection: str | None,
        fields: list[str],
        filter: str,
        batch_size: int | None = None,
        start_after: str | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Rows of ``collection`` matching ``filter`` as Milvus stores them, in batches of
        ``batch_size`` rows (default the profile's ``read_rows``), in primary-key order: each
        query asks for the next rows after the last path seen, as pymilvus' ``query_iterator``
        does (an iterator query returns rows sorted by key, and may return a short batch before
        the end, when one segment runs out), but with the path escaped: ``query_iterator`` puts
        it into ``path > "..."`` raw, so a newline or a quote in a name breaks it. A reply over
        gRPC's message limit halves the rows asked a query.

        Raises:
            ReplyTooLarge: even one row a query is over the limit.
            StoreError: Milvus refused or stayed unreachable.
        """
        fields = list(dict.fromkeys(["path", *fields]))
        last, limit = start_after, batch_size or self.profile.read_rows
        while True:
            after = f"path > {literal(last)}" if last is not None else ""
            try:
                rows = self.conn.call(
                    "query",
                    collection,
                    filter=all_of(after, filter),
                    output_fields=fields,
                    limit=limit,
                    iterator="True",
                    reduce_stop_for_best="True",
                )
            except ReplyTooLarge:
                if limit == 1:
                    raise
                limit = max(1, limit // 2)  # fewer rows a query, from here on
                log.info("a query of %s was over gRPC's message limit: reading %d rows a query", self.conn.where, limit)
                continue
            if not rows:
                return
            yield [dict(r) for r in rows]
            last = rows[-1]["path"]

    def read(
        self, fields: Sequence[str], folder: str | None = None, batch_size: int | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """The collection's rows (or those inside ``folder``) with file system paths, a batch a read."""
        for batch in self.batches(
            self.names.physical, self.fields(fields), under(folder) if folder else "", batch_size
        ):
            yield [from_milvus(r, fields) for r in batch]

    def get(self, paths: Sequence[str], fields: Sequence[str], consistency: str | None) -> dict[str, dict[str, Any]]:
        """Rows of the given paths that exist, by path (see :meth:`Store.get`)."""
        asked, fields = fields, self.fields(fields)
        found: dict[str, dict[str, Any]] = {}
        level = {"consistency_level": consistency} if consistency else {}
        name = self.names.physical
        for expr in paths_in(paths):
            for row in self.conn.call("query", name, filter=expr, output_fields=fields, **level):
                row = from_milvus(row, asked)
                found[row["path"]] = row
        if len(found) < len(set(paths)) and self.names.follow(name, "query", {"output_fields": fields}):
            return self.get(paths, asked, consistency)
        return found

    def count(self, folder: str | None = None) -> int:
        """Rows of the collection, or of files inside ``folder`` (see :meth:`Store.count`)."""
        name = self.names.physical
        res = self.conn.call("query", name, filter=under(folder) if folder else "", output_fields=["count(*)"])
        if not int(res[0]["count(*)"]) and name is not None and self.names.follow(name, "query", {}):
            return self.count(folder)
        return int(res[0]["count(*)"])

    def count_of(self, name: str) -> int:
        """Rows of the physical collection ``name``."""
        return int(self.conn.call("query", name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def upsert_stored(self, name: str | None, rows: Iterable[dict[str, Any]]) -> None:
        """Upsert rows in stored form into ``name``, in requests of at most the profile's ``upsert_bytes``."""
        for batch in request_batches(rows, self.profile.upsert_bytes):
            self.conn.call("upsert", name, batch)

    def copies(
        self,
        sha256s: Sequence[str],
        filter: str | None,
        folder: str | None,
        exclude: Sequence[str],
        taken: tuple[float | None, float | None] | None = None,
    ) -> dict[str, list[str]]:
        """The paths of the rows with each of these sha256 digests (see :meth:`Store.copies`)."""
        user = check_filter(filter or "", *self.filter_limits)
        found: dict[str, list[str]] = {}
        for expr in values_in("sha256", sorted(set(sha256s))):
            cond = all_of(expr, user, under(folder) if folder else "", taken_between(taken), path_is_not(exclude))
            for batch in self.batches(self.names.physical, ["sha256"], cond):
                for row in batch:
                    found.setdefault(row["sha256"], []).append(path_from_stored(row["path"]))
        return {sha: sorted(paths) for sha, paths in found.items()}

    def vectors(self, dim: int, folder: str | None, batch_size: int | None) -> tuple[list[str], np.ndarray]:
        """Every stored ``dim``-d vector and its path (see :meth:`Store.vectors`)."""
        paths: list[str] = []
        blocks = [np.empty((0, dim), np.float32)]
        for batch in self.batches(self.names.physical, ["vector"], under(folder) if folder else "", batch_size):
            paths.extend(path_from_stored(r["path"]) for r in batch)
            blocks.append(np.asarray([r["vector"] for r in batch], np.float32).reshape(len(batch), dim))
        return paths, np.concatenate(blocks)

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        filter: str | None,
        folder: str | None,
        exclude: Sequence[str],
        fields: Sequence[str],
        ef: int | None,
        taken: tuple[float | None, float | None] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` rows by cosine similarity for each query vector (see :meth:`Store.search`)."""
        user = check_filter(filter or "", *self.filter_limits)
        expr = all_of(user, under(folder) if folder else "", taken_between(taken), path_is_not(exclude))
        asked, fields = fields, self.fields(fields)
        name = self.names.physical
        try:
            res = self.conn.call(
                "search",
                name,
                data=np.asarray(vectors, np.float32).tolist(),
                limit=k,
                filter=expr,
                output_fields=fields,
                consistency_level=self.profile.search_consistency,
                search_params={"metric_type": "COSINE", "params": {"ef": max(ef or 64, k)}},
            )
        except StoreError as exc:
            cause = exc.__cause__
            if user and isinstance(cause, MilvusException) and _FILTER_ERROR.search(cause.message or ""):
                raise BadQueryError(
                    f"filter {user!r} is not a valid Milvus expression on this collection "
                    f"(fields: {', '.join(META_FIELDS)}): {' '.join(cause.message.split())}"
                ) from None
            raise
        if any(len(hits) < k for hits in res):  # also what Milvus Lite answers from a generation being dropped
            self.names.follow(name, "search", {})  # CollectionMoved where it was
        # A server keys hits "id", Milvus Lite by the primary-key name: read the path from the entity.
        out = []
        for hits in res:
            rows = [from_milvus(h["entity"], asked) for h in hits]
            out.append([Hit(r["path"], float(h["distance"]), r) for h, r in zip(hits, rows)])
        return out
