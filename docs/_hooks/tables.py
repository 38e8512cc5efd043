"""Markdown table cells for the generated reference pages (:mod:`reference`, :mod:`http_reference`)."""

from __future__ import annotations

from typing import Any


def cell(text: Any) -> str:
    """Text for one Markdown table cell: on one line, its ``|`` escaped."""
    text = "" if text is None else str(text)
    return " ".join(text.split()).replace("|", "\\|")


def code(text: Any) -> str:
    """Inline code that may itself hold backticks."""
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"
