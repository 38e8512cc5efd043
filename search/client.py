"""``SearchClient``: query a collection by image, by indexed item or by vector.

The facade the CLI, the UI and users' scripts use. It opens the store, reads which encoder filled
the collection and loads that same encoder (lazily, on the first image query).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from . import ranking
from .config import DEFAULT_DUPLICATE_THRESHOLD, DEFAULT_WHITENED_DUPLICATE_THRESHOLD, MAX_K, Settings
from .duplicates import DuplicateReport, find_duplicates
from .encoder import Encoder, check_image_size, encoder_for
from .errors import BadQueryError, NotIndexedError
from .hit import collapse
from .images import ImageLike, Limits
from .paths import absolute, printable
from .store import META_FIELDS, CollectionMoved, Hit, Store
from .store.space import read_space
from .thumbnails import THUMB_PX, thumbnail
from .whitening import Space, normalise

__all__ = ["SearchClient", "Hit"]

#: Times a query is run again where the collection's vectors move to a new generation under it.
MOVES = 3
#: Deepest search whose hits come back with their stored vectors (for the close-match label and
#: query expansion); deeper, the vectors of the few hits that may be matches are read apart.
LABEL_DEPTH = 100


class SearchClient:
    """Search an indexed collection for visually similar images.

    Args:
        uri: Milvus URI (Lite path or ``http://host:19530``); default ``VITSEARCH_URI``, else the
            Lite database in the user data directory.
        collection: default ``VITSEARCH_COLLECTION``, else ``images``.
        model: ``None`` loads the encoder recorded in the collection. A model given here must be
            the one that filled the collection.
        device, dtype: passed to :meth:`Encoder.load`.
        image_size: encoder input N x N pixels; ``None`` (default, ``VITSEARCH_IMAGE_SIZE``) takes
            the collection's. Another size than the collection's is refused.
        runtime: how queries are embedded: ``torch``, ``onnx`` or ``onnx-int8``; ``None``
            (default, ``VITSEARCH_RUNTIME``) takes the collection's: an int8 collection is searched
            with int8 (on a CPU; ONNX does not run on a GPU, where torch is used). Another
            runtime than the collection's is allowed for queries (never stored): the runtimes'
            vectors agree within cosine 0.995. An unknown name is refused (``UnsupportedRuntimeError``, when the encoder loads).
        encoder: an already loaded :class:`Encoder` to reuse (checked against the collection).

    Raises:
        StoreError: Milvus cannot be reached.
        CollectionNotFoundError: nothing has been indexed into this collection.
        EncoderMismatchError: ``model``/``encoder`` is not the collection's encoder.
    """

    def __init__(
        self,
        uri: str | None = None,
        collection: str | None = None,
        model: str | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        token: str | None = None,
        image_size: int | None = None,
        runtime: str | None = None,
        encoder: Encoder | None = None,
        settings: Settings | None = None,
    ):
        self.settings = settings or Settings()
        if image_size:
            self.settings = self.settings.model_copy(update={"image_size": image_size})
        if runtime:
            self.settings = self.settings.model_copy(update={"runtime": runtime})
        self.store = Store.from_settings(self.settings, uri, collection, token)
        self.encoder_info = self.store.encoder_info()
        self._model, self._device, self._dtype = model, device, dtype
        self._encoder = encoder
        self._encoder_lock = threading.Lock()  # the UI's sessions share one client
        self._space: tuple[str | None, Space] | None = None  # (physical collection, its space)
        check_image_size(self.encoder_info, self.settings.image_size, self.store.where)
        if encoder is not None:
            self.encoder_info.check_same(encoder.info, self.store.where, queries=True)
        elif model is not None:
            self._load_encoder()

    @property
    def encoder(self) -> Encoder:
        """The collection's encoder, loaded on first use (once, also when threads race for it)."""
        with self._encoder_lock:
            if self._encoder is None:
                self._load_encoder()
        return self._encoder

    @property
    def encoder_loaded(self) -> bool:
        """Whether :attr:`encoder` is loaded (reading it loads the model: seconds)."""
        return self._encoder is not None

    def _load_encoder(self) -> None:
        self._encoder = encoder_for(
            self.encoder_info,
            self.settings,
            self.store.where,
            model=self._model,
            device=self._device,
            dtype=self._dtype,
            follow=("image_size", "runtime"),
            queries=True,
        )

    @property
    def limits(self) -> Limits:
        """What decoding one query may cost (the same limits as indexing, from the settings)."""
        return Limits.from_settings(self.settings)

    def load(self, image: ImageLike, name: str | None = None) -> Image.Image:
        """A query as the encoder takes it: an upright RGB image, a file or bytes decoded exactly as
        the indexer decodes a file (a JPEG at reduced scale, the same size and pixel limits).

        Args:
            name: what to call bytes in an error (an upload's file name); default ``<bytes>``.

        Raises:
            BadImageError: not an image, corrupt, over the file-size or pixel limit.
        """
        preprocess = self.encoder.preprocessor
        if name is not None and isinstance(image, (bytes, bytearray, memoryview)):
            return preprocess.decode(bytes(image), name, self.limits)[0]
        return preprocess.load(image, self.limits)

    @property
    def space(self) -> Space:
        """The space of the collection's vectors (:class:`~.whitening.Space`: raw embeddings or
        whitened, and the score statistics), read again when the vectors move to a new
        generation (whitening re-learned).

        Raises:
            StoreError: Milvus refused, or the collection's whitening matrix does not match its record.
        """
        cached = self._space
        if cached is None or cached[0] != self.store.physical:
            cached = (self.store.physical, read_space(self.store))
            self._space = cached
        return cached[1]

    def _consistent(self, run: Callable[[Space], Any]) -> Any:
        """``run(space)``, run again in the new space where the collection's vectors moved to a new
        generation while it ran (a re-learn: :class:`~.store.CollectionMoved`), so that a query
        and the vectors it is compared with are always in one space."""
        for _ in range(MOVES):
            try:
                return run(self.space)
            except CollectionMoved:
                continue
        return run(self.space)

    def search(
        self,
        image: ImageLike,
        k: int = 10,
        filter: str | None = None,
        folder: str | None = None,
        collapse_duplicates: bool = False,
        expand: int = 0,
    ) -> list[Hit]:
        """The ``k`` indexed images most similar to ``image``, best first.

        Args:
            image: a path, encoded bytes, a PIL image or an ``(H, W, 3) uint8`` RGB array;
                files and bytes are decoded as the indexer decodes (see :meth:`load`).
            k: number of results (1 to :data:`~.config.MAX_K`, 16384).
            filter: Milvus boolean expression on the stored fields, e.g.
                ``folder == "/photos/2024"`` or ``width >= 1000``; one expression, ANDed with
                ``folder``.
            folder: only images in this folder or below it (an absolute path; a relative one is
                taken from the current folder): an exact prefix of path components.
            collapse_duplicates: show files with identical bytes (same stored sha256) as one hit,
                the best-ranked, whose ``copies`` lists the other paths (all of them that pass
                ``filter`` and ``folder``); still ``k`` distinct hits when the collection holds
                ``k`` (the search goes deeper, up to ``MAX_K`` rows).
            expand: query expansion with this many nearest neighbours (αQE,
                :mod:`~.ranking`; 0, the default: none), from 0 to :data:`~.ranking.MAX_EXPAND`.

        Returns:
            Up to ``k`` hits (fewer only if the collection or the filter holds fewer); each says
            whether it is a close match (:attr:`Hit.match`). Scores are cosine similarities in
            the collection's space (:attr:`space`): after whitening, unrelated images score near
            0.

        Raises:
            BadImageError: ``image`` is not an image, is corrupt, or is over the size or pixel limit.
            BadQueryError: ``k`` is not an integer from 1 to ``MAX_K``, ``expand`` is out of
                range, or ``filter`` is not one valid Milvus expression on the stored fields.
            StoreError: Milvus refused the search or stayed unreachable.
        """
        _check_k(k, expand)
        picture = self.load(image)
        encoder = self.encoder
        return self.search_vector(
            encoder.embed_pixels(encoder.preprocessor.array([picture]))[0],
            k,
            filter,
            folder,
            collapse_duplicates,
            expand,
        )

    def search_similar(
        self,
        path: str,
        k: int = 10,
        filter: str | None = None,
        exclude_self: bool = True,
        folder: str | None = None,
        collapse_duplicates: bool = False,
        expand: int = 0,
    ) -> list[Hit]:
        """Images similar to an already indexed file, using its stored vector (no model needed).

        Args:
            path: the indexed file's path; a relative path is taken from the current folder.
            exclude_self: leave ``path`` itself out of the results (its copies stay).
            filter, folder, collapse_duplicates, expand: as in :meth:`search`.

        Raises:
            NotIndexedError: ``path`` is not in the collection.
            BadQueryError: ``k`` or ``expand`` out of range, or a bad filter.
        """
        _check_k(k, expand)
        path = absolute(path)

        def run(space: Space) -> list[Hit]:
            stored = self.store.get([path], fields=["vector"], consistency=self.store.profile.search_consistency).get(
                path
            )
            if stored is None:
                raise NotIndexedError(f"{printable(path)} is not indexed in {self.store.where}")
            query = np.asarray(stored["vector"], np.float32)[None, :]
            exclude = [path] if exclude_self else []
            if collapse_duplicates:
                return self._collapsed(space, query, space.to_raw(query), k, filter, folder, exclude, expand)
            return self._search_many(space, query, space.to_raw(query), k, filter, folder, [exclude], expand)[0]

        return self._consistent(run)

    def stored_vectors(self, paths: Sequence[str]) -> dict[str, np.ndarray]:
        """The embeddings of indexed files as the model computed them (raw, also in a whitened
        collection: :meth:`~.whitening.Space.to_raw`), read in one query per 1,000 paths (no
        model needed).

        Args:
            paths: file paths; relative ones are taken from the current folder.

        Returns:
            ``{absolute path: (D,) float32 vector}`` for the paths that are indexed; the others
            are absent.

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        wanted = list(dict.fromkeys(absolute(p) for p in paths))

        def run(space: Space) -> dict[str, np.ndarray]:
            rows = self.store.get(
                wanted, fields=["vector"], consistency=self.store.profile.search_consistency
            )  # as the search after it
            if not rows:
                return {}
            raw = space.to_raw(np.asarray([row["vector"] for row in rows.values()], np.float32))
            return dict(zip(rows, raw))

        return self._consistent(run)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        filter: str | None = None,
        folder: str | None = None,
        collapse_duplicates: bool = False,
        expand: int = 0,
    ) -> list[Hit]:
        """The ``k`` nearest rows to a ``(D,) float32`` embedding of the model (raw, as
        :meth:`~.encoder.Encoder.embed` gives it; mapped into the collection's space here), best first.

        ``filter``, ``folder``, ``collapse_duplicates`` and ``expand`` as in :meth:`search`.
        """
        _check_k(k, expand)
        raw = normalise(np.asarray(vector, np.float32).reshape(1, -1))
        if collapse_duplicates:
            return self._consistent(
                lambda space: self._collapsed(space, space.to_search(raw), raw, k, filter, folder, [], expand)
            )
        return self.search_vectors(raw, k, filter, folder, expand=expand)[0]

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        filter: str | None = None,
        folder: str | None = None,
        exclude: Sequence[str | None] | None = None,
        expand: int = 0,
    ) -> list[list[Hit]]:
        """The ``k`` nearest rows to each of ``Q`` embeddings of the model, in one Milvus search
        (two with ``expand``): row ``i`` of the answer is what :meth:`search_vector` gives for
        ``vectors[i]`` (the same ``filter``, ``folder`` and ``expand`` for all; no
        ``collapse_duplicates``). What the HTTP API uses to answer the queries of concurrent
        requests with one call.

        Args:
            vectors: ``(Q, D) float32`` raw embeddings (L2-normalised or not).
            exclude: for each query, a path to leave out of its results (or ``None``): as
                :meth:`search_similar`'s ``exclude_self``. The search then asks for ``k + 1`` rows
                and drops that path, so that queries leaving out different files share one call
                (one filter); at ``k == MAX_K`` each such query is searched on its own, the path
                left out by the filter.

        Returns:
            ``Q`` lists of up to ``k`` hits, best first, labelled (:attr:`Hit.match`).

        Raises:
            BadQueryError: ``k`` or ``expand`` out of range, a bad filter, or a vector that is
                all zeros or not finite.
            StoreError: Milvus refused the search or stayed unreachable.
            ValueError: ``vectors`` is not 2-D, or ``exclude`` has not one entry per query.
        """
        _check_k(k, expand)
        vectors = np.asarray(vectors, np.float32)
        exclude = list(exclude) if exclude is not None else [None] * len(vectors)
        if vectors.ndim != 2 or len(exclude) != len(vectors):
            raise ValueError(f"expected (Q, D) vectors and Q paths to exclude, got {vectors.shape} and {len(exclude)}")
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
        if not np.all(np.isfinite(norms)) or not np.all(norms > 0):
            raise BadQueryError("a query vector must be finite and not all zeros (its direction is the query)")
        raw = normalise((vectors / norms[:, None]).astype(np.float32))  # in float64: any finite scale
        return self._consistent(
            lambda space: self._search_many(
                space, space.to_search(raw), raw, k, filter, folder, [[p] if p else [] for p in exclude], expand
            )
        )

    def _search_many(
        self,
        space: Space,
        queries: np.ndarray,
        raw: np.ndarray,
        k: int,
        filter: str | None,
        folder: str | None,
        exclude: list[list[str]],
        expand: int,
    ) -> list[list[Hit]]:
        """Search ``(Q, D)`` queries of ``space`` (``raw``: the same as raw embeddings), each
        leaving its ``exclude`` paths out, expand and search again (``expand``), label."""
        folder = absolute(folder) if folder else None
        if expand:
            first = self._hits(space, queries, expand, filter, folder, exclude, vectors=True)
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
        found = self._hits(space, queries_now, k, filter, folder, exclude)
        return [self._labelled(space, hits[:k], q, r) for hits, q, r in zip(found, queries, raw)]

    def _hits(
        self,
        space: Space,
        queries: np.ndarray,
        k: int,
        filter: str | None,
        folder: str | None,
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
            return self.store.search(queries, k, filter, folder=folder, fields=fields)
        if k == MAX_K or any(len(e) > 1 for e in exclude):
            return [
                self.store.search(q[None, :], k, filter, folder=folder, exclude=e, fields=fields)[0]
                for q, e in zip(queries, exclude)
            ]
        found = self.store.search(queries, k + 1, filter, folder=folder, fields=fields)
        return [[h for h in hits if h.path not in e][:k] for hits, e in zip(found, exclude)]

    def _labelled(self, space: Space, hits: list[Hit], query: np.ndarray, raw: np.ndarray) -> list[Hit]:
        """``hits`` labelled against ``query`` (:func:`~.ranking.label`), their stored vectors
        taken out of their metadata (read for the candidates only where the search did not
        return them)."""
        vectors = {h.path: np.asarray(h.metadata.pop("vector"), np.float32) for h in hits if "vector" in h.metadata}
        if space.whitened:
            missing = [p for p in ranking.candidates(hits, space) if p not in vectors]
            if missing:
                rows = self.store.get(missing, fields=["vector"], consistency=self.store.profile.search_consistency)
                vectors.update({p: np.asarray(r["vector"], np.float32) for p, r in rows.items()})
        return ranking.label(hits, space, query, raw, vectors)

    def _collapsed(
        self,
        space: Space,
        query: np.ndarray,
        raw: np.ndarray,
        k: int,
        filter: str | None,
        folder: str | None,
        exclude: list[str],
        expand: int,
    ) -> list[Hit]:
        """One query's hits with exact copies collapsed (``collapse_duplicates``): searched deeper
        until ``k`` distinct images are found."""
        folder = absolute(folder) if folder else None
        depth = k
        while True:
            hits = self._search_many(space, query, raw, depth, filter, folder, [exclude], expand)[0]
            distinct = collapse(hits)
            if len(distinct) >= k or len(hits) < depth or depth == MAX_K:
                break
            depth = min(MAX_K, 4 * depth)  # copies took places: search deeper for k distinct images
        distinct = distinct[:k]
        copies = self.store.copies([h.metadata["sha256"] for h in distinct], filter, folder=folder, exclude=exclude)
        return collapse(distinct, copies)

    def duplicate_threshold(self) -> float:
        """The default near-duplicate threshold of this collection's space:
        :data:`~.config.DEFAULT_DUPLICATE_THRESHOLD` on raw embeddings,
        :data:`~.config.DEFAULT_WHITENED_DUPLICATE_THRESHOLD` on whitened ones."""
        return DEFAULT_WHITENED_DUPLICATE_THRESHOLD if self.space.whitened else DEFAULT_DUPLICATE_THRESHOLD

    def duplicates(
        self,
        threshold: float | None = None,
        folder: str | None = None,
        *,
        exact_only: bool = False,
        verify: bool = True,
        on_rows: Callable[[int], None] | None = None,
    ) -> DuplicateReport:
        """Groups of images of the collection that are the same picture (no model needed; nothing
        is deleted or moved): exact duplicates by sha256, near duplicates by cosine similarity
        of the stored embeddings at or above ``threshold``, confirmed by their pixels, joined
        into connected components. See :func:`~vitsearch.search.duplicates.find_duplicates`.

        Args:
            threshold: cosine similarity of near-duplicate candidates in the collection's space,
                in (0, 1]; None: :meth:`duplicate_threshold`, chosen for the default model on
                planted copies of real photos (``benchmarks/duplicates.py``).
            folder: only files in this folder or below it, on both sides of each pair (a
                relative path is taken from the current folder).
            exact_only: only identical bytes (same sha256); no vector search.
            verify: confirm each near pair by the two files' pixels at small scale (the files
                of candidate pairs are read, through this client's decode limits); False: the
                embedding decides alone.
            on_rows: called with the number of rows scanned after each batch.

        Raises:
            BadQueryError: ``threshold`` is not in (0, 1].
            StoreError: Milvus refused or stayed unreachable.
        """
        folder = absolute(folder) if folder else None
        if not exact_only and threshold is None:
            threshold = self.duplicate_threshold()
        return find_duplicates(
            self.store, None if exact_only else threshold, folder, verify=verify, limits=self.limits, on_rows=on_rows
        )

    def thumbnail(self, path: str, max_px: int = THUMB_PX) -> bytes:
        """A JPEG thumbnail (longest side at most ``max_px`` pixels) of an indexed file, made only
        from the bytes that were indexed (:func:`~.thumbnails.thumbnail`): a path without a row
        is never opened.

        Raises:
            NotIndexedError: ``path`` has no row in the collection (the file is not touched).
            BadImageError: the file is gone, unreadable, or not the bytes that were indexed.
        """
        path = absolute(path)
        row = self.store.get([path], fields=["size", "sha256"], consistency=self.store.profile.search_consistency).get(
            path
        )
        if row is None:
            raise NotIndexedError(f"{printable(path)} is not indexed in {self.store.where}")
        return thumbnail(row, max_px, self.limits)

    def stats(self) -> dict[str, Any]:
        """Collection facts: ``count``, ``model``, ``dim``, ``pooling``, ``image_size``,
        ``runtime`` (what computed the stored vectors), ``query_runtime`` (what embeds this
        client's image queries: the loaded encoder's, else the one it would load),
        ``weights_sha256``, ``index_type``, ``metric_type``, ``uri``, ``collection``; ``space``:
        what the vectors are and when whitening is learned next (one line), ``whitening``: its
        record (``power``, ``shrinkage``, ``n`` images learned from, ``learned_at``...) or None,
        ``match_bar``: the score a close match reaches (None before statistics exist)."""
        info = self.encoder_info
        index = self.store.index_info()
        if self._encoder is not None:
            query_runtime = self._encoder.runtime
        else:
            query_runtime = self.settings.runtime if "runtime" in self.settings.model_fields_set else info.runtime
        count = self.store.count()
        space = self._consistent(lambda s: s)
        bars = space.match_bars()
        return {
            "uri": self.store.uri,
            "collection": self.store.collection,
            "count": count,
            "model": info.model,
            "dim": info.dim,
            "pooling": info.pooling,
            "image_size": info.size_text,
            "runtime": info.runtime,
            "query_runtime": query_runtime,
            "weights_sha256": info.weights_sha256,
            "index_type": index["index_type"],
            "metric_type": index["metric_type"],
            "space": space.describe(count),
            "whitening": space.whitening.record() if space.whitening else None,
            "match_bar": None if bars is None else round(bars[0], 4),
        }

    def close(self) -> None:
        """Close the Milvus connection."""
        self.store.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_k(k: int, expand: int = 0) -> None:
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BadQueryError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if not isinstance(expand, int) or not 0 <= expand <= ranking.MAX_EXPAND:
        raise BadQueryError(f"expand must be an integer from 0 to {ranking.MAX_EXPAND}, got {expand!r}")
