"""``--help`` without type artefacts: Typer labels every option with its Python type (``<bool>``
after a flag, ``<str>``, ``<int range>``) and writes a required argument ``{image}``;
:func:`plain_help` gives each option a plain metavar instead (none for a flag, ``N`` for a
number, ``PATH``, the choices, else the option's name) and each argument its name in capitals."""

from __future__ import annotations

from typing import Any


def plain_help(command: Any) -> Any:
    """Give every parameter of ``command`` and its subcommands (Typer's click commands) a plain
    metavar where it has none; returns ``command``."""
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)
    if hasattr(command, "get_help_option"):
        _plain_help_option(command)
    for param in getattr(command, "params", []):
        if param.param_type_name == "argument":  # its name is shown already; Typer shows its type apart
            param.display_type_rich = lambda ctx: None
            name = (param.metavar or param.name).upper()  # IMAGE in the usage line, not Typer's {image}
            param._usage_display_name = (lambda shown: lambda: shown)(
                (name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else "")
            )
            continue
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
            continue
        try:
            label = (param.display_type(None) or "").strip("<>")
        except Exception:  # a type Typer cannot label without a context: leave it as it is
            continue
        if label.startswith(("int", "float")):
            param.metavar = "N" if label.startswith("int") else "X"
        elif "|" in label:
            param.metavar = label
        elif label in ("path", "file", "directory"):
            param.metavar = "PATH"
        else:
            param.metavar = param.name.upper().replace("_", "-")
    return command


def _plain_help_option(command: Any) -> None:
    """``--help`` itself, which the command makes when asked, without its ``<bool>``."""
    make = command.get_help_option

    def get_help_option(ctx):
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option
