"""When and with what a photo was taken: its capture time and camera from EXIF, stored per row.

The capture time is EXIF ``DateTimeOriginal`` (tag 0x9003 of the Exif IFD, with
``SubSecTimeOriginal``), placed in time by ``OffsetTimeOriginal`` where the file has it (EXIF 2.31,
2016: most phones write it). A date without an offset is a wall-clock time of an unknown zone: it
is read in the local time zone of the process (as exiftool and most photo tools read it). A file
with no readable date has its modification time instead. :attr:`Capture.source` says which of the
three it is. The camera is EXIF ``Make`` and ``Model`` (0x010F, 0x0110 of IFD0) as one name.

EXIF is text from the file: a date that is not a valid time, an offset out of range, control
characters in a camera name are refused or removed here, never stored as they come.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from PIL import Image

from . import images  # noqa: F401 (registers pillow-heif's opener: HEIC files are read here too)

#: Where :attr:`Capture.taken_at` came from: EXIF with its offset (an exact instant), EXIF
#: without one (read in the local time zone), the file's modification time.
SOURCES = ("exif", "exif-local", "mtime")
#: Longest camera name stored, in characters.
MAX_CAMERA_CHARS = 128
#: Bytes of a file read to find its EXIF where only the metadata is wanted (:func:`read_capture`):
#: JPEG, PNG and WebP put it near the start; HEIF, AVIF and TIFF, whose metadata may follow the
#: image data, are read up to 16 times as far.
HEADER_BYTES = 1 << 20
#: Earliest and latest capture year taken from EXIF (a camera's unset clock says 0000 or 1904).
_YEARS = (1826, 2200)
_EXIF_IFD = 0x8769
_MAKE, _MODEL = 0x010F, 0x0110
_DATE, _OFFSET, _SUBSEC = 0x9003, 0x9011, 0x9291
_DATE_RE = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET_RE = re.compile(r"([+-])(\d{2}):(\d{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class Capture:
    """A photo's capture facts, as a row stores them.

    Attributes:
        taken_at: capture time, Unix seconds (UTC).
        source: one of :data:`SOURCES`.
        camera: ``"Make Model"`` from EXIF (at most :data:`MAX_CAMERA_CHARS` printable
            characters), ``""`` when the file names none.
    """

    taken_at: float
    source: str
    camera: str = ""

    def fields(self) -> dict[str, Any]:
        """The row's fields: ``{"taken_at", "date_source", "camera"}``."""
        return {"taken_at": self.taken_at, "date_source": self.source, "camera": self.camera}


def capture_of(exif: Image.Exif, mtime: float) -> Capture:
    """The capture facts in ``exif`` (an image's :meth:`~PIL.Image.Image.getexif`); ``mtime``
    (Unix seconds) where it holds no valid ``DateTimeOriginal``."""
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # a damaged Exif IFD: the rest of the EXIF still counts
        sub = {}
    camera = camera_name(exif.get(_MAKE), exif.get(_MODEL))
    taken = exif_time(sub.get(_DATE), sub.get(_SUBSEC), sub.get(_OFFSET))
    if taken is None:
        return Capture(float(mtime), "mtime", camera)
    return Capture(taken[0], "exif" if taken[1] else "exif-local", camera)


