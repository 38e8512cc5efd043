"""Process-wide setup for an application built on vitsearch (the ``vitsearch`` command, the page):
the library itself changes no global state; an application calls :func:`configure` once.

- quiets loggers and warnings whose content vitsearch's own errors already carry: pymilvus logs
  every failed call with a traceback, gRPC a line per forked worker, Milvus Lite's gRPC adapter
  every failed call with a traceback, transformers its advice and progress bars, Pillow a
  ``DecompressionBombWarning`` (vitsearch refuses by its own pixel limit), ONNX Runtime's
  quantizer its advice to pre-process (on the root logger) and the TorchScript exporter its notes;
- lets Pillow's own decompression-bomb guard follow a ``VITSEARCH_MAX_IMAGE_PIXELS`` raised above it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from .config import Settings


def configure(settings: Settings | None = None) -> None:
    """Set up this process for a vitsearch application (idempotent)."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # read when grpc is first imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported: tell it directly
        transformers = sys.modules["transformers"]
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    # pymilvus configures its loggers when first imported (logging.config.dictConfig, level
    # WARNING): import it now, after GRPC_VERBOSITY is set and before quieting them, so that
    # the order in which an application imports things does not matter.
    import pymilvus  # noqa: F401

    for name in ("pymilvus", "milvus_lite.adapter", "grpc._server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Milvus Lite's storage and recovery warnings are shown (a manifest it cannot read, a log
    # cut short), without the traceback of a background compaction that failed and is retried.
    lite = logging.getLogger("milvus_lite.engine.collection")
    if not any(isinstance(f, _NoTraceback) for f in lite.filters):
        lite.addFilter(_NoTraceback())
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    for note in ("You are using the legacy TorchScript-based ONNX export", "Converting a tensor to a Python"):
        warnings.filterwarnings("ignore", message=note)  # the exporter's notes at a model's first export
    root = logging.getLogger()
    if not any(isinstance(f, _QuantizerAdvice) for f in root.filters):
        root.addFilter(_QuantizerAdvice())
    limit = (settings or Settings()).max_image_pixels
    if Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit


class _QuantizerAdvice(logging.Filter):
    """Drops ``onnxruntime.quantization``'s "Please consider to run pre-processing before
    quantization" (logged on the root logger at every int8 export)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


class _NoTraceback(logging.Filter):
    """Keeps a record's message and its exception's one line, drops the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True
