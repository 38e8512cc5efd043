"""The generated ``reference/http.md`` and ``reference/openapi.json``: the routes, parameters,
bodies, answers and models of the OpenAPI schema that ``vitsearch serve`` serves at
``/openapi.json``. Used by the mkdocs hook :mod:`reference`, which puts them into the site."""

from __future__ import annotations

import functools
import json
import re

from tables import cell, code


def openapi_schema() -> dict:
    """The schema of the app ``vitsearch serve`` runs, as ``GET /openapi.json`` answers it."""
    from vitsearch.api.app import create_app
    from vitsearch.api.settings import ApiSettings
    from vitsearch.search.config import Settings

    # A token makes the schema say that the routes take a bearer token, as a served API with one does.
    app = create_app(Settings(), ApiSettings(token="documentation"))
    return app.openapi()


@functools.cache
def _schema() -> dict:
    return openapi_schema()


def openapi_json() -> str:
    """The schema as the file ``reference/openapi.json``."""
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
    """The page ``reference/http.md``: a table of the routes, a section per route, the models."""
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
        out.append(f"| {method.upper()} | [`{path}`](#{route_anchor(method, path)}) | {cell(op.get('summary', ''))} |")
    out.append("")
    for path, method, op in routes:
        out += [f"## {method.upper()} `{path}` {{#{route_anchor(method, path)}}}", ""]
        text = op.get("description") or op.get("summary")
        out += [text, ""] if text else []
        out += _parameters(schema, op.get("parameters", []))
        out += _request_body(schema, op.get("requestBody") or {})
        out += _responses(schema, op.get("responses", {}))
    models = schema.get("components", {}).get("schemas", {})
    if models:
        out += ["## Schemas", ""]
        for name, model in models.items():
            out += [f"### {name}", ""]
            out += [model["description"], ""] if model.get("description") else []
            out += _fields(schema, model)
    return "\n".join(out)


def _parameters(schema: dict, params: list[dict]) -> list[str]:
    if not params:
        return []
    out = ["| parameter | in | type | required | default | description |", "|---|---|---|---|---|---|"]
    for p in params:
        s = p.get("schema", {})
        default = s.get("default")
        out.append(
            f"| `{p['name']}` | {p['in']} | {cell(_schema_type(schema, s))} | "
            f"{'yes' if p.get('required') else 'no'} | "
            f"{code(json.dumps(default)) if default is not None else ''} | "
            f"{cell(p.get('description') or s.get('description', ''))} |"
        )
    return [*out, ""]


def _request_body(schema: dict, body: dict) -> list[str]:
    out = []
    for media, content in body.get("content", {}).items():
        body_schema = _resolve(schema, content.get("schema", {}))
        title = f", {body_schema['title']}" if body_schema.get("title") else ""
        out += [f"Request body: `{media}`{title}.", ""]
        out += _fields(schema, body_schema)
    return out


def _fields(schema: dict, model: dict) -> list[str]:
    """A table of a model's fields (an object schema's ``properties``)."""
    props = model.get("properties", {})
    if not props:
        return []
    required = set(model.get("required", []))
    out = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, prop in props.items():
        out.append(
            f"| `{name}` | {cell(_schema_type(schema, prop))} | "
            f"{'yes' if name in required else 'no'} | {cell(prop.get('description', ''))} |"
        )
    return [*out, ""]


def _responses(schema: dict, responses: dict) -> list[str]:
    if not responses:
        return []
    out = ["| status | answer |", "|---|---|"]
    for status, resp in responses.items():
        kinds = []
        for media, content in resp.get("content", {}).items():
            s = content.get("schema", {})
            kinds.append(f"`{media}`" + (f" ({_schema_type(schema, s)})" if s else ""))
        out.append(f"| {status} | {cell(resp.get('description', ''))} {', '.join(kinds)} |")
    return [*out, ""]


def route_anchor(method: str, path: str) -> str:
    """The anchor of a route's section: ``post-search-examples`` for ``POST /search/examples``."""
    return f"{method}-" + re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")
