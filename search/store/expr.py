"""Milvus boolean expressions: the one place where a string from a user or the file system
becomes part of an expression.

Every string literal of every expression the product sends is made by :func:`literal`; paths
go in as their stored text (:func:`~vitsearch.search.paths.stored_path`); a user's filter is only
ever combined whole, after :func:`check_filter`. Nothing here imports pymilvus.
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

from ..errors import BadQueryError
from ..paths import stored_path

#: Paths per ``path in [...]`` expression, and its largest size in bytes.
PATHS_PER_EXPR, EXPR_BYTES = 1000, 1 << 20


def literal(value: str) -> str:
    r"""``value`` as a Milvus string literal, in double quotes: the one escaping function.

    The grammar (Milvus ``Plan.g4``, ``'"' (~["\\\r\n] | EscapeSequence)* '"'``) forbids a bare
    double quote, backslash, CR and LF inside a literal; these four are escaped (``\"``, ``\\``,
    ``\r``, ``\n``: the escapes that Milvus Lite and Milvus servers both read), every other
    character is taken as it is. ``tests/test_store.py`` round-trips arbitrary text through both
    parsers.
    """
    return '"' + value.translate(_LITERAL_ESCAPES) + '"'


_LITERAL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def check_filter(expr: str) -> str:
    """A user's filter, checked to be one balanced boolean expression (so that ANDing it with
    the product's own conditions cannot be escaped by a stray parenthesis), or ``""``.

    Brackets and parentheses outside string literals must pair up, and every literal must end;
    Milvus checks the rest when the filter is used (see :meth:`Store.search`).

    Raises:
        BadQueryError: the filter is unbalanced or has an unterminated string.
    """
    expr = (expr or "").strip()
    closing, stack, quote = {"(": ")", "[": "]"}, [], None
    escaped = False
    for column, char in enumerate(expr, 1):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in closing:
            stack.append(closing[char])
        elif char in ")]" and (not stack or stack.pop() != char):
            raise BadQueryError(f"filter {expr!r} is not one boolean expression: unmatched {char!r} at column {column}")
    if quote:
        raise BadQueryError(f"filter {expr!r} is not one boolean expression: a string is not terminated")
    if stack:
        raise BadQueryError(f"filter {expr!r} is not one boolean expression: {stack[-1]!r} missing at the end")
    return expr


def all_of(*conditions: str) -> str:
    """The conjunction of non-empty conditions, each in parentheses."""
    return " and ".join(f"({c})" for c in conditions if c)


def under(folder: str) -> str:
    """Rows whose file is inside ``folder`` (an absolute path), at any depth: an exact prefix of
    path components by string range, ``path >= "/a/" and path < "/a0"`` ('0' follows '/'), so
    no character of the name acts as a wildcard and ``/a`` never matches ``/ab``."""
    prefix = stored_path(folder.rstrip(os.sep)) + os.sep
    return f"path >= {literal(prefix)} and path < {literal(prefix[:-1] + chr(ord(os.sep) + 1))}"


def path_is_not(paths: Sequence[str]) -> str:
    """Rows of none of ``paths``."""
    return " and ".join(f"path != {literal(stored_path(p))}" for p in paths)


def paths_in(paths: Sequence[str]) -> Iterator[str]:
    """``path in [...]`` expressions covering ``paths``, each of bounded length."""
    return values_in("path", [stored_path(p) for p in paths])


def values_in(field: str, values: Sequence[str]) -> Iterator[str]:
    """``field in [...]`` expressions covering the string ``values``, each of bounded length
    (``field`` is one of the product's own field names, never a user's text)."""
    chunk: list[str] = []
    size = 0
    for v in values:
        item = literal(v)
        if chunk and (len(chunk) >= PATHS_PER_EXPR or size + len(item) > EXPR_BYTES):
            yield f"{field} in [{', '.join(chunk)}]"
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 2
    if chunk:
        yield f"{field} in [{', '.join(chunk)}]"
