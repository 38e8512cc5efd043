"""The documentation site (issue 32): `mkdocs build --strict` is clean (broken links and anchors,
pages missing from the navigation and unresolved docstring references fail it), and the
reference it generates covers the code: every command and option, every setting and its
environment variable, every route; every public name of the documented modules has a docstring."""

from __future__ import annotations

import html
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "docs" / "_hooks"))
import http_reference  # noqa: E402  (the HTTP reference the hook generates)
import reference  # noqa: E402  (the mkdocs hook that generates the reference pages)

#: Modules whose public names (``__all__``) the Python API reference documents.
DOCUMENTED = ("vitsearch.search", "vitsearch.search.store", "vitsearch.indexer", "vitsearch.api", "vitsearch.train")
#: Public members known to lack a docstring, in code this issue did not touch; the test fails when
#: one more appears, and when one of these gets its docstring (then remove it here).
KNOWN_UNDOCUMENTED: set[str] = set()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(REPO / "mkdocs.yml"), "-d", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    return out


def page(site: Path, path: str) -> str:
    return html.unescape((site / path / "index.html").read_text())


def section(text: str, anchor: str) -> str:
    """The HTML from the heading with id ``anchor`` to the next heading."""
    start = text.index(f'id="{anchor}"')
    end = re.compile(r"<h[1-4][ >]").search(text, start + 1)
    return text[start : end.start() if end else len(text)]


def test_build_is_strict_and_has_every_page(site):
    nav = (REPO / "mkdocs.yml").read_text()
    assert "strict: true" in nav
    for md in (REPO / "docs").rglob("*.md"):
        rel = md.relative_to(REPO / "docs")
        if rel.parts[0].startswith("_"):
            continue
        built = site / ("" if rel.stem == "index" else rel.with_suffix("")) / "index.html"
        assert built.is_file(), f"{rel} was not built"
        assert str(rel) in nav, f"{rel} is not in mkdocs.yml's nav"


def test_every_command_and_option_is_in_the_cli_reference(site):
    text = page(site, "reference/cli")
    commands = list(reference.walk_commands(reference.cli_command()))
    assert len(commands) > 10
    for path, command, _ in commands:
        anchor = reference._anchor(path)
        assert f'id="{anchor}"' in text, f"no section for `{path}`"
        body = section(text, anchor)
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            names = (
                [(param.metavar or param.name).upper()]
                if param.param_type_name == "argument"
                else param.opts + param.secondary_opts
            )
            for name in names:
                assert f"<code>{name}</code>" in body, f"`{path}`: {name} is not in its reference section"
        if command.help:
            first = inspect.cleandoc(command.help).splitlines()[0]
            assert html.unescape(first.split("`")[0]) in body


def test_every_setting_and_its_variable_is_in_the_settings_reference(site):
    from vitsearch.api.settings import ApiSettings
    from vitsearch.search.config import Settings

    text = page(site, "reference/settings")
    for cls, prefix in ((Settings, "VITSEARCH_"), (ApiSettings, "VITSEARCH_API_")):
        assert len(cls.model_fields) > 5
        for name in cls.model_fields:
            row = re.search(
                rf"<tr>\s*<td><code>{name}</code></td>\s*<td><code>{prefix}{name.upper()}</code></td>"
                rf"(.*?)</tr>",
                text,
                flags=re.S,
            )
            assert row, f"{cls.__name__}.{name} ({prefix}{name.upper()}) is not in the settings reference"
            assert len(re.sub(r"<[^>]+>", "", row.group(1)).strip()) > 10, f"{name} has no description"


def test_a_setting_without_a_docstring_entry_fails_the_build():
    from pydantic import Field
    from pydantic_settings import BaseSettings

    class Documented(BaseSettings):
        """Settings.

        Attributes:
            alpha: the first one,
                on two lines.
            beta (int): the second.
        """

        alpha: int = 1
        beta: int = Field(default=2)

    assert reference.attributes(Documented) == {"alpha": "the first one, on two lines.", "beta": "the second."}
    assert "VITSEARCH_BETA" in "\n".join(reference.settings_table(Documented, "VITSEARCH_"))

    class Undocumented(Documented):
        gamma: int = 3

    with pytest.raises(reference.DocsError, match="gamma"):
        reference.settings_table(Undocumented, "VITSEARCH_")


def test_every_route_is_in_the_http_reference(site):
    import json

    from fastapi.routing import APIRoute

    from vitsearch.api.indexing import router as indexing
    from vitsearch.api.routes import router

    text = page(site, "reference/http")
    routes = [r for r in [*router.routes, *indexing.routes] if isinstance(r, APIRoute) and r.include_in_schema]
    assert len(routes) >= 6
    for route in routes:
        for method in route.methods:
            anchor = http_reference.route_anchor(method.lower(), route.path)
            assert f'id="{anchor}"' in text, f"{method} {route.path} is not in the HTTP reference"
    served = json.loads((site / "reference" / "openapi.json").read_text())
    assert set(served["paths"]) == {r.path for r in routes}


