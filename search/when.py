"""Searching by capture time (:mod:`.capture`): a date range as a filter on ``taken_at``, and
the close matches ordered by date.

Dates are ISO 8601 as people write them (``2024``, ``2024-05``, ``2024-05-01``,
``2024-05-01T18:30``, ``2024-05-01 18:30:00+02:00``, ``...Z``), ``datetime``/``date`` objects or
Unix seconds. One without a time zone is read in the local time zone of the process, as a photo's
EXIF date without an offset is (:data:`~.capture.SOURCES`). A range is ``after <= taken_at <
before``: ``after`` is the start of what it names, ``before`` the start of the first moment
excluded, so ``after="2024-05", before="2024-06"`` is May 2024.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence

from .errors import BadQueryError
from .hit import Hit

#: What a date may be given as.
DateLike = str | dt.datetime | dt.date | int | float
#: Orders of a search's results: by score (Milvus's order), or the close matches first, newest
#: (``date``) or oldest (``date-asc``) first, then the other hits by score.
SORTS = ("score", "date", "date-asc")
#: Largest Unix seconds taken (past the year 9999: what ``datetime`` itself can name).
_MAX_SECONDS = 253_402_300_800.0
_PARTIAL = re.compile(r"(\d{4})(?:-(\d{2}))?")


def to_seconds(value: DateLike, name: str = "date") -> float:
    """``value`` (module docstring) as Unix seconds.

    Raises:
        BadQueryError: naming ``name``: not a date in a form above, or out of range.
    """
    if isinstance(value, bool):
        raise BadQueryError(f"{name} must be a date, got {value!r}")
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, dt.datetime):
            seconds = value.timestamp()
        elif isinstance(value, dt.date):
            seconds = dt.datetime(value.year, value.month, value.day).timestamp()
        elif isinstance(value, str):
            seconds = _parse(value.strip()).timestamp()
        else:
            raise BadQueryError(f"{name} must be a date, got {type(value).__name__}")
    except (ValueError, OverflowError, OSError):
        shown = value if len(str(value)) <= 40 else str(value)[:40] + "..."
        raise BadQueryError(
            f"{name} {shown!r} is not a date: use YYYY-MM-DD, YYYY-MM, YYYY or an ISO 8601 "
            f"date and time such as 2024-05-01T18:30 (optionally with +02:00 or Z)"
        ) from None
    if not math.isfinite(seconds) or abs(seconds) > _MAX_SECONDS:
        raise BadQueryError(f"{name} must be a time between the years 1 and 9999, got {value!r}")
    return seconds


def _parse(text: str) -> dt.datetime:
    """``2024``, ``2024-05`` or anything :meth:`datetime.fromisoformat` reads.

    Raises:
        ValueError: none of them.
    """
    partial = _PARTIAL.fullmatch(text)
    if partial:
        return dt.datetime(int(partial.group(1)), int(partial.group(2) or 1), 1)
    if len(text) > 64:
        raise ValueError(text)
    return dt.datetime.fromisoformat(text)


def date_range(after: DateLike | None = None, before: DateLike | None = None) -> tuple[float | None, float | None]:
    """``(after, before)`` as Unix seconds (None where not given): the range ``after <=
    taken_at < before`` (:func:`~.store.expr.taken_between`).

    Raises:
        BadQueryError: a bound is not a date, or ``after`` is not before ``before``.
    """
    low = to_seconds(after, "after") if after is not None else None
    high = to_seconds(before, "before") if before is not None else None
    if low is not None and high is not None and low >= high:
        raise BadQueryError(f"after ({after}) must be earlier than before ({before})")
    return low, high


def check_sort(sort: str) -> str:
    """``sort`` if it is one of :data:`SORTS`.

    Raises:
        BadQueryError: it is not.
    """
    if sort not in SORTS:
        raise BadQueryError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    return sort


def ordered(hits: Sequence[Hit], sort: str) -> list[Hit]:
    """``hits`` (best first, labelled: :attr:`Hit.match`) in the order ``sort`` asks
    (:data:`SORTS`): by date, the close matches come first, newest or oldest first (ties by
    score), then the other hits as they were, by score."""
    if check_sort(sort) == "score":
        return list(hits)
    sign = -1.0 if sort == "date" else 1.0
    matches = sorted(
        (h for h in hits if h.match), key=lambda h: (sign * float(h.metadata.get("taken_at", -1.0)), -h.score)
    )
    return matches + [h for h in hits if not h.match]
