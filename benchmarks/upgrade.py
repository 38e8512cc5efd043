"""Schema upgrade throughput: a collection of schema 2 (before the capture facts) brought to the
current schema by ``Store.upgrade``, with the capture facts read from the files' EXIF (what
``vitsearch index`` does: :func:`vitsearch.search.capture.with_capture`) against the bare copy of
the same rows (``complete=None``: the floor that Milvus's reads and upserts set).

The files are real photos: the JPEGs of ``$VITSEARCH_SHARED/data/holidays-dev``, saved again
with a phone's EXIF, hard-linked N times over 100 folders (each link a path of its own, the bytes read from the page cache after
the first pass; a cold disk adds its seek time per file). The rows get random unit vectors of D
dimensions. Each run starts from a fresh schema-2 collection of N rows in a Milvus Lite file.

    python benchmarks/upgrade.py [--rows 20000] [--dim 384]

Not a test: run by hand, report the table (docs/benchmarks/upgrade.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from pymilvus import MilvusClient

from vitsearch.search.capture import with_capture
from vitsearch.search.encoder_info import EncoderInfo
from vitsearch.search.store import Store
from vitsearch.search.store.lite import lite_uri
from vitsearch.search.store.schema import NEW_IN_3, collection_schema, index_params

FOLDERS = 100


def photos(folder: Path, n: int) -> list[Path]:
    """``n`` hard links under ``folder``, over :data:`FOLDERS` folders, to the holidays-dev photos
    saved again with the EXIF a phone writes (a date with its offset, make and model; the
    originals have none)."""
    from PIL import Image

    shared = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    originals = sorted((shared / "data" / "holidays-dev" / "images").glob("*.jpg"))
    if not originals:
        raise SystemExit(f"no photos in {shared}/data/holidays-dev/images: set VITSEARCH_SHARED")
    (folder / "src").mkdir(parents=True)
    sources = []
    for i, original in enumerate(originals):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Apple", "iPhone 12"
        sub = exif.get_ifd(0x8769)
        sub[0x9003], sub[0x9011] = f"2021:{1 + i % 12:02d}:{1 + i % 28:02d} 12:00:00", "+02:00"
        path = folder / "src" / original.name
        Image.open(original).save(path, quality=90, exif=exif)
        sources.append(path)
    out = []
    for i in range(n):
        path = folder / f"f{i % FOLDERS:03d}" / f"IMG_{i:07d}.jpg"
        path.parent.mkdir(exist_ok=True)
        os.link(sources[i % len(sources)], path)
        out.append(path)
    return out


def old_collection(uri: str, files: list[Path], dim: int) -> None:
    """A fresh schema-2 collection ``images`` at ``uri`` with a row per file."""
    client = MilvusClient(lite_uri(Path(uri), 10)[0])  # through vitsearch's shared Lite server
    if client.has_collection("images"):
        client.drop_collection("images")
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    for f in collection_schema(dim).fields:
        if f.name not in NEW_IN_3:
            schema.add_field(f.name, f.dtype, is_primary=f.is_primary, **f.params)
    info = EncoderInfo("bench", "0" * 64, dim, "cls", (224, 224), "torch")
    client.create_collection(
        "images",
        schema=schema,
        index_params=index_params(client),
        consistency_level="Strong",
        properties={"vitsearch.encoder": info.to_json(), "vitsearch.schema_version": "2"},
    )
    rng = np.random.default_rng(0)
    for start in range(0, len(files), 5000):
        chunk = files[start : start + 5000]
        vectors = rng.standard_normal((len(chunk), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = []
        for path, v in zip(chunk, vectors):
            st = path.stat()
            rows.append(
                {
                    "path": str(path),
                    "vector": v.tolist(),
                    "folder": str(path.parent),
                    "size": st.st_size,
                    "mtime": st.st_mtime,
                    "ctime_ns": st.st_ctime_ns,
                    "inode": st.st_ino,
                    "width": 1,
                    "height": 1,
                    "sha256": "0" * 64,
                    "indexed_at": 0.0,
                }
            )
        client.insert("images", rows)
    client.close()


def run(uri: str, files: list[Path], dim: int, complete) -> tuple[float, dict[str, int]]:
    """Seconds of one upgrade of a fresh schema-2 collection, and its rows by ``date_source``."""
    old_collection(uri, files, dim)
    with Store(uri, "images") as store:
        started = time.perf_counter()
        store.upgrade(complete=complete)
        seconds = time.perf_counter() - started
        sources: dict[str, int] = {}
        for batch in store.read_batches(["date_source"]):
            for row in batch:
                sources[row["date_source"] or "unknown"] = sources.get(row["date_source"] or "unknown", 0) + 1
    return seconds, sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# {args.rows:,} rows, D {args.dim}, Milvus Lite; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; commit {commit}; {time.strftime('%Y-%m-%d')}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        files = photos(Path(tmp) / "photos", args.rows)
        uri = str(Path(tmp) / "milvus.db")
        with_capture([{"path": str(p), "mtime": 0.0} for p in files[:500]])  # page cache warm for both runs
        base, base_sources = run(uri, files, args.dim, None)
        dated, sources = run(uri, files, args.dim, with_capture)
    print("| upgrade | seconds | rows/s | vs copy only | rows by date source |")
    print("|---|---|---|---|---|")
    for name, seconds, found in (
        ("copy only (complete=None)", base, base_sources),
        ("with EXIF (vitsearch index)", dated, sources),
    ):
        shown = ", ".join(f"{k} {v:,}" for k, v in sorted(found.items()))
        print(f"| {name} | {seconds:.1f} | {args.rows / seconds:,.0f} | {base / seconds:.2f}x | {shown} |")


if __name__ == "__main__":
    main()
