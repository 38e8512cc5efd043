"""``SearchClient``: query a collection by image, by indexed item or by vector.

The facade the CLI, the UI and users' scripts use. It opens the store, reads which encoder filled
the collection and loads that same encoder (lazily, on the first image query).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import Settings
from .encoder import Encoder
from .errors import BadQueryError, EncoderMismatchError
from .images import ImageLike, load_image
from .store import META_FIELDS, Store


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        path: absolute path of the indexed image file.
        score: cosine similarity of the CLS embeddings, in [-1, 1]; higher is closer, 1 is identical.
        metadata: the stored fields: ``folder``, ``size`` (bytes), ``mtime`` (Unix seconds),
            ``width``, ``height`` (pixels), ``sha256``, ``indexed_at`` (Unix seconds).
    """

    path: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"path", "score", **metadata}``, JSON-serialisable."""
        return {"path": self.path, "score": self.score,
                **{k: v for k, v in self.metadata.items() if k != "path"}}


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
        encoder: an already loaded :class:`Encoder` to reuse (checked against the collection).

    Raises:
        StoreError: Milvus cannot be reached.
        CollectionNotFoundError: nothing has been indexed into this collection.
        EncoderMismatchError: ``model``/``encoder`` is not the collection's encoder.
    """

    def __init__(self, uri: str | None = None, collection: str | None = None, model: str | None = None,
                 *, device: str | None = None, dtype: str | None = None, token: str | None = None,
                 image_size: int | None = None, encoder: Encoder | None = None, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.store = Store.from_settings(self.settings, uri, collection, token)
        self.encoder_info = self.store.encoder_info()
        self._model, self._device, self._dtype = model, device, dtype
        asked = image_size or self.settings.image_size
        if asked and f"{asked}x{asked}" != self.encoder_info.image_size:
            raise EncoderMismatchError(
                f"{self._where} was indexed at image size {self.encoder_info.image_size}, not "
                f"{asked}x{asked}: leave --image-size out to use the collection's")
        self._image_size = asked or self.encoder_info.square_size
        self._encoder = encoder
        self._encoder_lock = threading.Lock()  # the UI's sessions share one client
        if encoder is not None:
            self.encoder_info.check_same(encoder.info, self._where)
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
        enc = Encoder.load(self._model or self.encoder_info.model, device=self._device, dtype=self._dtype,
                           pooling=self.encoder_info.pooling, image_size=self._image_size, settings=self.settings)
        self.encoder_info.check_same(enc.info, self._where)
        self._encoder = enc

    def search(self, image: ImageLike, k: int = 10, filter: str | None = None,
               folder: str | None = None) -> list[Hit]:
        """The ``k`` indexed images most similar to ``image``, best first.

        Args:
            image: a path, encoded bytes, a PIL image or an ``(H, W, 3) uint8`` RGB array.
            k: number of results (1 to 16384).
            filter: Milvus boolean expression on the stored fields, e.g.
                ``folder == "/photos/2024"`` or ``width >= 1000``.
            folder: only images in this folder or below it (an absolute path; a relative one is
                taken from the current folder).

        Returns:
            Up to ``k`` hits (fewer if the collection or the filter holds fewer; none if empty).

        Raises:
            BadImageError: ``image`` is not an image, is corrupt, or is over the pixel limit.
            BadQueryError: ``k`` is not an integer from 1 to 16384, or ``filter`` is not a valid
                Milvus expression on the stored fields.
            StoreError: Milvus refused the search or stayed unreachable.
        """
        _check_k(k)
        picture = load_image(image)  # a bad image fails before the model is loaded
        encoder = self.encoder
        return self.search_vector(encoder.embed_pixels(encoder.preprocess([picture]))[0], k, filter, folder)

    def search_similar(self, path: str, k: int = 10, filter: str | None = None,
                       exclude_self: bool = True, folder: str | None = None) -> list[Hit]:
        """Images similar to an already indexed file, using its stored vector (no model needed).

        Args:
            path: the indexed file's path; a relative path is taken from the current folder.
            exclude_self: leave ``path`` itself out of the results.
            filter, folder: as in :meth:`search`.

        Raises:
            BadQueryError: ``path`` is not in the collection, or ``k`` out of range.
        """
        _check_k(k)
        path = os.path.abspath(path)
        rows = self.store.get([path], fields=["vector"])
        if path not in rows:
            raise BadQueryError(f"{path} is not indexed in {self._where}")
        if exclude_self:
            filter = _both(filter, f'path != "{escape(path)}"')
        return self.search_vector(np.asarray(rows[path]["vector"], np.float32), k, filter, folder)

    def search_vector(self, vector: np.ndarray, k: int = 10, filter: str | None = None,
                      folder: str | None = None) -> list[Hit]:
        """The ``k`` nearest rows to a ``(D,) float32`` L2-normalised embedding, best first.

        ``filter`` and ``folder`` as in :meth:`search`.
        """
        _check_k(k)
        if folder:
            folder = os.path.abspath(folder)
            filter = _both(filter, folder_filter(folder))
        hits = self.store.search(np.asarray(vector, np.float32)[None, :], k, filter, META_FIELDS)[0]
        if folder:  # drop the siblings that `like` wildcards can let through (see folder_filter)
            hits = [h for h in hits if is_under(h.fields["folder"], folder)]
        return [Hit(h.path, h.score, h.fields) for h in hits]

    def stats(self) -> dict[str, Any]:
        """Collection facts: ``count``, ``model``, ``dim``, ``pooling``, ``image_size``,
        ``weights_sha256``, ``index_type``, ``metric_type``, ``uri``, ``collection``."""
        info = self.encoder_info
        index = self.store.index_info()
        return {
            "uri": self.store.uri, "collection": self.store.collection, "count": self.store.count(),
            "model": info.model, "dim": info.dim, "pooling": info.pooling, "image_size": info.image_size,
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


def escape(value: str) -> str:
    """Escape a string for use inside double quotes in a Milvus filter expression."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def folder_filter(folder: str) -> str:
    """Milvus expression matching rows whose ``folder`` is ``folder`` or below it.

    Milvus's ``like`` has no escape for its wildcards ``%`` and ``_`` (milvus-io/milvus-docs#2525),
    so a folder name containing them can also match a few siblings; check with :func:`is_under`.
    """
    folder, below = _folder_and_prefix(folder)
    return f'(folder == "{escape(folder)}" or folder like "{escape(below)}%")'


def is_under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it (plain string comparison of absolute paths)."""
    folder, below = _folder_and_prefix(folder)
    return path == folder or path.startswith(below)


def _folder_and_prefix(folder: str) -> tuple[str, str]:
    """``/a/b/`` → (``/a/b``, ``/a/b/``); the root stays ``/``."""
    folder = folder.rstrip(os.sep) or os.sep
    return folder, folder if folder.endswith(os.sep) else folder + os.sep


def _both(a: str | None, b: str) -> str:
    return f"({a}) and {b}" if a else b


def _check_k(k: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= 16384:
        raise BadQueryError(f"k must be an integer from 1 to 16384, got {k!r}")
