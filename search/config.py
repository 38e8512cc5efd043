"""Settings shared by the library, the CLI and the UI.

Resolution order for every value: explicit argument (or CLI flag), then the ``VITSEARCH_*``
environment variable, then the default below.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .pooling import POOLINGS, Pooling

DEFAULT_MODEL = "facebook/dinov2-small"
DEFAULT_COLLECTION = "images"
#: Images per forward pass off CUDA. On a CPU throughput is nearly flat in the batch size
#: (docs/benchmarks/indexing.md), so this only bounds memory.
DEFAULT_BATCH_SIZE = 32
#: Most results one search returns: Milvus's top-k limit (``limit`` of a search, 16384).
MAX_K = 16384
#: Most pixels decoded from one image (width x height as decoded: a JPEG at the reduced scale it
#: is decoded at, see :class:`~vitsearch.search.preprocess.Preprocess`); a bigger one is refused
#: from its header, before decoding (a "decompression bomb": a small file that would need
#: gigabytes and seconds once decoded); the limit admits any photo a camera takes.
#: Pillow's own guard also refuses files of more than ~179 megapixels (``Image.MAX_IMAGE_PIXELS``).
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
#: Largest image file read, in MB (checked before reading: a sparse or huge file is not read).
DEFAULT_MAX_FILE_MB = 200
#: Cosine similarity at or above which two images are near-duplicate candidates (``vitsearch
#: duplicates``; each candidate pair is then confirmed by its pixels, :mod:`.pixels`), chosen for
#: the default model (dinov2-small-9l, onnx-int8) by ``benchmarks/duplicates.py quality`` on
#: planted copies of catalogue photos (the figures: docs/benchmarks/duplicates.md).
DEFAULT_DUPLICATE_THRESHOLD = 0.92
#: The same for a whitened collection (:mod:`.whitening`), whose scores are on another scale
#: (unrelated images near 0), chosen the same way (``benchmarks/duplicates.py quality``).
DEFAULT_WHITENED_DUPLICATE_THRESHOLD = 0.50


class Runtime(StrEnum):
    """How the encoder runs (:mod:`vitsearch.search.runtimes`): PyTorch eager, or the checkpoint
    exported to ONNX and run by ONNX Runtime in fp32 or with int8 weights. The values are
    ``--runtime``'s and ``VITSEARCH_RUNTIME``'s."""

    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"


#: The values of :class:`Runtime`, as plain strings.
RUNTIMES: tuple[str, ...] = tuple(r.value for r in Runtime)
#: What :attr:`Settings.pooling` and :attr:`Settings.runtime` accept: the values of the enums
#: (kept as plain strings in the settings).
PoolingName = Literal[POOLINGS]  # type: ignore[valid-type]
RuntimeName = Literal[RUNTIMES]  # type: ignore[valid-type]
#: The runtime on a CPU when none is asked: the fastest that keeps Holidays-dev mAP within 0.005
#: of torch fp32 (docs/benchmarks/runtimes.md). On CUDA and MPS the default is torch (bf16 on CUDA).
DEFAULT_CPU_RUNTIME = Runtime.onnx_int8.value
#: Longest filter (a Milvus boolean expression from a user), in characters. Milvus Lite parses and
#: evaluates a filter in Python, holding up the searches queued behind it: 16,384 characters of
#: ``width > 1 or ...`` take ~0.07 s, 65,536 ~0.4 s, 18.8 MB ~28 s (2 AMD EPYC cores). Enough for
#: a ``path in [...]`` list of ~300 paths.
DEFAULT_MAX_FILTER_CHARS = 16_384
#: Deepest nesting of a filter: brackets plus chained prefix operators (``not``, ``!``, unary
#: ``-``). Milvus Lite's parser recurses ~8 Python frames per bracket and runs out of stack
#: (``maximum recursion depth exceeded``) between 100 and 200 brackets, or ~1,000 ``not``.
DEFAULT_MAX_FILTER_DEPTH = 32
#: The names every server of vitsearch (the page, the HTTP API) answers to, whatever its
#: ``--host``: see :func:`served_hosts`.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
#: Listening addresses that are every interface, which name no host.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "[::]"})
_HOST = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::(?P<port>[0-9]{1,5}))?")


def host_name(value: str) -> str | None:
    """The host that a ``Host`` header or a configured name gives, without its port: lower
    case, without a final dot, an IPv6 address in brackets and in its short form (``[::1]``; a
    bare IPv6 address, as ``--host ::1`` gives it, is read as one). None when ``value`` is not
    a host (empty, a URL, user info, a path, a port over 65535, a malformed IPv6 address)."""
    text = value.strip().lower()
    if text.count(":") > 1 and not text.startswith("["):
        text = f"[{text}]"
    m = _HOST.fullmatch(text)
    if m is None or (m["port"] and int(m["port"]) > 65535):
        return None
    if m["ip6"] is not None:
        try:
            return f"[{ipaddress.IPv6Address(m['ip6']).compressed}]"
        except ValueError:
            return None
    return m["name"].rstrip(".") or None


def served_hosts(bind: str, allowed: Iterable[str] = ()) -> list[str]:
    """The ``Host`` names a server listening on ``bind`` (``--host``) answers to, each as
    :func:`host_name` gives it: :data:`LOOPBACK_HOSTS`, ``bind`` when it is a name or an address
    that is not a wildcard (``0.0.0.0``, ``::``), and ``allowed`` (``--allowed-hosts``).

    Raises:
        ValueError: an entry of ``allowed`` is not a host name or address.
    """
    names = list(LOOPBACK_HOSTS)
    own = host_name(bind)
    for name in ([own] if own and own not in WILDCARD_HOSTS else []) + [_checked_host(a) for a in allowed]:
        if name not in names:
            names.append(name)
    return names


def _checked_host(value: str) -> str:
    name = host_name(value)
    if name is None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ValueError(
            f"{shown!r} is not a host name or address (give names such as photos.lan or 192.168.1.20, comma-separated)"
        )
    return name


def where(collection: str, uri: str) -> str:
    """``collection 'NAME' at URI``: how every message names a collection (the name quoted as
    Python quotes it, so that a hostile name cannot pass for other text)."""
    return f"collection {collection!r} at {uri}"


class Settings(BaseSettings):
    """vitsearch settings, read from ``VITSEARCH_<NAME>`` environment variables.

    Attributes:
        data_dir: where the default Milvus Lite database and pulled models live
            (default: the platform's user data directory, e.g. ``~/.local/share/vitsearch``).
        uri: Milvus URI: a Milvus Lite path (``something.db``) or ``http://host:19530``.
            Default: the server of ``vitsearch server start`` while it runs, else
            ``<data_dir>/milvus.db`` (see :meth:`resolved_uri`).
        token: Milvus server token (``user:password`` or API key); never logged. Default: that
            server's credentials when the URI is its own.
        collection: collection name.
        model: encoder, a Hugging Face hub id, a local folder or a pulled model's name.
        pooling: ``cls`` (the class token; default) or ``mean`` (mean of the patch tokens): see
            :class:`~.pooling.Pooling`.
        image_size: encoder input N x N pixels; ``None``: the checkpoint's own, or the
            collection's when it exists.
        device: ``cuda``, ``cuda:1``, ``mps`` or ``cpu``; ``None`` picks CUDA, then MPS, then CPU.
        dtype: ``bfloat16`` or ``float16`` on CUDA; ``None`` gives bf16 on CUDA, fp32 elsewhere.
        batch_size: images per forward pass; default 32, on CUDA chosen for the card's free
            memory (:func:`vitsearch.search.devices.batch_size_for`).
        workers: decode/preprocess worker processes.
        compile: run the encoder through ``torch.compile`` (the torch runtime).
        runtime: ``torch``, ``onnx`` or ``onnx-int8`` (see :class:`Runtime`); ``None``: the
            collection's, else :data:`DEFAULT_CPU_RUNTIME` on a CPU and torch on CUDA/MPS.
        cache_dir: where exported ONNX models go when the model's folder is read-only (default:
            the platform's user cache directory, e.g. ``~/.cache/vitsearch``).
        lite_wait_s: seconds to wait for a Milvus Lite database that another process has just
            opened to be shared (see :mod:`vitsearch.search.store.lite`).
        max_upload_mb: largest query image the UI accepts, in megabytes.
        retry_s: seconds a call keeps retrying (with backoff) while Milvus is unreachable.
        ray_start_s: seconds ``--engine ray`` waits for the local Ray cluster it starts (Ray's
            ``RAY_gcs_server_port_wait_time_s``; Ray's own default is 30).
        max_image_pixels: most pixels decoded from one image (see :data:`DEFAULT_MAX_IMAGE_PIXELS`).
        max_file_mb: largest image file read, in MB (indexed files, queries and uploads alike).
        max_filter_chars: longest filter accepted, in characters (see
            :data:`DEFAULT_MAX_FILTER_CHARS`); a longer one is a bad query.
        max_filter_depth: deepest nesting of a filter accepted: brackets plus chained ``not``,
            ``!`` and unary ``-`` (see :data:`DEFAULT_MAX_FILTER_DEPTH`); a deeper one is a bad query.
        allowed_hosts: ``Host`` names the page and the HTTP API answer to besides the loopback
            names and their ``--host`` (:func:`served_hosts`), comma-separated
            (``VITSEARCH_ALLOWED_HOSTS="photos.lan,192.168.1.20"``); a port is ignored. A request
            for any other name is refused (a web page's DNS rebinding).
    """

    model_config = SettingsConfigDict(env_prefix="VITSEARCH_", extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("vitsearch")))
    uri: str | None = None
    token: SecretStr | None = None
    collection: str = DEFAULT_COLLECTION
    model: str = DEFAULT_MODEL
    pooling: PoolingName = Pooling.cls.value
    image_size: int | None = Field(default=None, ge=8)
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = Field(default=None, ge=1)
    workers: int = Field(default=2, ge=0)
    compile: bool = False
    runtime: RuntimeName | None = None
    cache_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_cache_dir("vitsearch")))
    lite_wait_s: float = Field(default=10.0, ge=0)
    max_upload_mb: int = Field(default=20, ge=1)
    retry_s: float = Field(default=60.0, ge=0)
    ray_start_s: int = Field(default=120, ge=0)
    max_image_pixels: int = Field(default=DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    max_file_mb: float = Field(default=DEFAULT_MAX_FILE_MB, gt=0)
    max_filter_chars: int = Field(default=DEFAULT_MAX_FILTER_CHARS, ge=1)
    max_filter_depth: int = Field(default=DEFAULT_MAX_FILTER_DEPTH, ge=1)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("uri")
    @classmethod
    def _uri_not_empty(cls, uri: str | None) -> str | None:
        if uri is not None and not uri.strip():
            raise ValueError(
                "the Milvus URI is empty: give a Milvus Lite path (such as ~/vitsearch/milvus.db) "
                "or a server URI (http://host:19530), or leave it unset for the default"
            )
        return uri

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value):
        if isinstance(value, str):
            return [h for h in value.split(",") if h.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [_checked_host(h) for h in value]

    @property
    def max_file_bytes(self) -> int:
        """:attr:`max_file_mb` in bytes."""
        return int(self.max_file_mb * 2**20)

    @property
    def models_dir(self) -> Path:
        """Folder of models built or downloaded by ``vitsearch model pull``."""
        return self.data_dir / "models"

    def where(self) -> str:
        """``collection 'NAME' at URI`` of these settings, for messages (:func:`where`).

        Raises:
            ServerError: see :meth:`resolved_uri`.
        """
        return where(self.collection, self.resolved_uri())

    def resolved_uri(self) -> str:
        """The Milvus URI to use: ``uri`` if set, else the server that ``vitsearch server start``
        runs (from its start until ``vitsearch server stop``), else the Milvus Lite file in
        ``data_dir``.

        Raises:
            ServerError: that server was started, not stopped, and its process is gone (so a
                command never writes to Lite while the user thinks it writes to the server).
        """
        if self.uri:
            return self.uri
        from .errors import ServerError
        from .server import LocalServer

        server = LocalServer.for_data_dir(self.data_dir)
        state = server.state()
        if state is None:
            return str(self.data_dir / "milvus.db")
        if not server.alive(state):
            raise ServerError(
                f"the Milvus server that `vitsearch server start` ran ({state.uri}, pid {state.pid}) "
                f"is not running: start it again with `vitsearch server start`, or run "
                f"`vitsearch server stop` to go back to Milvus Lite (its log: {server.log})"
            )
        return state.uri

    def token_for(self, uri: str) -> str | None:
        """The Milvus token for ``uri``: ``token`` if set, else the credentials of the server
        that ``vitsearch server start`` runs when ``uri`` is that server's, else None."""
        if self.token is not None:
            return self.token.get_secret_value()
        from .server import LocalServer

        server = LocalServer.for_data_dir(self.data_dir)
        state = server.state()
        return server.token() if state is not None and state.uri == uri else None
