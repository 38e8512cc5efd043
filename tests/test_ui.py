"""Contract of the page (ui/app.py) and its thumbnails, through Streamlit's AppTest on a real
collection: an upload finds itself first; k, minimum score and folder narrow the grid; "More
like this" searches with the stored vector; the encoder is loaded once per process; bad input
and a missing or unreachable collection give a message, never a traceback; only files that are
rows of the collection are read."""

from __future__ import annotations

import os
import re
import sys

import pytest
import streamlit as st
from conftest import EXAMPLES, REPO
from PIL import Image
from streamlit.testing.v1 import AppTest

from vitsearch.search import SearchClient
from vitsearch.search.errors import BadImageError
from vitsearch.search.thumbnails import THUMB_PX, thumbnail

APP = str(REPO / "ui" / "app.py")


@pytest.fixture
def page(monkeypatch):
    """An AppTest of the page for the collection in ``VITSEARCH_URI``, with fresh caches."""

    def make(uri: str, **env: str) -> AppTest:
        monkeypatch.setenv("VITSEARCH_URI", uri)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        st.cache_resource.clear()
        st.cache_data.clear()
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        assert not at.exception
        return at

    yield make
    st.cache_resource.clear()


def upload(at: AppTest, path, name: str | None = None, data: bytes | None = None) -> AppTest:
    at.file_uploader(key="upload").set_value(
        (name or path.name, data if data is not None else path.read_bytes(), "image/jpeg")
    )
    at.run()
    assert not at.exception, at.exception
    return at


def results_caption(at: AppTest) -> str:
    """The "N results in … ms" caption over the grid."""
    return next(c.value for c in at.caption if re.match(r"\d+ results? in ", c.value))


def result_names(at: AppTest) -> list[str]:
    """File names shown under the result thumbnails, in order (each grid cell: its score in bold,
    then the name as plain text)."""
    return [col.text[0].value for col in at.columns if col.text]


def result_scores(at: AppTest) -> list[float]:
    return [float(col.markdown[0].value.split("**")[1]) for col in at.columns if col.text]


def result_matches(at: AppTest) -> list[bool]:
    """Whether each result carries the close-match badge."""
    return [":green-badge[match]" in col.markdown[0].value for col in at.columns if col.text]