def capture_from_bytes(data: bytes, mtime: float) -> Capture:
    """The capture facts of an encoded image (EXIF read, nothing decoded); ``mtime`` where it
    has no date or cannot be opened."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return capture_of(img.getexif(), mtime)
    except Exception:  # not an image, a damaged header or EXIF, a decompression-bomb header
        return Capture(float(mtime), "mtime")


def read_capture(path: str, mtime: float, max_bytes: int = HEADER_BYTES) -> Capture:
    """The capture facts of the file at ``path``, read from its first ``max_bytes`` (HEIF, AVIF
    and TIFF, whose metadata may follow the image data, up to ``16 * max_bytes``); ``mtime``
    where it is not a readable regular file or has no date. Opened without blocking and never
    read unless it is a regular file (a FIFO renamed like a photo is not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return Capture(float(mtime), "mtime")
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    if not regular:
        os.close(fd)
        return Capture(float(mtime), "mtime")
    with open(fd, "rb", closefd=True) as f:
        try:
            head = f.read(max_bytes)
            if head[4:8] == b"ftyp" or head[:4] in (b"II*\x00", b"MM\x00*"):  # HEIF, AVIF, TIFF: read on
                head += f.read(15 * max_bytes)
        except OSError:
            return Capture(float(mtime), "mtime")
    return capture_from_bytes(head, mtime)


def with_capture(rows: list[dict[str, Any]], threads: int = 8) -> list[dict[str, Any]]:
    """``rows`` (with file system ``path`` and ``mtime``) with the capture facts of their files
    (:func:`read_capture`, a few files at a time: the reads wait on the disk), each one's stored
    ``mtime`` where its file cannot be read: what a schema upgrade fills its rows with
    (:meth:`~.store.Store.upgrade`), reading the files' metadata, not their pixels."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(lambda r: read_capture(r["path"], r["mtime"]), rows))
    return [{**row, **capture.fields()} for row, capture in zip(rows, found)]


def exif_time(date: Any, subsec: Any = None, offset: Any = None) -> tuple[float, bool] | None:
    """An EXIF date (``"YYYY:MM:DD HH:MM:SS"``) with its sub-seconds and ``"+HH:MM"`` offset as
    ``(Unix seconds, whether the offset placed it)``, or None for a missing or invalid date
    (also one before 1826 or after 2200). An invalid offset counts as none."""
    match = _DATE_RE.fullmatch(_text(date).strip()) if date is not None else None
    if match is None:
        return None
    try:
        wall = dt.datetime(*map(int, match.groups()))
    except ValueError:  # 2024:02:30, 25:00:00, 0000:00:00
        return None
    if not _YEARS[0] <= wall.year <= _YEARS[1]:
        return None
    digits = re.match(r"\d{1,9}", _text(subsec).strip()) if subsec is not None else None
    fraction = int(digits.group()) / 10 ** len(digits.group()) if digits else 0.0
    zone = _zone(offset)
    try:
        seconds = wall.replace(tzinfo=zone).timestamp() if zone else wall.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return seconds + fraction, zone is not None


def _zone(offset: Any) -> dt.timezone | None:
    """An EXIF ``OffsetTime`` (``"+02:00"``) as a time zone, or None if missing or invalid."""
    match = _OFFSET_RE.fullmatch(_text(offset).strip()) if offset is not None else None
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
    if delta > dt.timedelta(hours=14) or int(minutes) >= 60:
        return None
    return dt.timezone(-delta if sign == "-" else delta)


def camera_name(make: Any, model: Any) -> str:
    """EXIF ``Make`` and ``Model`` as one printable name (``"Apple iPhone 12"``; the make left
    out where the model already starts with it, ``"Canon EOS R5"``), control and
    direction-changing characters removed, at most :data:`MAX_CAMERA_CHARS` characters, no
    leading ``=+-@`` (a formula to a spreadsheet that opens an exported CSV)."""
    make_s, model_s = (_printable(_text(v)) if v is not None else "" for v in (make, model))
    if make_s and model_s.lower().startswith(make_s.split(" ")[0].lower()):
        make_s = ""
    # never a leading = + - @: a spreadsheet opening an exported CSV would run it as a formula
    return " ".join(s for s in (make_s, model_s) if s)[:MAX_CAMERA_CHARS].lstrip("=+-@ ")


def _text(value: Any) -> str:
    """An EXIF value as text (ASCII fields may come as bytes)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else ""


def _printable(text: str) -> str:
    """``text`` without control characters and padding (EXIF pads with NULs and spaces)."""
    return " ".join(_CONTROL.sub(" ", text.split("\0", 1)[0]).split())
