"""Names you can trust: every legal file or folder name (any bytes but ``/`` and NUL) is indexed,
found by ``--similar``, returned exactly (``os.fsencode`` round trip), kept by folder filters as an
exact prefix of path components, and pruned only by itself. The hostile-names corpus
(tests/hostile.py ``NAMES``) and a property test that generates names, on Milvus Lite and (in the
server leg of tests/test_server.py) on a Milvus server: the collection always equals the file
system."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import hostile
import numpy as np
import pytest
from conftest import MILVUS_SERVER_URI, examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitsearch.indexer import index_folder
from vitsearch.search import SearchClient
from vitsearch.search.encoder import Encoder
from vitsearch.search.store import Store


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Encoder:
    return Encoder.load(str(tiny_model))


def stored_paths(uri: str, collection: str = "images") -> set[str]:
    with Store(uri, collection) as store:
        return {r["path"] for r in store.iter_rows()}


def files_under(root: str) -> set[str]:
    """Image files under ``root`` as the scan sees them: regular files, links to folders not followed."""
    found = set()
    for folder, _dirs, files in os.walk(root):
        found.update(
            os.path.join(folder, f) for f in files if os.path.splitext(f)[1].lower() in {".jpg", ".jpeg", ".png"}
        )
    return found


def index(root, uri, encoder, collection="images", **kw):
    with Store(uri, collection) as store:
        return index_folder(str(root), encoder=encoder, store=store, workers=0, **kw)


@pytest.mark.slow
def test_every_hostile_name_is_indexed_found_and_returned_exactly(tmp_path, db_uri, tiny):
    root = tmp_path / "names"
    paths = hostile.build_names(root)
    assert len(paths) == len(hostile.NAMES) >= 40
    report = index(root, db_uri, tiny)
    assert report.failures == [] and report.indexed == len(paths)
    assert stored_paths(db_uri) == set(paths)  # exactly these strings, nothing mangled
    assert {os.fsencode(p) for p in stored_paths(db_uri)} == {os.path.join(os.fsencode(root), n) for n in hostile.NAMES}
    with SearchClient(uri=db_uri) as client:
        for path in paths:
            hits = client.search_similar(path, k=1, exclude_self=False)
            assert [h.path for h in hits] == [path]
            assert hits[0].metadata["folder"] == os.path.dirname(path)
            others = client.search_similar(path, k=len(paths))
            assert path not in {h.path for h in others} and len(others) == len(paths) - 1
    again = index(root, db_uri, tiny)
    assert (again.indexed, again.unchanged, again.failed) == (0, len(paths), 0)


@pytest.mark.slow
def test_the_cli_returns_every_name_exactly(tmp_path, db_uri, tiny_model):
    from typer.testing import CliRunner

    from vitsearch.cli import app

    root = tmp_path / "names"
    paths = hostile.build_names(root)
    out = CliRunner().invoke(
        app, ["index", str(root), "--model", str(tiny_model), "--uri", db_uri, "--workers", "0", "--json"]
    )
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout[out.stdout.index("{") :])["indexed"] == len(paths)
    sample = [p for p in paths if any(b in os.fsencode(p) for b in (b"\xe9t", b"'] or", b"new\n", b"back\\s"))]
    assert len(sample) == 4
    for path in sample:  # a few of the worst names, as a command-line argument and in the JSON printed
        out = CliRunner().invoke(app, ["search", "--similar", path, "-k", "1", "--uri", db_uri, "--json"])
        assert out.exit_code == 0, (path, out.stderr)
        hits = json.loads(out.stdout)["hits"]
        assert len(hits) == 1 and os.fsencode(hits[0]["path"]) != os.fsencode(path)  # never itself
        assert os.fsencode(hits[0]["path"]) in {os.fsencode(p) for p in paths}
    table = CliRunner().invoke(app, ["search", "--similar", sample[0], "-k", "61", "--uri", db_uri])
    lines = [line for line in table.stdout.strip().splitlines() if not line.startswith("no close match")]
    assert table.exit_code == 0 and len(lines) == 1 + 61  # one line per hit


@pytest.mark.slow
def test_each_name_is_pruned_only_by_itself(tmp_path, db_uri, tiny):
    root = tmp_path / "names"
    paths = hostile.build_names(root)
    other = tmp_path / "other"  # a second folder in the same collection: never touched
    other.mkdir()
    (other / "kept.png").write_bytes(hostile.distinct_image(999))
    index(root, db_uri, tiny)
    index(other, db_uri, tiny)
    remaining = set(paths)
    step = 8 if MILVUS_SERVER_URI else 1  # a server leg run takes ~1.4 s: a few names at a time there
    for start in range(0, len(paths), step):
        group = paths[start : start + step]
        for path in group:
            os.unlink(path)
            remaining.discard(path)
        report = index(root, db_uri, tiny, prune=True)
        assert report.removed == len(group), group
        assert stored_paths(db_uri) == remaining | {str(other / "kept.png")}, group


def test_folder_filters_are_exact_prefixes_of_path_components(tmp_path, db_uri, tiny):
    root = tmp_path / "names"
    paths = hostile.build_names(root)
    index(root, db_uri, tiny)
    folders = {os.path.dirname(p) for p in paths}
    assert len(folders) >= 10
    with SearchClient(uri=db_uri) as client:
        query = client.store.get([paths[0]], fields=["vector"])[paths[0]]["vector"]
        for folder in folders:
            expected = {p for p in paths if p.startswith(folder + os.sep)}
            hits = client.search_vector(np.asarray(query), k=len(paths), folder=folder)
            assert {h.path for h in hits} == expected, folder
            assert len(client.search_vector(np.asarray(query), k=1, folder=folder)) == 1, folder


# --- the property: for generated names, the collection equals the file system --------------------


def legal_name(data: bytes) -> bool:
    return b"/" not in data and b"\0" not in data and data not in (b".", b"..")


#: Bytes that broke or could break expressions, patterns, escapes and encodings.
NASTY = [
    b"'",
    b'"',
    b"\\",
    b"\n",
    b"\r",
    b"\t",
    b"%",
    b"_",
    b"*",
    b" ",
    b"]",
    b"[",
    b"(",
    b")",
    b"\xe9",
    b"\xff",
    b"\x80",
    "\u00e9".encode(),
    "e\u0301".encode(),
    "\U0001f600".encode(),
    b"\\x41",
    b"\\n",
    b"or",
    b"like",
    b"in",
    b"==",
    b"!=",
]
name_bytes = (
    st.one_of(
        st.lists(st.sampled_from(NASTY) | st.binary(min_size=1, max_size=3), min_size=1, max_size=8).map(b"".join),
        st.binary(min_size=1, max_size=24),
    )
    .filter(legal_name)
    .filter(lambda b: len(b) <= 200)
)
extension = st.sampled_from([b".jpg", b".JPG", b".jpeg", b".png", b".PNG"])
file_spec = st.tuples(st.lists(name_bytes, max_size=2).map(tuple), name_bytes, extension)


@settings(
    max_examples=examples(lite=25, server=5),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    files=st.lists(file_spec, min_size=1, max_size=6, unique_by=lambda f: (f[0], f[1] + f[2])),
    delete=st.lists(st.integers(0, 5), max_size=3),
    as_folder=st.booleans(),
)
@pytest.mark.slow
def test_property_the_collection_equals_the_file_system(files, delete, as_folder, db_uri, tiny):
    """One collection for every example, each in a folder of its own, emptied by pruning."""
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(os.fsencode(tmp), b"root")
        os.mkdir(root)
        made = []
        for i, (folders, stem, ext) in enumerate(files):
            folder = os.path.join(root, *folders)
            path = os.path.join(folder, stem + ext)
            if os.path.isdir(path) or any(
                os.path.isfile(os.path.join(root, *folders[:j])) for j in range(1, len(folders) + 1)
            ):
                continue  # a name already taken by a folder, or a folder named like a file
            os.makedirs(folder, exist_ok=True)
            with open(path, "wb") as f:
                f.write(hostile.distinct_image(i))
            made.append(os.fsdecode(path))
        root = os.fsdecode(root)
        check(root, db_uri, tiny, made)
        gone = {made[i % len(made)] for i in delete} if made else set()
        for path in gone:
            os.unlink(path)
            if as_folder:  # a file replaced by a folder of the same name
                os.mkdir(path)
        check(root, db_uri, tiny, [p for p in made if p not in gone], prune=True)
        shutil.rmtree(root)
        os.mkdir(root)
        check(root, db_uri, tiny, [], prune=True)  # all gone: the example leaves nothing behind


def check(root: str, uri: str, encoder: Encoder, expected: list[str], prune=False) -> None:
    report = index(root, uri, encoder, "property", prune=prune)
    assert report.failures == []
    with Store(uri, "property") as store:
        stored = {r["path"] for r in store.iter_rows(folder=root)}
    assert stored == set(expected) == files_under(root)
    if not expected:
        return
    with SearchClient(uri=uri, collection="property") as client:
        for path in expected:
            assert [h.path for h in client.search_similar(path, k=1, exclude_self=False, folder=root)] == [path]
        query = np.asarray(client.store.get([expected[0]], fields=["vector"])[expected[0]]["vector"])
        for folder in {os.path.dirname(p) for p in expected} | {root}:
            under = {p for p in expected if p.startswith(folder + os.sep)}
            assert {h.path for h in client.search_vector(query, k=16, folder=folder)} == under
