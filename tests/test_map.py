"""`vitsearch map`, search/embedding_map.py and the Map page (issue 35): the layout has a position
per image and is the same for the same seed; it is kept with the collection (a companion Milvus
collection and a record, dropped with it) and reused until the collection changes by 10% or on
--recompute; sample-and-place positions every row; clusters recover planted groups; the page draws
the map and a selection's CSV holds the selected paths; coloured by date (issue: "coloured by
cluster or folder or date"), the points take their capture times, grey where unknown."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import os
import re

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from test_cli import run_in_process
from test_ui import page  # noqa: F401 (the fixture)

from vitsearch.search.embedding_map import EmbeddingMap, capture_times, compute_map, embedding_map, place
from vitsearch.search.encoder_info import EncoderInfo
from vitsearch.search.paths import path_from_stored
from vitsearch.search.store import Store

DIM, GROUPS, PER_GROUP = 32, 3, 100


def planted(store: Store, start: int = 0, n: int = GROUPS * PER_GROUP, seed: int = 0) -> None:
    """``n`` unit vectors around 3 random centres (row i in group ``i % 3``), as Store.upsert takes them."""
    store.ensure(EncoderInfo("bench", "0" * 64, DIM, "cls", (224, 224), "torch"))
    centres = np.random.default_rng(0).normal(size=(GROUPS, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + n)
    vectors = centres[ids % GROUPS] + rng.normal(scale=0.3, size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert(
        [
            {
                "path": f"/photos/g{i % GROUPS}/IMG_{i:05d}.jpg",
                "vector": v,
                "folder": f"/photos/g{i % GROUPS}",
                "size": 1000 + i,
                "mtime": 1.7e9,
                "ctime_ns": 1,
                "inode": i,
                "width": 64,
                "height": 48,
                "sha256": f"{i:064x}",
                "indexed_at": 1.7e9,
                "taken_at": 1.7e9,
                "date_source": "mtime",
                "camera": "",
            }
            for i, v in zip(ids.tolist(), vectors)
        ]
    )
    store.flush()


def dated(store: Store, dates: list[tuple[float, str]], start: int = 0) -> list[str]:
    """One row per ``(taken_at, date_source)``, numbered from ``start`` (a few rows: their map is
    made without UMAP); returns their paths."""
    store.ensure(EncoderInfo("bench", "0" * 64, DIM, "cls", (224, 224), "torch"))
    vectors = np.random.default_rng(0).normal(size=(len(dates), DIM)).astype(np.float32)
    paths = [f"/photos/d/IMG_{i:05d}.jpg" for i in range(start, start + len(dates))]
    store.upsert(
        [
            {
                "path": path,
                "vector": v,
                "folder": "/photos/d",
                "size": 1000,
                "mtime": 1.7e9,
                "ctime_ns": 1,
                "inode": start + i,
                "width": 64,
                "height": 48,
                "sha256": f"{start + i:064x}",
                "indexed_at": 1.7e9,
                "taken_at": taken,
                "date_source": source,
                "camera": "",
            }
            for i, (path, v, (taken, source)) in enumerate(zip(paths, vectors, dates))
        ]
    )
    store.flush()
    return paths


def group_of(path: str) -> int:
    return int(path.split("/")[2][1:])


def map_collections(store: Store) -> list[str]:
    return [n for n in store._call("list_collections") if "__vitsearch_map_" in n]


@pytest.fixture
def groups(db_uri) -> str:
    with Store(db_uri, "images") as store:
        planted(store)
    return db_uri


@pytest.mark.slow
def test_the_map_positions_every_image_clusters_the_planted_groups_and_is_the_same_for_a_seed(groups):
    with Store(groups, "images") as store:
        first = embedding_map(store)
        again = compute_map(store)
    assert first.computed and first.record["method"] == "full" and first.record["rows"] == 300
    assert first.xy.shape == (300, 2) and first.xy.dtype == np.float32 and np.isfinite(first.xy).all()
    assert first.paths == sorted(first.paths) and len(set(first.paths)) == 300
    assert adjusted_rand_score([group_of(p) for p in first.paths], first.cluster) == 1.0
    assert first.record["clusters"] == 3 and sorted(first.labels) == [0, 1, 2]
    for c, labels in first.labels.items():  # the labels are members of their cluster, one group each
        assert len(labels) == 4 and len({group_of(p) for p in labels}) == 1
        assert all(first.cluster[first.paths.index(p)] == c for p in labels)
    np.testing.assert_array_equal(again.xy, first.xy)  # the same seed, the same layout
    np.testing.assert_array_equal(again.cluster, first.cluster)
    assert again.record["id"] != first.record["id"]


@pytest.mark.slow
def test_the_map_is_kept_reused_and_made_again_when_the_collection_changed_enough(groups):
    with Store(groups, "images") as store:
        made = embedding_map(store)
    with Store(groups, "images") as store:  # read back through another store: kept in Milvus
        kept = embedding_map(store)
        assert not kept.computed and kept.record == made.record
        assert kept.paths == made.paths and kept.labels == made.labels
        np.testing.assert_array_equal(kept.xy, made.xy)
        np.testing.assert_array_equal(kept.cluster, made.cluster)
        planted(store, start=300, n=20, seed=1)  # 20 more: under 10%, still fresh
        assert embedding_map(store).record["id"] == made.record["id"]
        planted(store, start=320, n=20, seed=2)  # 40 more: 13%, stale
        grown = embedding_map(store)
        assert grown.computed and grown.record["id"] != made.record["id"] and grown.record["rows"] == 340
        asked = embedding_map(store, recompute=True)
        assert asked.computed and asked.record["id"] != grown.record["id"]
        assert len(map_collections(store)) == 1  # the older maps were dropped
        store.drop()
        assert map_collections(store) == []  # and the last one with the collection


@pytest.mark.slow
@pytest.mark.parametrize("how", ["knn", "transform"])
def test_sample_and_place_positions_every_row_in_the_cluster_of_its_group(groups, how):
    with Store(groups, "images") as store:
        emap = compute_map(store, sample_size=90, place=how)
    assert emap.record["method"] == f"sample+{how}" and emap.record["sampled"] == 90
    assert emap.record["rows"] == len(emap.paths) == 300 and np.isfinite(emap.xy).all()
    assert adjusted_rand_score([group_of(p) for p in emap.paths], emap.cluster) > 0.95


def test_place_puts_a_copy_of_a_sampled_vector_at_its_position():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(50, 8)).astype(np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    xy = rng.normal(size=(50, 2)).astype(np.float32)
    clusters = np.arange(50, dtype=np.int32) % 3
    where, which = place(sample[:5], sample, xy, clusters, k=1)
    np.testing.assert_allclose(where, xy[:5], atol=1e-6)
    assert which.tolist() == clusters[:5].tolist()


@pytest.mark.slow
def test_the_command_computes_reuses_recomputes_and_writes_a_csv(groups, tmp_path):
    out = run_in_process("map", "--uri", groups, "--json")
    assert out.exit_code == 0, out.stderr
    first = json.loads(out.stdout)
    assert first["computed"] and first["clusters"] == 3 and sum(c["size"] for c in first["cluster_list"]) == 300
    out = run_in_process("map", "--uri", groups, "--csv", tmp_path / "map.csv")
    assert out.exit_code == 0, out.stderr
    assert out.stdout.startswith("300 images, 3 clusters (kept map, reused; full")
    with open(tmp_path / "map.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and {path_from_stored(r["path"]) for r in rows} == {r for r in map(_path, range(300))}
    again = json.loads(run_in_process("map", "--uri", groups, "--json", "--recompute").stdout)
    assert again["computed"] and again["id"] != first["id"]


def points(x) -> int:
    """Values of a plotly array: a list, or plotly's binary form ``{"dtype", "bdata"}`` (base64)."""
    return len(x) if isinstance(x, list) else len(base64.b64decode(x["bdata"])) // np.dtype(x["dtype"]).itemsize


