"""Export a collection's embeddings and metadata for users' own tools: one Parquet file (the
default), or a ``.npy`` array of the vectors with a CSV of the metadata beside it, row for row.

The rows are streamed (one read of the store's ``read_rows`` at a time; memory does not grow with
the collection) and each file is written to a temporary file renamed into place at the end
(:func:`~.files.written`), so an export stopped half-way leaves no half file under the name.

Columns: the stored metadata of :data:`~.hit.META_FIELDS` (``path``, ``folder``, ``size`` in
bytes, ``mtime`` in s since the epoch, ``ctime_ns``, ``inode``, ``width``, ``height`` in pixels,
``sha256``, ``indexed_at``, ``taken_at`` in s since the epoch, ``date_source``, ``camera``:
:mod:`~.capture`) and ``vector``. ``path`` and ``folder`` are the stored text
(:func:`~.paths.stored_path`): the path itself, except that a backslash is doubled and a byte
that is not UTF-8 is spelled ``\\xNN``; :func:`~.paths.path_from_stored` gives the exact name back.

Vectors: ``raw`` (default) are the model's L2-normalised CLS embeddings, as
:meth:`~.encoder.Encoder.embed` gives them (comparable with any other tool using the same
checkpoint); ``searched`` are the vectors the collection stores and searches (whitened, where
the collection is: :mod:`~.whitening`), exactly as stored.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from .files import written
from .hit import META_FIELDS
from .paths import stored_path

if TYPE_CHECKING:  # the store imports pymilvus: not for `vitsearch export --help`
    from .store import Store
    from .whitening import Space


class ExportFormat(StrEnum):
    """``vitsearch export --format``: one Parquet file, or ``.npy`` vectors + ``.csv`` metadata."""

    parquet = "parquet"
    npy = "npy"


class ExportSpace(StrEnum):
    """``vitsearch export --space``: the model's embeddings, or the vectors the collection searches."""

    raw = "raw"
    searched = "searched"


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote.

    Attributes:
        rows: rows written (each file holds them all, in the same order).
        dim: the vectors' dimension D.
        files: the files written, absolute paths.
        space: ``raw`` or ``searched``.
        seconds: wall time of the export.
    """

    rows: int
    dim: int
    files: list[str]
    space: str
    seconds: float


def export_files(out: str | Path, fmt: ExportFormat) -> list[Path]:
    """The files an export to ``out`` writes: ``out`` itself for Parquet; for npy, ``out`` with
    the suffixes ``.npy`` (vectors) and ``.csv`` (metadata)."""
    out = Path(out)
    if ExportFormat(fmt) is ExportFormat.parquet:
        return [out]
    return [out.with_suffix(".npy"), out.with_suffix(".csv")]


def export_collection(
    store: Store,
    space: Space,
    out: str | Path,
    *,
    fmt: ExportFormat = ExportFormat.parquet,
    folder: str | None = None,
    vectors: ExportSpace = ExportSpace.raw,
    on_rows: Callable[[int], None] | None = None,
) -> ExportReport:
    """Write the rows of ``store`` (or those of files inside ``folder``, an absolute path) to
    ``out``, in primary-key (path) order.

    Args:
        space: the collection's space (:attr:`~.client.SearchClient.space`): maps the stored
            vectors back to raw ones.
        fmt: Parquet (``vector`` a fixed-size list of D float32; the file's schema metadata
            ``vitsearch`` holds the model, the space and the collection as JSON), or npy: a
            ``(N, D) float32`` ``.npy`` and a CSV with a header line.
        vectors: ``raw`` or ``searched`` (module docstring).
        on_rows: called with the number of rows written after each read.

    Raises:
        OSError: a file cannot be written (nothing is left under its name).
        StoreError: Milvus refused or stayed unreachable; CollectionMoved: the collection's
            vectors moved to a new generation during the export (export again).
    """
    start, vectors = time.perf_counter(), ExportSpace(vectors)
    targets = export_files(out, fmt)
    dim, rows = store.encoder_info().dim, 0
    with ExitStack() as stack:
        tmps = [stack.enter_context(written(t)) for t in targets]
        writer = _ParquetWriter(tmps[0], dim, _description(store, space, vectors)) if len(tmps) == 1 else None
        sink = writer or _NpyCsvWriter(tmps[0], tmps[1], dim)
        stack.callback(sink.close)
        for batch in store.read_batches([*META_FIELDS, "vector"], folder):
            matrix = np.asarray([r["vector"] for r in batch], np.float32).reshape(len(batch), dim)
            if vectors is ExportSpace.raw:
                matrix = space.to_raw(matrix)
            sink.write(batch, matrix)
            rows += len(batch)
            if on_rows:
                on_rows(len(batch))
    return ExportReport(rows, dim, [str(t.resolve()) for t in targets], vectors.value, time.perf_counter() - start)


def _description(store: Store, space: Space, vectors: ExportSpace) -> dict[str, Any]:
    info = store.encoder_info()
    return {
        "collection": store.collection,
        "model": info.model,
        "dim": info.dim,
        "vectors": vectors.value,
        "whitened": bool(space.whitened and vectors is ExportSpace.searched),
    }


def _columns(batch: list[dict[str, Any]]) -> Iterator[tuple[str, list]]:
    for name in META_FIELDS:
        values = [r[name] for r in batch]
        yield name, [stored_path(v) for v in values] if name in ("path", "folder") else values


class _ParquetWriter:
    """Row groups of one Parquet file, one per read (pyarrow's ``ParquetWriter``)."""

    def __init__(self, path: Path, dim: int, description: dict[str, Any]):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.dim = pa, dim
        types = {name: pa.string() for name in ("path", "folder", "sha256", "date_source", "camera")}
        types |= {name: pa.float64() for name in ("mtime", "indexed_at", "taken_at")}
        fields = [pa.field(n, types.get(n, pa.int64())) for n in META_FIELDS]
        fields.append(pa.field("vector", pa.list_(pa.float32(), dim)))
        self.schema = pa.schema(fields, metadata={"vitsearch": json.dumps(description)})
        self.writer = pq.ParquetWriter(path, self.schema)

    def write(self, batch: list[dict[str, Any]], matrix: np.ndarray) -> None:
        pa = self.pa
        arrays = [pa.array(values, type=self.schema.field(name).type) for name, values in _columns(batch)]
        flat = pa.array(np.ascontiguousarray(matrix, np.float32).reshape(-1))
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, self.dim))
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


