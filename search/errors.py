"""The exceptions vitsearch raises. Every one derives from :class:`VitsearchError`.

Library code raises these and never exits the process; only the command line (:mod:`vitsearch.cli`) turns them into a message
and an exit code.
"""

from __future__ import annotations


class VitsearchError(Exception):
    """Root of every error vitsearch raises on purpose."""


class ModelNotFoundError(VitsearchError):
    """A model id or folder cannot be loaded (not a folder, not cached, hub out of reach)."""


class EncoderMismatchError(VitsearchError):
    """A collection was filled by another encoder than the one asked for.

    Vectors of two models live in different spaces: mixing them gives meaningless scores.
    """


class StoreError(VitsearchError):
    """Milvus cannot be reached or refused an operation. The message names the URI."""


class DatabaseDamagedError(StoreError):
    """A Milvus Lite database's files are damaged (a manifest or schema lost, a data file gone):
    opening it would lose rows, so it is refused, unchanged; the message names the file and how
    to recover. Not transient: trying again does not help."""


class ServerError(StoreError):
    """The Milvus server that ``vitsearch server`` runs on this machine cannot be started or
    stopped, or was started and is gone; the message says why and what to do."""


class CollectionNotFoundError(StoreError):
    """The collection does not exist (nothing has been indexed into it yet)."""


class CollectionBusyError(StoreError):
    """Another indexing run is writing to the collection (see :mod:`vitsearch.search.store.lease`)."""


class BadImageError(VitsearchError):
    """An image file or buffer cannot be read or decoded. ``source`` names it, ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ImageTooLargeError(BadImageError):
    """An image over a limit: more bytes than ``max_file_bytes``, or more pixels decoded than
    ``max_pixels`` (a "decompression bomb"); see :class:`~vitsearch.search.images.Limits`."""


class BadQueryError(VitsearchError):
    """A search request is malformed (bad k, unknown path, unsupported query type)."""


class NotIndexedError(BadQueryError):
    """A path asked for by name (a ``--similar`` query, a thumbnail) has no row in the collection."""


class UnsupportedModelError(ModelNotFoundError):
    """A checkpoint loads, but is not a ViT-family vision model (a text model, a CNN, a Swin):
    it has no class token to embed images with."""


class UnsupportedRuntimeError(VitsearchError):
    """The encoder runtime asked for is unknown or cannot run here (an ONNX runtime off the CPU)."""
