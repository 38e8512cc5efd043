"""One connection to Milvus (:class:`Connection`): the client, opened on a server URI or on a
Milvus Lite database shared between processes (:mod:`.lite`), every call retried with backoff
while Milvus is unreachable, and Milvus's errors turned into the project's
(:class:`~..errors.StoreError`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import grpc
from pymilvus import MilvusClient
from pymilvus.client.types import Status
from pymilvus.exceptions import MilvusException, MilvusUnavailableException

from ..config import where
from ..errors import StoreError
from .lite import lite_uri
from .lite import release as lite_release
from .profile import BackendProfile

log = logging.getLogger(__name__)
#: gRPC channel options of every Milvus client (``MilvusClient(..., grpc_options=...)``).
#: pymilvus pings every 10 s, also with no call in flight; Lite's server (in a vitsearch process,
#: or ``milvus-lite server``) is Python gRPC with grpc core's defaults, which allow one ping per
#: 2 h on an idle connection and one per 5 min during a call, and answer the third early ping
#: with GOAWAY "too_many_pings". A client idle for 30 s was cut off, and pymilvus' recovery of its
#: shared connection then failed ("Fail connecting to server"). These options send no keepalive
#: pings; a dead idle connection is still found, by pymilvus' own health check of a connection
#: idle over 30 s (``GetVersion``, pymilvus.client.connection_manager) before it is used.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}
#: First wait before reconnecting, and the longest, in seconds (doubling in between).
_FIRST_DELAY_S, _MAX_DELAY_S = 0.5, 8.0


class ReplyTooLarge(StoreError):
    """A reply over gRPC's message limit (a Milvus 2.3 server's query nodes send the proxy up to
    ``limit`` rows per segment, so a read of a large collection can exceed it:
    docs/benchmarks/duplicates-speed.md, "1,000,000 vectors on a server")."""


class Naming(Protocol):
    """What a connection asks of the names of the collection it serves
    (:class:`~.migration.Generations`): calls whose first argument is :attr:`physical` are calls
    on the collection's own rows, to be made again where the name has moved."""

    physical: str | None

    def opened(self) -> None:
        """Called on each (re)connection: finish what a crash interrupted, look the name up."""

    def require(self) -> str:
        """The physical collection's name, looked up again if unknown."""

    def follow(self, name: str, what: str, kwargs: dict[str, Any]) -> bool:
        """Whether a call made on ``name`` is to be made again on :attr:`physical`."""