def _path(i: int) -> str:
    return f"/photos/g{i % GROUPS}/IMG_{i:05d}.jpg"


def test_the_command_says_what_is_wrong(db_uri):
    out = run_in_process("map", "--uri", db_uri)
    assert out.exit_code == 1 and "index a folder first" in out.stderr, out.stderr
    assert run_in_process("map", "--uri", db_uri, "--sample-size", "1").exit_code == 2
    assert "Docs: docs/guides/map.md" in run_in_process("map", "--help").stdout


@pytest.mark.slow
def test_the_map_page_draws_the_map_shows_a_point_and_downloads_a_selection(indexed, page):  # noqa: F811
    photos, uri = indexed
    at = page(uri)
    at.switch_page("map_page.py").run()
    assert not at.exception and not at.error
    assert at.caption[0].value.startswith("11 images, ")
    chart = at.get("plotly_chart")[0]
    spec = json.loads(chart.proto.spec)
    assert {t["type"] for t in spec["data"]} == {"scattergl"}
    assert sum(points(t["x"]) for t in spec["data"]) == 11
    with Store(uri, "images") as store:
        emap = embedding_map(store)
    assert not emap.computed  # the page kept it
    at.session_state["map_selected"] = [2]  # what a click leaves (the chart's selection callback)
    at.run()
    assert not at.exception and len(at.get("image")) >= 1
    assert at.code[0].value == emap.paths[2]
    at.button(key="map-more").click().run()
    assert not at.exception and at.session_state["similar"] == emap.paths[2]
    at.switch_page("map_page.py").run()
    at.session_state["map_selected"] = [0, 3, 5]  # a lasso
    at.run()
    assert not at.exception and at.markdown[0].value == "**3 images selected**"
    button = at.get("download_button")[0]
    assert button.proto.label == "Download CSV" and not button.proto.disabled
    from vitsearch.ui.map_page import selection_csv

    rows = list(csv.DictReader(io.StringIO(selection_csv(emap, [0, 3, 5]).decode())))
    assert [path_from_stored(r["path"]) for r in rows] == [emap.paths[i] for i in (0, 3, 5)]
    at.radio(key="map_colour").set_value("Folder").run()
    assert not at.exception
    at.button(key="map-examples").click().run()  # the selection as search examples
    chosen = [emap.paths[i] for i in (0, 3, 5)]
    assert not at.exception and at.session_state["examples"] == chosen
    at.switch_page("search_page.py").run()
    assert not at.exception and not at.error
    assert all(at.button(key=f"drop-+-{p}") for p in chosen)  # the strip of examples
    shown = [t.value for t in at.text]  # the results' file names
    assert len(shown) >= 5 and not set(shown) & {os.path.basename(p) for p in chosen}  # the examples left out


