"""Capture facts (search/capture.py) and searching by them (search/when.py): EXIF dates with and
without their offset, the mtime where there is none, camera names cleaned of hostile text, in
every format the indexer reads; an indexed folder searched by a date range and sorted by date from
SearchClient and the CLI; an old collection upgraded by ``vitsearch index`` with the files' dates,
no image embedded again."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image
from typer.testing import CliRunner

from vitsearch.cli import app
from vitsearch.search.capture import (
    MAX_CAMERA_CHARS,
    camera_name,
    capture_from_bytes,
    exif_time,
    read_capture,
    with_capture,
)
from vitsearch.search.errors import BadQueryError
from vitsearch.search.hit import Hit
from vitsearch.search.when import date_range, ordered, to_seconds

UTC = dt.UTC


def exif_for(date: str | None = None, offset: str | None = None, make: str | None = None, model: str | None = None):
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    sub = exif.get_ifd(0x8769)
    if date is not None:
        sub[0x9003] = date
    if offset is not None:
        sub[0x9011] = offset
    return exif


def photo_bytes(fmt: str, exif=None, size=(64, 48), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def local(*args) -> float:
    """Unix seconds of a wall-clock time in this process's time zone."""
    return dt.datetime(*args).timestamp()


def test_an_exif_date_with_its_offset_is_an_exact_instant():
    assert exif_time("2021:06:01 12:00:00", "25", "+02:00") == (
        dt.datetime(2021, 6, 1, 10, 0, 0, 250000, UTC).timestamp(),
        True,
    )
    assert (
        exif_time("2021:06:01 12:00:00", None, "-05:30")[0] == dt.datetime(2021, 6, 1, 17, 30, tzinfo=UTC).timestamp()
    )


def test_an_exif_date_without_offset_is_local_time_and_says_so():
    assert exif_time("2021:06:01 12:00:00") == (local(2021, 6, 1, 12), False)
    assert exif_time(b"2021:06:01 12:00:00\x00") is None or exif_time(b"2021:06:01 12:00:00")[1] is False
    assert exif_time("2021:06:01 12:00:00", None, "+25:00") == (local(2021, 6, 1, 12), False)  # bad offset: none


@pytest.mark.parametrize(
    "bad",
    ["0000:00:00 00:00:00", "    :  :     :  :  ", "2024:02:30 10:00:00", "2024:01:01 25:00:00", "1700:01:01 00:00:00",
     "yesterday", "", "2024:01:01", "9999:12:31 23:59:59", "2024:01:01 10:00:00; DROP TABLE"],
)  # fmt: skip
def test_an_invalid_exif_date_is_no_date(bad):
    assert exif_time(bad) is None


def test_camera_names_are_one_printable_line():
    assert camera_name("Apple", "iPhone 12") == "Apple iPhone 12"
    assert camera_name("Canon", "Canon EOS R5") == "Canon EOS R5"
    assert camera_name("NIKON CORPORATION", "NIKON D750") == "NIKON D750"
    assert camera_name("Sony\x00\x00\x00", "  ILCE-7M3   ") == "Sony ILCE-7M3"
    assert camera_name(None, None) == "" and camera_name("", "x") == "x"
    hostile = camera_name("Evil\x1b[31m\u202e", '=HYPERLINK("http://x")\nline2')
    assert "\x1b" not in hostile and "\u202e" not in hostile and "\n" not in hostile
    assert camera_name(None, "=cmd|' /C calc'!A0") == "cmd|' /C calc'!A0"  # no formula in an exported CSV
    assert len(camera_name("A" * 1000, "B" * 1000)) == MAX_CAMERA_CHARS


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF", "AVIF"])
def test_capture_facts_are_read_from_every_format(fmt, tmp_path):
    data = photo_bytes(fmt, exif_for("2021:06:01 12:00:00", "+02:00", "Apple", "iPhone 12"))
    got = capture_from_bytes(data, 5.0)
    assert (got.taken_at, got.source, got.camera) == (
        dt.datetime(2021, 6, 1, 10, 0, tzinfo=UTC).timestamp(),
        "exif",
        "Apple iPhone 12",
    )
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    assert read_capture(str(path), 5.0) == got  # from the file's first bytes (HEIF, AVIF: whole)


def test_a_file_without_a_date_has_its_mtime_and_says_so(tmp_path):
    assert capture_from_bytes(photo_bytes("JPEG"), 1234.5).fields() == {
        "taken_at": 1234.5,
        "date_source": "mtime",
        "camera": "",
    }
    assert capture_from_bytes(b"not an image", 7.0).source == "mtime"
    damaged = bytearray(photo_bytes("JPEG", exif_for("2021:06:01 12:00:00")))
    damaged[30:60] = os.urandom(30)  # inside the EXIF segment
    assert capture_from_bytes(bytes(damaged), 7.0).source in ("mtime", "exif-local")  # never an error