class Connection:
    """The Milvus client of one store, reconnected and its calls retried as Milvus comes and goes.

    Args:
        uri: a Milvus Lite path or a server URI; its kind is ``profile.lite``.
        collection: the collection's name (for messages).
        token: server auth token; kept private, never logged.
        profile: the backend's profile (:func:`~.profile.profile_for`).
        lite_wait_s: seconds to wait for a Lite database held by another process to be shared.
        retry_s: seconds to keep retrying a call while Milvus is unreachable.
    """

    def __init__(
        self,
        uri: str,
        collection: str,
        token: str,
        profile: BackendProfile,
        *,
        lite_wait_s: float,
        retry_s: float,
    ):
        self.uri = uri
        self.collection = collection
        self.token = token
        self.lite = Path(uri).expanduser() if profile.lite else None
        self.lite_wait_s = lite_wait_s
        self.retry_s = retry_s
        self.served_here = False  # this process serves the Lite database
        self.stale = False  # a call gave up on an unreachable Milvus: reconnect before the next
        self.names: Naming | None = None
        self.client: MilvusClient | None = None

    @property
    def where(self) -> str:
        """``collection 'NAME' at URI``, for messages (:func:`~..config.where`)."""
        return where(self.collection, self.uri)

    def connect(self, names: Naming | None = None, *, patient: bool = True) -> None:
        """Open the client (serving or joining a Lite database), then let ``names`` (kept for the
        reconnections) look the collection up.

        A Lite database is on this machine, so a first connection that it does not answer (a
        machine too busy to answer within pymilvus' 10 s, a sharing process that is exiting) is
        tried again, ``patient`` (the first connection of a store), with backoff (0.5 s doubling to
        8 s) for up to ``retry_s``: each try serves the database from here if its holder has gone.

        Raises:
            StoreError: Milvus cannot be opened or reached.
        """
        self.names = names or self.names
        deadline, delay = time.monotonic() + self.retry_s, _FIRST_DELAY_S
        while True:
            try:
                self.client = self._open_client()
                break
            except StoreError as exc:
                retry = patient and self.lite is not None and _unreachable(exc.__cause__)
                if not retry or time.monotonic() + delay > deadline:
                    raise
                log.warning("Milvus Lite database %s did not answer (%s); retrying in %.1f s", self.lite, exc, delay)
                time.sleep(delay)
                delay = min(2 * delay, _MAX_DELAY_S)
        try:  # a collection reopened by Milvus Lite (or released on a server) is not searchable until loaded
            self.names.opened()
        except MilvusException as exc:
            raise self.error("load_collection", exc) from exc

    def _open_client(self) -> MilvusClient:
        """One try at a client of :attr:`uri` (of a Lite database: served here or where published).

        Raises:
            StoreError: from the MilvusClient's error, its ``__cause__``.
        """
        target = self.uri
        if self.lite is not None:
            target, self.served_here = lite_uri(self.lite, self.lite_wait_s)
        try:
            return MilvusClient(uri=target, token=self.token, grpc_options=GRPC_OPTIONS)
        except Exception as exc:  # pymilvus raises assorted types
            raise StoreError(f"cannot open Milvus at {self.uri}: {type(exc).__name__}: {exc}") from exc

    def call(self, method: str | Callable, *args, **kwargs):
        """``client.<method>(*args, **kwargs)`` (or ``method(*args, **kwargs)``) with Milvus errors
        turned into :class:`StoreError`, and reconnection with backoff (0.5 s doubling to 8 s) for
        up to ``retry_s`` while Milvus is unreachable. A call that gave up leaves the next one to
        reconnect first; a collection that a restarted Milvus has released is loaded again (once
        per call); a call on the collection's rows follows its name where it moved.

        Raises:
            ReplyTooLarge: the reply was over gRPC's message limit.
            CollectionNotFoundError, CollectionMoved: see :meth:`Naming.follow`.
            StoreError: Milvus refused, or stayed unreachable for ``retry_s``.
        """
        what = method if isinstance(method, str) else method.__name__
        named = bool(args) and args[0] == self.names.physical  # a call on this store's own collection
        if named and self.names.physical is None:  # it did not exist when last looked up: look again
            args = (self.names.require(),) + args[1:]
        connected, last = True, None
        if self.stale:
            last = self._reconnect()
            connected, self.stale = last is None, last is not None
        deadline, delay, reloaded = None, _FIRST_DELAY_S, False
        while True:
            if connected:
                try:
                    return self._invoke(method, what, args, kwargs)
                except MilvusException as exc:
                    if _released(exc) and not reloaded:
                        reloaded = True
                        if self._reload(args):
                            continue
                    if named and _missing(exc) and self.names.follow(args[0], what, kwargs):
                        args = (self.names.physical,) + args[1:]
                        continue
                    if not _unreachable(exc):
                        raise self.error(what, exc) from exc
                    last = exc
            deadline = deadline or time.monotonic() + self.retry_s
            if time.monotonic() + delay > deadline:
                self.stale = True
                raise StoreError(
                    f"Milvus at {self.uri} did not answer for {self.retry_s:g} s ({what}: {last}); "
                    f"run again once it is back: an indexing run resumes where it stopped"
                ) from last
            log.warning("Milvus at %s is unreachable; retrying in %.1f s", self.uri, delay)
            time.sleep(delay)
            delay = min(2 * delay, _MAX_DELAY_S)
            error = self._reconnect()  # a Lite database whose server process has gone is taken over
            connected, last = error is None, error or last
            if connected and named and self.names.physical != args[0] and self.names.follow(args[0], what, kwargs):
                args = (self.names.physical,) + args[1:]

    def _invoke(self, method: str | Callable, what: str, args: tuple, kwargs: dict[str, Any]):
        """One attempt of :meth:`call`; gRPC errors that pymilvus passes through unwrapped raised
        as :class:`ReplyTooLarge` (over the message limit) or :class:`StoreError`."""
        try:
            return (getattr(self.client, method) if isinstance(method, str) else method)(*args, **kwargs)
        except grpc.RpcError as exc:
            kind = ReplyTooLarge if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else StoreError
            raise kind(
                f"Milvus at {self.uri}, collection {self.collection!r}: {what} failed: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc

    def _reconnect(self) -> StoreError | None:
        """:meth:`connect` again; the error where it failed, else None."""
        try:
            self.connect(patient=False)  # the call that reconnects has its own retries
        except StoreError as exc:
            return exc
        return None

    def _reload(self, args: tuple) -> bool:
        """Load the collection a call named (else the store's own) again; whether it was loaded."""
        try:
            self.client.load_collection(args[0] if args and isinstance(args[0], str) else self.names.physical)
        except MilvusException:
            return False
        return True

    def error(self, what: str, exc: MilvusException) -> StoreError:
        """``exc`` as a :class:`StoreError` naming the URI, the collection and the call ``what``."""
        return StoreError(
            f"Milvus at {self.uri}, collection {self.collection!r}: {what} failed: {' '.join(str(exc).split())}"
        )

    def close(self, release: bool = False) -> None:
        """Close the client; with ``release``, also stop serving a Lite database served here."""
        self.client.close()
        if release and self.lite is not None:
            lite_release(self.lite)


def _missing(exc: MilvusException) -> bool:
    """Whether ``exc`` says the collection a call named does not exist."""
    message = (exc.message or "").lower()
    return exc.code == 100 or "does not exist" in message or "collection not found" in message


def _released(exc: MilvusException) -> bool:
    """Whether ``exc`` says the collection is not loaded (a restarted Milvus Lite server forgets
    what was loaded; Milvus: "collection not loaded", Lite: "in state 'released'; call load()")."""
    message = exc.message or ""
    return "call load()" in message or "not loaded" in message


def _unreachable(exc: BaseException | None) -> bool:
    """Whether ``exc`` says Milvus could not be reached (as opposed to refusing the request)."""
    return isinstance(exc, MilvusUnavailableException) or (
        isinstance(exc, MilvusException) and exc.code == Status.CONNECT_FAILED
    )
