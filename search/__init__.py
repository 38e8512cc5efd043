"""vitsearch's library: encoder, Milvus store and the search client.

The indexer, the CLI and the UI are built on these. Names are imported on first use, so that
``vitsearch --help`` does not pay for importing torch and pymilvus.
"""
from importlib import import_module

_EXPORTS = {
    "SearchClient": "client", "Hit": "client", "Settings": "config", "Encoder": "encoder",
    "EncoderInfo": "encoder", "VitsearchError": "errors", "BadImageError": "errors",
    "BadQueryError": "errors", "CollectionNotFoundError": "errors",
    "EncoderMismatchError": "errors", "ModelNotFoundError": "errors", "StoreError": "errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
