"""Contract of SearchClient: query by path, bytes, PIL image or array (same answer), by an
indexed item's stored vector, or by vector; scores are cosine similarity, best first; the
collection's own encoder is used and a different one refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitsearch.search import (
    BadImageError,
    BadQueryError,
    CollectionNotFoundError,
    EncoderMismatchError,
    Hit,
    SearchClient,
)
from vitsearch.search.encoder import Encoder


def test_an_indexed_image_finds_itself_first(indexed):
    photos, uri = indexed
    with SearchClient(uri=uri) as client:  # model=None: the collection's encoder
        for name in ("cat.jpg", "coffee.jpg", "sub/rocket.jpg"):
            hits = client.search(str(photos / name), k=5)
            assert isinstance(hits[0], Hit) and hits[0].path == str(photos / name)
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            assert hits[0].metadata["width"] > 0 and hits[0].metadata["folder"]


def test_every_query_type_gives_the_same_answer(indexed):
    """A path and its bytes are decoded as the indexer decodes the file (the same vector); a
    picture already decoded by the caller is resized from its full size (the same ranking)."""
    photos, uri = indexed
    path = photos / "astronaut.jpg"
    with SearchClient(uri=uri) as client:
        ref = client.search(path, k=4)
        assert ref[0].path == str(path) and ref[0].score == pytest.approx(1.0, abs=2e-6)
        for query, atol in (
            (str(path), 1e-6),
            (path.read_bytes(), 1e-6),
            (Image.open(path), 1e-3),
            (np.asarray(Image.open(path).convert("RGB")), 1e-3),
        ):
            got = client.search(query, k=4)
            assert [h.path for h in got] == [h.path for h in ref]
            np.testing.assert_allclose([h.score for h in got], [h.score for h in ref], atol=atol)


def test_search_similar_uses_the_stored_vector_and_leaves_the_item_out(indexed):
    photos, uri = indexed
    cat = str(photos / "cat.jpg")
    with SearchClient(uri=uri) as client:
        similar = client.search_similar(cat, k=3)
        assert not client.encoder_loaded  # no model was needed
        by_image = client.search(cat, k=4)
        assert [h.path for h in similar] == [h.path for h in by_image[1:]]
        with_self = client.search_similar(cat, k=1, exclude_self=False)
        assert with_self[0].path == cat
        with pytest.raises(BadQueryError, match="not indexed"):
            client.search_similar(str(photos / "nope.jpg"))


def test_search_vectors_answers_each_query_as_alone_and_leaves_each_path_out(indexed):
    photos, uri = indexed
    paths = [str(photos / n) for n in ("cat.jpg", "coffee.jpg", "sub/rocket.jpg")]
    with SearchClient(uri=uri) as client:
        stored = client.stored_vectors(paths + [str(photos / "nope.jpg")])
        assert sorted(stored) == sorted(paths) and not client.encoder_loaded
        assert all(v.shape == (32,) and v.dtype == np.float32 for v in stored.values())
        vectors = np.stack([stored[p] for p in paths])
        for k in (1, 4, 11):
            together = client.search_vectors(vectors, k=k)
            assert [[h.path for h in hits] for hits in together] == [
                [h.path for h in client.search_vector(v, k=k)] for v in vectors
            ]
            left_out = client.search_vectors(vectors, k=k, exclude=[paths[0], None, paths[2]])
            assert paths[0] not in {h.path for h in left_out[0]} and len(left_out[0]) == min(k, 10)
            assert [h.path for h in left_out[0]] == [h.path for h in client.search_similar(paths[0], k=k)]
            assert [h.path for h in left_out[1]] == [h.path for h in together[1]]
            assert [h.path for h in left_out[2]] == [h.path for h in client.search_similar(paths[2], k=k)]
        sub = client.search_vectors(vectors, k=5, folder=str(photos / "sub"), exclude=[None, None, paths[2]])
        assert [[h.path for h in hits] for hits in sub] == [[paths[2]], [paths[2]], []]
        deepest = client.search_vectors(vectors, k=16384, exclude=paths)  # no room for k + 1: one by one
        assert [len(hits) for hits in deepest] == [10, 10, 10]
        assert all(p not in {h.path for h in hits} for p, hits in zip(paths, deepest))
        with pytest.raises(ValueError, match="Q paths"):
            client.search_vectors(vectors, k=3, exclude=paths[:2])


def test_filter_and_bad_queries(indexed):
    photos, uri = indexed
    with SearchClient(uri=uri) as client:
        sub = client.search(photos / "cat.jpg", k=10, filter=f'folder == "{photos / "sub"}"')
        assert [h.path for h in sub] == [str(photos / "sub" / "rocket.jpg")]
        for k in (0, -1, 16385, 2.5):
            with pytest.raises(BadQueryError, match="k must be"):
                client.search(photos / "cat.jpg", k=k)
        for bad in ("width >", 'folder == "unterminated', "colour == 3", "width >> 2"):
            with pytest.raises(BadQueryError, match="not a valid Milvus expression|not one boolean expression"):
                client.search(photos / "cat.jpg", k=3, filter=bad)
        with pytest.raises(BadImageError, match="corrupt or truncated"):
            client.search((photos / "cat.jpg").read_bytes()[:2000])
        with pytest.raises(BadImageError, match="not a recognised image format"):
            client.search(b"definitely not an image")


def test_folder_keeps_that_folder_and_below_and_nothing_else(photos, db_uri, tiny_model):
    import shutil

    from vitsearch.indexer import index_folder
    from vitsearch.search.store import Store

    # "a_b" as a `like` pattern also matches "aXb" (Milvus has no escape for _): it must not leak.
    for folder, name in (
        ("a_b", "cat.jpg"),
        ("a_b/deeper", "coffee.jpg"),
        ("aXb/inner", "camera.jpg"),
        ("a_bc", "grass.jpg"),
    ):
        (photos / folder).mkdir(parents=True)
        shutil.copy(photos / name, photos / folder / name)
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    with SearchClient(uri=db_uri) as client:
        hits = client.search(photos / "cat.jpg", k=20, folder=str(photos / "a_b") + "/")
        assert sorted(h.path for h in hits) == [
            str(photos / "a_b" / "cat.jpg"),
            str(photos / "a_b" / "deeper" / "coffee.jpg"),
        ]
        similar = client.search_similar(str(photos / "cat.jpg"), k=20, folder=str(photos / "sub"))
        assert [h.path for h in similar] == [str(photos / "sub" / "rocket.jpg")]
        assert len(client.search(photos / "cat.jpg", k=20, folder=str(photos))) == 15


def test_hit_to_dict():
    h = Hit("/a.jpg", 0.5, {"path": "/a.jpg", "width": 3})
    assert h.to_dict() == {"path": "/a.jpg", "score": 0.5, "match": False, "metadata": {"width": 3}}
    plain = {"path": "/b.jpg", "score": 0.9, "match": True, "metadata": {}}
    assert Hit("/b.jpg", 0.9, match=True).to_dict() == plain
    # metadata in schema order, whatever order it was built in; copies only on a collapsed hit
    mixed = Hit("/c.jpg", 0.1, {"sha256": "s", "width": 1, "folder": "/"}, copies=("/d.jpg",)).to_dict()
    assert list(mixed["metadata"]) == ["folder", "width", "sha256"] and mixed["copies"] == ["/d.jpg"]


def test_other_model_refused_missing_collection_explained(indexed, other_tiny_model, tiny_model, db_uri):
    _, uri = indexed
    with pytest.raises(EncoderMismatchError):
        SearchClient(uri=uri, model=str(other_tiny_model))
    with pytest.raises(EncoderMismatchError):
        SearchClient(uri=uri, encoder=Encoder.load(str(other_tiny_model)))
    SearchClient(uri=uri, model=str(tiny_model)).close()  # the same model by name is fine
    with pytest.raises(CollectionNotFoundError, match="index a folder first"):
        SearchClient(uri=uri, collection="never_indexed")


def test_stats(indexed, tiny_model):
    _, uri = indexed
    with SearchClient(uri=uri) as client:
        s = client.stats()
    assert s["count"] == 11 and s["dim"] == 32 and s["model"] == str(tiny_model)
    assert s["index_type"] == "HNSW" and s["metric_type"] == "COSINE" and s["uri"] == uri


def test_a_folder_with_wildcards_or_a_newline_gets_its_k_results(photos, db_uri, tiny_model):
    import shutil

    from vitsearch.indexer import index_folder
    from vitsearch.search.store import Store

    names = sorted(p.name for p in photos.glob("*.jpg"))
    for folder in ("pct%", "pctX", "pctY", "new\nline"):
        (photos / folder).mkdir()
    for i, name in enumerate(names):  # siblings that a `like "pct%/%"` would also match, many of them
        shutil.copy(photos / name, photos / ("pctX" if i % 2 else "pctY") / name)
    shutil.copy(photos / "cat.jpg", photos / "pct%" / "only.jpg")
    shutil.copy(photos / "coffee.jpg", photos / "new\nline" / "only.jpg")
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    with SearchClient(uri=db_uri) as client:
        for folder in ("pct%", "new\nline"):
            hits = client.search(photos / "astronaut.jpg", k=1, folder=str(photos / folder))
            assert [h.path for h in hits] == [str(photos / folder / "only.jpg")], folder
        assert client.search(photos / "cat.jpg", k=3, folder=str(photos / "pct")) == []  # no folder "pct"


def test_an_unbalanced_filter_cannot_undo_the_exclusion_of_the_query_itself(indexed):
    photos, uri = indexed
    cat = str(photos / "cat.jpg")
    with SearchClient(uri=uri) as client:
        with pytest.raises(BadQueryError, match="one boolean expression"):
            client.search_similar(cat, k=20, filter="width > 0) or (width > 0")
        hits = client.search_similar(cat, k=20, filter="(width > 0) or (width > 0)")
        assert cat not in {h.path for h in hits} and len(hits) == 10


@pytest.mark.slow
def test_a_query_is_decoded_like_an_indexed_file(tmp_path, db_uri, real_model):
    """One bytes-to-model-input path: a large JPEG query (decoded at reduced scale, like the
    indexer does) gives exactly the vector stored for the same file."""
    from vitsearch.indexer import index_folder
    from vitsearch.search.store import Store

    big = tmp_path / "big" / "astronaut.jpg"
    big.parent.mkdir()
    Image.open(photos_dir() / "astronaut.jpg").convert("RGB").resize((2400, 1600)).save(big, quality=90)
    encoder = Encoder.load(str(real_model))
    with Store(db_uri, "images") as store:
        index_folder(str(big.parent), encoder=encoder, store=store, workers=0)
        stored = np.asarray(store.get([str(big)], fields=["vector"])[str(big)]["vector"])
    with SearchClient(uri=db_uri, encoder=encoder) as client:
        for query in (str(big), big.read_bytes()):
            hit = client.search(query, k=1)[0]  # the same vector, not merely a close one (full decode: ~1e-4 off)
            assert hit.path == str(big) and hit.score == pytest.approx(1.0, abs=2e-6)
    assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-5)


def photos_dir():
    from conftest import EXAMPLES

    return EXAMPLES / "images"


def test_a_huge_png_query_is_refused_before_decoding(indexed):
    from hostile import png_claiming

    _, uri = indexed
    with SearchClient(uri=uri) as client:
        with pytest.raises(BadImageError, match="13000x13000 = 169 megapixels.*VITSEARCH_MAX_IMAGE_PIXELS"):
            client.search(png_claiming(13000, 13000), k=3)
