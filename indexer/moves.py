"""Rows that follow their files: a file renamed or moved keeps its row (its vector) under the new
path, without embedding, when its bytes are the row's (``vitsearch watch``).

A row is upserted under the new path before the old one is deleted, so a process killed between
the two leaves a stale row (which a pruned catch-up deletes), never a lost one.
"""

from __future__ import annotations

import os
from pathlib import Path

from vitsearch.search.hit import META_FIELDS
from vitsearch.search.models import file_sha256
from vitsearch.search.store import Store

from .runner import UNCHANGED_IF_EQUAL, chunks
from .scan import FileEntry, is_regular_file

__all__ = ["move_rows", "move_folder"]


def move_rows(store: Store, moves: dict[str, str]) -> int:
    """Give the rows of moved files their new paths, without embedding: for each ``{dest: src}``
    whose ``src`` has a row and whose file at ``dest`` has the same bytes (its size, mtime,
    ctime and inode are the row's, or its sha256 is), the row is upserted under ``dest`` with the
    file's metadata, then the row of ``src`` deleted if no file is there any more. Returns the
    rows moved; the others are left to be embedded."""
    moved = 0
    for chunk in chunks(list(moves.items()), store.profile.lookup_paths):
        old = store.get([src for _, src in chunk], fields=[*META_FIELDS, "vector"])
        rows, srcs = [], []
        for dest, src in chunk:
            row, entry = old.get(src), FileEntry.at(dest)
            if row is None or entry is None or not _same_bytes(row, entry):
                continue
            rows.append({**row, **_metadata(entry)})
            srcs.append(src)
        if rows:
            store.upsert(rows)  # before the delete: a kill between the two leaves a stale row, not a lost one
            store.delete([s for s in srcs if not is_regular_file(s)])
        moved += len(rows)
    return moved


def move_folder(store: Store, src: str, dest: str) -> int:
    """:func:`move_rows` for every row under the folder ``src``, now ``dest``; streamed."""
    moved = 0
    for batch in store.read_batches(["path"], folder=src):
        moved += move_rows(store, {dest + r["path"][len(src) :]: r["path"] for r in batch})
    return moved


def _same_bytes(row: dict, entry: FileEntry) -> bool:
    if all(row[f] == getattr(entry, f) for f in UNCHANGED_IF_EQUAL):
        return True  # a folder renamed above it: the file's own ctime did not change
    return row["size"] == entry.size and _sha256(entry.path) == row["sha256"]


def _metadata(entry: FileEntry) -> dict:
    return {
        "path": entry.path,
        "folder": os.path.dirname(entry.path),
        **{f: getattr(entry, f) for f in UNCHANGED_IF_EQUAL},
    }


def _sha256(path: str) -> str | None:
    try:
        return file_sha256(Path(path))
    except OSError:
        return None