def shown(markdown: str) -> str:
    """What a Markdown message reads as on the page (backslash escapes undone)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def test_upload_shows_the_query_and_a_grid_of_results_best_first(indexed, page, tiny_model):
    photos, uri = indexed
    at = page(uri)
    metrics = {m.label: m.value for m in at.sidebar.get("metric")}
    assert metrics == {"Images": "11", "Folders": "2"}  # the collection in a person's words: photos/ and sub/
    assert shown(at.sidebar.markdown[0].value) == f"**Model** {tiny_model.name}"  # the folder's name, not its path
    details = at.sidebar.expander[0]
    assert details.label == "Details"  # the internals, behind it
    details_text = shown(" ".join(m.value for m in details.markdown))
    assert "HNSW (COSINE)" in details_text and uri in details_text and "32-d" in details_text
    upload(at, photos / "cat.jpg")
    names = result_names(at)
    assert names[0] == "cat.jpg" and len(names) == 11  # default k = 12, 11 images indexed
    assert result_scores(at)[0] == pytest.approx(1.0, abs=1e-3)
    assert result_scores(at) == sorted(result_scores(at), reverse=True)
    images = at.get("image")
    assert len(images) == 1 + 11 and at.text[0].value == "cat.jpg"  # the query (its name as text), then the grid
    assert "11 results in" in results_caption(at)
    # The same ranking as SearchClient gives (the page has no search logic of its own).
    with SearchClient(uri=uri) as client:
        assert names == [os.path.basename(h.path) for h in client.search(photos / "cat.jpg", k=12)]


@pytest.mark.parametrize(
    "fmt, options", [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {}), ("GIF", {})]
)
def test_every_upload_format_is_searched(indexed, page, fmt, options):
    import io

    photos, uri = indexed
    buf = io.BytesIO()
    Image.open(photos / "astronaut.jpg").save(buf, fmt, **options)
    at = upload(page(uri), photos / "astronaut.jpg", name=f"astronaut.{fmt.lower()}", data=buf.getvalue())
    assert not at.error and len(result_names(at)) == 11
    if fmt != "GIF":  # the same pixels, losslessly: the same embedding (GIF's 256 colours are not)
        assert result_names(at)[0] == "astronaut.jpg" and result_scores(at)[0] == pytest.approx(1, abs=1e-3)


def test_a_camera_photo_is_searched(indexed, page):
    photos, uri = indexed
    at = page(uri)
    at.segmented_control(key="source").set_value("Camera").run()
    at.camera_input(key="camera").set_value(("shot.jpg", (photos / "camera.jpg").read_bytes(), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert result_names(at)[0] == "camera.jpg"


def test_k_minimum_score_and_folder_narrow_the_results(indexed, page):
    photos, uri = indexed
    at = page(uri)
    at.slider(key="k").set_value(3)
    upload(at, photos / "coffee.jpg")
    assert len(result_names(at)) == 3 and result_names(at)[0] == "coffee.jpg"
    at.slider(key="k").set_value(12)
    with SearchClient(uri=uri) as client:
        hits = client.search(photos / "coffee.jpg", k=12)
    above = [os.path.basename(h.path) for h in hits if h.score >= 0.95]
    assert 1 <= len(above) < len(hits)  # the threshold splits this result list
    at.slider(key="min_score").set_value(0.95).run()
    assert result_names(at) == above
    assert f"({len(hits) - len(above)} below score 0.95)" in results_caption(at)
    at.slider(key="min_score").set_value(0.0)
    at.text_input(key="folder").set_value(str(photos / "sub")).run()
    assert result_names(at) == ["rocket.jpg"]  # the only photo in sub/


def test_more_like_this_searches_with_the_stored_vector(indexed, page):
    photos, uri = indexed
    at = page(uri)
    upload(at, photos / "cat.jpg")
    second = result_names(at)[1]
    at.button(key="more-2").click().run()
    assert at.session_state["similar"] == str(photos / second)
    with SearchClient(uri=uri) as client:
        expected = [os.path.basename(h.path) for h in client.search_similar(str(photos / second), k=12)]
    assert result_names(at) == expected and second not in expected
    assert any(f"More like {second}" in shown(m.value) for m in at.markdown)
    next(b for b in at.button if b.label == "Back to my photo").click().run()
    assert at.session_state["similar"] is None and result_names(at)[0] == "cat.jpg"


def test_plus_and_minus_on_results_search_with_examples_and_negatives(indexed, page):
    from vitsearch.search.query import Stored

    photos, uri = indexed
    at = page(uri)
    upload(at, photos / "cat.jpg")
    names = result_names(at)
    liked = photos / names[1]
    at.button(key="plus-2").click().run()  # the results are now those of the photo and the example
    assert not at.exception and liked.name not in result_names(at)
    disliked = photos / result_names(at)[2]
    at.button(key="minus-3").click().run()
    assert not at.exception and not at.error
    assert at.session_state["examples"] == [str(liked)] and at.session_state["negatives"] == [str(disliked)]
    with SearchClient(uri=uri) as client:
        expected = client.search_examples([photos / "cat.jpg", Stored(str(liked))], [Stored(str(disliked))], k=12)
    assert result_names(at) == [os.path.basename(h.path) for h in expected]
    assert liked.name not in result_names(at) and disliked.name not in result_names(at)
    assert at.button(key=f"drop-+-{liked}") and at.button(key=f"drop-−-{disliked}")  # the strip
    at.button(key=f"drop-−-{disliked}").click().run()  # taken out of the query
    assert at.session_state["negatives"] == [] and at.session_state["examples"] == [str(liked)]
    at.button(key="clear-examples").click().run()
    assert not at.session_state["examples"] and result_names(at)[0] == "cat.jpg"


def test_a_box_drawn_on_the_photo_searches_that_region(indexed, page, tmp_path):
    """The region picker's box (what the chart's box selection leaves in ``box``) makes the
    results those of ``SearchClient.search(box=)``; "Whole photo" goes back; a box selection is
    turned into full-size pixels, clipped to the photo."""
    from vitsearch.search.query import Box
    from vitsearch.ui.region import box_of

    photos, uri = indexed
    composite = Image.new("RGB", (1200, 600), "white")  # the rocket pasted on the right of a page of grass
    composite.paste(Image.open(photos / "grass.jpg").convert("RGB").resize((600, 600)), (0, 0))
    composite.paste(Image.open(photos / "sub" / "rocket.jpg").convert("RGB").resize((600, 600)), (600, 0))
    composite.save(tmp_path / "both.jpg")
    at = upload(page(uri), tmp_path / "both.jpg")
    whole = result_names(at)
    box = Box(600, 0, 600, 600)
    at.session_state["box"] = box
    at.run()
    assert not at.exception and not at.error
    with SearchClient(uri=uri) as client:
        expected = [os.path.basename(h.path) for h in client.search(tmp_path / "both.jpg", k=12, box=box)]
    assert result_names(at) == expected and expected[0] == "rocket.jpg" and whole != expected
    at.button(key="whole-photo").click().run()
    assert at.session_state["box"] is None and result_names(at) == whole
    assert box_of({"x": [700.4, 99.6], "y": [-20, 300.2]}, (1200, 600)) == Box(100, 0, 600, 300)
    assert box_of({"x": [1300, 1400], "y": [0, 10]}, (1200, 600)) is None  # outside the photo


def test_a_result_opens_a_full_size_view_with_its_path_size_date_and_more_like_this(indexed, page):
    photos, uri = indexed
    at = page(uri)
    upload(at, photos / "cat.jpg")
    second = result_names(at)[1]
    at.button(key="view-2").click().run()
    assert not at.exception
    path = str(photos / second)
    assert at.code[0].value == path  # st.code: shown whole, with its copy button
    with Image.open(path) as im:
        size = im.size
    facts = [c.value for c in at.caption if "pixels" in c.value]
    assert facts and facts[0].startswith(f"{size[0]} × {size[1]} pixels")
    at.button(key="view-more").click().run()
    assert at.session_state["similar"] == path
    assert any(f"More like {second}" in shown(m.value) for m in at.markdown)


def test_the_encoder_is_loaded_once_per_server_process(indexed, page, monkeypatch):
    """Once, and only by the first image search: the page draws before (and without) it."""
    from vitsearch.search.encoder import Encoder

    loads = []
    real_load = Encoder.load.__func__
    monkeypatch.setattr(Encoder, "load", classmethod(lambda cls, *a, **kw: loads.append(a) or real_load(cls, *a, **kw)))
    photos, uri = indexed
    at = page(uri)
    assert at.sidebar.get("metric")[0].value == "11" and not loads
    for name in ("cat.jpg", "coffee.jpg", "camera.jpg"):
        upload(at, photos / name)
        assert result_names(at)[0] == name
    second_session = AppTest.from_file(APP, default_timeout=120)  # another browser tab
    second_session.run()
    upload(second_session, photos / "astronaut.jpg")
    assert result_names(second_session)[0] == "astronaut.jpg"
    assert len(loads) == 1


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.jpg", b"<html><body>not an image</body></html>", "notes.jpg: not a recognised image format"),
        ("cut.jpg", (EXAMPLES / "images" / "cat.jpg").read_bytes()[:3000], "cut.jpg: corrupt or truncated"),
        ("empty.png", b"", "empty.png: empty file"),
    ],
)
def test_a_bad_upload_gets_a_message_naming_it(indexed, page, name, data, message):
    _, uri = indexed
    at = upload(page(uri), EXAMPLES / "images" / "cat.jpg", name=name, data=data)
    assert message in shown(at.error[0].value)
    assert result_names(at) == []


def test_an_upload_over_the_limit_is_refused(indexed, page):
    photos, uri = indexed
    at = page(uri, VITSEARCH_MAX_UPLOAD_MB="1")
    big = (photos / "cat.jpg").read_bytes() + b"\0" * (1024 * 1024)  # a valid JPEG with trailing bytes
    upload(at, photos / "cat.jpg", data=big)
    assert "the limit is 1 MB" in at.error[0].value and result_names(at) == []


def test_a_collection_not_indexed_yet_says_what_to_do(db_uri, page):
    at = page(db_uri)
    from vitsearch.search.models import index_hint

    assert f"index a folder first: `{index_hint()}`" in at.info[0].value and "vitsearch index DIR" in index_hint()
    assert not at.error


def test_a_milvus_server_that_does_not_answer_gets_a_message(page, monkeypatch):
    at = page("http://127.0.0.1:9")  # the discard port: nothing listens there
    assert "Cannot open the collection" in at.error[0].value and "127.0.0.1:9" in shown(at.error[0].value)


def test_a_path_that_is_not_a_row_is_never_read(indexed, page, tmp_path):
    photos, uri = indexed
    outside = tmp_path / "secret.jpg"
    outside.write_bytes((photos / "cat.jpg").read_bytes())
    opened: list[str] = []
    watching = [True]

    def audit(event, args):
        if watching[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)  # audit hooks cannot be removed: this one switches itself off below
    try:
        at = page(uri)
        at.session_state["similar"] = str(outside)  # as if a crafted request asked for it
        at.run()
        (photos / "cat.jpg").read_bytes()  # the hook's own check: a read is seen
    finally:
        watching[0] = False
    assert "is not indexed" in at.error[0].value
    assert str(photos / "cat.jpg") in opened and str(outside) not in opened


def test_thumbnails_are_bounded_and_read_only_the_indexed_bytes(tmp_path):
    import hashlib
    import io

    big = tmp_path / "big.jpg"
    Image.open(EXAMPLES / "images" / "astronaut.jpg").resize((2400, 1600)).save(big, quality=90)
    data = big.read_bytes()
    row = {"path": str(big), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    small = Image.open(io.BytesIO(thumbnail(row)))
    assert max(small.size) == THUMB_PX and small.size == (THUMB_PX, THUMB_PX * 2 // 3)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1  # same size, same mtime kept, other bytes
    st_ = big.stat()
    big.write_bytes(bytes(flipped))
    os.utime(big, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    with pytest.raises(BadImageError, match="changed since it was indexed"):
        thumbnail(row)
    big.unlink()
    with pytest.raises(BadImageError, match="No such file"):
        thumbnail(row)


def test_a_file_swapped_for_a_symlink_to_an_outside_image_shows_no_outside_pixels(
    photos, db_uri, tiny_model, page, tmp_path
):
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    bait = photos / "bait.jpg"
    bait.write_bytes((photos / "coffee.jpg").read_bytes())
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    outside = tmp_path / "outside.jpg"  # another picture, padded to the bait's size, the bait's mtime
    outside.write_bytes((photos / "cat.jpg").read_bytes())
    padding = bait.stat().st_size - outside.stat().st_size
    assert padding > 0
    with open(outside, "ab") as f:
        f.write(b"\0" * padding)  # a JPEG decoder ignores bytes after the end marker
    st_ = bait.stat()
    os.utime(outside, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    original = bait.read_bytes()
    bait.unlink()
    bait.symlink_to(outside)
    assert bait.stat().st_size == st_.st_size and bait.stat().st_mtime_ns == st_.st_mtime_ns
    at = upload(page(db_uri), bait, name="query.jpg", data=original)
    names = result_names(at)
    assert names[0] == "bait.jpg"
    assert any("changed since it was indexed" in w.value for w in at.warning)
    images = at.get("image")
    assert len(images) == 1 + len(names) - 1  # the query and every result but the bait


MARKDOWN_NAME = "**bold** _it_ :red[red] $x^2$ [link](http:x) <b>b</b> `code`.jpg"


def test_upload_names_are_shown_as_plain_text(indexed, page):
    photos, uri = indexed
    at = upload(page(uri), photos / "cat.jpg", name=MARKDOWN_NAME)
    assert MARKDOWN_NAME in [t.value for t in at.text]  # the query's name: st.text, never Markdown
    rendered = [m.value for m in [*at.markdown, *at.caption, *at.error, *at.warning, *at.info]]
    assert not any(MARKDOWN_NAME in value for value in rendered)
    bad = upload(page(uri), photos / "cat.jpg", name=MARKDOWN_NAME, data=b"not an image")
    assert bad.error and MARKDOWN_NAME not in bad.error[0].value  # the error names it escaped
    assert plain_markdown(MARKDOWN_NAME) in bad.error[0].value


def plain_markdown(text: str) -> str:
    from vitsearch.ui.common import literal_markdown

    return literal_markdown(text)


def test_a_huge_png_upload_is_refused_from_its_header(indexed, page):
    from hostile import blank_png

    photos, uri = indexed
    at = page(uri)
    upload(at, photos / "cat.jpg", name="huge.png", data=blank_png(13000, 13000))  # decoding it takes >10 s
    assert "huge.png: image too large: 13000x13000 = 169 megapixels" in shown(at.error[0].value)
    assert result_names(at) == []


@pytest.mark.parametrize("first", ["page", "indexer"])
@pytest.mark.slow
def test_the_page_answers_while_an_indexing_run_writes(first, real_model, page, tmp_path):
    """Milvus Lite allows one process per database: whichever of the page and `vitsearch index`
    opens it first serves it to the other (search/lite.py), and the page keeps answering."""
    import shutil
    import subprocess
    import time

    from conftest import shared_path

    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    catalog = sorted(shared_path("data", "catalog").glob("*.jpg"))
    seed, folder = tmp_path / "seed", tmp_path / "catalog"
    seed.mkdir(), folder.mkdir()
    for p in catalog[:4]:
        shutil.copy(p, seed)
    for p in catalog[4:164]:
        shutil.copy(p, folder)
    uri = str(tmp_path / "milvus.db")
    indexer = [
        sys.executable,
        "-c",
        "from vitsearch.cli import main; main()",
        "index",
        str(folder),
        "--model",
        str(real_model),
        "--uri",
        uri,
        "--batch-size",
        "8",
        "--workers",
        "1",
    ]

    if first == "page":  # the page's process opens the database and serves it to the indexer
        with Store(uri, "images") as store:
            index_folder(str(seed), encoder=Encoder.load(str(real_model)), store=store, workers=0)
        at = page(uri)
        proc = subprocess.Popen(indexer, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    else:  # the indexer opens it first; the page connects to it once the collection exists
        proc = subprocess.Popen(indexer, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        at = page(uri)

        def shown_count() -> int:  # 0 also while the page says "index a folder first"
            metric = at.sidebar.get("metric")
            return int(metric[0].value.replace(",", "")) if metric else 0

        while shown_count() == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
            at.run()
    try:
        query = folder / catalog[4].name  # indexed by the run we watch
        upload(at, query)
        counts = []
        while proc.poll() is None:  # search again and again while the indexer writes
            at.run()
            assert not at.exception and not at.error, ([e.value for e in at.exception], [e.value for e in at.error])
            counts.append(int(at.sidebar.get("metric")[0].value.replace(",", "")))
            assert result_names(at), "the page showed no results while indexing"
            time.sleep(0.3)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert len(set(counts)) >= 2 and counts == sorted(counts), counts  # rows appeared as we watched
    at.run()  # after the indexer has exited, the page still answers (and serves the database itself)
    assert not at.error
    total = 160 + (4 if first == "page" else 0)
    assert at.sidebar.get("metric")[0].value == str(total)
    assert result_names(at)[0] == query.name


@pytest.fixture
def with_copies(photos, db_uri, tiny_model):
    """The example photos with ``cat copy.jpg`` (identical bytes to cat.jpg, an older mtime: the
    keeper) and ``sub/coffee "2".jpg`` (identical to coffee.jpg), indexed with the tiny ViT."""
    import shutil

    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    shutil.copyfile(photos / "cat.jpg", photos / "cat copy.jpg")
    os.utime(photos / "cat copy.jpg", (1e9, 1e9))
    shutil.copyfile(photos / "coffee.jpg", photos / "sub" / 'coffee "2".jpg')
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    return photos, db_uri


def test_search_collapses_identical_copies_by_default(with_copies, page):
    photos, uri = with_copies
    at = upload(page(uri), photos / "cat.jpg")
    names = result_names(at)
    assert len(names) == 11 and len({"cat.jpg", "cat copy.jpg"} & set(names)) == 1  # 13 files, 11 pictures
    first = next(col for col in at.columns if col.text)
    assert names[0] in ("cat.jpg", "cat copy.jpg") and "+1 copy" in [c.value for c in first.caption]
    at.checkbox(key="collapse").uncheck().run()
    assert len(result_names(at)) == 12 and {"cat.jpg", "cat copy.jpg"} <= set(result_names(at))


def duplicate_groups(at: AppTest) -> list[list[str]]:
    """File names of each group on the Duplicates page, in order (keeper first)."""
    groups = []
    for block in at.main.children.values():
        if getattr(block, "type", None) == "expandable" or not hasattr(block, "text"):
            continue
        headers = [m.value for m in block.markdown if m.value.startswith("**Group ")]
        if headers:
            groups.append([t.value for t in block.text])
    return groups


def test_the_duplicates_page_lists_groups_with_keeper_thumbnails_and_a_csv(with_copies, page):
    photos, uri = with_copies
    at = page(uri)
    at.switch_page("duplicates_page.py").run()
    assert not at.exception and not at.error
    at.checkbox(key="dup_exact").check().run()
    caption = at.caption[0].value
    assert caption.startswith("2 groups, 2 duplicates among 13 images (identical bytes only")
    assert duplicate_groups(at) == [["cat copy.jpg", "cat.jpg"], ["coffee.jpg", 'coffee "2".jpg']]
    headers = [m.value for m in at.markdown if m.value.startswith("**Group ")]
    assert headers[0] == "**Group 1** · exact · 2 images · weakest link 1.0000"
    keep = [m.value for m in at.markdown if "keep" in m.value]
    assert len(keep) == 2 and all(m.startswith("**1.0000**") for m in keep)
    assert len(at.get("image")) == 4  # one thumbnail per image, from the guarded thumbnail code
    assert any("KiB" in c.value and "px" in c.value for c in at.caption)
    with SearchClient(uri=uri) as client:
        expected = client.duplicates(exact_only=True).csv_bytes()
    button = at.get("download_button")[0]
    assert button.proto.label == "Download CSV" and not button.proto.disabled
    assert expected.decode().splitlines()[0].startswith("group,path,keep,score")
    at.text_input(key="dup_folder").set_value(str(photos / "sub")).run()
    assert at.caption[0].value.startswith("0 groups, 0 duplicates among 2 images")  # both sides inside sub/
    assert at.info and "No duplicates" in at.info[0].value
    at.checkbox(key="dup_exact").uncheck()
    at.text_input(key="dup_folder").set_value("")
    at.slider(key="dup_threshold").set_value(1.0).run()
    assert "threshold 1.000" in at.caption[0].value and len(duplicate_groups(at)) >= 2


def test_the_duplicates_page_of_an_empty_collection(db_uri, tiny_model, page):
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    with Store(db_uri, "images") as store:
        store.ensure(Encoder.load(str(tiny_model)).info)
    at = page(db_uri)
    at.switch_page("duplicates_page.py").run()
    assert not at.exception and not at.error
    assert at.caption[0].value.startswith("0 groups, 0 duplicates among 0 images")
    assert at.get("download_button")[0].proto.disabled


def test_close_matches_get_a_badge_and_a_search_without_one_says_so(indexed, page, tmp_path):
    """The page shows the client's close-match labels: a badge on each match, and "No close
    match in this collection" exactly when no hit is one."""
    photos, uri = indexed
    at = upload(page(uri), photos / "cat.jpg")
    with SearchClient(uri=uri) as client:
        want = [h.match for h in client.search(photos / "cat.jpg", k=12, collapse_duplicates=True)]
    assert result_matches(at) == want and want[0]  # the file itself is a close match
    assert not any("No close match" in i.value for i in at.info)
    noise = tmp_path / "noise.png"
    Image.effect_noise((64, 64), 100).convert("RGB").save(noise)
    at = upload(at, noise, name="noise.png", data=noise.read_bytes())
    badges = result_matches(at)
    assert any("No close match in this collection" in i.value for i in at.info) == (not any(badges))
    at.toggle(key="expand").set_value(True).run()  # query expansion: the same page, searched again
    assert not at.exception and len(result_names(at)) == 11


