"""Queries of more than one whole picture (issue 34): a box of an image, several weighted
examples and negatives, through SearchClient, the command and the HTTP API."""

from __future__ import annotations

import io
import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps
from test_api import assert_same, serving
from test_cli import run_in_process

from vitsearch.search import BadQueryError, NotIndexedError, SearchClient
from vitsearch.search.query import MAX_EXAMPLES, NEGATIVE_WEIGHT, Box, Examples, Stored, combine, weighted
from vitsearch.search.whitening import normalise


def unit(n: int, d: int, seed: int) -> np.ndarray:
    return normalise(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


# --- the parts --------------------------------------------------------------------------------


def test_a_box_is_four_whole_numbers_inside_the_image():
    assert Box.of("10, 20,30,40") == Box(10, 20, 30, 40) == Box.of([10, 20, 30, 40])
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,4,5", "1.5,2,3,4"):
        with pytest.raises(BadQueryError, match="x,y,w,h"):
            Box.of(bad)
    with pytest.raises(BadQueryError, match="empty"):
        Box.of("0,0,0,5")
    image = Image.new("RGB", (100, 50))
    assert Box(90, 40, 10, 10).crop(image).size == (10, 10)
    for outside in (Box(91, 0, 10, 10), Box(-1, 0, 10, 10), Box(0, 41, 10, 10)):
        with pytest.raises(BadQueryError, match="100x50"):
            outside.crop(image)


def test_weights_are_rclips_and_a_file_of_that_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert weighted("2:a.jpg") == (2.0, "a.jpg") and weighted("0.5:b c.jpg") == (0.5, "b c.jpg")
    assert weighted("a.jpg") == (1.0, "a.jpg") and weighted("x:a.jpg") == (1.0, "x:a.jpg")
    (tmp_path / "2:a.jpg").write_bytes(b"")
    assert weighted("2:a.jpg") == (1.0, "2:a.jpg")


def test_the_combination_is_the_weighted_sum_minus_the_negatives():
    e = unit(3, 16, 0)
    got = combine(e, np.array([2.0, 1.0, -0.5]))
    want = 2 * e[0] + e[1] - 0.5 * e[2]
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), atol=1e-6)
    with pytest.raises(BadQueryError, match="cancel"):
        combine(np.stack([e[0], e[0]]), np.array([1.0, -1.0]))


def test_examples_are_checked():
    assert Examples.of(["a"], ["b"], [2, 1]).signs().tolist() == [2.0, -NEGATIVE_WEIGHT]
    with pytest.raises(BadQueryError, match="positive"):
        Examples.of([], ["b"])
    with pytest.raises(BadQueryError, match=f"at most {MAX_EXAMPLES}"):
        Examples.of(["a"] * MAX_EXAMPLES, ["b"])
    with pytest.raises(BadQueryError, match="one per example"):
        Examples.of(["a", "b"], [], [1])
    for bad in ([0], [-1], [float("nan")]):
        with pytest.raises(BadQueryError, match="above 0"):
            Examples.of(["a"], [], bad)


# --- through the client -----------------------------------------------------------------------


