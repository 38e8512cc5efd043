"""What differs between Milvus Lite and a Milvus server, chosen once from the URI
(:func:`profile_for`): every size and switch that the store, the duplicate scan and the bulk
loader pick by backend lives in one :class:`BackendProfile`, so no other code branches on
the backend. The sizes are measured in docs/benchmarks/duplicates-speed.md.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Consistency of searches and of the lookups made for them. The collection's own level is
#: Strong (lookups and counts see every write), but a Strong search on a server waits for the
#: next time tick (docs/benchmarks/search-latency.md); Session still shows a client its own
#: writes, without that wait.
SEARCH_CONSISTENCY = "Session"
#: Upper bound of one upsert request in bytes (Milvus's gRPC messages are limited; ~20 MB is safe).
UPSERT_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class BackendProfile:
    """How the store talks to one kind of Milvus.

    Attributes:
        lite: a Milvus Lite database (a local folder, served by a vitsearch process), else a server.
        read_rows: rows a full read asks per query (``Store.iter_rows``, ``Store.vectors``, the
            duplicate scan), vectors included; a reply over gRPC's limit halves it for the rest
            of that read.
        search_queries: stored vectors sent as the query vectors of one search by the
            duplicate scan (:func:`~vitsearch.search.duplicates.neighbours`).
        search_consistency: Milvus consistency level of searches and their lookups.
        upsert_bytes: upper bound of one upsert request, in bytes.
        lookup_paths: paths one lookup or delete by path names (the indexer's comparison with
            the collection, and its pruning), so that a scan's results stream in chunks.
        bulk_import: whether Parquet bulk import (:mod:`.bulk`) is available.
    """

    lite: bool
    read_rows: int
    search_queries: int
    search_consistency: str = SEARCH_CONSISTENCY
    upsert_bytes: int = UPSERT_BYTES
    lookup_paths: int = 1000
    bulk_import: bool = False


#: Milvus Lite evaluates a read's condition over every row and sorts the matches in Python
#: whatever the limit, and walks every row in Python on each search: few, large reads and
#: searches (docs/benchmarks/duplicates-speed.md, "1,000,000 vectors on Milvus Lite"); its gRPC
#: limit is 256 MB.
LITE = BackendProfile(lite=True, read_rows=16384, search_queries=4096)
#: A Milvus 2.3 server makes each read wait for the next time tick: 4,096 rows a read (6 MB at
#: 384 dimensions, 25 MB at 1,536, under its 64 MB gRPC limit) and 256 queries a search
#: (docs/benchmarks/duplicates-speed.md, "Reading 4,096 rows a query on a server").
SERVER = BackendProfile(lite=False, read_rows=4096, search_queries=256, bulk_import=True)


def is_server_uri(uri: str) -> bool:
    """True for a Milvus server URI (``http(s)://``, ``tcp://``), False for a Milvus Lite path."""
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def profile_for(uri: str) -> BackendProfile:
    """:data:`SERVER` for a server URI (:func:`is_server_uri`), else :data:`LITE`."""
    return SERVER if is_server_uri(uri) else LITE
