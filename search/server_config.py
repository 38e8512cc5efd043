"""The Milvus server's folder and configuration (see :mod:`.server`): the checks on its folder
before anything is written there, and its ``configs/milvus.yaml`` and ``bin/``, written by the
``milvus`` package's own ``MilvusServerConfig`` with vitsearch's settings."""

from __future__ import annotations

import socket
from pathlib import Path

from .errors import ServerError


def check_yaml_safe(folder: Path) -> None:
    """Refuse a folder that the ``milvus`` package would write unquoted into ``milvus.yaml`` in
    a way YAML reads back differently (a comment, a mapping, another line).

    Raises:
        ServerError: the folder's path holds such characters.
    """
    text = str(folder)
    if not text.isprintable() or " #" in text or ": " in text or text.endswith(":"):
        raise ServerError(
            f"{text!r}: the Milvus server cannot use a folder whose path holds a line break, a tab, "
            "' #' or ': ' (its configuration file writes paths unquoted): set VITSEARCH_DATA_DIR "
            "to another folder"
        )


def make_private(root: Path) -> None:
    """Make the server's folder ``root`` and its data this user's alone (0700), also where an
    older vitsearch made them 0755 (the rows' paths are in Milvus's files)."""
    for folder in (root, root / "data"):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)


def write_config(milvus, root: Path, port: int | None, settings: dict) -> tuple[int, int]:
    """Write ``root/configs/milvus.yaml`` (with ``settings`` over vitsearch's) and unpack the
    binary into ``root/bin`` (once).

    Args:
        milvus: the ``milvus`` package.
        root: the server's folder.
        port: gRPC port; None: 19530, or the next free one above it.
        settings: ``milvus.yaml`` keys (or the package's own setting names) and their values.

    Returns:
        the gRPC (proxy) port and the health check's port, both free a moment ago.

    Raises:
        ServerError: a port it needs is taken.
    """
    config = _config(milvus)
    config.configs.update(data_dir=str(root))
    if port is not None:
        config.configs.update(proxy_port=port)
    config.set("authorization_enabled", True)
    # Milvus 2.3.5 does not exit after a SIGTERM (see LocalServer.stop), so its components' etcd
    # sessions outlive it, and the next start waits for them to expire before it serves the
    # collections again: shorter than the defaults of 1800 s and 30 s.
    config.set("common.gracefulStopTimeout", 5)
    config.set("common.session.ttl", 10)
    for key, value in settings.items():
        config.set(key, value)
    try:
        config.resolve()  # binds (and releases) the ports, writes configs/milvus.yaml
    except RuntimeError as exc:
        raise ServerError(
            f"cannot start the Milvus server: {exc} (a port it needs is taken: stop what listens "
            f"there, or give another --port)"
        ) from None
    milvus._initialize_data_files(str(root))  # unpacks bin/milvus once
    health_port, sock = config.resolve_port(9091)
    sock.close()
    return int(config.get("proxy_port")), health_port


def _config(milvus):
    """A ``milvus.MilvusServerConfig`` whose probe of a free port (it binds each port it hands
    out, then releases it) allows a port whose old connections are in TIME_WAIT, as the Go
    listeners of the binary do (SO_REUSEADDR). The package's own probe refuses such a port, so a
    server started again within a minute of the last stop got other ports for its components,
    while the last one's etcd sessions (alive for ``common.session.ttl`` after it) still named the
    old ones: its proxy then reached another component at a stale address and exited ("unknown
    service milvus.proto.query.QueryCoord", seen after the first start's set-up)."""

    class Config(milvus.MilvusServerConfig):
        def try_bind_port(self, port):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except (OSError, OverflowError):
                sock.close()
                return None

    return Config()