def full_size(data: bytes) -> Image.Image:
    """The photo as a viewer displays it: every pixel, upright."""
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def test_a_box_searches_the_region_at_full_size_as_a_picture_of_its_own(indexed):
    photos, uri = indexed
    cat = (photos / "cat.jpg").read_bytes()
    upright = full_size(cat)
    w, h = upright.size
    region = (w // 4, h // 4, w // 2, h // 2)
    cropped = upright.crop((region[0], region[1], region[0] + region[2], region[1] + region[3]))
    with SearchClient(uri) as client:
        assert client.load(str(photos / "cat.jpg")).size[0] < w  # a plain query is decoded at reduced scale
        assert_same(client.search(str(photos / "cat.jpg"), box=region), client.search(cropped))
        assert_same(client.search(cat, box=region), client.search(cropped))
        whole = client.search(str(photos / "cat.jpg"))
        assert [h.score for h in whole] != [h.score for h in client.search(cat, box=region)]
        with pytest.raises(BadQueryError, match=f"{w}x{h}"):
            client.search(str(photos / "cat.jpg"), box=(0, 0, w + 1, h))


def test_a_box_is_in_the_pixels_of_the_photo_as_displayed(indexed):
    photos, uri = indexed
    upright = full_size((photos / "cat.jpg").read_bytes())
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the pixels as a camera held sideways stores them
    exif = Image.Exif()
    exif[0x0112] = 8  # displayed rotated 90° clockwise: upright again
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    sideways = buf.getvalue()
    w, h = upright.size
    assert full_size(sideways).size == (w, h)
    with SearchClient(uri) as client:
        got = client.search(sideways, box=(0, 0, w // 2, h))  # the left half of the cat as a person sees it
        want = client.search(full_size(sideways).crop((0, 0, w // 2, h)))
    assert_same(got, want)


def test_one_example_is_a_plain_search_and_several_rank_by_their_combination(indexed):
    photos, uri = indexed
    cat, coffee, rocket = str(photos / "cat.jpg"), str(photos / "coffee.jpg"), str(photos / "sub" / "rocket.jpg")
    with SearchClient(uri) as client:
        assert_same(client.search_examples([cat], k=5), client.search(cat, k=5))
        space = client.space
        stored = client.stored_vectors([cat, coffee, rocket])
        hits = client.search_examples([Stored(cat), coffee], [Stored(rocket)], weights=[2, 1, 0.5], k=11)
        everything = {h.path: h for h in client.search(cat, k=11)}
    assert cat not in {h.path for h in hits} and rocket not in {h.path for h in hits}  # stored examples left out
    assert coffee in {h.path for h in hits}  # an example given as a file is not
    embedded = {p: space.to_search(v)[0] for p, v in stored.items()}
    query = normalise((2 * embedded[cat] + embedded[coffee] - NEGATIVE_WEIGHT * 0.5 * embedded[rocket])[None, :])[0]
    with SearchClient(uri) as client:
        rows = client.store.get([h.path for h in hits], fields=["vector"])
    want = {
        p: float(np.dot(query, normalise(np.asarray(r["vector"], np.float32)[None, :])[0])) for p, r in rows.items()
    }
    for h in hits:
        assert abs(h.score - want[h.path]) < 2e-3, (h.path, h.score, want[h.path])  # coffee was embedded from its file
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(hits) == 9 and set(everything) - {h.path for h in hits} == {cat, rocket}


def test_examples_that_a_person_can_get_wrong_are_refused_with_the_reason(indexed, tmp_path):
    photos, uri = indexed
    cat = str(photos / "cat.jpg")
    with SearchClient(uri) as client:
        with pytest.raises(BadQueryError, match="cancel"):
            client.search_examples([cat], [cat], [1, 1 / NEGATIVE_WEIGHT])
        with pytest.raises(BadQueryError, match="positive"):
            client.search_examples([], [cat])
        with pytest.raises(NotIndexedError, match="never.jpg"):
            client.search_examples([Stored(str(tmp_path / "never.jpg"))])
        with pytest.raises(BadQueryError, match="at most"):
            client.search_examples([cat] * 33)


# --- the command and the API ------------------------------------------------------------------


def test_the_command_takes_several_images_weights_negatives_and_a_box(indexed, tmp_path, monkeypatch):
    photos, uri = indexed
    monkeypatch.chdir(photos)
    shutil.copy(photos / "coffee.jpg", tmp_path / "2:coffee.jpg")
    out = run_in_process("search", "2:cat.jpg", "coffee.jpg", "--not", "sub/rocket.jpg", "--uri", uri, "--json")
    assert out.exit_code == 0, out.stderr
    with SearchClient(uri) as client:
        want = client.search_examples(["cat.jpg", "coffee.jpg"], ["sub/rocket.jpg"], [2, 1, 1])
    assert_same(json.loads(out.stdout)["hits"], want)
    literal = run_in_process("search", tmp_path / "2:coffee.jpg", "cat.jpg", "--uri", uri, "--json")
    assert literal.exit_code == 0, literal.stderr  # a file named 2:coffee.jpg is that file, weight 1
    similar = run_in_process("search", "cat.jpg", str(tmp_path / "2:coffee.jpg"), "--similar", "--uri", uri, "--json")
    assert similar.exit_code == 0, similar.stderr  # an indexed path (stored) mixed with a file that is not
    assert str(photos / "cat.jpg") not in [h["path"] for h in json.loads(similar.stdout)["hits"]]
    boxed = run_in_process("search", "cat.jpg", "--box", "0,0,40,40", "--uri", uri, "--json")
    assert boxed.exit_code == 0, boxed.stderr
    for args, reason in (
        (["cat.jpg", "coffee.jpg", "--box", "0,0,4,4"], "--box takes one IMAGE"),
        (["cat.jpg", "--box", "0,0,100000,4"], "not inside the image"),
        (["cat.jpg", "--not", "5:cat.jpg"], "cancel"),
    ):
        bad = run_in_process("search", *args, "--uri", uri)
        assert bad.exit_code == 2 and reason in bad.stderr, (args, bad.stderr)


@pytest.mark.slow
def test_the_api_searches_a_box_and_examples_as_search_client_does(indexed):
    photos, uri = indexed
    cat, coffee, rocket = (photos / "cat.jpg").read_bytes(), photos / "coffee.jpg", str(photos / "sub" / "rocket.jpg")
    with serving(uri) as (base, _), SearchClient(uri) as client:
        boxed = httpx.post(f"{base}/search", files={"image": ("cat.jpg", cat)}, params={"box": "0,0,40,40"}, timeout=60)
        assert boxed.status_code == 200, boxed.text
        assert_same(boxed.json()["hits"], client.search(cat, box=(0, 0, 40, 40)))
        answer = httpx.post(
            f"{base}/search/examples",
            files=[("positive", ("cat.jpg", cat)), ("negative", ("coffee.jpg", coffee.read_bytes()))],
            data={"positive_path": [rocket], "weights": "[2, 1, 0.5]"},
            params={"k": 5},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert_same(answer.json()["hits"], client.search_examples([cat, Stored(rocket)], [coffee], [2, 1, 0.5], k=5))
        for files, data, params, status in (
            ([("positive", ("cat.jpg", cat))], {"weights": "[1, 2]"}, {}, 400),
            ([("positive", ("cat.jpg", cat))], {"weights": "two"}, {}, 400),
            ([("negative", ("cat.jpg", cat))], {}, {}, 400),
            ([("positive", ("cat.jpg", cat))], {"positive_path": ["/nowhere.jpg"]}, {}, 404),
            ([("positive", ("x.jpg", b"not an image"))], {}, {}, 400),
            ([("image", ("cat.jpg", cat))], {}, {"box": "0,0,0,1"}, 400),
        ):
            route = "/search" if params else "/search/examples"
            got = httpx.post(f"{base}{route}", files=files, data=data, params=params, timeout=60)
            assert got.status_code == status and "detail" in got.json(), (files, data, got.text)
