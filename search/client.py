"""``SearchClient``: query a collection by image, by indexed item or by vector.

The facade the CLI, the UI and users' scripts use. It opens the store, reads which encoder filled
the collection and loads that same encoder (lazily, on the first image query).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .config import Settings
from .encoder import Encoder, check_image_size, encoder_for
from .errors import BadQueryError, NotIndexedError
from .images import ImageLike, Limits, decode_bytes, load_image
from .paths import absolute, printable
from .query import Box, Examples, Stored, combine
from .searcher import Searcher, Where, check_k, raw_queries
from .store import SCHEMA_VERSION, Hit, Store
from .stored_items import StoredItems
from .when import DateLike, check_sort, date_range, ordered
from .whitening import Space, normalise

__all__ = ["SearchClient", "Hit"]


class SearchClient(StoredItems):
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
        asked = {"image_size": image_size, "runtime": runtime}
        self.settings = self.settings.model_copy(update={k: v for k, v in asked.items() if v})
        self.store = Store.from_settings(self.settings, uri, collection, token)
        self._searcher = Searcher(self.store)
        self.encoder_info = self.store.encoder_info()
        self._model, self._device, self._dtype = model, device, dtype
        self._encoder = encoder
        self._encoder_lock = threading.Lock()  # the UI's sessions share one client
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

    def load(
        self, image: ImageLike, name: str | None = None, box: Box | str | Sequence[int] | None = None
    ) -> Image.Image:
        """A query as the encoder takes it: an upright RGB image, a file or bytes decoded exactly as
        the indexer decodes a file (a JPEG at reduced scale, the same size and pixel limits).

        Args:
            name: what to call bytes in an error (an upload's file name); default ``<bytes>``.
            box: only this region (:class:`~.query.Box`, in pixels of the image as displayed):
                the file is then decoded at full size, so that a small region keeps its detail.

        Raises:
            BadImageError: not an image, corrupt, over the file-size or pixel limit.
            BadQueryError: ``box`` is empty or not inside the image.
        """
        if box is not None:
            if isinstance(image, (bytes, bytearray, memoryview)):
                return Box.of(box).crop(decode_bytes(bytes(image), name or "<bytes>", None, self.limits))
            return Box.of(box).crop(load_image(image, None, self.limits))
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
        return self._searcher.space

    def search(
        self,
        image: ImageLike,
        k: int = 10,
        filter: str | None = None,
        folder: str | None = None,
        collapse_duplicates: bool = False,
        expand: int = 0,
        box: Box | str | Sequence[int] | None = None,
        after: DateLike | None = None,
        before: DateLike | None = None,
        sort: str = "score",
    ) -> list[Hit]:
        """The ``k`` indexed images most similar to ``image`` (or to a region of it), best first.

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
            box: search for this region of the image only: ``(x, y, w, h)`` or ``"x,y,w,h"``
                in pixels of the image as displayed (after its EXIF orientation); the region,
                decoded at full size, is embedded as a picture of its own (:class:`~.query.Box`).
            after, before: only images taken at or after ``after`` and before ``before``
                (capture time: EXIF, else the file's mtime, :mod:`~.capture`): ISO 8601 dates
                such as ``"2024-05"``, ``"2024-05-01"``, ``"2024-05-01T18:30+02:00"``, a
                ``datetime``/``date`` or Unix seconds; one without a time zone is local time
                (:mod:`~.when`).
            sort: ``"score"`` (default), or ``"date"``/``"date-asc"``: the close matches first,
                newest/oldest first, then the other hits by score (:func:`~.when.ordered`).

        Returns:
            Up to ``k`` hits (fewer only if the collection or the filter holds fewer); each says
            whether it is a close match (:attr:`Hit.match`). Scores are cosine similarities in
            the collection's space (:attr:`space`): after whitening, unrelated images score near
            0.

        Raises:
            BadImageError: ``image`` is not an image, is corrupt, or is over the size or pixel limit.
            BadQueryError: ``k`` is not an integer from 1 to ``MAX_K``, ``expand`` is out of
                range, ``filter`` is not one valid Milvus expression on the stored fields,
                ``box`` is empty or not inside the image, ``after``/``before`` are not dates in
                order, ``sort`` is unknown, or dates are asked of a collection indexed before
                vitsearch stored them (``vitsearch index`` upgrades it in place).
            StoreError: Milvus refused the search or stayed unreachable.
        """
        check_k(k, expand)
        self.where(folder, after, before, sort)  # a bad date fails before the image is embedded
        picture = self.load(image, box=box)
        encoder = self.encoder
        return self.search_vector(
            encoder.embed_pixels(encoder.preprocessor.array([picture]))[0],
            k,
            filter,
            folder,
            collapse_duplicates,
            expand,
            after,
            before,
            sort,
        )

    def search_examples(
        self,
        positive: Sequence[ImageLike | Stored],
        negative: Sequence[ImageLike | Stored] = (),
        weights: Sequence[float] | None = None,
        k: int = 10,
        filter: str | None = None,
        folder: str | None = None,
        collapse_duplicates: bool = False,
        expand: int = 0,
        after: DateLike | None = None,
        before: DateLike | None = None,
        sort: str = "score",
    ) -> list[Hit]:
        """The images most like the ``positive`` examples and least like the ``negative`` ones,
        best first: the examples' weighted sum minus a fifth of the negatives', in the collection's space
        (:mod:`~.query`, where the formula and its sources are).

        Args:
            positive, negative: images as :meth:`search` takes them, or :class:`~.query.Stored`
                items (an indexed file's stored vector; left out of the results).
            weights: one number above 0 per example, positives first; default all 1.
            k, filter, folder, collapse_duplicates, expand, after, before, sort: as in :meth:`search`.

        Raises:
            BadQueryError: no positive, more than :data:`~.query.MAX_EXAMPLES` examples, bad
                weights, examples that cancel out, or ``k``, ``expand``, ``filter``, dates,
                ``sort`` as in :meth:`search`.
            NotIndexedError: a :class:`~.query.Stored` example is not indexed.
            BadImageError: an example image cannot be decoded.
        """
        check_k(k, expand)
        where = self.where(folder, after, before, sort)
        examples = Examples.of(positive, negative, weights)
        items = [*examples.positive, *examples.negative]
        stored = [absolute(e.path) for e in items if isinstance(e, Stored)]
        pictures = {i: self.load(e) for i, e in enumerate(items) if not isinstance(e, Stored)}
        embedded: dict[int, np.ndarray] = {}
        if pictures:
            encoder = self.encoder
            embedded = dict(zip(pictures, encoder.embed_pixels(encoder.preprocessor.array(list(pictures.values())))))

        def run(space: Space) -> list[Hit]:
            rows = self._searcher.rows(stored, ["vector"]) if stored else {}
            for path in stored:
                if path not in rows:
                    raise NotIndexedError(f"{printable(path)} is not indexed in {self.store.where}")
            raw = np.stack(
                [
                    space.to_raw(np.asarray(rows[absolute(e.path)]["vector"], np.float32))[0]
                    if isinstance(e, Stored)
                    else normalise(np.asarray(embedded[i], np.float32)[None, :])[0]
                    for i, e in enumerate(items)
                ]
            )
            query = combine(space.to_search(raw), examples.signs())
            return self._searcher.one(
                space, query, combine(raw, examples.signs()), k, filter, where, stored, expand, collapse_duplicates
            )

        return ordered(self._searcher.consistent(run), sort)

    def search_similar(
        self,
        path: str,
        k: int = 10,
        filter: str | None = None,
        exclude_self: bool = True,
        folder: str | None = None,
        collapse_duplicates: bool = False,
        expand: int = 0,
        after: DateLike | None = None,
        before: DateLike | None = None,
        sort: str = "score",
    ) -> list[Hit]:
        """Images similar to an already indexed file, using its stored vector (no model needed).

        Args:
            path: the indexed file's path; a relative path is taken from the current folder.
            exclude_self: leave ``path`` itself out of the results (its copies stay).
            filter, folder, collapse_duplicates, expand, after, before, sort: as in :meth:`search`.

        Raises:
            NotIndexedError: ``path`` is not in the collection.
            BadQueryError: ``k`` or ``expand`` out of range, a bad filter, dates or sort.
        """
        check_k(k, expand)
        where = self.where(folder, after, before, sort)
        path = absolute(path)

        def run(space: Space) -> list[Hit]:
            query = np.asarray(self._searcher.row(path, ["vector"])["vector"], np.float32)[None, :]
            left_out = [path] if exclude_self else []
            return self._searcher.one(
                space, query, space.to_raw(query), k, filter, where, left_out, expand, collapse_duplicates
            )

        return ordered(self._searcher.consistent(run), sort)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        filter: str | None = None,
        folder: str | None = None,
        collapse_duplicates: bool = False,
        expand: int = 0,
        after: DateLike | None = None,
        before: DateLike | None = None,
        sort: str = "score",
    ) -> list[Hit]:
        """The ``k`` nearest rows to a ``(D,) float32`` embedding of the model (raw, as
        :meth:`~.encoder.Encoder.embed` gives it; mapped into the collection's space here), best first.

        The other arguments as in :meth:`search`.
        """
        check_k(k, expand)
        raw = normalise(np.asarray(vector, np.float32).reshape(1, -1))
        if collapse_duplicates:
            where = self.where(folder, after, before, sort)
            return ordered(
                self._searcher.consistent(
                    lambda space: self._searcher.collapsed(
                        space, space.to_search(raw), raw, k, filter, where, [], expand
                    )
                ),
                sort,
            )
        return self.search_vectors(raw, k, filter, folder, expand=expand, after=after, before=before, sort=sort)[0]

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        filter: str | None = None,
        folder: str | None = None,
        exclude: Sequence[str | None] | None = None,
        expand: int = 0,
        after: DateLike | None = None,
        before: DateLike | None = None,
        sort: str = "score",
    ) -> list[list[Hit]]:
        """The ``k`` nearest rows to each of ``Q`` embeddings of the model, in one Milvus search
        (two with ``expand``): row ``i`` of the answer is what :meth:`search_vector` gives for
        ``vectors[i]`` (the same ``filter``, ``folder``, ``expand``, dates and ``sort`` for all; no
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
        check_k(k, expand)
        where = self.where(folder, after, before, sort)
        raw, left_out = raw_queries(vectors, exclude)
        found = self._searcher.consistent(
            lambda space: self._searcher.run(space, space.to_search(raw), raw, k, filter, where, left_out, expand)
        )
        return [ordered(hits, sort) for hits in found]

    def where(
        self,
        folder: str | None = None,
        after: DateLike | None = None,
        before: DateLike | None = None,
        sort: str = "score",
    ) -> Where:
        """The rows a search with these arguments (as in :meth:`search`) looks at.

        Raises:
            BadQueryError: bad dates or ``sort``, or dates asked of a collection whose rows
                have none yet (schema before 3: ``vitsearch index`` upgrades it in place).
        """
        check_sort(sort)
        taken = date_range(after, before)
        dated = taken != (None, None) or sort != "score"
        if dated and self.store.schema_version() != SCHEMA_VERSION:
            raise BadQueryError(
                f"{self.store.where} was indexed before vitsearch stored capture dates: run "
                f"`vitsearch index` on its folders once to add them (no image is embedded again)"
            )
        return Where(folder, taken if taken != (None, None) else None)

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
        return {
            "uri": self.store.uri,
            "collection": self.store.collection,
            "count": count,
            **info.facts(),
            "query_runtime": query_runtime,
            "weights_sha256": info.weights_sha256,
            "index_type": index["index_type"],
            "metric_type": index["metric_type"],
            **self._searcher.consistent(lambda space: space.facts(count)),
        }

    def close(self) -> None:
        """Close the Milvus connection."""
        self.store.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
