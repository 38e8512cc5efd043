"""vitsearch's library: encoder, images and preprocessing, the Milvus store, the search client and
the evaluation metrics. The indexer, the command line, the page and training are built on it; it
imports none of them, and changes no process-wide state (an application calls
:func:`~.application.configure`). Names are imported on first use, so that
``vitsearch --help`` does not pay for importing torch and pymilvus.
"""

from importlib import import_module

_EXPORTS = {
    "SearchClient": "client",
    "Hit": "hit",
    "Stored": "query",
    "Box": "query",
    "Settings": "config",
    "Encoder": "encoder",
    "EncoderInfo": "encoder",
    "VitsearchError": "errors",
    "BadImageError": "errors",
    "BadQueryError": "errors",
    "CollectionNotFoundError": "errors",
    "EncoderMismatchError": "errors",
    "ModelNotFoundError": "errors",
    "StoreError": "errors",
    "UnsupportedModelError": "errors",
    "ImageTooLargeError": "errors",
    "NotIndexedError": "errors",
    "ServerError": "errors",
    "LocalServer": "server",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
