"""Milvus boolean expressions: the one place where a string from a user or the file system
becomes part of an expression.

Every string literal of every expression the product sends is made by :func:`literal`; paths
go in as their stored text (:func:`~vitsearch.search.paths.stored_path`); a user's filter is only
ever combined whole, after :func:`check_filter` (which also bounds its length and nesting).
Nothing here imports pymilvus.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence

from ..config import DEFAULT_MAX_FILTER_CHARS, DEFAULT_MAX_FILTER_DEPTH
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


def check_filter(
    expr: str, max_chars: int = DEFAULT_MAX_FILTER_CHARS, max_depth: int = DEFAULT_MAX_FILTER_DEPTH
) -> str:
    """A user's filter, checked to be one balanced boolean expression (so that ANDing it with
    the product's own conditions cannot be escaped by a stray parenthesis) of bounded size, or
    ``""``.

    Brackets and parentheses outside string literals must pair up, and every literal must end;
    the filter must hold at most ``max_chars`` characters and nest at most ``max_depth`` deep,
    counting each open bracket and each prefix operator (``not``, ``!``, unary ``-`` and ``+``)
    of a chain, since Milvus Lite's parser recurses on both and fails with "maximum recursion
    depth exceeded" (see :data:`~vitsearch.search.config.DEFAULT_MAX_FILTER_DEPTH`). Milvus checks
    the rest when the filter is used (see :meth:`Store.search`).

    Args:
        expr: the filter (surrounding space is dropped).
        max_chars: most characters (``VITSEARCH_MAX_FILTER_CHARS``).
        max_depth: deepest nesting (``VITSEARCH_MAX_FILTER_DEPTH``).

    Raises:
        BadQueryError: the filter is too long, nested too deep, unbalanced or has an
            unterminated string.
    """
    expr = (expr or "").strip()
    if len(expr) > max_chars:
        raise BadQueryError(
            f"filter is {len(expr):,} characters long, over the limit of {max_chars:,} (VITSEARCH_MAX_FILTER_CHARS)"
        )
    closing, stack = {"(": ")", "[": "]"}, []
    chains, chained = [0], 0  # prefix operators pending at each bracket level, and their sum
    operand = False  # whether the last token ends an operand (so that a "-" after it is binary)
    for token in _TOKEN.finditer(expr):
        kind, text = token.lastgroup, token.group()
        if kind == "space":
            continue
        if kind == "open":
            raise BadQueryError(f"filter {_shown(expr)} is not one boolean expression: a string is not terminated")
        if text in closing:
            stack.append(closing[text])
            chains.append(0)
        elif text.lower() in _PREFIX or (text in ("-", "+") and not operand):
            chains[-1] += 1
            chained += 1
        elif text in (")", "]"):
            if not stack or stack.pop() != text:
                raise BadQueryError(
                    f"filter {_shown(expr)} is not one boolean expression: unmatched {text!r} "
                    f"at column {token.start() + 1}"
                )
            chained -= chains.pop()
        if len(stack) + chained > max_depth:
            raise BadQueryError(
                f"filter {_shown(expr)} nests deeper than the limit of {max_depth} (each bracket "
                f"and each chained not, ! or - counts; VITSEARCH_MAX_FILTER_DEPTH)"
            )
        operand = text in (")", "]") or (kind in ("string", "word", "number") and text.lower() not in _KEYWORDS)
        if operand:  # a chain of prefix operators ends with its operand
            chained -= chains[-1]
            chains[-1] = 0
    if stack:
        raise BadQueryError(f"filter {_shown(expr)} is not one boolean expression: {stack[-1]!r} missing at the end")
    return expr


#: A filter's tokens, as far as :func:`check_filter` needs them: a terminated string literal, an
#: opening quote without its end, a word, a number, a two-character operator or one character.
_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<open>["'])"""
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>[0-9.]+(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||\*\*|.)",
    re.S,
)
#: Prefix operators (besides unary ``-`` and ``+``), and words that are operators, not operands.
_PREFIX = frozenset({"not", "!"})
_KEYWORDS = frozenset({"and", "or", "not", "in", "like", "is"})


def _shown(expr: str, limit: int = 80) -> str:
    """``expr`` quoted for a message, cut to about ``limit`` characters."""
    return repr(expr) if len(expr) <= limit else repr(expr[:limit]) + f"... ({len(expr):,} characters)"


def all_of(*conditions: str) -> str:
    """The conjunction of non-empty conditions, each in parentheses."""
    return " and ".join(f"({c})" for c in conditions if c)


def under(folder: str) -> str:
    """Rows whose file is inside ``folder`` (an absolute path), at any depth: an exact prefix of
    path components by string range, ``path >= "/a/" and path < "/a0"`` ('0' follows '/'), so
    no character of the name acts as a wildcard and ``/a`` never matches ``/ab``."""
    prefix = stored_path(folder.rstrip(os.sep)) + os.sep
    return f"path >= {literal(prefix)} and path < {literal(prefix[:-1] + chr(ord(os.sep) + 1))}"


def taken_between(taken: tuple[float | None, float | None] | None) -> str:
    """Rows whose capture time (``taken_at``, Unix seconds) is in ``[low, high)`` of ``taken =
    (low, high)``, either end None for open; ``""`` for no range."""
    low, high = taken or (None, None)
    parts = [
        f"taken_at >= {float(low)!r}" if low is not None else "",
        f"taken_at < {float(high)!r}" if high is not None else "",
    ]
    return " and ".join(p for p in parts if p)


def path_is_not(paths: Sequence[str]) -> str:
    """Rows of none of ``paths``."""
    return " and ".join(f"path != {literal(stored_path(p))}" for p in paths)


def paths_in(paths: Sequence[str], per_expr: int = PATHS_PER_EXPR) -> Iterator[str]:
    """``path in [...]`` expressions covering ``paths``, each of bounded length."""
    return values_in("path", [stored_path(p) for p in paths], per_expr)


def values_in(field: str, values: Sequence[str], per_expr: int = PATHS_PER_EXPR) -> Iterator[str]:
    """``field in [...]`` expressions covering the string ``values``, each of at most ``per_expr``
    values and :data:`EXPR_BYTES` (``field`` is one of the product's own field names, never a
    user's text)."""
    chunk: list[str] = []
    size = 0
    for v in values:
        item = literal(v)
        if chunk and (len(chunk) >= per_expr or size + len(item) > EXPR_BYTES):
            yield f"{field} in [{', '.join(chunk)}]"
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 2
    if chunk:
        yield f"{field} in [{', '.join(chunk)}]"
