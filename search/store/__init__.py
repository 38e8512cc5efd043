"""Milvus storage: the collection (:class:`Store`, :mod:`.collection`, on :mod:`.base`), made of
its connection (:mod:`.connection`), schema and rows as stored (:mod:`.schema`), the physical
collections behind its name (:mod:`.generations`), schema upgrades (:mod:`.migration`), reads,
writes and search (:mod:`.reads`), and the backend's sizes (:mod:`.profile`); its expressions
(:mod:`.expr`), sharing a Milvus Lite database between processes (:mod:`.lite`) after checking
its files (:mod:`.lite_files`), one indexing run per collection (:mod:`.lease`) and bulk import
(:mod:`.bulk`).

Only those store parts, :mod:`.space` (the whitening matrices' collection), :mod:`.map_rows`
(the map's companion collections), :mod:`.bulk` and
:mod:`.lite` (pymilvus' generated gRPC service, on which it serves Lite) import pymilvus;
nothing here imports torch.
"""

from .collection import (
    MAX_PATH_BYTES,
    META_FIELDS,
    SCHEMA_VERSION,
    SEARCH_CONSISTENCY,
    CollectionMoved,
    Hit,
    Store,
    is_server_uri,
)
from .lease import writer_lease
from .profile import BackendProfile, profile_for

__all__ = [
    "Store",
    "Hit",
    "CollectionMoved",
    "META_FIELDS",
    "MAX_PATH_BYTES",
    "SCHEMA_VERSION",
    "SEARCH_CONSISTENCY",
    "is_server_uri",
    "writer_lease",
    "BackendProfile",
    "profile_for",
]
