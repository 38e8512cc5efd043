"""`vitsearch export` and SearchClient.export (issue 35): the exported vectors equal the stored
ones (searched space) or the model's (raw space), the metadata equals the rows, names of any
bytes survive, the rows are streamed, and a failed export leaves nothing under its name."""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import stored_vectors
from test_cli import run_in_process

from vitsearch.indexer import index_folder
from vitsearch.search.client import SearchClient
from vitsearch.search.encoder import Encoder
from vitsearch.search.export import export_collection, npy_header
from vitsearch.search.hit import META_FIELDS
from vitsearch.search.paths import path_from_stored
from vitsearch.search.store import Store
from vitsearch.search.store.profile import profile_for


@pytest.fixture
def whitened(linked_photos, db_uri, tiny_model) -> tuple[Path, str]:
    """66 files (the 11 photos, 6 links each): enough for the collection to learn its whitening."""
    folder = linked_photos(6)
    with Store(db_uri, "images") as store:
        index_folder(str(folder), encoder=Encoder.load(str(tiny_model), runtime="torch"), store=store, workers=0)
    return folder, db_uri


def parquet_rows(path: Path) -> dict[str, dict]:
    table = pq.read_table(path).to_pylist()
    return {path_from_stored(r["path"]): r for r in table}


def test_parquet_holds_the_stored_vectors_or_the_models_and_the_rows_metadata(whitened, tmp_path):
    folder, uri = whitened
    stored = stored_vectors(uri)
    with SearchClient(uri) as client:
        assert client.space.whitened
        searched = client.export(tmp_path / "searched.parquet", space="searched")
        raw = client.export(tmp_path / "raw.parquet")
        models = client.stored_vectors(list(stored))
        with Store(uri, "images") as store:
            rows = {r["path"]: r for r in store.iter_rows(META_FIELDS)}
    assert searched.rows == raw.rows == len(stored) == 66 and raw.space == "raw"
    got_searched, got_raw = parquet_rows(tmp_path / "searched.parquet"), parquet_rows(tmp_path / "raw.parquet")
    assert set(got_searched) == set(got_raw) == set(stored)
    for path, vector in stored.items():
        np.testing.assert_array_equal(np.asarray(got_searched[path]["vector"], np.float32), vector.astype(np.float32))
        np.testing.assert_allclose(got_raw[path]["vector"], models[path], atol=1e-6)
        assert {k: got_raw[path][k] for k in META_FIELDS if k not in ("path", "folder")} == {
            k: rows[path][k] for k in META_FIELDS if k not in ("path", "folder")
        }
        assert path_from_stored(got_raw[path]["folder"]) == rows[path]["folder"]
    a_path = next(iter(stored))
    assert float(np.dot(got_raw[a_path]["vector"], stored[a_path])) < 0.99  # whitening changed it
    described = json.loads(pq.read_schema(tmp_path / "raw.parquet").metadata[b"vitsearch"])
    assert described["vectors"] == "raw" and described["dim"] == len(stored[a_path]) and not described["whitened"]
    assert json.loads(pq.read_schema(tmp_path / "searched.parquet").metadata[b"vitsearch"])["whitened"]


def test_npy_and_csv_hold_the_same_rows_in_the_same_order(indexed, tmp_path):
    folder, uri = indexed
    with SearchClient(uri) as client:
        report = client.export(tmp_path / "out.parquet", format="npy")
        client.export(tmp_path / "all.parquet")
    assert report.files == [str(tmp_path / "out.npy"), str(tmp_path / "out.csv")]
    vectors = np.load(tmp_path / "out.npy", mmap_mode="r")
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert vectors.dtype == np.float32 and vectors.shape == (11, report.dim) and len(table) == 11
    reference = parquet_rows(tmp_path / "all.parquet")
    for row, vector in zip(table, vectors):
        expected = reference[path_from_stored(row["path"])]
        np.testing.assert_array_equal(vector, np.asarray(expected["vector"], np.float32))
        assert int(row["size"]) == expected["size"] and row["sha256"] == expected["sha256"]