HOSTILE_CAMERA = "<b>x</b> [a](javascript:x)"


@pytest.fixture
def dated(photos, db_uri, tiny_model):
    """The example photos saved again with an EXIF date (local time), one a month from
    2021-01-15 12:00 in name order, made by a camera whose model is hostile text; sub/rocket.jpg
    left without EXIF, its mtime 2018-03-01; indexed with the tiny ViT. ``(photos, URI, {name: date})``."""
    import datetime as dt

    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    taken = {}
    for i, path in enumerate(sorted(photos.glob("*.jpg"))):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Acme", HOSTILE_CAMERA
        exif.get_ifd(0x8769)[0x9003] = f"2021:{i + 1:02d}:15 12:00:00"
        Image.open(path).convert("RGB").save(path, "JPEG", quality=95, exif=exif)
        taken[path.name] = dt.datetime(2021, i + 1, 15, 12)
    old = dt.datetime(2018, 3, 1).timestamp()
    os.utime(photos / "sub" / "rocket.jpg", (old, old))
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    return photos, db_uri, taken


def test_taken_between_keeps_those_days_and_each_result_shows_its_date_and_camera_escaped(dated, page):
    import datetime as dt

    from vitsearch.ui.common import literal_markdown

    photos, uri, taken = dated
    at = page(uri)
    assert at.date_input(key="taken").value == () and at.selectbox(key="sort").value == "score"  # no date limit
    at.date_input(key="taken").set_value((dt.date(2021, 3, 15), dt.date(2021, 5, 15)))  # the last day included
    upload(at, photos / "cat.jpg")
    want = {name for name, when in taken.items() if dt.datetime(2021, 3, 15) <= when < dt.datetime(2021, 5, 16)}
    assert len(want) == 3 and set(result_names(at)) == want and "3 results in" in results_caption(at)
    with SearchClient(uri=uri) as client:
        hits = client.search(photos / "cat.jpg", k=12, after=dt.date(2021, 3, 15), before=dt.date(2021, 5, 16))
    assert result_names(at) == [os.path.basename(h.path) for h in hits]
    cells = [col for col in at.columns if col.text]
    for cell, name in zip(cells, result_names(at)):
        text = f"{taken[name]:%Y-%m-%d %H:%M} · Acme {HOSTILE_CAMERA}"
        assert literal_markdown(text) in [c.value for c in cell.caption]  # escaped: shown as it is, never run
    rendered = [m.value for m in [*at.markdown, *at.caption, *at.info, *at.warning, *at.error]]
    assert not any(HOSTILE_CAMERA in value for value in rendered)
    at.selectbox(key="sort").set_value("date-asc").run()  # the client's order by date
    with SearchClient(uri=uri) as client:
        hits = client.search(
            photos / "cat.jpg", k=12, after=dt.date(2021, 3, 15), before=dt.date(2021, 5, 16), sort="date-asc"
        )
    assert result_names(at) == [os.path.basename(h.path) for h in hits]
    at.button(key="any-date").click().run()  # the range emptied: every photo again
    assert at.date_input(key="taken").value == () and len(result_names(at)) == 11
    rocket = next(col for col in at.columns if col.text and col.text[0].value == "rocket.jpg")
    assert literal_markdown("2018-03-01 00:00 (file date)") in [c.value for c in rocket.caption]


def test_dates_asked_of_a_collection_not_yet_upgraded_say_what_to_do(db_uri, page):
    import datetime as dt

    from test_store import make_old_collection, make_rows

    rows, _ = make_rows(3)
    make_old_collection(db_uri, "2", rows)  # schema 2: no capture dates
    at = page(db_uri)
    at.session_state["similar"] = rows[0]["path"]
    at.run()
    assert not at.error and result_names(at)  # searched as it is
    at.date_input(key="taken").set_value((dt.date(2021, 1, 1), dt.date(2021, 12, 31))).run()
    assert not at.exception and "vitsearch index" in shown(at.error[0].value)
