"""The ``vitsearch`` command: the only code that prints for users and exits the process.

One module per command group, each only parsing, calling the library and printing:
:mod:`.index`, :mod:`.watch`, :mod:`.search` (``search``, ``stats``), :mod:`.collections` (``collections``,
``drop``), :mod:`.duplicates`, :mod:`.export`, :mod:`.map`, :mod:`.ui`,
:mod:`.serve` (the HTTP API), :mod:`.evaluate` (``eval``), :mod:`.train`, :mod:`.model`
(``model pull``, ``model list``), :mod:`.server` (``server start|stop|status``); :mod:`.common` holds what they share. Settings resolve as
flag, then ``VITSEARCH_*`` variable, then default; a
:class:`~vitsearch.search.errors.VitsearchError` becomes a one-line message and exit code 1 (2
for bad input). Heavy imports (torch, transformers, pymilvus) happen inside the commands, so
``--help`` answers at once.
"""

# Each module registers its commands on ``app``, in the order --help lists them.
from . import collections, duplicates, evaluate, export, index, map, model, search, serve, server, train, ui, watch  # noqa: E402,F401,I001
from .common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point."""
    import typer

    from .help import plain_help

    plain_help(typer.main.get_command(app))()
