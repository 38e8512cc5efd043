"""What a started Milvus server leaves in its folder for the next command (see :mod:`.server`):
its record, ``vitsearch-server.json`` (a :class:`ServerState`, from ``vitsearch server start``
until ``stop``), and its credentials, ``credentials`` (``root:<password>``, kept across
restarts); both written atomically, readable by this user only."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ServerError
from .files import write_atomic

#: The server's record, in its folder.
STATE = "vitsearch-server.json"
#: root's login, ``root:<password>``, in its folder.
CREDENTIALS = "credentials"
#: What the first start replaces: Milvus's built-in credentials (Milvus docs, "Authenticate User Access").
DEFAULT_TOKEN = "root:Milvus"


@dataclass(frozen=True)
class ServerState:
    """A started server, as recorded in ``vitsearch-server.json``.

    Attributes:
        pid: the ``milvus`` process id.
        uri: the URI clients connect to, ``http://127.0.0.1:<port>``.
        port: the gRPC port (Milvus's proxy).
        health_port: the port of Milvus's ``/healthz`` (its metrics port).
        started: when it was started, Unix time in seconds.
        version: the ``milvus`` package version.
    """

    pid: int
    uri: str
    port: int
    health_port: int
    started: float
    version: str


def read_state(root: Path) -> ServerState | None:
    """The server recorded in the folder ``root``, or None when there is no record.

    Raises:
        ServerError: the record is unreadable; the message says how to start afresh.
    """
    try:
        return ServerState(**json.loads((root / STATE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ServerError(
            f"{root / STATE} is unreadable ({exc}): stop the server with `vitsearch server stop`, then start it again"
        ) from exc


def write_state(root: Path, state: ServerState) -> None:
    """Record ``state`` in the folder ``root``."""
    write_private(root, STATE, json.dumps(asdict(state)))


def remove_state(root: Path, missing_ok: bool = False) -> None:
    """Remove the record in the folder ``root`` (a missing one is an error unless ``missing_ok``)."""
    (root / STATE).unlink(missing_ok=missing_ok)


def read_token(root: Path) -> str | None:
    """``root:<password>`` kept in the folder ``root``, or None before the server's first start."""
    try:
        return (root / CREDENTIALS).read_text().strip() or None
    except FileNotFoundError:
        return None


def kept_password(root: Path) -> str | None:
    """root's password kept in the folder ``root``, or None where there is none.

    Raises:
        ServerError: the ``credentials`` file is not ``root:<password>``.
    """
    token = read_token(root)
    if token is None:
        return None
    user, _, password = token.partition(":")
    if user != "root" or not password:
        raise ServerError(
            f"{root / CREDENTIALS} does not hold root:<password>: remove it, and the data "
            f"folder {root / 'data'} made with it, to start afresh"
        )
    return password


def write_credentials(root: Path, password: str) -> None:
    """Keep root's ``password`` in the folder ``root``."""
    write_private(root, CREDENTIALS, f"root:{password}\n")


def write_private(root: Path, name: str, text: str) -> None:
    """Write ``root/name`` atomically, readable by this user only (it may hold a password)."""
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / name, text, mode=0o600)
