"""Paths as text: how a file system path is stored in Milvus (exactly, whatever its bytes) and
how it is shown to people (one printable line). Python gives a path whose bytes are not UTF-8
with each such byte as a surrogate (``os.fsdecode``); Milvus stores UTF-8 text only.
"""

from __future__ import annotations

import os
import re

_STORED_ESCAPE = re.compile("[\\\\\udc80-\udcff]")
_STORED_UNESCAPE = re.compile(r"\\(?:(\\)|x([89a-f][0-9a-f]))")


def stored_path(path: str) -> str:
    r"""The text a path is stored as: the path itself, except that a backslash is doubled and a
    byte that is not UTF-8 (``os.fsdecode`` gives it as a surrogate, U+DC80-U+DCFF) is spelled
    ``\xNN``. Injective and prefix-preserving; :func:`path_from_stored` inverts it, so
    ``os.fsencode`` of a returned path gives the file name's exact bytes.

    Raises:
        ValueError: ``path`` holds a surrogate that no file name can (not from ``os.fsdecode``).
    """
    if "\\" not in path:
        try:
            path.encode("utf-8")
            return path
        except UnicodeEncodeError:
            pass
    os.fsencode(path)  # raises ValueError/UnicodeEncodeError for a surrogate outside U+DC80-U+DCFF
    return _STORED_ESCAPE.sub(lambda m: "\\\\" if m[0] == "\\" else f"\\x{ord(m[0]) - 0xDC00:02x}", path)


def absolute(path: str | bytes | os.PathLike) -> str:
    """A path or folder as the collection keys it: absolute (``os.path.abspath``: relative to the
    working directory, ``..`` folded, no symlink resolved) and as text (``os.fsdecode``, so bytes
    that are not UTF-8 come back as the same surrogates every stored path uses)."""
    return os.path.abspath(os.fsdecode(path))


def printable(path: str) -> str:
    r"""A path for a terminal or a page: a byte that is not UTF-8 shown as ``\xNN``, a control
    character as ``\n``, ``\t``, ``\xNN`` (one line, nothing a terminal interprets). For people
    only: it does not map back to the file (the path itself does)."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def path_from_stored(text: str) -> str:
    """The path :func:`stored_path` stored as ``text``."""
    if "\\" not in text:
        return text
    return _STORED_UNESCAPE.sub(lambda m: "\\" if m[1] else chr(0xDC00 + int(m[2], 16)), text)
