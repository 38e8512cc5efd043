"""Contract of the `vitsearch` command, run as a user runs it (a subprocess): index, search
(table and --json), stats, errors as one line without a traceback, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import EXAMPLES

VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]


def cli(*args, ok=True, **env):
    out = subprocess.run(
        [*VITSEARCH, *map(str, args)], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    if ok:
        assert out.returncode == 0, out.stderr
    return out


@pytest.mark.slow
def test_help_explains_every_command():
    top = cli("--help").stdout
    for command in ("index", "search", "stats", "ui", "model"):
        assert command in top
    ui_help = cli("ui", "--help").stdout
    assert all(opt in ui_help for opt in ("--uri", "--collection", "--port", "--max-upload-mb"))
    assert "VITSEARCH_URI" in cli("index", "--help").stdout
    assert "--similar" in cli("search", "--help").stdout


@pytest.mark.slow
def test_index_search_stats(photos, db_uri, tiny_model):
    (photos / "broken.jpg").write_text("nope")
    out = cli("index", photos, "--model", tiny_model, "--uri", db_uri, "--workers", "1", "--verbose")
    assert "indexed 11, unchanged 0, removed 0, failed 1" in out.stdout
    assert f"skipped {photos / 'broken.jpg'}: not a recognised image format" in out.stderr
    assert "1 file could not be indexed" in out.stdout
    assert "time: decode" in out.stdout and "embed" in out.stdout and "batch size 32" in out.stdout
    assert "batch 1: 11 images, decode" in out.stderr and "wrote 11 rows in" in out.stderr  # --verbose

    table = cli("search", EXAMPLES / "queries" / "cat-crop.jpg", "-k", "3", "--uri", db_uri).stdout
    lines = table.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "match", "size", "taken", "path"] and len(lines) >= 4
    assert lines[1].endswith(str(photos / "cat.jpg"))  # the crop of the cat finds the cat
    assert (lines[-1] == "no close match in this collection: these are only the nearest images") == ("yes" not in table)

    answer = json.loads(cli("search", photos / "coffee.jpg", "--json", "-k", "4", "--uri", db_uri).stdout)
    hits = answer["hits"]
    assert set(answer) == {"hits", "close_match"} and answer["close_match"] is True  # the file itself
    assert hits[0]["path"] == str(photos / "coffee.jpg") and hits[0]["score"] > 0.999 and hits[0]["match"] is True
    assert set(hits[0]) == {"path", "score", "match", "metadata"}  # the shape POST /search gives a hit
    assert {"width", "height", "size", "mtime", "sha256"} <= set(hits[0]["metadata"])

    similar = json.loads(
        cli("search", "--similar", photos / "coffee.jpg", "--json", "-k", "3", "--uri", db_uri).stdout
    )["hits"]
    assert [h["path"] for h in similar] == [h["path"] for h in hits[1:]]
    expanded = json.loads(
        cli("search", photos / "coffee.jpg", "--json", "-k", "4", "--expand", "2", "--uri", db_uri).stdout
    )["hits"]
    assert expanded[0]["path"] == str(photos / "coffee.jpg") and len(expanded) == 4

    stats = json.loads(cli("stats", "--json", "--uri", db_uri).stdout)
    assert stats["count"] == 11 and stats["model"] == str(tiny_model) and stats["dim"] == 32

    again = json.loads(cli("index", photos, "--uri", db_uri, "--json").stdout)  # model from the collection
    assert (again["indexed"], again["unchanged"], again["failed"]) == (0, 11, 1)
    assert set(again["stage_seconds"]) == {"decode", "embed", "write", "wait"}


@pytest.mark.slow
def test_env_settings(photos, tmp_path, tiny_model):
    uri = str(tmp_path / "env.db")
    cli("index", photos, VITSEARCH_URI=uri, VITSEARCH_MODEL=str(tiny_model), VITSEARCH_COLLECTION="mine")
    stats = json.loads(cli("stats", "--json", VITSEARCH_URI=uri, VITSEARCH_COLLECTION="mine").stdout)
    assert stats["collection"] == "mine" and stats["count"] == 11


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["index", "/no/such/folder"], 2, "does not exist"),
        (["index", "{photos}"], 1, "vitsearch model pull dinov2-small-9l"),  # default hub model, offline
        (["search", "{photos}/cat.jpg"], 1, "index a folder first"),
        (["stats"], 1, "index a folder first"),
    ],
)
@pytest.mark.slow
def test_errors_are_one_clear_line(args, code, message, photos, db_uri):
    out = cli(*[a.format(photos=photos) for a in args], "--uri", db_uri, ok=False)
    assert out.returncode == code
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "query, args, code, message",
    [
        ("notes.jpg", [], 2, "notes.jpg: not a recognised image format"),
        ("cut.jpg", [], 2, "cut.jpg: corrupt or truncated image data"),
        ("cat.jpg", ["-k", "0"], 2, "Invalid value for '-k'"),
        ("cat.jpg", ["-k", "16385"], 2, "Invalid value for '-k'"),
        ("cat.jpg", ["--filter", "width >"], 2, "filter 'width >' is not a valid Milvus expression"),
        ("cat.jpg", ["--filter", "colour == 3"], 2, "is not a valid Milvus expression"),
        ("cat.jpg", ["--filter", "(" * 1000 + "width > 1" + ")" * 1000], 2, "nests deeper than the limit of 32"),
        ("cat.jpg", ["--filter", "not " * 1000 + "width > 1"], 2, "nests deeper than the limit of 32"),
        ("cat.jpg", ["--filter", "width > 1 or " * 1300 + "width > 1"], 2, "over the limit of 16,384"),
        ("nope.jpg", ["--similar"], 2, "is not indexed"),
        ("cat.jpg", ["--collection", "other"], 1, "index a folder first"),
    ],
)
@pytest.mark.slow
def test_bad_searches_are_one_clear_line(query, args, code, message, indexed):
    photos, uri = indexed
    (photos / "notes.jpg").write_text("not an image")
    (photos / "cut.jpg").write_bytes((photos / "cat.jpg").read_bytes()[:2000])
    out = cli("search", photos / query, "--uri", uri, *args, ok=False)
    assert out.returncode == code, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_an_empty_collection_gives_no_results(db_uri, tiny_model, tmp_path):
    (tmp_path / "none").mkdir()
    cli("index", tmp_path / "none", "--model", tiny_model, "--uri", db_uri)  # creates the collection, no rows
    out = cli("search", EXAMPLES / "images" / "cat.jpg", "--uri", db_uri)
    assert out.stdout.strip() == "no results"


@pytest.mark.slow
def test_image_size_is_recorded_and_another_size_refused(photos, tmp_path, tiny_model):
    db = tmp_path / "sized.db"
    cli("index", photos, "--model", tiny_model, "--uri", db, "--image-size", 48, "--workers", 0)
    hits = json.loads(cli("search", photos / "cat.jpg", "--uri", db, "-k", 1, "--json").stdout)["hits"]
    assert hits[0]["path"] == str(photos / "cat.jpg")  # the collection's size, 48, without asking
    out = cli("search", photos / "cat.jpg", "--uri", db, "--image-size", 32, ok=False)
    assert out.returncode == 1 and "48x48, not 32x32" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_engine_ray_without_ray_installed_says_how_to_get_it(photos, tmp_path, tiny_model):
    # The core install has no Ray: `import ray` fails as it would there (sys.modules entry None).
    no_ray = "import sys; sys.modules['ray'] = None; from vitsearch.cli import main; main()"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            no_ray,
            "index",
            str(photos),
            "--engine",
            "ray",
            "--model",
            str(tiny_model),
            "--uri",
            str(tmp_path / "x.db"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1 and "pip install 'vitsearch[ray]'" in out.stderr and "Traceback" not in out.stderr
    indexed = cli("index", photos, "--model", tiny_model, "--uri", tmp_path / "y.db", "--workers", 0, "--json")
    assert json.loads(indexed.stdout)["indexed"] == 11  # the local engine needs no Ray


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A text model (BERT) folder that also holds an image processor config: not a vision model."""
    from transformers import BertConfig, BertModel, ViTImageProcessor

    folder = tmp_path_factory.mktemp("bert")
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    ).save_pretrained(folder)
    ViTImageProcessor().save_pretrained(folder)
    return folder