def test_reading_a_capture_never_blocks_or_follows_what_is_not_a_file(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert read_capture(str(fifo), 3.0).source == "mtime"  # returned at once, not waiting on a writer
    assert read_capture(str(tmp_path / "gone.jpg"), 3.0).taken_at == 3.0
    assert read_capture(str(tmp_path), 3.0).source == "mtime"
    rows = with_capture([{"path": str(tmp_path / "gone.jpg"), "mtime": 9.0, "size": 1}])
    assert rows == [{"path": str(tmp_path / "gone.jpg"), "mtime": 9.0, "size": 1, **read_capture("", 9.0).fields()}]


def test_dates_are_read_as_people_write_them():
    assert to_seconds("2024") == local(2024, 1, 1)
    assert to_seconds("2024-05") == local(2024, 5, 1)
    assert to_seconds("2024-05-01") == local(2024, 5, 1)
    assert to_seconds("2024-05-01T18:30") == local(2024, 5, 1, 18, 30)
    assert to_seconds("2024-05-01 18:30:00+02:00") == dt.datetime(2024, 5, 1, 16, 30, tzinfo=UTC).timestamp()
    assert to_seconds("2024-05-01T18:30Z") == dt.datetime(2024, 5, 1, 18, 30, tzinfo=UTC).timestamp()
    assert to_seconds(dt.date(2024, 5, 1)) == local(2024, 5, 1) and to_seconds(1.5e9) == 1.5e9
    assert date_range("2024-05", "2024-06") == (local(2024, 5, 1), local(2024, 6, 1))
    for bad in ("2024-13", "May 2024", "2024-05-01 or 1==1", "x" * 100, float("nan"), 1e300, True, [2024]):
        with pytest.raises(BadQueryError):
            to_seconds(bad, "after")
    with pytest.raises(BadQueryError, match="earlier"):
        date_range("2024-06", "2024-05")


def test_sorting_by_date_puts_the_close_matches_first_newest_first():
    def hit(name, score, match, taken):
        return Hit(name, score, {"taken_at": taken}, match=match)

    hits = [hit("a", 0.9, True, 10.0), hit("b", 0.8, True, 30.0), hit("c", 0.7, False, 50.0), hit("d", 0.6, True, 20.0)]
    assert [h.path for h in ordered(hits, "date")] == ["b", "d", "a", "c"]
    assert [h.path for h in ordered(hits, "date-asc")] == ["a", "d", "b", "c"]
    assert ordered(hits, "score") == hits
    with pytest.raises(BadQueryError, match="sort"):
        ordered(hits, "random")


# --- indexed, searched, upgraded -------------------------------------------------------------

#: Capture dates given to the photos (EXIF, +01:00), one a month from January 2020; photo 5 has none.
MONTHS = 6


@pytest.fixture
def dated_photos(tmp_path) -> Path:
    """Six real photos (holidays-dev) as JPEGs taken a month apart, the sixth without EXIF date
    (its mtime, set to 2019-01-01, stands in), one HEIC among them with a hostile camera name."""
    folder = tmp_path / "dated"
    folder.mkdir()
    sources = sorted(shared_path("data", "holidays-dev", "images").glob("*00.jpg"))[:MONTHS]
    for i, src in enumerate(sources):
        img = Image.open(src).convert("RGB").crop((0, 0, 200, 150))
        fmt, ext = ("HEIF", ".heic") if i == 2 else ("JPEG", ".jpg")
        exif = exif_for(f"2020:{i + 1:02d}:15 12:00:00", "+01:00", "Pixel", "<b>7</b>") if i < MONTHS - 1 else None
        path = folder / f"p{i}{ext}"
        img.save(path, fmt, **({"exif": exif} if exif is not None else {}))
    os.utime(folder / f"p{MONTHS - 1}.jpg", (local(2019, 1, 1), local(2019, 1, 1)))
    return folder


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_an_indexed_folder_is_searched_by_date_and_sorted_by_it(dated_photos, db_uri, tiny_model):
    from vitsearch.search.client import SearchClient

    run_cli("index", str(dated_photos), "--model", str(tiny_model), "--uri", db_uri)
    with SearchClient(uri=db_uri) as client:
        rows = {Path(r["path"]).name: r for r in client.store.iter_rows(["taken_at", "date_source", "camera"])}
        assert rows["p0.jpg"]["taken_at"] == dt.datetime(2020, 1, 15, 11, 0, tzinfo=UTC).timestamp()
        assert rows["p2.heic"]["date_source"] == "exif" and rows["p2.heic"]["camera"] == "Pixel <b>7</b>"
        assert (rows["p5.jpg"]["date_source"], rows["p5.jpg"]["taken_at"]) == ("mtime", local(2019, 1, 1))
        query = dated_photos / "p0.jpg"
        spring = client.search(str(query), k=6, after="2020-03-01", before="2020-05-01")
        assert sorted(Path(h.path).name for h in spring) == ["p2.heic", "p3.jpg"]
        old = client.search(str(query), k=6, before=dt.date(2020, 1, 1))
        assert [Path(h.path).name for h in old] == ["p5.jpg"]
        everything = client.search(str(query), k=6, sort="date")
        matches = [h for h in everything if h.match]
        assert [h.metadata["taken_at"] for h in matches] == sorted(
            (h.metadata["taken_at"] for h in matches), reverse=True
        )
        with pytest.raises(BadQueryError, match="not a date"):
            client.search_similar(str(query), after="last spring")
    out = json.loads(run_cli("search", str(query), "--uri", db_uri, "--after", "2020-05", "--json"))
    assert sorted(Path(h["path"]).name for h in out["hits"]) == ["p4.jpg"]  # June 2020 only: p5 is 2019
    table = run_cli("search", str(query), "--uri", db_uri, "-k", "6", "--sort", "date-asc")
    assert "2020-01-15" in table and "~2019-01-01" in table  # the mtime marked as such
    bad = CliRunner().invoke(app, ["search", str(query), "--uri", db_uri, "--before", "2020-13-01"])
    assert bad.exit_code == 2 and "before '2020-13-01' is not a date" in bad.output


@pytest.mark.slow
def test_vitsearch_index_upgrades_an_older_collection_with_the_files_dates_without_embedding(
    dated_photos, db_uri, tiny_model, monkeypatch
):
    """A collection of schema 2 (made here by copying an indexed one's rows into the old fields)
    is upgraded by the next ``vitsearch index``: every row keeps its vector and gains the date
    and camera read from its file's EXIF; no image is embedded (the encoder is never called)."""
    from test_store import make_old_collection

    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    run_cli("index", str(dated_photos), "--model", str(tiny_model), "--uri", db_uri, "--collection", "fresh")
    with Store(db_uri, "fresh") as store:
        rows = list(store.iter_rows(["vector", "folder", "size", "mtime", "ctime_ns", "inode", "width", "height",
                                     "sha256", "indexed_at"]))  # fmt: skip
        info = store.encoder_info()
    monkeypatch.setattr("test_store.INFO", info)
    make_old_collection(db_uri, "2", rows, generation=True)
    with Store(db_uri, "images") as store:
        assert store.schema_version() == "2"

    def no_embedding(*args, **kwargs):
        raise AssertionError("an upgrade must not embed images")

    monkeypatch.setattr(Encoder, "embed_pixels", no_embedding)
    out = run_cli("index", str(dated_photos), "--model", str(tiny_model), "--uri", db_uri)
    assert "indexed 0, unchanged 6," in out, out
    with Store(db_uri, "images") as store:
        assert store.schema_version() == "3" and store.count() == MONTHS
        got = {Path(r["path"]).name: r for r in store.iter_rows(["vector", "taken_at", "date_source", "camera"])}
    for row in rows:
        name = Path(row["path"]).name
        np.testing.assert_allclose(got[name]["vector"], row["vector"], rtol=1e-6)
    assert got["p3.jpg"]["taken_at"] == dt.datetime(2020, 4, 15, 11, 0, tzinfo=UTC).timestamp()
    assert (got["p2.heic"]["date_source"], got["p2.heic"]["camera"]) == ("exif", "Pixel <b>7</b>")
    assert got["p5.jpg"]["date_source"] == "mtime"


def test_dates_asked_of_a_collection_not_yet_upgraded_say_what_to_do(db_uri, tiny_model):
    from test_store import INFO, make_old_collection, make_rows

    from vitsearch.search.client import SearchClient

    rows, v = make_rows(5)
    make_old_collection(db_uri, "2", rows)
    with SearchClient(uri=db_uri, model=None) as client:
        assert client.search_vector(v[0], k=2)[0].path == rows[0]["path"]  # searchable as it is
        with pytest.raises(BadQueryError, match="vitsearch index"):
            client.search_vector(v[0], k=2, after="2020")
        with pytest.raises(BadQueryError, match="vitsearch index"):
            client.search_vector(v[0], k=2, sort="date")
    assert INFO.dim == v.shape[1]


def test_a_photo_from_before_1970_keeps_its_date():
    from vitsearch.cli.search import taken_label

    taken, placed = exif_time("1950:07:04 09:30:00", None, "+00:00")
    assert placed and taken == dt.datetime(1950, 7, 4, 9, 30, tzinfo=UTC).timestamp() < 0
    assert taken_label({"taken_at": taken, "date_source": "exif"}).startswith("1950-07-0")
    assert taken_label({"taken_at": -1.0, "date_source": ""}) == ""  # unknown: not upgraded yet