class _NpyCsvWriter:
    """A ``.npy`` whose header is rewritten with the row count at the end (the rows are streamed,
    so the count is known only then), and a CSV of the metadata."""

    #: The header is written for this many rows first, so the final one (padded) fits its space.
    RESERVED_ROWS = 10**15

    def __init__(self, npy: Path, csv_path: Path, dim: int):
        self.dim, self.rows = dim, 0
        self.npy: BinaryIO = open(npy, "wb")  # noqa: SIM115 (closed in close())
        self.header_len = len(npy_header(self.RESERVED_ROWS, dim))
        self.npy.write(npy_header(self.RESERVED_ROWS, dim))
        self.csv_file = open(csv_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.csv = csv.writer(self.csv_file)
        self.csv.writerow(META_FIELDS)

    def write(self, batch: list[dict[str, Any]], matrix: np.ndarray) -> None:
        self.npy.write(np.ascontiguousarray(matrix, "<f4").tobytes())
        self.csv.writerows(zip(*(values for _, values in _columns(batch))))
        self.rows += len(batch)

    def close(self) -> None:
        try:
            self.npy.seek(0)
            self.npy.write(npy_header(self.rows, self.dim, self.header_len))
        finally:
            self.npy.close()
            self.csv_file.close()


def npy_header(rows: int, dim: int, length: int | None = None) -> bytes:
    """The header of a version 1.0 ``.npy`` file of a C-order ``(rows, dim)`` little-endian float32
    array (numpy's format, ``numpy.lib.format``), padded with spaces to ``length`` bytes (default:
    the next multiple of 64, as numpy writes it).

    Raises:
        ValueError: the header does not fit in ``length`` bytes.
    """
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    prefix = 10  # magic (6), version (2), header length (2)
    if length is None:
        length = -(-(prefix + len(text) + 1) // 64) * 64
    pad = length - prefix - len(text) - 1
    if pad < 0:
        raise ValueError(f"an .npy header of {rows} x {dim} does not fit in {length} bytes")
    body = (text + " " * pad + "\n").encode("latin-1")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body