def run_in_process(*args):
    """The command in this process (typer's CliRunner): for checks that need no process of their own."""
    from typer.testing import CliRunner

    from vitsearch.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_checkpoint_that_is_not_a_vision_transformer_is_refused_before_any_collection(photos, db_uri, bert_folder):
    out = run_in_process("index", photos, "--model", bert_folder, "--uri", db_uri)
    assert out.exit_code == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "BertModel" in out.stderr and "not a ViT-family vision model" in out.stderr
    assert "index a folder first" in run_in_process("stats", "--uri", db_uri).stderr  # no collection left


@pytest.mark.parametrize("command", [["stats"], ["search", "{photos}/cat.jpg"], ["index", "{photos}"]])
def test_an_empty_uri_is_an_error_not_the_default_database(command, photos, data_dir):
    out = run_in_process(*[a.format(photos=photos) for a in command], "--uri", "")
    assert out.exit_code == 2 and "empty" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (data_dir / "milvus.db").exists()  # the default database was not opened


def test_a_uri_that_is_a_photo_folder_is_refused(photos, tiny_model):
    before = sorted(p.name for p in photos.iterdir())
    out = run_in_process("index", photos, "--model", tiny_model, "--uri", photos)
    assert out.exit_code == 1 and "is a folder that is not a Milvus Lite database" in out.stderr
    assert sorted(p.name for p in photos.iterdir()) == before


def test_index_verify_and_the_rehashed_count(photos, db_uri, tiny_model):
    assert run_in_process("index", photos, "--model", tiny_model, "--uri", db_uri, "--workers", "0").exit_code == 0
    out = run_in_process("index", photos, "--uri", db_uri, "--verify", "--json", "--workers", "0")
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    assert (summary["indexed"], summary["unchanged"], summary["rehashed"]) == (0, 11, 11)
    assert "--verify" in run_in_process("index", "--help").stdout


@pytest.mark.slow
def test_no_third_party_log_lines_reach_the_terminal(photos, db_uri, tiny_model):
    """The command sets the process up (search/application.py) before pymilvus loads gRPC: no gRPC
    line per forked decode worker ("fork_posix.cc ... skipping fork() handlers") and no
    exporter/quantizer notes, only vitsearch's own output."""
    out = cli("index", photos, "--model", tiny_model, "--uri", db_uri, "--workers", "2")
    search = cli("search", EXAMPLES / "queries" / "cat-crop.jpg", "-k", "3", "--uri", db_uri)
    for text in (out.stderr, search.stderr):
        foreign = [
            line
            for line in text.splitlines()
            if "fork_posix" in line or ".cc:" in line or "Warning" in line or "pre-processing" in line
        ]
        assert not foreign, foreign
