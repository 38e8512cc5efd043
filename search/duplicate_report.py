"""What a duplicate scan found (:func:`~.duplicates.find_duplicates`): the groups, their images and
pairs, and the report as JSON and CSV (``vitsearch duplicates --json/--csv``, the page's
download)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

#: Columns of the CSV (:meth:`DuplicateReport.write_csv`): one row per image of a group.
CSV_COLUMNS = ("group", "path", "keep", "score", "kind", "size", "width", "height", "mtime", "sha256", "same_file")


@dataclass(frozen=True)
class DuplicateImage:
    """One image of a duplicate group, as its row was indexed.

    Attributes:
        path: the file's path, exact (``os.fsencode`` gives its bytes).
        size: file size in bytes. width, height: pixels. mtime: Unix seconds.
        sha256: hex digest of the file's bytes.
        score: cosine similarity of its embedding to the group's keeper's (1.0 for the keeper
            and its exact copies).
        same_file: the keeper's own file under another name (a symbolic or hard link: the same
            inode and ctime, links followed): removing it frees nothing, and removing the
            keeper's target would remove this one's bytes too.
    """

    path: str
    size: int
    width: int
    height: int
    mtime: float
    sha256: str
    score: float = 1.0
    same_file: bool = False

    @property
    def pixels(self) -> int:
        """``width * height``."""
        return self.width * self.height


@dataclass(frozen=True)
class DuplicatePair:
    """Two images of a group found to be the same picture: ``score`` is their cosine similarity
    (1.0 for identical bytes, which are paired by sha256, not by embedding); ``pixels`` the
    pixel score that confirmed it (:func:`~.pixels.pixel_score`, in [-1, 1]), None for
    identical bytes, without the check, or where a file could not be read."""

    a: str
    b: str
    score: float
    pixels: float | None = None


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are the same picture: a connected component of the duplicate pairs.

    Attributes:
        kind: ``"exact"`` when every image has the same bytes (sha256), else ``"near"``.
        images: the images, the suggested keeper first, then by score to it (best first), path.
        keep: the suggested keeper's path: the largest pixel count, then the oldest mtime
            (then the first path, so that it is stable).
        min_score: the group's weakest link: the lowest pair score on the strongest pairs that
            hold the group together (a maximum spanning tree); 1.0 for an exact group.
        pairs: the pairs found inside the group (each at or above the threshold), best first.
    """

    kind: Literal["exact", "near"]
    images: tuple[DuplicateImage, ...]
    keep: str
    min_score: float
    pairs: tuple[DuplicatePair, ...] = ()

    @property
    def paths(self) -> list[str]:
        """The images' paths, keeper first."""
        return [im.path for im in self.images]

    def to_dict(self) -> dict[str, Any]:
        """``{"kind", "paths", "keep", "min_score", "images": [...], "pairs": [[a, b, score, pixels], ...]}``."""
        return {
            "kind": self.kind,
            "paths": self.paths,
            "keep": self.keep,
            "min_score": self.min_score,
            "images": [
                {
                    "path": im.path,
                    "size": im.size,
                    "width": im.width,
                    "height": im.height,
                    "mtime": im.mtime,
                    "sha256": im.sha256,
                    "score": im.score,
                    "same_file": im.same_file,
                }
                for im in self.images
            ],
            "pairs": [[p.a, p.b, p.score, p.pixels] for p in self.pairs],
        }


@dataclass(frozen=True)
class DuplicateReport:
    """What :func:`find_duplicates` found.

    Attributes:
        groups: the groups, largest first, then by weakest link (strongest first), keeper path.
        images: number of images scanned (the collection, or the folder's files).
        seconds: wall time of the scan, in seconds.
        threshold: the cosine similarity used (None with ``exact_only``).
        folder: the folder scanned, or None for the whole collection.
        verified: whether near pairs were confirmed by their pixels.
        unverified: ``{path: reason}`` of files of candidate pairs that could not be read for
            the pixel check (gone, changed, unreadable): their pairs kept the embedding's decision.
    """

    groups: tuple[DuplicateGroup, ...]
    images: int
    seconds: float
    threshold: float | None
    folder: str | None = None
    verified: bool = False
    unverified: dict[str, str] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        """Images that are not their group's keeper (what removing the copies would save)."""
        return sum(len(g.images) - 1 for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        """``{"groups": [...], "images": N, "seconds": S, "threshold": T, "folder": F,
        "verified": V, "unverified": {path: reason}}``; paths that are not UTF-8 hold their
        bytes as surrogates (``json.dumps`` escapes them)."""
        return {
            "groups": [g.to_dict() for g in self.groups],
            "images": self.images,
            "seconds": self.seconds,
            "threshold": self.threshold,
            "folder": self.folder,
            "verified": self.verified,
            "unverified": self.unverified,
        }

    def write_csv(self, out: TextIO) -> None:
        """One row per image of a group (:data:`CSV_COLUMNS`: group number from 1, path, keep
        ``yes``/``no``, score to the keeper, ...). Open ``out`` with ``newline=""`` and
        ``errors="surrogateescape"`` so that a name that is not UTF-8 is written as its bytes."""
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for number, group in enumerate(self.groups, 1):
            for im in group.images:
                writer.writerow(
                    [
                        number,
                        im.path,
                        "yes" if im.path == group.keep else "no",
                        f"{im.score:.6f}",
                        group.kind,
                        im.size,
                        im.width,
                        im.height,
                        im.mtime,
                        im.sha256,
                        "yes" if im.same_file else "no",
                    ]
                )

    def csv_bytes(self) -> bytes:
        """:meth:`write_csv` as bytes (UTF-8; a name that is not UTF-8 as its own bytes)."""
        buf = io.StringIO(newline="")
        self.write_csv(buf)
        return buf.getvalue().encode("utf-8", "surrogateescape")
