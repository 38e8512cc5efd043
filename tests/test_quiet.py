"""Quiet by default (issue 30, item 6), run as a user runs `vitsearch` (a subprocess): the
`index` timing line only with --verbose, no empty progress bar, files of unsupported kinds
counted by extension, a --folder without indexed images refused (exit 2), --help without type
artefacts or second spellings, one default model, hints with --model where the default model is
not available offline, no transformers bars or advice from a library load."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from vitsearch.search.config import DEFAULT_MODEL

VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]
COMMANDS = [
    [],
    ["index"],
    ["search"],
    ["stats"],
    ["collections"],
    ["drop"],
    ["duplicates"],
    ["ui"],
    ["serve"],
    ["eval"],
    ["train"],
    ["model"],
    ["model", "pull"],
    ["model", "list"],
    ["server"],
    ["server", "start"],
    ["server", "stop"],
    ["server", "status"],
]


def cli(*args, **env):
    return subprocess.run(
        [*VITSEARCH, *map(str, args)], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


@pytest.mark.slow
def test_index_is_quiet_unless_verbose_and_counts_unsupported_files(photos, tmp_path, tiny_model):
    for name, data in (
        ("clip.mp4", b"\0" * 10),
        ("a.mov", b"x"),
        ("b.MOV", b"x"),
        ("notes", b"x"),
        (".DS_Store", b"x"),
        ("sub/c.mov", b"x"),
    ):
        (photos / name).write_bytes(data)
    uri = tmp_path / "db.db"
    first = cli("index", photos, "--model", tiny_model, "--uri", uri, "--workers", "0")
    assert first.returncode == 0, first.stderr
    assert "indexed 11, unchanged 0" in first.stdout
    assert "3 .mov, 1 (no extension), 1 .mp4 skipped: not supported" in first.stdout  # hidden files not counted
    assert "time:" not in first.stdout and "decode" not in first.stdout
    again = cli("index", photos, "--uri", uri, "--workers", "0")
    assert again.returncode == 0 and "indexed 0, unchanged 11" in again.stdout
    assert "embedding" not in again.stderr and "img" not in again.stderr  # no empty bar
    verbose = cli("index", photos, "--uri", uri, "--json")
    assert json.loads(verbose.stdout)["unsupported"] == {".mov": 3, "": 1, ".mp4": 1}


@pytest.mark.slow
def test_a_folder_without_indexed_images_is_refused(indexed, tmp_path):
    photos, uri = indexed
    query = photos / "cat.jpg"
    out = cli("search", query, "--uri", uri, "--folder", tmp_path / "elsewhere")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (
        f"error: no indexed image is in {tmp_path / 'elsewhere'} or below it, in collection "
        f"'images': --folder takes a folder that was indexed (see `vitsearch stats`)\n"
    )
    inside = cli("search", query, "--uri", uri, "--folder", photos / "sub", "--json")
    assert inside.returncode == 0, inside.stderr
    assert [h["path"] for h in json.loads(inside.stdout)["hits"]] == [str(photos / "sub" / "rocket.jpg")]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "vitsearch")
def test_help_has_no_type_artefacts_nor_second_spellings(command):
    out = cli(*command, "--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert not re.search(r"<(bool|str|int|float|path|int range|float range|[a-z|-]+)>", text), text
    if command == ["search"]:  # -k, once (eval's --k, its only spelling, is another option)
        assert "--k" not in text
        assert re.search(r"^│ +-k +N \[1<=x<=16384\]", text, re.M), text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage


@pytest.mark.slow
def test_the_default_model_is_stated_once_and_the_same_everywhere():
    helps = {" ".join(c): cli(*c, "--help").stdout for c in (["index"], ["eval"], ["duplicates"])}
    flat = {k: " ".join(v.replace("│", " ").split()) for k, v in helps.items()}
    assert f"for a new collection {DEFAULT_MODEL}" in flat["index"]
    assert f"default: {DEFAULT_MODEL}" in flat["eval"]
    assert "the default model" not in flat["duplicates"]  # it names the model its threshold was chosen for


@pytest.mark.slow
def test_hints_name_the_offline_model_where_the_default_one_is_not_here(tmp_path, tiny_model):
    lacking = cli("stats", "--uri", tmp_path / "a.db", HF_HUB_OFFLINE="1")
    assert lacking.returncode == 1
    assert (
        "index a folder first: vitsearch model pull dinov2-small-9l, then vitsearch index DIR --model dinov2-small-9l"
    ) in lacking.stderr
    here = cli("stats", "--uri", tmp_path / "b.db", VITSEARCH_MODEL=str(tiny_model))
    assert here.returncode == 1 and here.stderr.rstrip().endswith("index a folder first: vitsearch index DIR")


@pytest.mark.slow
def test_loading_a_model_through_the_library_prints_nothing(indexed):
    """SearchClient in a user's script (no vitsearch application set up) loading its model with
    transformers: no progress bar (`Loading weights`), no processor advice on stderr."""
    photos, uri = indexed
    script = (
        f"from vitsearch.search.client import SearchClient\n"
        f"with SearchClient({uri!r}, runtime='torch') as c:\n"
        f"    print(c.search({str(photos / 'cat.jpg')!r}, k=1)[0].path)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(photos / "cat.jpg")
    assert out.stderr == "", out.stderr