def test_the_python_reference_renders_the_documented_classes(site):
    text = page(site, "reference/python")
    for name in (
        "vitsearch.search.client.SearchClient",
        "vitsearch.search.client.SearchClient.search",
        "vitsearch.search.hit.Hit",
        "vitsearch.search.store.collection.Store",
        "vitsearch.search.encoder.Encoder",
        "vitsearch.indexer.runner.index_folder",
        "vitsearch.indexer.evaluate.evaluate",
        "vitsearch.search.errors.VitsearchError",
        "vitsearch.search.config.Settings",
    ):
        assert f'id="{name}"' in text, f"{name} is not in the Python API reference"


def undocumented() -> set[str]:
    missing = set()
    for module_name in DOCUMENTED:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
            if not (doc or "").strip():
                missing.add(f"{module_name}.{name}")
            if not inspect.isclass(obj):
                continue
            for member, value in vars(obj).items():
                if member.startswith("_"):
                    continue
                function = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                if (inspect.isfunction(function) or isinstance(value, property)) and not (
                    function.__doc__ or ""
                ).strip():
                    missing.add(f"{module_name}.{name}.{member}")
    return missing


def test_every_public_name_has_a_docstring():
    import vitsearch.search

    assert "SearchClient" in vitsearch.search.__all__
    assert undocumented() == KNOWN_UNDOCUMENTED


def test_docs_links_in_the_readme_and_help_exist():
    """The README and every command's help point into docs/ (a "Docs: docs/..." line in each
    --help), and every such path exists."""
    import typer
    from typer.testing import CliRunner

    from vitsearch.cli import app

    readme = (REPO / "README.md").read_text()
    linked = set(re.findall(r"\(?(docs/[\w./-]+\.(?:md|png))", readme))
    for path in linked:
        assert (REPO / path).is_file(), f"README.md links {path}, which does not exist"
    runner = CliRunner()
    for path, _command, _ in reference.walk_commands(typer.main.get_command(app)):
        args = path.split()[1:] + ["--help"]
        out = runner.invoke(app, args, terminal_width=200).output
        assert re.search(r"Docs: docs/[\w./-]+\.md", out), f"`{path} --help` does not point to its docs page"
        for doc in re.findall(r"docs/[\w./-]+\.md", out):
            assert (REPO / doc).is_file(), f"`{path} --help` points to {doc}, which does not exist"


def command_lines(text: str) -> list[str]:
    """The `vitsearch ...` command lines of the ```bash / ```text / ``` blocks of a Markdown text."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        line = re.sub(r"^\$ |^.*?&& (?=vitsearch )|^[A-Z_]+=\S+ ", "", line.strip())
        if line.startswith("vitsearch "):
            lines.extend(part.strip() for part in line.split(" && ") if part.strip().startswith("vitsearch "))
    return lines


def test_the_commands_the_docs_show_exist():
    """Every `vitsearch COMMAND --option` in a code block of the README or the docs names a real
    command and real options of it, so an example cannot outlive a renamed option."""
    commands = {path: command for path, command, _ in reference.walk_commands(reference.cli_command())}
    pages = [
        REPO / "README.md",
        *(p for p in (REPO / "docs").rglob("*.md") if not p.relative_to(REPO / "docs").parts[0].startswith("_")),
    ]
    checked = 0
    for page_path in pages:
        for line in command_lines(page_path.read_text()):
            words = line.split("#")[0].split()
            path = "vitsearch"
            for word in words[1:]:
                if f"{path} {word}" in commands:
                    path = f"{path} {word}"
                elif not word.startswith("-"):
                    break
            command = commands[path]
            assert path != "vitsearch" or words[1:2] == ["--help"], f"{page_path.name}: unknown command in `{line}`"
            options = {o for p in command.params for o in p.opts + p.secondary_opts} | {"--help"}
            for word in words:
                if word.startswith("-") and not re.match(r"^-\d", word):
                    option = word.split("=")[0].rstrip(",;")
                    assert option in options, f"{page_path.name}: `{path}` has no option {option} (`{line}`)"
            checked += 1
    assert checked > 20


def test_the_python_examples_use_real_names():
    """The ```python blocks of the README and the guides compile, and the SearchClient and Hit
    attributes they use exist."""
    import ast

    from vitsearch.search import Hit, SearchClient

    known = set(dir(SearchClient)) | {f.name for f in __import__("dataclasses").fields(Hit)} | set(dir(Hit))
    pages = [REPO / "README.md", *(REPO / "docs" / "guides").glob("*.md")]
    checked = 0
    for page_path in pages:
        for block in re.findall(r"^```python\n(.*?)^```", page_path.read_text(), flags=re.S | re.M):
            tree = ast.parse(block)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in ("client", "hit")
                ):
                    assert node.attr in known, f"{page_path.name}: {node.value.id}.{node.attr} does not exist"
                    checked += 1
    assert checked >= 3
