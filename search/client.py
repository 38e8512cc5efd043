"""``SearchClient``: query a collection by image, by indexed item or by vector.

The facade the CLI, the UI and users' scripts use. It opens the store, reads which encoder filled
the collection and loads that same encoder (lazily, on the first image query).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .config import DEFAULT_DUPLICATE_THRESHOLD, MAX_K, Settings
from .duplicates import DuplicateReport, collapse, find_duplicates
from .encoder import Encoder, check_image_size, encoder_for
from .errors import BadQueryError, NotIndexedError
from .images import ImageLike, Limits
from .paths import printable
from .store import META_FIELDS, SEARCH_CONSISTENCY, Hit, Store
from .thumbnails import THUMB_PX, thumbnail

__all__ = ["SearchClient", "Hit"]


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

    def __init__(self, uri: str | None = None, collection: str | None = None, model: str | None = None,
                 *, device: str | None = None, dtype: str | None = None, token: str | None = None,
                 image_size: int | None = None, runtime: str | None = None, encoder: Encoder | None = None,
                 settings: Settings | None = None):
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
        check_image_size(self.encoder_info, self.settings.image_size, self._where)
        if encoder is not None:
            self.encoder_info.check_same(encoder.info, self._where, queries=True)
        elif model is not None:
            self._load_encoder()

    @property
    def _where(self) -> str:
        return f"collection {self.store.collection!r} at {self.store.uri}"

    @property
    def encoder(self) -> Encoder:
        """The collection's encoder, loaded on first use (once, also when threads race for it)."""
        with self._encoder_lock:
            if self._encoder is None:
                self._load_encoder()
        return self._encoder

    def _load_encoder(self) -> None:
        self._encoder = encoder_for(self.encoder_info, self.settings, self._where, model=self._model,
                                    device=self._device, dtype=self._dtype, follow=("image_size", "runtime"),
                                    queries=True)

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

    def search(self, image: ImageLike, k: int = 10, filter: str | None = None,
               folder: str | None = None, collapse_duplicates: bool = False) -> list[Hit]:
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

        Returns:
            Up to ``k`` hits (fewer only if the collection or the filter holds fewer).

        Raises:
            BadImageError: ``image`` is not an image, is corrupt, or is over the size or pixel limit.
            BadQueryError: ``k`` is not an integer from 1 to ``MAX_K``, or ``filter`` is not one valid
                Milvus expression on the stored fields.
            StoreError: Milvus refused the search or stayed unreachable.
        """
        _check_k(k)
        picture = self.load(image)
        encoder = self.encoder
        return self.search_vector(encoder.embed_pixels(encoder.preprocess([picture]))[0], k, filter, folder,
                                  collapse_duplicates)

    def search_similar(self, path: str, k: int = 10, filter: str | None = None,
                       exclude_self: bool = True, folder: str | None = None,
                       collapse_duplicates: bool = False) -> list[Hit]:
        """Images similar to an already indexed file, using its stored vector (no model needed).

        Args:
            path: the indexed file's path; a relative path is taken from the current folder.
            exclude_self: leave ``path`` itself out of the results (its copies stay).
            filter, folder, collapse_duplicates: as in :meth:`search`.

        Raises:
            NotIndexedError: ``path`` is not in the collection.
            BadQueryError: ``k`` out of range, or a bad filter.
        """
        _check_k(k)
        path = os.path.abspath(os.fsdecode(path))
        vector = self.stored_vectors([path]).get(path)
        if vector is None:
            raise NotIndexedError(f"{printable(path)} is not indexed in {self._where}")
        if collapse_duplicates:
            return self._search(vector, k, filter, folder, [path] if exclude_self else [], True)
        return self.search_vectors(vector[None, :], k, filter, folder, [path] if exclude_self else None)[0]

    def stored_vectors(self, paths: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored embeddings of indexed files, read in one query per 1,000 paths (no model
        needed).

        Args:
            paths: file paths; relative ones are taken from the current folder.

        Returns:
            ``{absolute path: (D,) float32 vector}`` for the paths that are indexed; the others
            are absent.

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        wanted = list(dict.fromkeys(os.path.abspath(os.fsdecode(p)) for p in paths))
        rows = self.store.get(wanted, fields=["vector"], consistency=SEARCH_CONSISTENCY)  # as the search after it
        return {p: np.asarray(row["vector"], np.float32) for p, row in rows.items()}

    def search_vector(self, vector: np.ndarray, k: int = 10, filter: str | None = None,
                      folder: str | None = None, collapse_duplicates: bool = False) -> list[Hit]:
        """The ``k`` nearest rows to a ``(D,) float32`` L2-normalised embedding, best first.

        ``filter``, ``folder`` and ``collapse_duplicates`` as in :meth:`search`.
        """
        _check_k(k)
        return self._search(np.asarray(vector, np.float32), k, filter, folder, [], collapse_duplicates)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, filter: str | None = None,
                       folder: str | None = None, exclude: Sequence[str | None] | None = None) -> list[list[Hit]]:
        """The ``k`` nearest rows to each of ``Q`` embeddings, in one Milvus search: row ``i`` of
        the answer is what :meth:`search_vector` gives for ``vectors[i]`` (the same ``filter`` and
        ``folder`` for all; no ``collapse_duplicates``). What the HTTP API uses to answer the
        queries of concurrent requests with one call.

        Args:
            vectors: ``(Q, D) float32`` embeddings (L2-normalised or not: the metric is cosine).
            exclude: for each query, a path to leave out of its results (or ``None``): as
                :meth:`search_similar`'s ``exclude_self``. The search then asks for ``k + 1`` rows
                and drops that path, so that queries leaving out different files share one call
                (one filter); at ``k == MAX_K`` each such query is searched on its own, the path
                left out by the filter.

        Returns:
            ``Q`` lists of up to ``k`` hits, best first.

        Raises:
            BadQueryError: ``k`` out of range, or a bad filter.
            StoreError: Milvus refused the search or stayed unreachable.
            ValueError: ``vectors`` is not 2-D, or ``exclude`` has not one entry per query.
        """
        _check_k(k)
        vectors = np.asarray(vectors, np.float32)
        exclude = list(exclude) if exclude is not None else [None] * len(vectors)
        if vectors.ndim != 2 or len(exclude) != len(vectors):
            raise ValueError(f"expected (Q, D) vectors and Q paths to exclude, got {vectors.shape} and {len(exclude)}")
        folder = os.path.abspath(os.fsdecode(folder)) if folder else None
        if not any(exclude):
            return self.store.search(vectors, k, filter, folder=folder, fields=META_FIELDS)
        if k == MAX_K:  # no room for one more row: the filter leaves the path out, one query at a time
            return [self._search(v, k, filter, folder, [p] if p else []) for v, p in zip(vectors, exclude)]
        found = self.store.search(vectors, k + 1, filter, folder=folder, fields=META_FIELDS)
        return [[h for h in hits if h.path != path][:k] for hits, path in zip(found, exclude)]

    def _search(self, vector: np.ndarray, k: int, filter: str | None, folder: str | None,
                exclude: list[str], collapse_duplicates: bool = False) -> list[Hit]:
        folder = os.path.abspath(os.fsdecode(folder)) if folder else None
        depth = k
        while True:
            hits = self.store.search(vector[None, :], depth, filter, folder=folder, exclude=exclude,
                                     fields=META_FIELDS)[0]
            if not collapse_duplicates:
                return hits
            distinct = collapse(hits)
            if len(distinct) >= k or len(hits) < depth or depth == MAX_K:
                break
            depth = min(MAX_K, 4 * depth)  # copies took places: search deeper for k distinct images
        distinct = distinct[:k]
        copies = self.store.copies([h.metadata["sha256"] for h in distinct], filter, folder=folder, exclude=exclude)
        return collapse(distinct, copies)

    def duplicates(self, threshold: float = DEFAULT_DUPLICATE_THRESHOLD, folder: str | None = None, *,
                   exact_only: bool = False, verify: bool = True,
                   on_rows: Callable[[int], None] | None = None) -> DuplicateReport:
        """Groups of images of the collection that are the same picture (no model needed; nothing
        is deleted or moved): exact duplicates by sha256, near duplicates by cosine similarity
        of the stored embeddings at or above ``threshold``, confirmed by their pixels, joined
        into connected components. See :func:`~vitsearch.search.duplicates.find_duplicates`.

        Args:
            threshold: cosine similarity of near-duplicate candidates, in (0, 1]; the default
                was chosen for the default model on planted copies of real photos
                (``benchmarks/duplicates.py``).
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
        folder = os.path.abspath(os.fsdecode(folder)) if folder else None
        return find_duplicates(self.store, None if exact_only else threshold, folder, verify=verify,
                               limits=self.limits, on_rows=on_rows)

    def thumbnail(self, path: str, max_px: int = THUMB_PX) -> bytes:
        """A JPEG thumbnail (longest side at most ``max_px`` pixels) of an indexed file, made only
        from the bytes that were indexed (:func:`~.thumbnails.thumbnail`): a path without a row
        is never opened.

        Raises:
            NotIndexedError: ``path`` has no row in the collection (the file is not touched).
            BadImageError: the file is gone, unreadable, or not the bytes that were indexed.
        """
        path = os.path.abspath(os.fsdecode(path))
        row = self.store.get([path], fields=["size", "sha256"], consistency=SEARCH_CONSISTENCY).get(path)
        if row is None:
            raise NotIndexedError(f"{printable(path)} is not indexed in {self._where}")
        return thumbnail(row, max_px, self.limits)

    def stats(self) -> dict[str, Any]:
        """Collection facts: ``count``, ``model``, ``dim``, ``pooling``, ``image_size``,
        ``runtime`` (what computed the stored vectors), ``query_runtime`` (what embeds this
        client's image queries: the loaded encoder's, else the one it would load),
        ``weights_sha256``, ``index_type``, ``metric_type``, ``uri``, ``collection``."""
        info = self.encoder_info
        index = self.store.index_info()
        if self._encoder is not None:
            query_runtime = self._encoder.runtime
        else:
            query_runtime = self.settings.runtime if "runtime" in self.settings.model_fields_set else info.runtime
        return {
            "uri": self.store.uri, "collection": self.store.collection, "count": self.store.count(),
            "model": info.model, "dim": info.dim, "pooling": info.pooling, "image_size": info.size_text,
            "runtime": info.runtime, "query_runtime": query_runtime,
            "weights_sha256": info.weights_sha256, "index_type": index["index_type"],
            "metric_type": index["metric_type"],
        }

    def close(self) -> None:
        """Close the Milvus connection."""
        self.store.close()

    def __enter__(self) -> "SearchClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_k(k: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BadQueryError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
