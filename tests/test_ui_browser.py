"""End to end in a real browser: `vitsearch ui` started as a user starts it, on a free localhost
port, over a real collection; Debian's headless Chromium uploads a photo, sees result thumbnails
with the right file names, bounded in size, and clicks "More like this". A screenshot of each
step is saved in the test's tmp folder."""

from __future__ import annotations

import pytest
from browser import CHROMIUM, THUMBNAILS, chromium_page, result_names, results_shown, ui_server, upload_and_wait
from PIL import Image

from vitsearch.search import SearchClient
from vitsearch.search.thumbnails import THUMB_PX

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} not found: install Debian's chromium and chromium-driver "
        f"(apt-get install chromium chromium-driver; .ci/run does) or set VITSEARCH_CHROMIUM",
    ),
]


def test_upload_see_results_and_more_like_this_in_chromium(indexed, tmp_path):
    photos, uri = indexed
    with SearchClient(uri=uri) as client:
        expected = [h.path.rsplit("/", 1)[1] for h in client.search(photos / "coffee.jpg", k=12)]
        second = photos / expected[1]
        more = [h.path.rsplit("/", 1)[1] for h in client.search_similar(str(second), k=12)]

    with ui_server(uri, tmp_path / "ui.log") as url, chromium_page() as page:
        page.goto(url)
        page.get_by_text("Drop a photo to find similar images").wait_for(timeout=120_000)
        assert page.get_by_test_id("stMetricValue").all_inner_texts() == ["11", "2"]  # images, folders
        page.screenshot(path=tmp_path / "sidebar.png")

        upload_and_wait(page, photos / "coffee.jpg")
        page.screenshot(path=tmp_path / "results.png", full_page=True)
        assert result_names(page) == expected and expected[0] == "coffee.jpg"
        sizes = page.eval_on_selector_all(THUMBNAILS, "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
        assert len(sizes) == 1 + len(expected)  # the query and one thumbnail per result
        assert all(0 < max(w, h) <= 2 * THUMB_PX for w, h in sizes[:1])  # the query, shown at 2x
        assert all(0 < max(w, h) <= THUMB_PX for w, h in sizes[1:])

        page.get_by_role("button", name="View").nth(1).click()  # the full-size view of the second result
        dialog = page.get_by_role("dialog")
        dialog.get_by_text(str(second), exact=True).wait_for(timeout=60_000)  # its path, to copy
        dialog.locator("img").wait_for(timeout=60_000)
        page.wait_for_function("() => [...document.querySelectorAll('[role=dialog] img')].every(i => i.complete)")
        width, height = dialog.locator("img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
        with Image.open(second) as im:
            assert (width, height) == im.size  # smaller than the view's bound: at its own size
        page.screenshot(path=tmp_path / "view.png")
        dialog.get_by_role("button", name="More like this").click()
        page.get_by_text(f"More like {second.name}").wait_for(timeout=60_000)
        assert not page.get_by_role("dialog").is_visible()
        results_shown(page, more[0], count=len(more))
        page.screenshot(path=tmp_path / "more-like-this.png", full_page=True)
        assert result_names(page) == more and second.name not in more and len(more) == len(expected) - 1


def test_file_and_upload_names_are_shown_as_they_are_in_chromium(photos, db_uri, tiny_model, tmp_path):
    """Markdown, HTML, Streamlit directives and emoji shortcodes in names are shown literally."""
    import shutil

    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    name = "**bold** _it_ :red[red] :tada: $x^2$ [link](http:x) <b>b<\\b> `code`.jpg"
    shutil.copy(photos / "coffee.jpg", photos / name)
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    bad = tmp_path / f"not an image {name}"
    bad.write_bytes(b"<html>not an image</html>")
    with ui_server(db_uri, tmp_path / "ui.log") as url, chromium_page() as page:
        page.goto(url)
        page.get_by_text("Drop a photo to find similar images").wait_for(timeout=120_000)
        upload_and_wait(page, photos / name)
        assert result_names(page)[0] == name  # the result card
        assert name in page.get_by_test_id("stText").all_inner_texts()  # the query's own name
        page.set_input_files("[data-testid=stFileUploaderDropzone] input[type=file]", str(bad))
        page.get_by_test_id("stAlertContentError").wait_for(timeout=60_000)
        assert page.get_by_test_id("stAlertContentError").inner_text() == f"{bad.name}: not a recognised image format"
        page.screenshot(path=tmp_path / "names.png", full_page=True)


def test_the_duplicates_page_in_chromium(photos, db_uri, tiny_model, tmp_path):
    """From the search page to the Duplicates page by its link: groups with their thumbnails,
    the keeper first, and the CSV download (the bytes that SearchClient.duplicates gives)."""
    import contextlib
    import os
    import shutil

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    shutil.copyfile(photos / "cat.jpg", photos / "sub" / "cat copy.jpg")
    os.utime(photos / "sub" / "cat copy.jpg", (1e9, 1e9))
    shutil.copyfile(photos / "coffee.jpg", photos / 'coffee "2".jpg')
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    with SearchClient(uri=db_uri) as client:
        expected = client.duplicates(exact_only=True)
    with ui_server(db_uri, tmp_path / "ui.log") as url, chromium_page() as page:
        page.goto(url)
        page.get_by_text("Drop a photo to find similar images").wait_for(timeout=120_000)
        page.get_by_role("link", name="Duplicates").click()
        page.get_by_text("Identical bytes only").click()
        # The near-duplicate view shown before the click can hold two groups of four too (the
        # pixel check keeps the two copies of each photo): wait for the exact view's own caption,
        # then for its groups to replace the earlier ones.
        page.get_by_text("identical bytes only, scanned in").wait_for(timeout=120_000)
        want = [os.path.basename(p) for g in expected.groups for p in g.paths]
        with contextlib.suppress(PlaywrightTimeout):  # if it never matches, the assert below shows how
            page.wait_for_function(
                """want => JSON.stringify([...document.querySelectorAll('[data-testid=stText]')]
                .map(e => e.innerText)) === JSON.stringify(want)""",
                arg=want,
                timeout=60_000,
            )
        page.wait_for_function(
            f"""() => {{
            const imgs = [...document.querySelectorAll('{THUMBNAILS}')];
            return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0);
        }}""",
            timeout=60_000,
        )
        assert page.url.endswith("/duplicates")
        names = page.get_by_test_id("stText").all_inner_texts()
        assert names == want  # keeper first
        assert sorted(names) == ["cat copy.jpg", "cat.jpg", 'coffee "2".jpg', "coffee.jpg"]
        assert names.index("cat copy.jpg") < names.index("cat.jpg")  # the older of two equal pictures is kept
        sizes = page.eval_on_selector_all(THUMBNAILS, "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
        assert all(0 < max(w, h) <= THUMB_PX for w, h in sizes)
        page.screenshot(path=tmp_path / "duplicates.png", full_page=True)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download CSV").click()
        assert download.value.suggested_filename == "duplicates.csv"
        assert open(download.value.path(), "rb").read() == expected.csv_bytes()


def test_plus_and_minus_build_a_strip_of_examples_in_chromium(indexed, tmp_path):
    """ "+" and "−" on results: the strip of example thumbnails above the results, the results of
    the photo with the example minus the negative, an example taken out, "Back to my photo"."""
    from vitsearch.search.query import Stored

    photos, uri = indexed
    with SearchClient(uri=uri) as client:
        first = [h.path.rsplit("/", 1)[1] for h in client.search(photos / "coffee.jpg", k=12)]
        liked = photos / first[1]
        second = [
            h.path.rsplit("/", 1)[1] for h in client.search_examples([photos / "coffee.jpg", Stored(str(liked))], k=12)
        ]
        disliked = photos / second[2]
        both = client.search_examples([photos / "coffee.jpg", Stored(str(liked))], [Stored(str(disliked))], k=12)
        both = [h.path.rsplit("/", 1)[1] for h in both]

    with ui_server(uri, tmp_path / "ui.log") as url, chromium_page() as page:
        page.goto(url)
        page.get_by_text("Drop a photo to find similar images").wait_for(timeout=120_000)
        upload_and_wait(page, photos / "coffee.jpg")
        page.get_by_role("button", name="+", exact=True).nth(1).click()  # the second result
        page.get_by_role("button", name="Back to my photo").wait_for(timeout=60_000)
        results_shown(page, second[0], count=len(second))
        assert result_names(page) == second and liked.name not in second
        page.get_by_role("button", name="−", exact=True).nth(2).click()  # the third result now
        results_shown(page, both[0], count=len(both))
        assert result_names(page) == both and disliked.name not in both
        strip = page.get_by_role("button", name="✕")
        assert strip.count() == 2  # one example, one negative, each with its thumbnail
        page.evaluate("document.querySelectorAll('*').forEach(e => { if (e.scrollTop) e.scrollTop = 0; })")
        page.mouse.move(1, 1)  # no tooltip over the results
        page.screenshot(path=tmp_path / "examples.png")  # the strip and the first row of results
        page.get_by_role("button", name="− ✕").click()  # the negative taken out
        results_shown(page, second[0], count=len(second))
        assert result_names(page) == second
        page.get_by_role("button", name="Back to my photo").click()
        results_shown(page, "coffee.jpg", count=len(first))
        assert result_names(page) == first


def test_a_box_dragged_on_the_photo_searches_that_region_in_chromium(indexed, tmp_path):
    """ "Search a region": a box dragged with the mouse on the right half of a photo of grass and
    a rocket gives the results of that region (the rocket first), drawn on the photo."""
    photos, uri = indexed
    composite = Image.new("RGB", (1200, 600), "white")
    composite.paste(Image.open(photos / "grass.jpg").convert("RGB").resize((600, 600)), (0, 0))
    composite.paste(Image.open(photos / "sub" / "rocket.jpg").convert("RGB").resize((600, 600)), (600, 0))
    composite.save(tmp_path / "both.jpg")
    with SearchClient(uri=uri) as client:
        whole = [h.path.rsplit("/", 1)[1] for h in client.search(tmp_path / "both.jpg", k=12)]

    with ui_server(uri, tmp_path / "ui.log") as url, chromium_page() as page:
        page.goto(url)
        page.get_by_text("Drop a photo to find similar images").wait_for(timeout=120_000)
        page.set_input_files("[data-testid=stFileUploaderDropzone] input[type=file]", str(tmp_path / "both.jpg"))
        results_shown(page, whole[0], count=len(whole))
        page.get_by_text("Search a region").click()
        plot = page.locator(".js-plotly-plot .nsewdrag").first
        plot.wait_for(timeout=60_000)
        b = plot.bounding_box()
        page.mouse.move(b["x"] + b["width"] * 0.55, b["y"] + b["height"] * 0.05)
        page.mouse.down()
        page.mouse.move(b["x"] + b["width"] * 0.75, b["y"] + b["height"] * 0.5, steps=5)
        page.mouse.move(b["x"] + b["width"] * 0.95, b["y"] + b["height"] * 0.95, steps=5)
        page.mouse.up()
        page.get_by_role("button", name="Whole photo").wait_for(timeout=60_000)
        results_shown(page, "rocket.jpg")
        assert result_names(page) != whole
        page.screenshot(path=tmp_path / "region.png")
        page.get_by_role("button", name="Whole photo").click()
        results_shown(page, whole[0], count=len(whole))
        assert result_names(page) == whole