def test_a_folder_exports_only_its_rows(indexed, tmp_path):
    folder, uri = indexed
    with SearchClient(uri) as client:
        report = client.export(tmp_path / "sub.parquet", folder=str(folder / "sub"))
    assert report.rows == 1 and list(parquet_rows(tmp_path / "sub.parquet")) == [str(folder / "sub" / "rocket.jpg")]


def test_names_of_any_bytes_come_back_exactly(photos, db_uri, tiny_model, tmp_path):
    names = ['a "quoted", name.jpg', "line\nbreak.jpg", "back\\slash.jpg", os.fsdecode(b"caf\xe9-latin1.jpg")]
    for name in names:
        shutil.copy(photos / "cat.jpg", photos / name)
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model), runtime="torch"), store=store, workers=0)
    with SearchClient(db_uri) as client:
        client.export(tmp_path / "x.parquet")
        client.export(tmp_path / "x.csv", format="npy")
    with open(tmp_path / "x.csv", newline="", encoding="utf-8") as f:
        from_csv = {path_from_stored(r["path"]) for r in csv.DictReader(f)}
    for name in names:
        assert str(photos / name) in parquet_rows(tmp_path / "x.parquet")
        assert str(photos / name) in from_csv


def test_the_rows_are_streamed_a_read_at_a_time(indexed, tmp_path):
    folder, uri = indexed
    reads = []
    with Store(uri, "images", profile=replace(profile_for(uri), read_rows=4)) as store:
        with SearchClient(uri) as client:
            space = client.space
        report = export_collection(store, space, tmp_path / "x.parquet", on_rows=reads.append)
    assert report.rows == 11 and reads == [4, 4, 3]
    assert pq.ParquetFile(tmp_path / "x.parquet").metadata.num_row_groups == 3


def test_a_failed_export_leaves_the_old_file_and_no_temporary_one(indexed, tmp_path):
    folder, uri = indexed
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.npy").write_bytes(b"the last export")

    def stop(n):
        raise RuntimeError("stopped half-way")

    with SearchClient(uri) as client, pytest.raises(RuntimeError, match="half-way"):
        client.export(out / "x.npy", format="npy", on_rows=stop)
    assert sorted(p.name for p in out.iterdir()) == ["x.npy"]
    assert (out / "x.npy").read_bytes() == b"the last export"


def test_the_command_writes_the_file_and_says_where(indexed, tmp_path):
    folder, uri = indexed
    out = run_in_process("export", tmp_path / "e.parquet", "--uri", uri, "--json")
    assert out.exit_code == 0, out.stderr
    said = json.loads(out.stdout)
    assert said["rows"] == 11 and said["files"] == [str(tmp_path / "e.parquet")] and said["space"] == "raw"
    assert pq.read_metadata(tmp_path / "e.parquet").num_rows == 11
    missing = run_in_process("export", tmp_path / "no-such-folder" / "e.parquet", "--uri", uri)
    assert missing.exit_code == 1 and "cannot write" in missing.stderr and "no-such-folder" in missing.stderr
    bad = run_in_process("export", tmp_path / "e.parquet", "--uri", uri, "--format", "xlsx")
    assert bad.exit_code == 2


def test_the_npy_header_is_numpys_and_any_count_fits_the_reserved_one():
    import io

    for rows in (0, 7, 123456789):
        buf = io.BytesIO(npy_header(rows, 384))
        assert np.lib.format.read_magic(buf) == (1, 0)
        assert np.lib.format.read_array_header_1_0(buf) == ((rows, 384), False, np.dtype("<f4"))
    reserved = len(npy_header(10**15, 384))
    assert len(npy_header(5, 384, reserved)) == reserved and reserved % 64 == 0
    with pytest.raises(ValueError):
        npy_header(10**100, 384, reserved)
