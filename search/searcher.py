"""How one search runs against a collection in its space (:class:`~.whitening.Space`): Milvus's
top-k with the query's own paths left out, query expansion and the search again
(:func:`~.ranking.expand`), the close-match label (:func:`~.ranking.label`) and exact copies
collapsed (:func:`~.hit.collapse`). :class:`~.client.SearchClient` embeds the queries and runs
them here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import ranking
from .config import MAX_K
from .errors import BadQueryError, NotIndexedError
from .hit import Hit, collapse
from .paths import absolute, printable
from .store import META_FIELDS, CollectionMoved, Store
from .store.space import read_space
from .whitening import Space, normalise

#: Deepest search whose hits come back with their stored vectors (for the close-match label and
#: query expansion); deeper, the vectors of the few hits that may be matches are read apart.
LABEL_DEPTH = 100
#: Times a query is run again where the collection's vectors move to a new generation under it.
MOVES = 3


@dataclass(frozen=True)
class Where:
    """The rows a search looks at besides a user's filter: files inside ``folder`` (an absolute
    path, or a relative one taken from the current folder, :meth:`absolute`) taken in ``taken``
    (``(low, high)`` Unix seconds, :func:`~.when.date_range`); None: all."""

    folder: str | None = None
    taken: tuple[float | None, float | None] | None = None

    def absolute(self) -> Where:
        return replace(self, folder=absolute(self.folder) if self.folder else None)


class Searcher:
    """Runs searches of one :class:`~.store.Store`; queries are ``(Q, D) float32`` unit rows of
    the collection's space, and ``raw`` the same queries as the model's raw embeddings."""

    def __init__(self, store: Store):
        self.store = store
        self._space: tuple[str | None, Space] | None = None  # (physical collection, its space)

    @property
    def space(self) -> Space:
        """The space of the collection's vectors, read again when they move to a new generation
        (whitening re-learned).

        Raises:
            StoreError: Milvus refused, or the collection's whitening matrix does not match its record.
        """
        cached = self._space
        if cached is None or cached[0] != self.store.physical:
            cached = (self.store.physical, read_space(self.store))
            self._space = cached
        return cached[1]

    def consistent(self, run: Callable[[Space], Any]) -> Any:
        """``run(space)``, run again in the new space where the collection's vectors moved to a new
        generation while it ran (a re-learn: :class:`~.store.CollectionMoved`), so that a query
        and the vectors it is compared with are always in one space."""
        for _ in range(MOVES):
            try:
                return run(self.space)
            except CollectionMoved:
                continue
        return run(self.space)

    def rows(self, paths: list[str], fields: list[str]) -> dict[str, dict]:
        """The ``fields`` of the rows of ``paths`` that are indexed, read at the searches'
        consistency level (so a search that follows sees the same rows)."""
        return self.store.get(paths, fields=fields, consistency=self.store.profile.search_consistency)

    def row(self, path: str, fields: list[str]) -> dict:
        """The ``fields`` of the row of ``path``.

        Raises:
            NotIndexedError: ``path`` has no row.
        """
        found = self.rows([path], fields).get(path)
        if found is None:
            raise NotIndexedError(f"{printable(path)} is not indexed in {self.store.where}")
        return found

    def one(
        self,
        space: Space,
        query: np.ndarray,
        raw: np.ndarray,
        k: int,
        filter: str | None,
        where: Where,
        exclude: list[str],
        expand: int,
        collapse_duplicates: bool,
    ) -> list[Hit]:
        """One ``(1, D)`` query's hits (:meth:`run`), with exact copies collapsed where asked
        (:meth:`collapsed`)."""
        if collapse_duplicates:
            return self.collapsed(space, query, raw, k, filter, where, exclude, expand)
        return self.run(space, query, raw, k, filter, where, [exclude], expand)[0]

    def run(
        self,
        space: Space,
        queries: np.ndarray,
        raw: np.ndarray,
        k: int,
        filter: str | None,
        where: Where,
        exclude: list[list[str]],
        expand: int,
    ) -> list[list[Hit]]:
        """Search ``(Q, D)`` queries of ``space`` (``raw``: the same as raw embeddings), each
        leaving its ``exclude`` paths out, expand and search again (``expand``), label."""
        where = where.absolute()
        if expand:
            first = self.hits(space, queries, expand, filter, where, exclude, vectors=True)
            queries_now = np.stack(
                [
                    ranking.expand(
                        q, np.asarray([h.metadata["vector"] for h in hits]), np.asarray([h.score for h in hits])
                    )
                    if hits
                    else q
                    for q, hits in zip(queries, first)
                ]
            )
        else:
            queries_now = queries
        found = self.hits(space, queries_now, k, filter, where, exclude)
        return [self.labelled(space, hits[:k], q, r) for hits, q, r in zip(found, queries, raw)]

    def hits(
        self,
        space: Space,
        queries: np.ndarray,
        k: int,
        filter: str | None,
        where: Where,
        exclude: list[list[str]],
        vectors: bool = False,
    ) -> list[list[Hit]]:
        """Milvus's top ``k`` of each query, its ``exclude`` paths left out (one call: ``k + 1``
        rows asked and the path dropped, where each query leaves out at most one; else, or at
        ``MAX_K``, one call per query with the paths in the filter); a whitened collection's hits
        carry their stored ``vector`` in their metadata where ``k`` is at most :data:`LABEL_DEPTH`
        (all hits with ``vectors``)."""
        fields = (*META_FIELDS, "vector") if vectors or (space.whitened and k <= LABEL_DEPTH) else META_FIELDS
        if not any(exclude):
            return self.store.search(queries, k, filter, folder=where.folder, fields=fields, taken=where.taken)
        if k == MAX_K or any(len(e) > 1 for e in exclude):
            return [
                self.store.search(
                    q[None, :], k, filter, folder=where.folder, exclude=e, fields=fields, taken=where.taken
                )[0]
                for q, e in zip(queries, exclude)
            ]
        found = self.store.search(queries, k + 1, filter, folder=where.folder, fields=fields, taken=where.taken)
        return [[h for h in hits if h.path not in e][:k] for hits, e in zip(found, exclude)]

    def labelled(self, space: Space, hits: list[Hit], query: np.ndarray, raw: np.ndarray) -> list[Hit]:
        """``hits`` labelled against ``query`` (:func:`~.ranking.label`), their stored vectors
        taken out of their metadata (read for the candidates only where the search did not
        return them)."""
        vectors = {h.path: np.asarray(h.metadata.pop("vector"), np.float32) for h in hits if "vector" in h.metadata}
        if space.whitened:
            missing = [p for p in ranking.candidates(hits, space) if p not in vectors]
            if missing:
                rows = self.rows(missing, ["vector"])
                vectors.update({p: np.asarray(r["vector"], np.float32) for p, r in rows.items()})
        return ranking.label(hits, space, query, raw, vectors)

    def collapsed(
        self,
        space: Space,
        query: np.ndarray,
        raw: np.ndarray,
        k: int,
        filter: str | None,
        where: Where,
        exclude: list[str],
        expand: int,
    ) -> list[Hit]:
        """One query's hits with exact copies collapsed (``collapse_duplicates``): searched deeper
        until ``k`` distinct images are found."""
        where = where.absolute()
        depth = k
        while True:
            hits = self.run(space, query, raw, depth, filter, where, [exclude], expand)[0]
            distinct = collapse(hits)
            if len(distinct) >= k or len(hits) < depth or depth == MAX_K:
                break
            depth = min(MAX_K, 4 * depth)  # copies took places: search deeper for k distinct images
        distinct = distinct[:k]
        copies = self.store.copies(
            [h.metadata["sha256"] for h in distinct], filter, folder=where.folder, exclude=exclude, taken=where.taken
        )
        return collapse(distinct, copies)


def check_k(k: int, expand: int = 0) -> None:
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BadQueryError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if not isinstance(expand, int) or not 0 <= expand <= ranking.MAX_EXPAND:
        raise BadQueryError(f"expand must be an integer from 0 to {ranking.MAX_EXPAND}, got {expand!r}")


def raw_queries(vectors: np.ndarray, exclude: Sequence[str | None] | None) -> tuple[np.ndarray, list[list[str]]]:
    """``(Q, D)`` query embeddings of any finite scale as ``(Q, D) float32`` unit rows (scaled in
    float64), and each query's paths to leave out (``exclude``: one path or None per query).

    Raises:
        BadQueryError: a vector is all zeros or not finite.
        ValueError: ``vectors`` is not 2-D, or ``exclude`` has not one entry per query.
    """
    vectors = np.asarray(vectors, np.float32)
    exclude = list(exclude) if exclude is not None else [None] * len(vectors)
    if vectors.ndim != 2 or len(exclude) != len(vectors):
        raise ValueError(f"expected (Q, D) vectors and Q paths to exclude, got {vectors.shape} and {len(exclude)}")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if not np.all(np.isfinite(norms)) or not np.all(norms > 0):
        raise BadQueryError("a query vector must be finite and not all zeros (its direction is the query)")
    return normalise((vectors / norms[:, None]).astype(np.float32)), [[p] if p else [] for p in exclude]