def test_names_reach_the_plot_as_text_not_html():
    """Plotly renders <b>, <a href>... in hover labels and legends: file and folder names are
    escaped, so a hostile name is shown as it is."""
    from vitsearch.ui.map_page import figure

    hostile = '/p/<a href="javascript:alert(1)">x<a>/<b>bold<b>.jpg'
    emap = EmbeddingMap({}, [hostile, "/p/plain.jpg"], np.zeros((2, 2), np.float32), np.full(2, -1, np.int32))
    for colour in ("Cluster", "Folder", "Date"):
        fig = figure(emap, colour)
        text = json.dumps([list(t.hovertext) for t in fig.data] + [t.name for t in fig.data])
        assert "<b>" not in text and "<a " not in text
    hover = [h for t in figure(emap, "Cluster").data for h in t.hovertext]
    assert "&lt;b&gt;bold&lt;b&gt;.jpg" in hover
    legend = [t.name for t in figure(emap, "Folder").data]
    assert any("&lt;a href=&quot;javascript:alert(1)&quot;&gt;x&lt;a&gt;" in n for n in legend)


def test_coloured_by_date_the_points_take_their_capture_times_on_a_scale_of_dates():
    from vitsearch.ui.map_page import NOISE_COLOUR, date_labels, date_ticks, figure

    paths = ["/p/<b>bold<b>.jpg", "/p/a.jpg", "/p/b.jpg", "/p/old.jpg", "/p/c.jpg"]
    taken = np.array([1.6e9, 1.7e9, 1.65e9, np.nan, 1.62e9])
    file_date = np.array([False, False, True, False, False])
    cluster = np.array([0, 1, 0, -1, 1], np.int32)
    emap = EmbeddingMap({}, paths, np.arange(10, dtype=np.float32).reshape(5, 2), cluster)
    fig = figure(emap, "Date", taken, date_labels(taken, file_date))
    dates, grey = fig.data
    rows = np.asarray(dates.customdata)[:, 0].astype(int)
    assert rows.tolist() == [0, 1, 2, 4]  # row indices, as the selection reads them
    assert np.asarray(dates.customdata)[:, 1].tolist() == cluster[rows].tolist()
    np.testing.assert_array_equal(np.asarray(dates.marker.color), taken[rows])
    np.testing.assert_array_equal(dates.x, emap.xy[rows, 0])
    assert dates.marker.colorscale and (dates.marker.cmin, dates.marker.cmax) == (1.6e9, 1.7e9)
    bar = dates.marker.colorbar
    assert (bar.tickvals[0], bar.tickvals[-1]) == (1.6e9, 1.7e9) and len(bar.ticktext) == len(bar.tickvals) > 1
    assert all(re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", t) for t in bar.ticktext), bar.ticktext
    assert bar.ticktext[0] == dt.datetime.fromtimestamp(1.6e9).strftime("%Y-%m")  # local time, as the CLI shows
    hover = dict(zip(rows.tolist(), dates.text))
    assert hover[0] == dt.datetime.fromtimestamp(1.6e9).strftime("%Y-%m-%d %H:%M")
    assert hover[2].endswith(" (file date)") and "file date" not in hover[1]  # an mtime standing in
    assert list(dates.hovertext)[0] == "&lt;b&gt;bold&lt;b&gt;.jpg" and "%{text}" in dates.hovertemplate
    assert grey.name == "no date" and grey.marker.color == NOISE_COLOUR  # unknown: grey, apart
    assert np.asarray(grey.customdata).tolist() == [[3, -1]] and "no date" in grey.hovertemplate
    # the colour bar names days, then times, where months (days) would not tell its ticks apart
    _, text = date_ticks(1.7e9, 1.7e9 + 20 * 86400)
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", t) for t in text) and len(set(text)) == len(text)
    _, text = date_ticks(1.7e9, 1.7e9 + 3600)
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", t) for t in text) and len(set(text)) == len(text)
    assert date_ticks(1.7e9, 1.7e9) == ([1.7e9], [dt.datetime.fromtimestamp(1.7e9).strftime("%Y-%m-%d")])
    # no date known: every point grey
    (only,) = figure(emap, "Date").data
    assert only.name == "no date" and len(only.x) == 5


def test_capture_times_are_read_row_for_row_with_the_map(db_uri):
    with Store(db_uri, "images") as store:
        paths = dated(store, [(1.6e9, "exif-local"), (1.65e9, "mtime"), (-1.0, "")])  # 3: no UMAP, quick
        emap = compute_map(store)
        assert emap.paths == paths
        taken, file_date = capture_times(store, emap)
        assert taken.dtype == np.float64 and taken.shape == (3,) and file_date.dtype == bool
        np.testing.assert_array_equal(taken, [1.6e9, 1.65e9, np.nan])  # "": not upgraded, unknown
        assert file_date.tolist() == [False, True, False]
        store.delete([paths[0]])  # gone since the map was made: no date; one added: not on the map
        dated(store, [(1.7e9, "exif")], start=3)
        taken, _ = capture_times(store, emap)
        np.testing.assert_array_equal(taken, [np.nan, 1.65e9, np.nan])


def test_the_map_page_colours_by_date_and_says_where_there_are_no_dates(db_uri, page):  # noqa: F811
    with Store(db_uri, "images") as store:
        dated(store, [(1.6e9, "exif"), (1.65e9, "mtime"), (1.7e9, "exif")])
    from test_store import make_old_collection, make_rows

    old_uri = db_uri.replace(".db", "-old.db")
    make_old_collection(old_uri, "2", make_rows(3)[0])  # schema 2: no capture dates, not yet upgraded
    at = page(db_uri)
    at.switch_page("map_page.py").run()
    at.radio(key="map_colour").set_value("Date").run()
    assert not at.exception and not at.error and not at.info
    (trace,) = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert trace["marker"]["colorbar"]["ticktext"][0] == dt.datetime.fromtimestamp(1.6e9).strftime("%Y-%m")
    assert points(trace["x"]) == 3 and points(trace["marker"]["color"]) == 3
    at = page(old_uri)
    at.switch_page("map_page.py").run()
    at.radio(key="map_colour").set_value("Date").run()
    assert not at.exception and not at.error
    assert "no capture dates yet" in at.info[0].value and "vitsearch index" in at.info[0].value
    (trace,) = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert trace["name"] == "no date" and points(trace["x"]) == 3
