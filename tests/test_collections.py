"""Collections a user can see and manage (issue 30): :mod:`vitsearch.search.store.catalog` lists a
database's collections (never the generations and side collections vitsearch keeps behind a name)
and drops one with everything behind its name, refused while an indexing run holds its writer
lease; ``vitsearch collections`` and ``vitsearch drop`` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import milvus_client
from test_space import varied_photos
from test_store import INFO

from vitsearch.indexer import index_folder
from vitsearch.search.client import SearchClient
from vitsearch.search.encoder import Encoder
from vitsearch.search.errors import CollectionBusyError, CollectionNotFoundError
from vitsearch.search.store import Store, writer_lease
from vitsearch.search.store.catalog import collection_names, drop_collection, list_collections
from vitsearch.search.store.generations import is_internal
from vitsearch.search.store.lease import KEY
from vitsearch.search.whitening import MIN_IMAGES

VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]


def cli(*args, input: str | None = None):
    return subprocess.run(
        [*VITSEARCH, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        input=input if input is not None else "",
        env=os.environ,
    )


def one_line(out) -> str:
    """The error a failed command printed, checked to be one line without a traceback."""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def physical(uri: str) -> list[str]:
    with milvus_client(uri) as client:
        return sorted(client.list_collections())


@pytest.mark.slow
def test_listed_by_name_and_dropped_with_everything_behind_it(tmp_path, db_uri, photos, tiny_model):
    encoder = Encoder.load(str(tiny_model), runtime="torch")
    with Store(db_uri, "images") as store:  # whitened: a new generation and the matrices' collection
        report = index_folder(str(varied_photos(tmp_path / "own", MIN_IMAGES)), encoder=encoder, store=store, workers=0)
        assert report.space == "learned"
    with Store(db_uri, "examples") as store:
        index_folder(str(photos), encoder=encoder, store=store, workers=0)
    with milvus_client(db_uri) as client:
        client.create_collection("other", dimension=4)  # made by another tool
    names = physical(db_uri)
    assert {"images__vitsearch_space", "other"} <= set(names) and len([n for n in names if is_internal(n)]) == 3

    with Store(db_uri, "images") as store:
        assert collection_names(store) == ["examples", "images", "other"]
        listed = list_collections(store)
    assert [(c.name, c.count, c.model, c.dim, c.indexing) for c in listed] == [
        ("examples", 11, str(tiny_model), 32, False),
        ("images", MIN_IMAGES, str(tiny_model), 32, False),
        ("other", 0, None, None, False),
    ]

    with Store(db_uri, "images") as store:
        dropped = drop_collection(store)
        assert not store.exists()
        assert [c.name for c in list_collections(store)] == ["examples", "other"]
    with milvus_client(db_uri) as client:
        assert "images" not in client.list_aliases().get("aliases", [])
    assert len(dropped) == 2 and "images__vitsearch_space" in dropped and all(n.startswith("images__") for n in dropped)
    assert not [n for n in physical(db_uri) if n.startswith("images")]
    with SearchClient(uri=db_uri, collection="examples", model=str(tiny_model), runtime="torch") as client:
        assert client.stats()["count"] == 11  # the other collection is untouched
        assert client.search(photos / "cat.jpg", k=3)[0].path == str(photos / "cat.jpg")
    with Store(db_uri, "images") as store:  # the name can be used again
        assert index_folder(str(photos / "sub"), encoder=encoder, store=store, workers=0).indexed == 1
        assert store.count() == 1

    with Store(db_uri, "examples__vitsearch_1") as store:
        with pytest.raises(CollectionNotFoundError, match="is not a collection but part of 'examples'"):
            drop_collection(store)
    with Store(db_uri, "nope") as store:
        with pytest.raises(CollectionNotFoundError, match="collection 'nope' does not exist"):
            drop_collection(store)


@pytest.mark.slow
def test_refused_while_a_run_writes_and_kept_unless_confirmed(db_uri):
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        asked = []
        assert drop_collection(store, lambda summary: asked.append(summary) or False) == []
        assert store.exists() and [(s.name, s.count, s.model) for s in asked] == [("images", 0, "m")]

        with writer_lease(store):  # an indexing run of this process, as seen from another one
            with store.sibling("images") as other:
                with pytest.raises(CollectionBusyError, match=f"being indexed by another run \\(pid {os.getpid()}"):
                    drop_collection(other, lambda summary: pytest.fail("asked while busy"))
                assert list_collections(other)[0].indexing is True
            out = cli("drop", "images", "--yes", "--uri", db_uri)
            assert out.returncode == 1 and f"being indexed by another run (pid {os.getpid()} on" in one_line(out)
            assert store.exists() and store.count() == 0

        lease = {
            "token": "t",
            "host": socket.gethostname(),
            "pid": 999_999_999,
            "since": time.time(),
            "renewed": time.time(),
        }
        store.set_properties({KEY: json.dumps(lease)})  # a run that was killed: its lease is dead
        assert drop_collection(store) and not store.exists()


@pytest.mark.slow
def test_vitsearch_drop_asks_first_and_says_what_is_wrong_in_one_line(db_uri, tmp_path):
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        with store.sibling("keep") as keep:
            keep.ensure(INFO)

        out = cli("drop", "images", "--uri", db_uri, input="n\n")
        assert out.returncode == 1 and "Delete collection 'images' (0 images, m) at" in out.stderr
        assert out.stderr.strip().endswith("error: not confirmed: collection 'images' kept") and store.exists()
        out = cli("drop", "images", "--uri", db_uri)  # no answer at all: a script without --yes
        assert out.returncode == 1 and "give --yes" in out.stderr.splitlines()[-1] and store.exists()
        out = cli("drop", "images", "--uri", db_uri, input="y\n")
        assert out.returncode == 0 and out.stdout.strip() == f"deleted collection 'images' (0 images) at {db_uri}"
        assert not store.exists() and collection_names(store) == ["keep"]

        out = cli("drop", "images", "--yes", "--uri", db_uri)
        assert out.returncode == 1 and "collection 'images' does not exist at" in one_line(out)
        out = cli("drop", "keep__vitsearch_1", "--yes", "--uri", db_uri)
        assert out.returncode == 1 and "is not a collection but part of 'keep'" in one_line(out)
        listed = json.loads(cli("collections", "--uri", db_uri, "--json").stdout)
        assert listed == {
            "uri": db_uri,
            "collections": [{"name": "keep", "count": 0, "model": "m", "dim": 16, "indexing": False}],
        }

    fresh = tmp_path / "nothing-here" / "milvus.db"  # neither command makes a database
    out = cli("collections", "--uri", fresh)
    assert out.returncode == 0 and out.stdout.startswith(f"no collections at {fresh}")
    out = cli("drop", "images", "--yes", "--uri", fresh)
    assert out.returncode == 1 and "there is no database there yet" in one_line(out)
    assert not fresh.parent.exists()


def test_a_drop_cut_short_is_finished_by_running_it_again(db_uri):
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        with milvus_client(db_uri) as client:
            client.create_collection("images__vitsearch_space", dimension=4)
            client.drop_alias("images")  # a drop killed after its first steps
        store.drop_physical(store.physical)
    with Store(db_uri, "images") as store:
        assert not store.exists() and collection_names(store) == []  # nothing a user can use is left...
        assert drop_collection(store, lambda summary: summary is None) == ["images__vitsearch_space"]
        assert physical(db_uri) == []  # ... and now nothing at all
        store.ensure(INFO)  # the name is free again
        assert store.exists() and collection_names(store) == ["images"]
