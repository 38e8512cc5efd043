"""One search result (:class:`Hit`), its one JSON shape (the same from ``vitsearch search
--json``, the HTTP API and :meth:`Hit.to_dict`), and hits of identical bytes folded into one
(:func:`collapse`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

#: Fields of a stored row besides the vector, in schema order: what a hit's metadata can hold.
META_FIELDS = (
    "path",
    "folder",
    "size",
    "mtime",
    "ctime_ns",
    "inode",
    "width",
    "height",
    "sha256",
    "indexed_at",
    "taken_at",
    "date_source",
    "camera",
)
_ORDER = {name: i for i, name in enumerate(META_FIELDS)}


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        path: absolute path of the indexed image file, exactly as the file system names it
            (``os.fsencode(path)`` gives its bytes, also for a name that is not UTF-8).
        score: cosine similarity of the embeddings, in [-1, 1]; higher is closer, 1 is identical.
        metadata: the stored fields asked for: ``folder``, ``size`` (bytes), ``mtime`` (Unix
            seconds), ``ctime_ns`` (Unix nanoseconds), ``inode``, ``width``, ``height`` (pixels),
            ``sha256``, ``indexed_at`` (Unix seconds), ``taken_at`` (capture time, Unix
            seconds), ``date_source`` (where ``taken_at`` came from: ``"exif"``, ``"exif-local"``
            or ``"mtime"``; ``""`` in a collection not yet upgraded, :mod:`~.capture`),
            ``camera`` (EXIF make and model, or ``""``).
        copies: with ``collapse_duplicates`` (:meth:`SearchClient.search`), the paths of the
            other indexed files with the same bytes (same ``sha256``) that this one hit stands
            for, sorted; empty otherwise.
        match: a close match: the same object, scene or product, not merely the nearest item
            (:mod:`~vitsearch.search.ranking`); False where the search did not label hits.
    """

    path: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    copies: tuple[str, ...] = ()
    match: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The hit as JSON: ``{"path", "score", "match", "metadata": {...}}`` with the metadata in
        schema order (:data:`META_FIELDS`, ``path`` not repeated), plus ``"copies": [...]`` on a
        collapsed hit that has copies."""
        metadata = dict(
            sorted(
                ((k, v) for k, v in self.metadata.items() if k != "path"),
                key=lambda kv: _ORDER.get(kv[0], len(_ORDER)),
            )
        )
        out = {"path": self.path, "score": self.score, "match": self.match, "metadata": metadata}
        return out | ({"copies": list(self.copies)} if self.copies else {})


def collapse(hits: list[Hit], copies: dict[str, list[str]] | None = None) -> list[Hit]:
    """``hits`` with every later hit of the same bytes (same ``sha256``) folded into the first,
    best-scored one, which carries the others' paths as ``copies``.

    Args:
        hits: search results, best first, with ``sha256`` in their metadata.
        copies: ``{sha256: paths}`` of every row with those bytes (:meth:`Store.copies`); when
            given, each kept hit's ``copies`` are all those paths but its own (also copies
            ranked below the hits searched), else the paths among ``hits``.

    Returns:
        the distinct hits, in order.
    """
    first: dict[str, int] = {}
    kept: list[Hit] = []
    found: list[list[str]] = []
    for hit in hits:
        sha = hit.metadata.get("sha256")
        if sha is None or sha not in first:
            if sha is not None:
                first[sha] = len(kept)
            kept.append(hit)
            found.append([])
        else:
            found[first[sha]].append(hit.path)
    out = []
    for hit, seen in zip(kept, found):
        pool = copies.get(hit.metadata.get("sha256"), seen) if copies is not None else seen
        others = sorted(p for p in pool if p != hit.path)
        out.append(replace(hit, copies=tuple(others)))
    return out
