"""The shell examples of the README and the guides run (issue 32), so they cannot drift: every line
of every ```bash / ```sh / ```console block of README.md, docs/getting-started.md and
docs/guides/*.md is either run here, as written but for the explicit :data:`PLACEHOLDERS`, or
named in :data:`SKIP` with the reason it cannot run here. A new line that is neither fails the
test, as do a skip entry or a placeholder that no longer matches any line.

Everything runs in one temporary setup, made once for the module: a folder of real photos (from
``$VITSEARCH_SHARED``), a tiny ViT made here standing in for both the pulled ``dinov2-small-9l``
(put where ``vitsearch model pull`` puts it, so the pull finds it) and the default hub model
(in a Hugging Face cache of its own, as on a machine that downloaded it once), a data folder
whose default Milvus Lite database holds the photos, indexed once. Each command runs in a working
folder that has the checkout's ``examples/`` (so ``dups.csv``, ``bad.csv`` land there, never in
the checkout), and must exit 0, or with the code :data:`EXIT_CODES` gives."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO, make_tiny_vit, shared_path

pytestmark = pytest.mark.slow

VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]
#: The pages whose shell blocks are run.
PAGES = [
    "README.md",
    "docs/getting-started.md",
    *sorted(f"docs/guides/{p.name}" for p in (REPO / "docs" / "guides").glob("*.md")),
]
#: The languages of the blocks read as shell (a ```console block: its ``$ `` lines; the others are output).
SHELL = ("bash", "sh", "shell", "console")

#: Shell lines that cannot run here: a regular expression that matches the whole line (its comment
#: removed, a ``&&`` chain split), and why.
SKIP: dict[str, str] = {
    r"python3 -m venv \.venv": "makes the virtual environment: the test runs in the installed one",
    r"\. \.venv/bin/activate": "activates the virtual environment: the test runs in the installed one",
    r"(\.venv/bin/)?pip install .+": "installs from PyPI: the test runs in the installed venv, with its extras",
    r"\.venv/bin/python -m pytest": "runs the test suite, of which this test is a part",
    r"(IMAGES=\S+ )?docker compose .+": "needs Docker, not here (the compose files: tests/test_compose.py)",
    r"(VITSEARCH_API_TOKEN=\S+ )?vitsearch serve( --index-root \S+)?": "serves the HTTP API until stopped "
    "(tests/test_api.py; --index-root: tests/test_api_index.py)",
    r"vitsearch watch .+": "follows the folders until stopped (tests/test_watch.py)",
    r"sudo sysctl .+": "changes a kernel limit, as root",
    r"vitsearch ui": "serves the page until stopped (tests/test_ui.py, tests/test_ui_browser.py)",
    r"vitsearch server start": "starts a Milvus 2.3.5 server that outlives the command (tests/test_local_server.py)",
    r"curl .+": "a request to a running `vitsearch serve` (its routes: tests/test_api.py)",
    r"ray start .+": "starts a Ray cluster node (the Ray engine on a local cluster: tests/test_ray.py)",
    r"vitsearch index s3://\S+ --engine ray .+": "needs a Ray cluster, an S3 bucket and a Milvus server",
}

#: Exit codes other than 0 that a doc line shows, and why.
EXIT_CODES: dict[str, tuple[int, str]] = {
    "vitsearch server status": (3, "no server runs here, and the doc says: exit code 3 when not"),
}


@dataclass
class Setup:
    """What the placeholders stand for: ``work`` is the working folder, ``photos`` the indexed
    folder (with the names the docs give: the subfolders ``2024`` and ``holidays``, ``indexed.jpg``;
    and an exact copy of one photo), ``other`` photos not indexed, ``query`` a photo to search
    with, ``env`` the environment of every command."""

    work: Path
    photos: Path
    other: Path
    query: Path
    env: dict[str, str]


#: What the docs write for the reader's own files and services, and what stands for each here. A
#: word is replaced where it is a key, or starts with a key that is a folder and a ``/``
#: (``/photos/2024``: the subfolder ``2024`` of the photos).
PLACEHOLDERS = {
    "~/Pictures": lambda s: s.photos,
    "/photos": lambda s: s.photos,
    "photo.jpg": lambda s: s.query,
    "query.jpg": lambda s: s.query,
    # The shared data, beside the checkout as ../shared or wherever $VITSEARCH_SHARED says.
    "../shared": lambda s: shared_path(),
    "DATASET": lambda s: shared_path("data", "holidays-dev"),
    "other-photos/": lambda s: s.other,
    # A Milvus server's URI (none here): a Milvus Lite database of its own.
    "http://localhost:19530": lambda s: s.work / "server.db",
}


def placeholder(word: str) -> str | None:
    """The key of :data:`PLACEHOLDERS` that ``word`` is or starts with (as a folder), or None."""
    for key in PLACEHOLDERS:
        if word == key or (not key.endswith("/") and word.startswith(key + "/")):
            return key
    return None


def split_shell(line: str) -> list[str]:
    """The commands of a shell line: its comment removed, split at ``&&`` (outside quotes)."""
    parts, quote, start, i = [], None, 0, 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                i += 1
        elif c == "\\":
            i += 1
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            break
        elif line.startswith("&&", i):
            parts.append(line[start:i])
            start = i + 2
            i += 1
        i += 1
    parts.append(line[start:i])
    return [p.strip() for p in parts if p.strip()]


@dataclass(frozen=True)
class Line:
    """One command of a shell block: its page, the block's number in the page, the line it
    starts on, its text."""

    page: str
    block: int
    number: int
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.number}: {self.text}"


def shell_lines(page: str) -> list[Line]:
    """The commands of the shell blocks of ``page``, in order (continued lines joined)."""
    lines, language, indent, pending, start, block = [], None, "", "", 0, 0
    for number, raw in enumerate((REPO / page).read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            if language is None:
                language, indent, found = stripped[3:].strip(), raw[: len(raw) - len(raw.lstrip())], len(lines)
                block += 1
            else:
                assert not pending, f"{page}:{start}: a block ends in a continued line"
                if language in SHELL:
                    assert len(lines) > found, f"{page}:{number}: a ```{language} block with no command"
                language = None
            continue
        if language not in SHELL:
            continue
        text = raw[len(indent) :] if raw.startswith(indent) else stripped
        if not pending:
            if language == "console":
                if not text.startswith("$ "):
                    continue  # output
                text = text[2:]
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            start = number
        pending += text.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip() + " "
            continue
        lines.extend(Line(page, block, start, part) for part in split_shell(pending))
        pending = ""
    return lines


def skipped(line: Line) -> str | None:
    """Why ``line`` is not run, or None."""
    for pattern, reason in SKIP.items():
        if re.fullmatch(pattern, line.text):
            return reason
    return None


ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=")


def command(line: Line, setup: Setup) -> tuple[dict[str, str], list[str]]:
    """The environment assignments and the arguments of a ``vitsearch`` line or an ``export``,
    each word that is a placeholder replaced (an assignment's value too)."""

    def sub(word: str) -> str:
        key = placeholder(word)
        if key is None:
            assert not word.startswith(("~", "/")), f"{line}: {word} is a path of the reader's: add it to PLACEHOLDERS"
            return word
        return str(PLACEHOLDERS[key](setup)) + word[len(key) :]

    words = shlex.split(line.text)
    env = {}
    if words[:1] == ["export"]:
        words = words[1:]
        assert words and all(ASSIGNMENT.match(w) for w in words), f"{line}: not a plain export"
    while words and ASSIGNMENT.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = sub(value)
    return env, [sub(w) for w in words]


def runnable(line: Line) -> bool:
    """A ``vitsearch`` command (after ``NAME=value`` words) or an ``export NAME=value``."""
    words = shlex.split(line.text)
    if words[:1] == ["export"]:
        return len(words) > 1 and all(ASSIGNMENT.match(w) for w in words[1:])
    while words and ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words[:1] == ["vitsearch"]


def all_lines() -> list[Line]:
    return [line for page in PAGES for line in shell_lines(page)]


def test_every_shell_line_is_run_or_skipped_with_a_reason():
    """Nothing in a shell block goes unchecked, and the lists of this test name no line that is
    gone: every skip entry, exit code and placeholder matches a line of the docs."""
    lines = all_lines()
    unknown = [str(line) for line in lines if not skipped(line) and not runnable(line)]
    assert not unknown, "shell lines neither run nor in SKIP (with a reason):\n" + "\n".join(unknown)
    for pattern in SKIP:
        assert any(re.fullmatch(pattern, line.text) for line in lines), f"SKIP entry {pattern!r} matches no line"
    texts = {line.text for line in lines}
    for text in EXIT_CODES:
        assert text in texts, f"EXIT_CODES entry {text!r} is no doc line"
    words = {w for line in lines if runnable(line) and not skipped(line) for w in shlex.split(line.text)}
    words |= {w.split("=", 1)[1] for w in words if ASSIGNMENT.match(w)}
    used = {placeholder(w) for w in words}
    for key in PLACEHOLDERS:
        assert key in used, f"placeholder {key!r} is in no line that runs"
    run = [line for line in lines if runnable(line) and not skipped(line)]
    assert len(run) >= 20 and len(lines) - len(run) == sum(1 for line in lines if skipped(line))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    catalog = shared_path("data", "catalog")
    holidays = shared_path("data", "holidays-dev")
    root = tmp_path_factory.mktemp("doc-examples")
    work = root / "work"  # the working folder: the checkout's examples/, and the files written
    work.mkdir()
    (work / "examples").symlink_to(EXAMPLES, target_is_directory=True)

    photos = root / "photos"
    (photos / "2024").mkdir(parents=True)
    for i in range(24):
        shutil.copy(catalog / f"item-{i:04d}.jpg", photos / ("2024" if i >= 16 else "") / f"item-{i:04d}.jpg")
    shutil.copy(catalog / "item-0000.jpg", photos / "2024" / "copy-of-item-0000.jpg")  # an exact duplicate
    shutil.copy(catalog / "item-0024.jpg", photos / "indexed.jpg")
    shutil.copy(EXAMPLES / "images" / "coffee.jpg", photos / "coffee.jpg")  # 600x400: `width >= 500`
    (photos / "holidays").mkdir()
    for name in ("100000.jpg", "100001.jpg", "100002.jpg"):
        shutil.copy(holidays / "images" / name, photos / "holidays" / name)
    other = root / "other-photos"
    other.mkdir()
    for i in range(100, 110):
        shutil.copy(catalog / f"item-{i:04d}.jpg", other / f"item-{i:04d}.jpg")

    data = root / "data"
    # `vitsearch model pull dinov2-small-9l` builds the model from a PyPI wheel (a download): the
    # tiny ViT is put where the pull puts it, and every `--model dinov2-small-9l` loads it.
    make_tiny_vit(_mkdir(data / "models" / "dinov2-small-9l"), seed=0)
    # The default model, facebook/dinov2-small, is a hub id (the hub is out of reach): the tiny
    # ViT is its snapshot in a Hugging Face cache of this test's own.
    hub = root / "hf" / "models--facebook--dinov2-small"
    commit = "0" * 40
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text(commit)
    make_tiny_vit(_mkdir(hub / "snapshots" / commit), seed=0)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VITSEARCH_", "HF_"))}
    env |= {
        "VITSEARCH_DATA_DIR": str(data),
        "VITSEARCH_CACHE_DIR": str(root / "cache"),
        "HF_HUB_CACHE": str(root / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    s = Setup(work=work, photos=photos, other=other, query=catalog / "item-0200.jpg", env=env)
    # Indexed once, before any page: the guides search and scan the collection `images`.
    out = vitsearch(s, ["index", str(photos), "--model", "dinov2-small-9l"], s.env)
    assert out.returncode == 0 and "indexed 30, unchanged 0, removed 0, failed 0" in out.stdout, out.stderr
    return s


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def vitsearch(setup: Setup, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*VITSEARCH, *args], cwd=setup.work, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("page", PAGES)
def test_the_shell_examples_of_the_page_run(page, setup):
    """Each ``vitsearch`` line of the page's shell blocks, in order, exits as the doc says; an
    ``export`` holds for the rest of its block."""
    env, block = {}, None
    for line in shell_lines(page):
        if line.block != block:
            env, block = dict(setup.env), line.block
        if skipped(line):
            continue
        assert runnable(line), f"{line}: neither run nor in SKIP"
        assigned, args = command(line, setup)
        if not args:  # export NAME=value
            env |= assigned
            continue
        out = vitsearch(setup, args[1:], env | assigned)
        expected = EXIT_CODES.get(line.text, (0, ""))[0]
        assert out.returncode == expected and "Traceback" not in out.stderr, (
            f"{line}\n  ran: vitsearch {shlex.join(args[1:])}\n  exit code {out.returncode}, expected {expected}\n"
            f"stdout:\n{out.stdout[-2000:]}\nstderr:\n{out.stderr[-4000:]}"
        )
