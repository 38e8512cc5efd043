"""The fields of a collection of image embeddings, its vector index, and rows as Milvus holds
them: paths stored as text that maps back to their exact bytes (:func:`~..paths.stored_path`),
schema-1 rows read with the fields they lack."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from pymilvus import CollectionSchema, DataType, MilvusClient

from ..capture import MAX_CAMERA_CHARS
from ..paths import path_from_stored, stored_path

#: Version 2 (vitsearch 0.2) added ``ctime_ns`` and ``inode`` and stores paths with
#: :func:`stored_path`; version 3 added the capture facts ``taken_at``, ``date_source`` and
#: ``camera`` (:mod:`~..capture`). An older collection is read as it is and upgraded in place by
#: the indexer (:meth:`~.collection.Store.upgrade`).
SCHEMA_VERSION = "3"
#: Schema versions this vitsearch reads.
KNOWN_VERSIONS = ("1", "2", SCHEMA_VERSION)
#: Collection properties: the encoder's record (:class:`~..encoder_info.EncoderInfo` as JSON) and
#: the schema version.
ENCODER_KEY = "vitsearch.encoder"
SCHEMA_KEY = "vitsearch.schema_version"
#: Longest stored path or folder, in bytes of UTF-8: any Linux path (PATH_MAX 4096 bytes) fits,
#: also with each byte of a non-UTF-8 name spelled ``\\xNN``.
MAX_PATH_BYTES = 16384
#: HNSW build parameters (Malkov & Yashunin 2016): M links per node, efConstruction beam width.
HNSW_PARAMS = {"M": 16, "efConstruction": 200}
#: Fields schema 1 lacks, and the value its rows are read with (-1: unknown, so the indexer
#: compares the file's bytes with the stored sha256 before trusting the row).
NEW_IN_2 = {"ctime_ns": -1, "inode": -1}
#: Fields schemas 1 and 2 lack, and the value their rows are read with (-1, "": unknown; an
#: upgrade reads them from the files, :func:`~.migration.upgrade`).
NEW_IN_3 = {"taken_at": -1.0, "date_source": "", "camera": ""}
#: Longest ``camera`` value, in bytes of UTF-8 (:data:`~..capture.MAX_CAMERA_CHARS` characters).
MAX_CAMERA_BYTES = 4 * MAX_CAMERA_CHARS
#: Bytes of one row's fields besides its vector, path, folder and camera, as :func:`request_batches` counts.
_ROW_OVERHEAD = 200


def collection_schema(dim: int) -> CollectionSchema:
    """The fields of :data:`SCHEMA_VERSION` for ``dim``-dimensional vectors, keyed by ``path``."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("path", DataType.VARCHAR, is_primary=True, max_length=MAX_PATH_BYTES)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("folder", DataType.VARCHAR, max_length=MAX_PATH_BYTES)
    schema.add_field("size", DataType.INT64)
    schema.add_field("mtime", DataType.DOUBLE)
    schema.add_field("ctime_ns", DataType.INT64)
    schema.add_field("inode", DataType.INT64)
    schema.add_field("width", DataType.INT64)
    schema.add_field("height", DataType.INT64)
    schema.add_field("sha256", DataType.VARCHAR, max_length=64)
    schema.add_field("indexed_at", DataType.DOUBLE)
    schema.add_field("taken_at", DataType.DOUBLE)
    schema.add_field("date_source", DataType.VARCHAR, max_length=16)
    schema.add_field("camera", DataType.VARCHAR, max_length=MAX_CAMERA_BYTES)
    return schema


def index_params(client: MilvusClient, metric: str = "COSINE"):
    """The HNSW index of the ``vector`` field (:data:`HNSW_PARAMS`) by ``metric``, for ``create_collection``."""
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="HNSW", metric_type=metric, params=HNSW_PARAMS)
    return index


def missing_fields(schema_version: str | None) -> dict[str, Any]:
    """The fields a collection of ``schema_version`` lacks, and the value its rows are read with."""
    return {"1": {**NEW_IN_2, **NEW_IN_3}, "2": NEW_IN_3}.get(schema_version or SCHEMA_VERSION, {})


def readable_fields(fields: Sequence[str], schema_version: str | None) -> list[str]:
    """``path`` and ``fields``, less those that a collection of ``schema_version`` lacks."""
    lacks = missing_fields(schema_version)
    return list(dict.fromkeys(["path", *(f for f in fields if f not in lacks)]))


def from_milvus(row: dict[str, Any], asked: Sequence[str]) -> dict[str, Any]:
    """A row as Milvus returns it, with file system paths (schema 1 stored no path that
    :func:`path_from_stored` changes) and the fields ``asked`` that an older schema lacks as
    unknown (:data:`NEW_IN_2`, :data:`NEW_IN_3`)."""
    row = {**{f: v for f, v in {**NEW_IN_2, **NEW_IN_3}.items() if f in asked}, **row}
    row["path"] = path_from_stored(row["path"])
    if "folder" in row:
        row["folder"] = path_from_stored(row["folder"])
    return row


def to_milvus(row: dict[str, Any]) -> dict[str, Any]:
    """A row with file system paths as Milvus stores it (``path`` and ``folder`` stored text)."""
    return {**row, "path": stored_path(row["path"]), "folder": stored_path(row["folder"])}


def request_batches(rows: Iterable[dict[str, Any]], max_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """Rows in stored form grouped into upsert requests of at most ``max_bytes`` bytes (a row
    over it alone is one request), each ``vector`` a list of float32 values."""
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        text = len(row["path"].encode()) + len(row["folder"].encode()) + len(row.get("camera", "").encode())
        row_bytes = 4 * len(row["vector"]) + text + _ROW_OVERHEAD
        if batch and size + row_bytes > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append({**row, "vector": np.asarray(row["vector"], np.float32).tolist()})
        size += row_bytes
    if batch:
        yield batch
