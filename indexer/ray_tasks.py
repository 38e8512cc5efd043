"""What the workers of a Ray cluster run for :mod:`.ray_engine`: the Ray Data tasks that read,
decode and preprocess files (:func:`.reader.read_one`, each task reading its files itself, a
file that cannot be read or decoded becoming a failure record), and the actors that embed and
upsert them (:class:`EmbedAndWrite`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from vitsearch.search.config import Settings
from vitsearch.search.encoder import EncoderInfo, encoder_for
from vitsearch.search.errors import StoreError
from vitsearch.search.images import Limits, read_file
from vitsearch.search.paths import path_from_stored, stored_path
from vitsearch.search.preprocess import Preprocess
from vitsearch.search.store import META_FIELDS, Store, profile_for
from vitsearch.search.whitening import Space

from .reader import INFO_FIELDS, INFO_TYPES, Decoded, Failed, read_one
from .runner import make_row, refreshed
from .scan import FileEntry
from .sources import is_uri, read_uri

#: Columns the encoder actors report on each file (besides, in bulk mode, its row).
STATUS = ["path", "error", "same", "cpu_s", "embed_s", "write_s"]
#: The columns of a file to read (a :class:`~.scan.FileEntry`; ``sha256`` "" for none).
ENTRY = ["path", "size", "mtime", "ctime_ns", "inode", "sha256"]
#: The info of a file not decoded: each field's empty value (0, 0.0, "").
_NO_INFO = {key: kind() for key, kind in INFO_TYPES.items()}


def decode(
    batch: dict[str, np.ndarray], preprocess: Preprocess, limits: Limits, shape: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    """Ray Data task: read, decode and preprocess a batch of files with :func:`.reader.read_one`.

    A file keeps its place: decoded (``error`` ""), unchanged (``same``: its bytes hash to its
    row's sha256, zero pixels) or failed (zero pixels, the reason in ``error``).
    """
    pixels = np.zeros((len(batch["path"]), *shape), np.float32)
    out: dict[str, list] = {key: [] for key in (*INFO_FIELDS, "error", "same", "cpu_s")}
    for i, entry in enumerate(_entries(batch)):
        result = read_one(entry, preprocess, limits, read=read_uri if is_uri(entry.path) else read_file)
        info = result.info if isinstance(result, Decoded) else _NO_INFO
        if isinstance(result, Decoded):
            pixels[i] = result.pixels
        for key in INFO_FIELDS:
            out[key].append(info[key])
        out["error"].append(result.reason if isinstance(result, Failed) else "")
        out["same"].append(not isinstance(result, (Decoded, Failed)))
        out["cpu_s"].append(result.cpu_s)
    return {
        **{k: batch[k] for k in ENTRY if k != "sha256"},
        "pixel_values": pixels,
        **{k: np.asarray(v) for k, v in out.items()},
    }


def entry_columns(entry: FileEntry) -> dict:
    """A file to read as a Ray Data row: Arrow strings are UTF-8, so the path is its stored text."""
    return {**{k: getattr(entry, k) for k in ENTRY}, "path": stored_path(entry.path), "sha256": entry.sha256 or ""}


def _entries(batch: dict[str, np.ndarray]) -> Iterator[FileEntry]:
    """The files of a batch of :func:`entry_columns` rows."""
    for path, size, mtime, ctime_ns, inode, sha256 in zip(*(batch[k] for k in ENTRY)):
        yield FileEntry(
            path_from_stored(str(path)), int(size), float(mtime), int(ctime_ns), int(inode), str(sha256) or None
        )


class EmbedAndWrite:
    """Ray Data actor: one :class:`Encoder` (on the GPU Ray gave it, if any) and one
    :class:`Store`; embeds each decoded batch and upserts its rows.

    Raises (in the constructor, failing the run):
        EncoderMismatchError: the model on this node is not the driver's (another local copy).
        StoreError: a Milvus Lite database on another node than the driver's (Lite is local to
            one machine: a cluster needs a Milvus server), or Milvus unreachable.
    """

    def __init__(
        self,
        settings: Settings,
        info_json: str,
        uri: str,
        collection: str,
        driver_node: str,
        write: bool = True,
        space: Space = Space(),
    ):
        import ray

        node = ray.util.get_node_ip_address()
        if profile_for(uri).lite and node != driver_node:
            raise StoreError(
                f"Milvus Lite database {uri} is on {driver_node}, this Ray worker on {node}: "
                f"a Ray cluster over several machines needs a Milvus server (--uri http://HOST:19530)"
            )
        expected = EncoderInfo.from_json(info_json)
        if not ray.get_gpu_ids():  # Ray sets OMP_NUM_THREADS to 1: use the CPUs this actor reserved
            import torch

            torch.set_num_threads(max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        self.encoder = encoder_for(expected, settings, f"the collection being indexed (Ray worker on {node})")
        self.store = Store.from_settings(settings, uri=uri, collection=collection) if write else None
        self.space = space  # the run's: the driver holds the lease, so it cannot change during it

    def __call__(self, batch: dict[str, np.ndarray]):
        """Embed the decoded files of ``batch``; upsert their rows (and refresh those of files
        found unchanged), or (bulk mode, no store) return them as a ``pyarrow.Table`` with the
        status columns."""
        import torch

        good = np.flatnonzero((batch["error"] == "") & ~batch["same"])
        entries = list(_entries({**batch, "sha256": np.full(len(batch["path"]), "")}))
        embed_s = write_s = 0.0
        rows = []
        started = time.perf_counter()
        if len(good):
            vectors = self.space.to_search(self.encoder.embed_pixels(torch.from_numpy(batch["pixel_values"][good])))
            embed_s = time.perf_counter() - started
            now = time.time()
            rows = [
                make_row(
                    entries[i],
                    v,
                    {key: kind(batch[key][i]) for key, kind in INFO_TYPES.items()},
                    now,
                )
                for i, v in zip(good, vectors)
            ]
        if self.store is not None:
            same = [entries[i] for i in np.flatnonzero(batch["same"])]
            self.store.upsert(rows + (refreshed(self.store, same) if same else []))
            write_s = time.perf_counter() - started - embed_s
        n = len(batch["path"])
        status = {
            "path": batch["path"],
            "error": batch["error"],
            "same": batch["same"],
            "cpu_s": batch["cpu_s"],
            "embed_s": np.full(n, embed_s / n),
            "write_s": np.full(n, write_s / n),
        }
        return status if self.store is not None else _with_rows(status, rows, good)


def _with_rows(status: dict[str, np.ndarray], rows: list[dict], good: np.ndarray):
    """``status`` plus the collection's fields, one column each as Milvus's bulk import reads
    Parquet (``vector`` a ``list<float32>``); failed files get empty values."""
    import pyarrow as pa

    n = len(status["path"])
    columns: dict[str, list] = {name: [None] * n for name in ("vector", *META_FIELDS[1:])}
    for i, row in zip(good, rows):
        for name in columns:
            columns[name][i] = stored_path(row[name]) if name == "folder" else row[name]
    columns["vector"] = pa.array([[] if v is None else v for v in columns["vector"]], pa.list_(pa.float32()))
    return pa.table({**status, **columns})
