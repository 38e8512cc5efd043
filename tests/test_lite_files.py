"""Contract of search/store/lite_files.py and its use by every command: a damaged Milvus Lite
database (a manifest deleted, truncated or overwritten; both manifests gone; schema.json gone; a
data file gone, cut short or named outside its folder) is refused in one line that names the
file and how to recover, and not one file is deleted (before, Lite's recovery fell back to the
previous manifest, or to none, and deleted the newer data files, without a word); every
collection folder is checked; files that the recovery of a sound database deletes are kept
first; Lite's own warnings are shown. Each case is a real database made by the product (two
indexing runs of the tiny ViT: two data files of 11 rows), damaged on disk, then used through
the `vitsearch` command."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLES
from test_cli import cli

PREV = "manifest.json.prev"


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model) -> Path:
    """A Lite database of two indexing runs into ``images`` (22 rows in two data files, each
    with its HNSW index file) and one into ``other``, closed."""
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store
    from vitsearch.search.store.lite import release

    root = tmp_path_factory.mktemp("lite-files")
    db = root / "milvus.db"
    encoder = Encoder.load(str(tiny_model), runtime="torch")
    for run, collection in (("a", "images"), ("b", "images"), ("a", "other")):
        folder = root / run
        if not folder.exists():
            shutil.copytree(EXAMPLES / "images", folder)
        with Store(str(db), collection) as store:
            index_folder(str(folder), encoder=encoder, store=store, workers=0)
    release(db)
    assert len(list(generation(db).glob("partitions/_default/data/*.parquet"))) == 2
    return db


@pytest.fixture
def db(made, tmp_path) -> Path:
    """A copy of :func:`made`, to damage."""
    copy = tmp_path / "milvus.db"
    shutil.copytree(made, copy)
    return copy


def generation(db: Path, collection: str = "images") -> Path:
    """The folder of the collection's one generation (the name is an alias of it)."""
    [folder] = (db / "collections").glob(f"{collection}__vitsearch_[0-9]*")
    return folder


def data_files(db: Path, collection: str = "images") -> list[Path]:
    return sorted(generation(db, collection).glob("partitions/_default/data/*.parquet"))


def files(db: Path) -> dict[str, bytes]:
    """Every file of the database's collections, with its bytes."""
    return {str(p.relative_to(db)): p.read_bytes() for p in sorted((db / "collections").rglob("*")) if p.is_file()}


def count(db: Path, collection: str = "images") -> int:
    return json.loads(cli("stats", "--json", "--uri", db, "--collection", collection).stdout)["count"]


