"""Contract of duplicates (search/duplicates.py, ``SearchClient.duplicates``, ``vitsearch
duplicates``) and of collapsed search results, on real Milvus Lite files: planted exact and near
copies of real photos, embedded by the real model, are found and grouped with the right keeper;
distinct photos are not grouped; ``--folder`` limits both sides; the JSON and CSV shapes; hostile
names (quotes, newline, bytes that are not UTF-8) come back exact; an empty collection and a
collection of one image; ``collapse_duplicates`` folds identical bytes into one hit."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import EXAMPLES, MILVUS_SERVER_URI, shared_path
from PIL import Image
from test_cli import cli

from vitsearch.indexer import index_folder
from vitsearch.search import SearchClient
from vitsearch.search.duplicates import CSV_COLUMNS, find_duplicates, neighbours
from vitsearch.search.encoder import Encoder
from vitsearch.search.store import Store

QUOTED = "quote \" ' and\nnewline.jpg"
NOT_UTF8 = os.fsdecode(b"caf\xe9 copy.jpg")
OLD = 1_000_000_000.0  # an mtime long ago


def small(src: Path, out: Path, scale: float = 0.5, quality: int = 90) -> None:
    with Image.open(src) as im:
        im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS).save(
            out, quality=quality
        )


def shop(tmp_path: Path, *items: str) -> Path:
    """A folder ``shop/`` holding copies of these catalogue photos."""
    folder = tmp_path / "shop"
    folder.mkdir()
    for name in items:
        shutil.copyfile(shared_path("data", "catalog") / name, folder / name)
    return folder


def group_names(report) -> list[list[str]]:
    """The file names of each group of a report, sorted."""
    return [sorted(os.path.basename(p) for p in g.paths) for g in report.groups]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, real_model):
    """The 11 example photos in ``a/``, with planted copies, indexed by the real model:
    ``a/cat-copy.jpg`` (byte-identical to cat.jpg, older mtime: the keeper), ``b/coffee-small.jpg``
    (coffee.jpg at 50 %, JPEG 90), ``b/<QUOTED>`` (camera.jpg at 50 %, JPEG 30), ``b/<NOT_UTF8>``
    (byte-identical to rocket.jpg). Returns ``(root, uri)``: a Lite file, or the Milvus server
    that tests/test_server.py runs this file against."""
    root = tmp_path_factory.mktemp("planted")
    a, b = root / "a", root / "b"
    shutil.copytree(EXAMPLES / "images", a)
    b.mkdir()
    shutil.copyfile(a / "cat.jpg", a / "cat-copy.jpg")
    os.utime(a / "cat-copy.jpg", (OLD, OLD))
    small(a / "coffee.jpg", b / "coffee-small.jpg")
    small(a / "camera.jpg", b / QUOTED, quality=30)
    shutil.copyfile(a / "rocket.jpg", b / NOT_UTF8)
    uri = MILVUS_SERVER_URI or str(tmp_path_factory.mktemp("db") / "milvus.db")  # tests/test_server.py: a server
    with Store(uri, "images") as store:
        store.drop()
        report = index_folder(str(root), encoder=Encoder.load(str(real_model)), store=store, workers=0)
        assert report.indexed == 15 and not report.failures
        store.close(release=True)  # the CLI subprocesses take the database over
    return root, uri


def by_keeper(report) -> dict[str, object]:
    return {group.keep: group for group in report.groups}


def test_planted_exact_and_near_copies_are_found_and_distinct_photos_are_not_grouped(planted):
    root, uri = planted
    a, b = root / "a", root / "b"
    with SearchClient(uri=uri) as client:
        report = client.duplicates(threshold=0.98)
    assert report.images == 15 and report.threshold == 0.98 and report.seconds > 0
    groups = by_keeper(report)  # grass.jpg and gravel.jpg (cosine ~0.97, two photos) stay apart
    assert set(groups) == {str(a / "cat-copy.jpg"), str(a / "coffee.jpg"), str(a / "camera.jpg"), str(a / "rocket.jpg")}
    cat = groups[str(a / "cat-copy.jpg")]  # same pixels: the oldest mtime is kept
    assert cat.kind == "exact" and cat.paths == [str(a / "cat-copy.jpg"), str(a / "cat.jpg")] and cat.min_score == 1.0
    rocket = groups[str(a / "rocket.jpg")]
    assert rocket.kind == "exact" and set(rocket.paths) == {str(a / "rocket.jpg"), str(b / NOT_UTF8)}
    coffee = groups[str(a / "coffee.jpg")]  # the larger one is kept
    assert coffee.kind == "near" and coffee.paths == [str(a / "coffee.jpg"), str(b / "coffee-small.jpg")]
    assert 0.98 <= coffee.min_score < 1.0 and coffee.images[1].score == pytest.approx(coffee.min_score, abs=1e-4)
    assert coffee.images[0].pixels > coffee.images[1].pixels
    assert [(p.a, p.b) for p in coffee.pairs] == [(str(a / "coffee.jpg"), str(b / "coffee-small.jpg"))]
    camera = groups[str(a / "camera.jpg")]
    assert camera.kind == "near" and camera.paths == [str(a / "camera.jpg"), str(b / QUOTED)]
    assert report.duplicates == 4
    # The weakest link decides at which threshold a group goes: just above it, the pair is gone.
    with SearchClient(uri=uri) as client:
        stricter = client.duplicates(threshold=min(1.0, coffee.min_score + 1e-3))
        exact = client.duplicates(exact_only=True)
    assert str(a / "coffee.jpg") not in by_keeper(stricter) and str(a / "cat-copy.jpg") in by_keeper(stricter)
    assert exact.threshold is None and {g.kind for g in exact.groups} == {"exact"}
    assert set(by_keeper(exact)) == {str(a / "cat-copy.jpg"), str(a / "rocket.jpg")}


def test_folder_limits_both_images_of_every_pair(planted):
    root, uri = planted
    with SearchClient(uri=uri) as client:
        inside_a = client.duplicates(threshold=0.98, folder=str(root / "a"))
        inside_b = client.duplicates(threshold=0.98, folder=str(root / "b"))
        prefix = client.duplicates(threshold=0.98, folder=str(root)[:-1])  # ".../planted" holds no ".../planted0"
    assert inside_a.images == 12 and inside_b.images == 3 and inside_a.folder == str(root / "a")
    assert [g.paths for g in inside_a.groups] == [[str(root / "a" / "cat-copy.jpg"), str(root / "a" / "cat.jpg")]]
    assert inside_b.groups == () and prefix.images == 0 and prefix.groups == ()


@pytest.mark.slow
def test_cli_json_and_csv_shapes_with_hostile_names(planted, tmp_path):
    root, uri = planted
    out = json.loads(cli("duplicates", "--threshold", "0.98", "--json", "--uri", uri).stdout)
    assert set(out) >= {"groups", "images", "seconds"} and out["images"] == 15 and len(out["groups"]) == 4
    for group in out["groups"]:
        assert set(group) >= {"kind", "paths", "keep", "min_score"} and group["keep"] == group["paths"][0]
        assert group["kind"] in ("exact", "near") and 0.98 <= group["min_score"] <= 1.0
        assert all({"path", "size", "width", "height", "score"} <= set(im) for im in group["images"])
    paths = {p for g in out["groups"] for p in g["paths"]}
    assert str(root / "b" / QUOTED) in paths and str(root / "b" / NOT_UTF8) in paths  # JSON escapes, exact

    table = tmp_path / "dups.csv"
    text = cli("duplicates", "--threshold", "0.98", "--csv", table, "--uri", uri).stdout
    assert "4 groups, 4 duplicates among 15 images (threshold 0.98" in text and "keep" in text
    assert "caf\\xe9 copy.jpg" in text and "and\\nnewline.jpg" in text  # one printable line per image
    raw = table.read_bytes()
    assert b"caf\xe9 copy.jpg" in raw  # the name's own bytes, not an escape
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8", "surrogateescape"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 8
    assert {r["path"] for r in rows} == paths
    assert sum(r["keep"] == "yes" for r in rows) == 4 and {r["group"] for r in rows} == {"1", "2", "3", "4"}
    assert all(r["score"] == "1.000000" for r in rows if r["keep"] == "yes")
    exact = json.loads(cli("duplicates", "--exact-only", "--json", "--uri", uri).stdout)
    assert len(exact["groups"]) == 2 and all(g["kind"] == "exact" for g in exact["groups"])
    bad = cli("duplicates", "--threshold", "0", "--uri", uri, ok=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    both = cli("duplicates", "--json", "--csv", table, "--uri", uri, ok=False)
    assert both.returncode == 2 and "not both" in both.stderr


@pytest.mark.slow
def test_collapse_shows_identical_bytes_as_one_hit_and_still_k_distinct(planted):
    root, uri = planted
    a = root / "a"
    with SearchClient(uri=uri) as client:
        plain = client.search(a / "cat.jpg", k=3)
        folded = client.search(a / "cat.jpg", k=3, collapse_duplicates=True)
        similar = client.search_similar(str(a / "cat.jpg"), k=2, collapse_duplicates=True)
        everything = client.search_similar(str(a / "rocket.jpg"), k=20, collapse_duplicates=True, exclude_self=False)
        limited = client.search(a / "rocket.jpg", k=1, folder=str(a), collapse_duplicates=True)
    assert {h.path for h in plain[:2]} == {str(a / "cat.jpg"), str(a / "cat-copy.jpg")} and not plain[0].copies
    assert len(folded) == 3 and len({h.metadata["sha256"] for h in folded}) == 3  # still k distinct images
    assert folded[0].path in (str(a / "cat.jpg"), str(a / "cat-copy.jpg"))
    assert folded[0].copies == tuple({str(a / "cat.jpg"), str(a / "cat-copy.jpg")} - {folded[0].path})
    assert [h.path for h in folded[1:]] == [h.path for h in plain[2:3]] + [folded[2].path]
    assert folded[0].to_dict()["copies"] == list(folded[0].copies) and "copies" not in folded[1].to_dict()
    assert similar[0].path == str(a / "cat-copy.jpg") and similar[0].copies == ()  # the query itself stays out
    assert len(everything) == 13 and everything[0].path in (str(a / "rocket.jpg"), str(root / "b" / NOT_UTF8))
    assert len(everything[0].copies) == 1
    assert limited[0].path == str(a / "rocket.jpg") and limited[0].copies == ()  # the copy in b/ is outside
    table = cli("search", a / "cat.jpg", "-k", "2", "--collapse", "--uri", uri).stdout
    assert "(+1 copy)" in table and len(table.strip().splitlines()) == 3


@pytest.mark.slow
def test_pixels_keep_look_alike_products_apart_and_a_crop_and_a_darker_copy_together(tmp_path, real_model):
    """Two distinct catalogue products (black trousers on white, item-0036 and item-0263) that the
    embedding puts closer (cosine ~0.99) than a 90 % crop of one of them: the embedding alone
    groups all four files; the pixel check keeps the crop and the 10 % darker copy with their
    original and the other product apart. A file gone since indexing keeps the embedding's
    decision and is reported."""
    from PIL import ImageEnhance

    from vitsearch.search.config import DEFAULT_DUPLICATE_THRESHOLD
    from vitsearch.search.pixels import PIXEL_THRESHOLD

    folder = shop(tmp_path, "item-0036.jpg", "item-0263.jpg")
    with Image.open(folder / "item-0036.jpg") as im:
        rgb = im.convert("RGB")
    dx, dy = round(rgb.width * 0.05), round(rgb.height * 0.05)
    rgb.crop((dx, dy, rgb.width - dx, rgb.height - dy)).save(folder / "crop.jpg", quality=90)
    ImageEnhance.Brightness(rgb).enhance(0.9).save(folder / "darker.jpg", quality=90)
    uri = str(tmp_path / "milvus.db")
    with Store(uri, "images") as store:
        index_folder(str(folder), encoder=Encoder.load(str(real_model)), store=store, workers=0)
        alone = find_duplicates(store, 0.985, verify=False)
        checked = find_duplicates(store, DEFAULT_DUPLICATE_THRESHOLD)
        (folder / "item-0263.jpg").unlink()
        gone = find_duplicates(store, DEFAULT_DUPLICATE_THRESHOLD)
        store.close(release=True)
    assert not alone.verified and group_names(alone) == [["crop.jpg", "darker.jpg", "item-0036.jpg", "item-0263.jpg"]]
    assert checked.verified and checked.unverified == {}
    assert group_names(checked) == [["crop.jpg", "darker.jpg", "item-0036.jpg"]]
    assert all(p.pixels is not None and p.pixels >= PIXEL_THRESHOLD for p in checked.groups[0].pairs)
    lost = str(folder / "item-0263.jpg")
    assert set(gone.unverified) == {lost} and "No such file" in gone.unverified[lost]
    assert group_names(gone) == [["crop.jpg", "darker.jpg", "item-0036.jpg", "item-0263.jpg"]]


@pytest.mark.slow
def test_a_chain_of_look_alikes_is_not_one_group(tmp_path, real_model):
    """Two distinct black trousers (catalogue items 0114 and 0257, pixel score 0.87, below the
    threshold) and a JPEG-30 copy of 0114 (its original is older: the keeper), which scores 0.95
    against the other product: the copy joins its original and the other product stays apart,
    because a part of a group is joined only where its anchor (the keeper so far) passes the
    pixel check against the other's. Without the pixel check the embedding groups all three."""
    from vitsearch.search.config import DEFAULT_DUPLICATE_THRESHOLD
    from vitsearch.search.pixels import PIXEL_THRESHOLD, pixel_score, signature

    folder = shop(tmp_path, "item-0114.jpg", "item-0257.jpg")
    with Image.open(folder / "item-0114.jpg") as im:
        im.convert("RGB").save(folder / "item-0114-jpeg30.jpg", quality=30)
    os.utime(folder / "item-0114.jpg", (OLD, OLD))
    sig = {p.name: signature(str(p)) for p in folder.iterdir()}
    assert pixel_score(sig["item-0114.jpg"], sig["item-0257.jpg"]) < PIXEL_THRESHOLD  # distinct products
    assert pixel_score(sig["item-0114-jpeg30.jpg"], sig["item-0257.jpg"]) >= PIXEL_THRESHOLD  # the chain's link
    uri = str(tmp_path / "milvus.db")
    with Store(uri, "images") as store:
        index_folder(str(folder), encoder=Encoder.load(str(real_model)), store=store, workers=0)
        alone = find_duplicates(store, DEFAULT_DUPLICATE_THRESHOLD, verify=False)
        checked = find_duplicates(store, DEFAULT_DUPLICATE_THRESHOLD)
        store.close(release=True)
    assert group_names(alone) == [["item-0114-jpeg30.jpg", "item-0114.jpg", "item-0257.jpg"]]
    assert group_names(checked) == [["item-0114-jpeg30.jpg", "item-0114.jpg"]] and checked.groups[0].keep.endswith(
        "item-0114.jpg"
    )
    assert [sorted(os.path.basename(x) for x in (p.a, p.b)) for p in checked.groups[0].pairs] == [
        ["item-0114-jpeg30.jpg", "item-0114.jpg"]
    ]


