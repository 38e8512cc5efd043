"""mkdocs hook: the Reference pages that are generated from the code at build time, so that they
cannot drift from it.

- ``reference/cli.md``: every command, argument and option of the Typer app (``vitsearch.cli.app``),
  with the metavars ``vitsearch --help`` shows;
- ``reference/settings.md``: every field of :class:`vitsearch.search.config.Settings` and
  :class:`vitsearch.api.settings.ApiSettings`, its environment variable, default and the
  description from the class docstring's ``Attributes:`` (a field without one fails the build);
- ``reference/http.md`` and ``reference/openapi.json`` (:mod:`http_reference`): the routes of the OpenAPI schema the app of
  ``vitsearch serve`` serves at ``/openapi.json``.

Pages listed in ``nav`` whose file does not exist (a benchmark page still being written) are
left out of the navigation instead of failing a strict build.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from http_reference import http_markdown, openapi_json
from mkdocs.structure.files import File
from tables import cell, code

GENERATED = ("reference/openapi.json",)


class DocsError(Exception):
    """The code has something the generated reference cannot document (fails the build)."""


# ---------------------------------------------------------------------------------------------
# navigation


def on_config(config, **kwargs):
    docs = Path(config["docs_dir"])

    def keep(item) -> bool:
        if isinstance(item, dict):
            ((title, value),) = item.items()
            if isinstance(value, list):
                value[:] = [v for v in value if keep(v)]
                return bool(value)
            return keep(value)
        if isinstance(item, str) and not re.match(r"^[a-z]+://", item):
            return item in GENERATED or (docs / item).is_file()
        return True

    if config.get("nav"):
        config["nav"] = [item for item in config["nav"] if keep(item)]
    return config


#: The pages whose Markdown is generated: their files in docs/ say so, for readers of the repository.
PAGES = {
    "reference/cli.md": lambda: cli_markdown(),
    "reference/settings.md": lambda: settings_markdown(),
    "reference/http.md": lambda: http_markdown(),
}


def on_files(files, config, **kwargs):
    files.append(File.generated(config, "reference/openapi.json", content=openapi_json()))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    generate = PAGES.get(page.file.src_uri)
    return generate() if generate else markdown


# ---------------------------------------------------------------------------------------------
# helpers


def attributes(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a class docstring (Google style): name -> description."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Attributes:\n(.*?)(?:\n\S|\Z)", doc, flags=re.S | re.M)
    if not match:
        return {}
    result: dict[str, str] = {}
    name = None
    for line in match.group(1).splitlines():
        item = re.match(r"^    (\w+)(?: \([^)]*\))?: ?(.*)$", line)
        if item:
            name = item.group(1)
            result[name] = item.group(2)
        elif name and line.strip():
            result[name] += " " + line.strip()
    return result


def _rst_to_md(text: str) -> str:
    """The reStructuredText bits of the docstrings (``code``, :func:`x`) as Markdown code."""
    text = re.sub(r":\w+:`~?\.?([^`]+)`", lambda m: f"`{m.group(1)}`", text)
    return text.replace("``", "`")


# ---------------------------------------------------------------------------------------------
# the command line


def cli_command():
    import typer

    from vitsearch.cli import app
    from vitsearch.cli.help import plain_help

    return plain_help(typer.main.get_command(app))


def walk_commands(command, name: str = "vitsearch", parent=None):
    """(path, click command, click context) of the command and every subcommand, in --help order."""
    import click

    ctx = click.Context(command, info_name=name, parent=parent)
    yield name, command, ctx
    for sub_name in getattr(command, "commands", {}):
        sub = command.commands[sub_name]
        if getattr(sub, "hidden", False):
            continue
        yield from walk_commands(sub, f"{name} {sub_name}", ctx)


def _default(param) -> str:
    if getattr(param, "is_flag", False) and not param.default:
        return ""
    default = param.default
    if default is None or default == () or callable(default):
        return ""
    if hasattr(default, "value"):  # an Enum
        default = default.value
    return code(default)


def cli_markdown() -> str:
    root = cli_command()
    out = [
        "# Command line",
        "",
        "Generated from the Typer app (`vitsearch.cli.app`) when the site is built: every command, "
        "argument and option of `vitsearch`, as `vitsearch COMMAND --help` prints them. A flag beats "
        "its `VITSEARCH_*` variable, which beats the default ([Settings](settings.md)).",
        "",
    ]
    for path, command, ctx in walk_commands(root):
        depth = path.count(" ")
        out.append(f"{'#' * min(depth + 1, 4) if depth else '##'} `{path}`")
        out.append("")
        pieces = " ".join(command.collect_usage_pieces(ctx))
        out += ["```text", f"{path} {pieces}".rstrip(), "```", ""]
        help_text = inspect.cleandoc(command.help or "")
        if not help_text:
            raise DocsError(f"`{path}` has no help text")
        help_text = help_text.split("\f")[0]
        out += [help_text, ""]
        rows = []
        for param in command.params:
            if param.param_type_name == "argument":
                shown = (param.metavar or param.name).upper()
                help_ = getattr(param, "help", None) or ""
                rows.append((f"`{shown}`", "argument" + ("" if param.required else ", optional"), help_, ""))
                continue
            if getattr(param, "hidden", False):
                continue
            names = ", ".join(f"`{o}`" for o in param.opts + param.secondary_opts)
            metavar = param.metavar or ""
            if not param.help:
                raise DocsError(f"`{path}` option {param.opts[0]} has no help text")
            rows.append((names, code(metavar) if metavar else "", param.help, _default(param)))
        help_option = command.get_help_option(ctx)
        if help_option is not None:
            rows.append(("`--help`", "", "Show the help and exit.", ""))
        if rows:
            out += ["| name | value | what it does | default |", "|---|---|---|---|"]
            out += [f"| {a} | {b} | {cell(c)} | {d} |" for a, b, c, d in rows]
            out.append("")
        if getattr(command, "commands", None):
            subs = [
                f"[`{path} {n}`](#{_anchor(f'{path} {n}')})"
                for n, c in command.commands.items()
                if not getattr(c, "hidden", False)
            ]
            out += ["Commands: " + ", ".join(subs) + ".", ""]
    return "\n".join(out)


def _anchor(title: str) -> str:
    """The id the Markdown toc extension gives a heading `` `title` ``."""
    return re.sub(r"[^\w\- ]", "", title).strip().lower().replace(" ", "-")


# ---------------------------------------------------------------------------------------------
# settings


def _setting_default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, (list, dict)) and not value:
            return "none"
        return "computed (see description)"
    if field.default is None:
        return "none"
    value = field.default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"`{value:,}`"
    return code(value)


def _type_name(annotation) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"\b(typing|pathlib|pydantic\.types|pydantic_settings\.sources\.types)\.", "", text)
    text = re.sub(r"Annotated\[(.*), NoDecode\]", r"\1", text)
    text = re.sub(r"^Optional\[(.*)\]$", r"\1 | None", text)
    return text.replace("NoneType", "None")


def settings_table(cls: type, prefix: str) -> list[str]:
    described = attributes(cls)
    rows = ["| setting | environment variable | type | default | what it is |", "|---|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        if name not in described:
            raise DocsError(
                f"{cls.__module__}.{cls.__qualname__}.{name} has no entry in the class docstring's Attributes: section"
            )
        rows.append(
            f"| `{name}` | `{prefix}{name.upper()}` | {cell(_type_name(field.annotation))} | "
            f"{_setting_default(field)} | {cell(_rst_to_md(described[name]))} |"
        )
    return rows


def settings_markdown() -> str:
    from vitsearch.api.settings import ApiSettings
    from vitsearch.search.config import Settings

    out = [
        "# Settings",
        "",
        "Generated from the settings classes when the site is built. Every setting is read from its "
        "environment variable; a command's flag beats the variable, the variable beats the default. "
        "An empty `--uri` or `VITSEARCH_URI` is an error, not the default database.",
        "",
        "## The library, the commands and the page",
        "",
        "`vitsearch.search.config.Settings` ([Python API](python.md#vitsearch.search.config.Settings)):",
        "",
    ]
    out += settings_table(Settings, "VITSEARCH_")
    out += [
        "",
        "## The HTTP API",
        "",
        "`vitsearch.api.settings.ApiSettings`, the own settings of `vitsearch serve` "
        "([the HTTP API guide](../guides/http-api.md)); the Milvus URI, the collection, the model and "
        "the image limits are the library's, above.",
        "",
    ]
    out += settings_table(ApiSettings, "VITSEARCH_API_")
    out.append("")
    return "\n".join(out)


def on_page_content(html, page, config, files, **kwargs):
    """The docstrings' reStructuredText roles (:class:`~.x.Y`, :meth:`load`) as plain code: the Python
    reference renders them as Markdown, where the role would show as text."""
    if page.file.src_uri != "reference/python.md":
        return html
    return re.sub(
        r":(?:py:)?(?:meth|func|class|mod|data|attr|exc|obj):<code>~?\.?([^<]*)</code>",
        lambda m: f"<code>{m.group(1).rsplit('.', 1)[-1] if m.group(0).find('~') >= 0 else m.group(1)}</code>",
        html,
    )