def refused(out: subprocess.CompletedProcess, db: Path) -> str:
    """The one line of a command that refused the damaged database."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
    line = lines[0]
    assert line.startswith(
        f"error: Milvus Lite database {db} is damaged, so it was not opened and nothing in it was changed: "
    )
    assert "Restore the database folder from a backup, or move it aside (keep it) and index your folders again" in line
    return line


@pytest.mark.parametrize("damage", ["deleted", "truncated", "overwritten"])
@pytest.mark.slow
def test_a_damaged_manifest_is_refused_and_no_file_is_deleted(db, damage):
    manifest = generation(db) / "manifest.json"
    good = manifest.read_bytes()
    if damage == "deleted":
        manifest.unlink()
    elif damage == "truncated":
        manifest.write_bytes(good[: len(good) // 2])
    else:
        manifest.write_bytes(b"\x00\xff not json {{{" * 20)
    before = files(db)

    line = refused(cli("stats", "--json", "--uri", db, ok=False), db)
    assert f"{manifest} is {'missing' if damage == 'deleted' else 'unreadable'}" in line
    assert f"would fall back to {PREV} and delete the 2 newer data and index files" in line
    assert files(db) == before  # Lite's recovery did not run: the newer data file and its index are there

    manifest.write_bytes(good)  # restored from a backup: every row is back
    assert count(db) == 22


@pytest.mark.slow
def test_both_manifests_gone_is_refused_by_every_command(db):
    folder = generation(db)
    (folder / "manifest.json").unlink()
    (folder / PREV).unlink()
    before = files(db)

    line = refused(cli("stats", "--json", "--uri", db, ok=False), db)
    assert f"{folder / 'manifest.json'} and {PREV} are missing" in line
    assert f"would start collection {folder.name!r} empty and delete its 4 data and index files" in line
    searched = cli("search", EXAMPLES / "images" / "cat.jpg", "--json", "--uri", db, ok=False)
    assert "is damaged" in refused(searched, db)  # not "no results", exit 0
    assert files(db) == before


@pytest.mark.slow
def test_a_deleted_schema_is_refused_not_taken_for_a_missing_collection(db, tiny_model, photos):
    schema = generation(db) / "schema.json"
    schema.unlink()
    before = files(db)

    line = refused(cli("stats", "--uri", db, ok=False), db)
    assert f"{schema} is missing" in line and "index a folder first" not in line
    indexed = cli("index", photos, "--model", tiny_model, "--runtime", "torch", "--workers", 0, "--uri", db, ok=False)
    assert "File exists" not in refused(indexed, db)
    assert files(db) == before


@pytest.mark.parametrize("damage", ["deleted", "truncated", "outside"])
def test_a_listed_data_file_that_is_gone_cut_short_or_outside_is_refused(db, damage):
    newer = data_files(db)[-1]
    manifest = generation(db) / "manifest.json"
    if damage == "deleted":
        newer.unlink()
        why = f"{newer} is missing"
    elif damage == "truncated":
        newer.write_bytes(newer.read_bytes()[:-100])
        why = f"{newer} is not a whole Parquet file"
    else:  # a hostile manifest: a path that leaves the collection's folder
        record = json.loads(manifest.read_text())
        record["partitions"]["_default"]["data_files"][-1] = "../../../../../../etc/hostname"
        manifest.write_text(json.dumps(record))
        why = "'../../../../../../etc/hostname' (a path outside"
    before = files(db)

    line = refused(cli("stats", "--json", "--uri", db, ok=False), db)
    assert why in line and f"listed in the manifest of collection {generation(db).name!r}" in line
    assert files(db) == before


@pytest.mark.slow
def test_every_collection_folder_is_checked(db):
    """Damage in another collection's folder (here ``other``) refuses the database, also for
    ``images``: Lite would open that collection, and run its recovery, in the same process."""
    (generation(db, "other") / "manifest.json").unlink()
    line = refused(cli("stats", "--json", "--uri", db, "--collection", "images", ok=False), db)
    assert str(generation(db, "other") / "manifest.json") in line


def test_files_the_recovery_of_a_sound_database_deletes_are_kept_first(db):
    """A data file that no manifest lists (left by a flush that stopped before the manifest was
    saved): Lite deletes it when it opens the collection; a copy is kept, and the user told."""
    stray = data_files(db)[-1].with_name("data_000023_000033.parquet")
    shutil.copy(data_files(db)[-1], stray)
    kept_bytes = stray.read_bytes()

    out = cli("stats", "--json", "--uri", db)
    assert json.loads(out.stdout)["count"] == 22 and "Traceback" not in out.stderr
    assert "its recovery deletes 1 file that its manifests do not list" in out.stderr
    assert not stray.exists()  # Lite's recovery ran
    [kept] = (db / "vitsearch-kept").glob(f"*/{stray.relative_to(db)}")
    assert str(kept.parents[len(stray.relative_to(db).parts) - 1]) in out.stderr
    assert kept.read_bytes() == kept_bytes


def test_milvus_lite_own_warnings_are_shown(db):
    """A manifest.json that Lite cannot read, where the previous one lists every file: its
    fallback deletes nothing, so it is let run, and its warning reaches the user."""
    folder = generation(db)
    shutil.copy(folder / "manifest.json", folder / PREV)
    (folder / "manifest.json").write_text("{")

    out = cli("stats", "--json", "--uri", db)
    assert json.loads(out.stdout)["count"] == 22
    assert "manifest.json failed to load" in out.stderr and "falling back to manifest.json.prev" in out.stderr
    assert "Traceback" not in out.stderr