@pytest.mark.slow
def test_an_empty_collection_and_a_collection_of_one_image(tmp_path, tiny_model):
    uri = str(tmp_path / "milvus.db")
    encoder = Encoder.load(str(tiny_model))
    with Store(uri, "images") as store:
        store.ensure(encoder.info)
        empty = find_duplicates(store, 0.5)
        assert empty.groups == () and empty.images == 0 and empty.duplicates == 0
        assert empty.csv_bytes().decode().splitlines() == [",".join(CSV_COLUMNS)]
        one = tmp_path / "one"
        one.mkdir()
        shutil.copyfile(EXAMPLES / "images" / "cat.jpg", one / "cat.jpg")
        index_folder(str(one), encoder=encoder, store=store, workers=0)
        single = find_duplicates(store, 0.01)  # even the loosest threshold pairs nothing with itself
        assert single.groups == () and single.images == 1
        store.close(release=True)
    out = json.loads(cli("duplicates", "--json", "--uri", uri).stdout)
    assert out["groups"] == [] and out["images"] == 1
    missing = cli("duplicates", "--uri", str(tmp_path / "none.db"), ok=False)
    assert missing.returncode == 1 and "index a folder first" in missing.stderr and "Traceback" not in missing.stderr


def test_many_identical_copies_are_one_group_beyond_the_first_top_k(tmp_path, tiny_model):
    """More copies than a query's first top-k: the scan searches deeper and keeps one group."""
    folder = tmp_path / "same"
    folder.mkdir()
    for i in range(40):
        shutil.copyfile(EXAMPLES / "images" / "coffee.jpg", folder / f"{i:02d}.jpg")
    shutil.copyfile(EXAMPLES / "images" / "grass.jpg", folder / "grass.jpg")
    uri = str(tmp_path / "milvus.db")
    with Store(uri, "images") as store:
        index_folder(str(folder), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
        pairs = [p for _, batch in neighbours(store, 0.999, k=4, max_k=16) for p in batch]
        report = find_duplicates(store, 0.999)
        store.close(release=True)
    assert 40 * 4 < len(pairs) <= 40 * 16  # deeper than the first top-4 of each, never past max_k
    assert len(report.groups) == 1 and len(report.groups[0].images) == 40 and report.groups[0].kind == "exact"


def test_a_link_to_the_keeper_is_marked_as_the_same_file(tmp_path, tiny_model):
    """A symbolic link and a hard link are the keeper's own bytes: removing the file they point to
    would lose the picture, so they are marked, unlike a real copy."""
    folder = tmp_path / "links"
    folder.mkdir()
    shutil.copyfile(EXAMPLES / "images" / "cat.jpg", folder / "a.jpg")
    os.utime(folder / "a.jpg", (OLD, OLD))
    (folder / "b symlink.jpg").symlink_to(folder / "a.jpg")
    os.link(folder / "a.jpg", folder / "c hardlink.jpg")
    shutil.copyfile(folder / "a.jpg", folder / "d copy.jpg")
    uri = str(tmp_path / "milvus.db")
    with Store(uri, "images") as store:
        index_folder(str(folder), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
        report = find_duplicates(store, None)
        store.close(release=True)
    (group,) = report.groups
    assert group.kind == "exact" and len(group.images) == 4
    linked = {os.path.basename(im.path) for im in group.images if im.same_file}
    assert os.path.basename(group.keep) != "d copy.jpg" and "d copy.jpg" not in linked
    assert linked == {"a.jpg", "b symlink.jpg", "c hardlink.jpg"} - {os.path.basename(group.keep)}
    rows = list(csv.DictReader(io.StringIO(report.csv_bytes().decode())))
    assert {r["path"].rsplit("/", 1)[1] for r in rows if r["same_file"] == "yes"} == linked
