"""The files of a Milvus Lite 3 database, checked before Milvus Lite opens them.

Milvus Lite keeps each collection in a folder ``collections/<name>/`` (``databases/<db>/
collections/<name>/`` for a database other than the default) that holds ``schema.json``,
``manifest.json`` (the list of the collection's Parquet data and delta files, per partition),
``manifest.json.prev`` (the manifest before its last save), a write-ahead log in ``wal/`` and
the files themselves in ``partitions/<partition>/{data,delta,indexes}/``. When a collection is
opened, Lite's recovery (``milvus_lite.engine.recovery``) reads ``manifest.json``, or, where it
is missing or unreadable, ``manifest.json.prev`` without a word to the caller, or, where both
are missing, starts the collection empty; then it deletes every data and delta file the
manifest it read does not list, and every index file of such a data file. A lost
``manifest.json`` so deletes the rows written since the save before it; both lost delete every
row. A folder without ``schema.json`` is not a collection to Lite, which then refuses to create
one of that name ("File exists").

:func:`inspect` says, from the files alone, what Lite would lose (:attr:`Findings.damage`) and
which files its recovery would delete on top (:attr:`Findings.doomed`: left by a write that
stopped before the manifest named them, or a sign of damage); :func:`keep` keeps a copy of
those before Lite runs. Every name and byte read here is treated as hostile: a manifest that
names a file outside its folder is damage, not a path to follow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREVIOUS = "manifest.json.prev"
SCHEMA = "schema.json"
#: Where :func:`keep` puts its copies, inside the database folder.
KEPT = "vitsearch-kept"
#: A Parquet file begins and ends with these 4 bytes.
_PARQUET_MAGIC = b"PAR1"
#: The subfolders of a partition whose files Lite's recovery deletes when its manifest does not name them.
_LISTED = ("data", "delta")
#: The files a manifest lists: ``{partition: {"data": [path], "delta": [path]}}``, each path
#: relative to the partition's folder (``data/data_000001_000011.parquet``).
Listed = dict[str, dict[str, list[str]]]


@dataclass
class Findings:
    """What :func:`inspect` found in a database folder.

    Attributes:
        damage: one phrase per damaged collection, naming the file and what Milvus Lite would do
            with it (lose rows, delete files, refuse the collection's name); empty when sound.
        doomed: files that Lite's recovery deletes when it opens a sound collection (files its
            manifest does not name: left by a write that stopped, or by a manifest that is not
            the latest); :func:`keep` copies them first.
    """

    damage: list[str] = field(default_factory=list)
    doomed: list[Path] = field(default_factory=list)


def inspect(db: Path) -> Findings:
    """Check every collection folder of the Milvus Lite database ``db`` as Lite 3 would read it:
    ``schema.json`` readable, the manifest Lite would use being ``manifest.json``, and every data
    and delta file that manifest lists present and a whole Parquet file (its first and last 4
    bytes); and list the files its recovery would delete. Reads only; call it holding the
    database's lock (a writer elsewhere would make files appear and go meanwhile).

    Returns:
        the findings; a folder that cannot be read is damage.
    """
    found = Findings()
    for folder in _collection_folders(db):
        _inspect_collection(folder, found)
    return found


def keep(db: Path, files: list[Path]) -> Path:
    """Keep a copy of ``files`` (inside ``db``) under ``<db>/vitsearch-kept/<UTC time>/``, at their
    paths relative to ``db``: a hard link where the file system allows it (no space, instant),
    else a copy.

    Returns:
        the folder holding them.

    Raises:
        OSError: a file could be neither linked nor copied (a full disk): nothing may then be
            deleted.
    """
    root = db / KEPT / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for path in files:
        target = root / path.relative_to(db)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if target.exists():  # a second open within the same second keeps its copy beside
            continue
        try:
            os.link(path, target, follow_symlinks=False)
        except OSError:
            shutil.copy2(path, target, follow_symlinks=False)
    return root


def _collection_folders(db: Path) -> list[Path]:
    """The collection folders of every database in ``db`` (the default one and ``databases/*``)."""
    roots = [db / "collections"]
    databases = db / "databases"
    if databases.is_dir():
        roots += sorted(d / "collections" for d in databases.iterdir() if d.is_dir() and not d.is_symlink())
    return [f for root in roots if root.is_dir() for f in sorted(root.iterdir()) if f.is_dir() and not f.is_symlink()]


def _inspect_collection(folder: Path, found: Findings) -> None:
    """Add what :func:`inspect` finds in one collection folder to ``found``."""
    schema = folder / SCHEMA
    try:
        _read_schema(schema)
    except FileNotFoundError:
        found.damage.append(
            f"{schema} is missing (Milvus Lite no longer sees collection {folder.name!r}, "
            f"and refuses to make one of that name)"
        )
        return
    except ValueError as exc:
        found.damage.append(f"{schema} is unreadable ({exc})")
        return
    on_disk = _files(folder)
    listed, why = _manifest_used(folder)
    if listed is None:
        if why:  # both manifests unreadable: Lite refuses the collection, deleting nothing
            found.damage.append(why)
        elif on_disk:  # both missing: Lite starts empty and deletes every file
            found.damage.append(
                f"{folder / MANIFEST} and {PREVIOUS} are missing: Milvus Lite would start "
                f"collection {folder.name!r} empty and delete its {len(on_disk)} data and index files"
            )
        return
    missing = _missing(folder, listed)
    doomed = _doomed(folder, listed, on_disk)
    if missing:
        more = f", and {len(missing) - 1} more" if len(missing) > 1 else ""
        found.damage.append(f"{missing[0]} (listed in the manifest of collection {folder.name!r}{more})")
    elif why and doomed:  # Lite would read manifest.json.prev, older, and delete what it lacks
        found.damage.append(
            f"{why}: Milvus Lite would fall back to {PREVIOUS} and delete the {len(doomed)} "
            f"newer data and index files it does not list"
        )
    else:
        found.doomed += doomed


def _read_schema(path: Path) -> None:
    """Read ``schema.json`` as Milvus Lite does (``milvus_lite.schema.persistence.load_schema``).

    Raises:
        FileNotFoundError: it is missing.
        ValueError: it is unreadable; the message says why.
    """
    from milvus_lite.schema.persistence import load_schema

    if not path.exists():
        raise FileNotFoundError(path)
    try:
        load_schema(str(path))
    except Exception as exc:  # Lite raises its own errors, OSError, and whatever a hostile file makes
        raise ValueError(_why(exc)) from None


def _manifest_used(folder: Path) -> tuple[Listed | None, str]:
    """The files listed by the manifest Milvus Lite would use (:data:`Listed`), and why
    ``manifest.json`` is not that manifest (empty when it is); ``(None, "")`` when neither
    manifest exists, ``(None, why)`` when neither can be read."""
    why = ""
    for name in (MANIFEST, PREVIOUS):
        path = folder / name
        try:
            return _read_manifest(path), why
        except FileNotFoundError:
            if name == MANIFEST:
                why = f"{path} is missing"
        except ValueError as exc:
            if name == MANIFEST:
                why = f"{path} is unreadable ({exc})"
            else:
                return None, f"{why}, and {path} is unreadable too ({exc})"
    if not (folder / MANIFEST).exists() and not (folder / PREVIOUS).exists():
        return None, ""
    return None, f"{why}, and there is no {PREVIOUS}"


def _read_manifest(path: Path) -> Listed:
    """The data and delta files a manifest lists (:data:`Listed`), read at
    least as strictly as Milvus Lite 3.2 does (``Manifest._load_path``: whatever makes it fall
    back to the previous manifest is unreadable here too).

    Raises:
        FileNotFoundError: it is missing.
        ValueError: it is unreadable; the message says why.
    """
    try:
        payload = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(_why(exc)) from None
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    try:
        for key in ("version", "current_seq", "schema_version"):
            int(payload.get(key, 0))
        if payload.get("active_wal_number") is not None:
            int(payload["active_wal_number"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a counter is not a number: {exc}") from None
    specs = payload.get("index_specs")
    if specs and isinstance(specs, dict):
        for spec in specs.values():
            if not isinstance(spec, dict) or not {"field_name", "index_type", "metric_type"} <= set(spec):
                raise ValueError("an index spec lacks its field, type or metric")
    partitions = payload.get("partitions", {})
    if not isinstance(partitions, dict):
        raise ValueError("'partitions' is not an object")
    listed: Listed = {}
    for name, contents in partitions.items():
        if not isinstance(contents, dict):
            raise ValueError(f"partition {name!r} is not an object")
        listed[name] = {
            sub: [f.replace("\\", "/") for f in _strings(contents.get(f"{sub}_files", []))] for sub in _LISTED
        }
    return listed


def _strings(value: Any) -> list[str]:
    """``value`` if it is a list of strings.

    Raises:
        ValueError: it is not.
    """
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("a file list is not a list of names")
    return value


def _missing(folder: Path, listed: Listed) -> list[str]:
    """Phrases for the listed files that are not whole Parquet files inside their partition."""
    problems = []
    for partition, subs in listed.items():
        base = folder / "partitions" / partition
        for rel in (*subs["data"], *subs["delta"]):
            path = base / rel
            if not _inside(path, base):
                problems.append(f"{rel!r} (a path outside {base})")
            elif not path.is_file():
                problems.append(f"{path} is missing")
            elif not _whole_parquet(path):
                problems.append(f"{path} is not a whole Parquet file (truncated or overwritten)")
    return problems


def _inside(path: Path, base: Path) -> bool:
    """Whether ``path`` stays inside ``base`` once ``..`` and links are resolved."""
    try:
        return path.resolve().is_relative_to(base.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def _whole_parquet(path: Path) -> bool:
    """Whether ``path`` begins and ends with Parquet's magic bytes (a truncated file does not end so)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(0, os.SEEK_END)
            if f.tell() < 12:
                return False
            f.seek(-4, os.SEEK_END)
            return head == _PARQUET_MAGIC and f.read(4) == _PARQUET_MAGIC
    except OSError:
        return False


def _files(folder: Path) -> list[Path]:
    """The entries of a collection folder's ``partitions/*/{data,delta,indexes}/`` that are not
    folders (what Lite's recovery may remove: it calls ``os.remove`` on each name it finds)."""
    partitions = folder / "partitions"
    if not partitions.is_dir():
        return []
    return sorted(
        f
        for p in partitions.iterdir()
        if p.is_dir() and not p.is_symlink()
        for sub in (*_LISTED, "indexes")
        if (p / sub).is_dir()
        for f in (p / sub).iterdir()
        if f.is_symlink() or not f.is_dir()
    )


def _doomed(folder: Path, listed: Listed, on_disk: list[Path]) -> list[Path]:
    """The files of ``on_disk`` that Milvus Lite's recovery deletes when it reads a manifest that
    lists ``listed`` (as ``milvus_lite.engine.recovery._cleanup_orphan_files`` does): data and
    delta files that neither that manifest nor a snapshot names, and index files
    (``<data file stem>.<field>.<type>.idx``) of a data file that neither names, unless a
    snapshot names the index file itself."""
    from milvus_lite.index.files import parse_index_sidecar_name
    from milvus_lite.storage.snapshots import snapshot_references

    snapshots = dict(zip(("data", "delta", "indexes"), snapshot_references(str(folder))))
    doomed = []
    for path in on_disk:
        partition, sub = path.parent.parent.name, path.parent.name
        rel = f"{sub}/{path.name}"
        named = snapshots[sub].get(partition, set())
        if sub in _LISTED:
            if rel not in listed.get(partition, {}).get(sub, ()) and rel not in named:
                doomed.append(path)
            continue
        sidecar = parse_index_sidecar_name(path.name)
        data = [*listed.get(partition, {}).get("data", ()), *snapshots["data"].get(partition, ())]
        if sidecar is not None and sidecar.source_stem not in {Path(r).stem for r in data} and rel not in named:
            doomed.append(path)
    return doomed


def _why(exc: BaseException) -> str:
    """One line on why a file could not be read."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return " ".join(str(exc).split()) or type(exc).__name__
