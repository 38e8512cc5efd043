"""mkdocs hook: the Reference pages that are generated from the code at build time, so that they
cannot drift from it.

- ``reference/cli.md``: every command, argument and option of the Typer app (``vitsearch.cli.app``),
  with the metavars ``vitsearch --help`` shows;
- ``reference/settings.md``: every field of :class:`vitsearch.search.config.Settings` and
  :class:`vitsearch.api.settings.ApiSettings`, its environment variable, default and the
  description from the class docstring's ``Attributes:`` (a field without one fails the build);
- ``reference/http.md`` and ``reference/openapi.json``: the routes of the OpenAPI schema the app of
  ``vitsearch serve`` serves at ``/openapi.json``.

Pages listed in ``nav`` whose file does not exist (a benchmark page still being written) are
left out of the navigation instead of failing a strict build.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

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


def _cell(text: Any) -> str:
    """Text for one Markdown table cell."""
    text = "" if text is None else str(text)
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: Any) -> str:
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


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
    return _code(default)


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
            rows.append((names, _code(metavar) if metavar else "", param.help, _default(param)))
        help_option = command.get_help_option(ctx)
        if help_option is not None:
            rows.append(("`--help`", "", "Show the help and exit.", ""))
        if rows:
            out += ["| name | value | what it does | default |", "|---|---|---|---|"]
            out += [f"| {a} | {b} | {_cell(c)} | {d} |" for a, b, c, d in rows]
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
    return _code(value)


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
            f"| `{name}` | `{prefix}{name.upper()}` | {_cell(_type_name(field.annotation))} | "
            f"{_setting_default(field)} | {_cell(_rst_to_md(described[name]))} |"
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


# ---------------------------------------------------------------------------------------------
# the HTTP API


def openapi_schema() -> dict:
    from vitsearch.api.app import create_app
    from vitsearch.api.settings import ApiSettings
    from vitsearch.search.config import Settings

    # A token makes the schema say that the routes take a bearer token, as a served API with one does.
    app = create_app(Settings(), ApiSettings(token="documentation"))
    return app.openapi()


_SCHEMA: dict | None = None


def _schema() -> dict:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = openapi_schema()
    return _SCHEMA


def openapi_json() -> str:
    return json.dumps(_schema(), indent=2, ensure_ascii=False) + "\n"


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"].removeprefix("#/").split("/")
        node = schema
        for part in ref:
            node = node[part]
    return node


def _schema_type(schema: dict, node: dict) -> str:
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in node:
        return " or ".join(_schema_type(schema, n) for n in node["anyOf"])
    if node.get("type") == "array":
        return f"array of {_schema_type(schema, node.get('items', {}))}"
    return node.get("type", "any")


def http_markdown() -> str:
    schema = _schema()
    info = schema.get("info", {})
    out = [
        "# HTTP API",
        "",
        f"Generated when the site is built from the OpenAPI schema that `vitsearch serve` serves at "
        f"`/openapi.json` (version {info.get('version', '?')}); the whole schema is "
        "[openapi.json](openapi.json), and a running server renders it at `/docs` and `/redoc`. "
        "How to run and secure the server: [the HTTP API guide](../guides/http-api.md).",
        "",
    ]
    if info.get("description"):
        out += [info["description"], ""]
    out += ["| method | path | what it does |", "|---|---|---|"]
    routes = [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()]
    for path, method, op in routes:
        out.append(
            f"| {method.upper()} | [`{path}`](#{_route_anchor(method, path)}) | {_cell(op.get('summary', ''))} |"
        )
    out.append("")
    for path, method, op in routes:
        out += [f"## {method.upper()} `{path}` {{#{_route_anchor(method, path)}}}", ""]
        if op.get("description"):
            out += [op["description"], ""]
        elif op.get("summary"):
            out += [op["summary"], ""]
        params = op.get("parameters", [])
        if params:
            out += ["| parameter | in | type | required | default | description |", "|---|---|---|---|---|---|"]
            for p in params:
                s = p.get("schema", {})
                default = s.get("default")
                out.append(
                    f"| `{p['name']}` | {p['in']} | {_cell(_schema_type(schema, s))} | "
                    f"{'yes' if p.get('required') else 'no'} | "
                    f"{_code(json.dumps(default)) if default is not None else ''} | "
                    f"{_cell(p.get('description') or s.get('description', ''))} |"
                )
            out.append("")
        body = op.get("requestBody")
        if body:
            for media, content in body.get("content", {}).items():
                body_schema = _resolve(schema, content.get("schema", {}))
                out += [
                    f"Request body: `{media}`"
                    + (f", {body_schema.get('title')}" if body_schema.get("title") else "")
                    + ".",
                    "",
                ]
                props = body_schema.get("properties", {})
                if props:
                    required = set(body_schema.get("required", []))
                    out += ["| field | type | required | description |", "|---|---|---|---|"]
                    for name, prop in props.items():
                        out.append(
                            f"| `{name}` | {_cell(_schema_type(schema, prop))} | "
                            f"{'yes' if name in required else 'no'} | {_cell(prop.get('description', ''))} |"
                        )
                    out.append("")
        responses = op.get("responses", {})
        if responses:
            out += ["| status | answer |", "|---|---|"]
            for code, resp in responses.items():
                kinds = []
                for media, content in resp.get("content", {}).items():
                    s = content.get("schema", {})
                    kinds.append(f"`{media}`" + (f" ({_schema_type(schema, s)})" if s else ""))
                out.append(f"| {code} | {_cell(resp.get('description', ''))} {', '.join(kinds)} |")
            out.append("")
    models = schema.get("components", {}).get("schemas", {})
    if models:
        out += ["## Schemas", ""]
        for name, model in models.items():
            out += [f"### {name}", ""]
            if model.get("description"):
                out += [model["description"], ""]
            props = model.get("properties", {})
            if props:
                required = set(model.get("required", []))
                out += ["| field | type | required | description |", "|---|---|---|---|"]
                for field, prop in props.items():
                    out.append(
                        f"| `{field}` | {_cell(_schema_type(schema, prop))} | "
                        f"{'yes' if field in required else 'no'} | {_cell(prop.get('description', ''))} |"
                    )
                out.append("")
    return "\n".join(out)


def _route_anchor(method: str, path: str) -> str:
    return f"{method}-" + re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


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
