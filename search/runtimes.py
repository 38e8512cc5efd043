"""The ONNX Runtime encoders: the checkpoint's embedding exported once to ONNX, cached, and run by
ONNX Runtime in fp32 (``onnx``) or with int8 weights (``onnx-int8``).

The exported graph is the whole embedding: pixel values ``(N, 3, H, W) float32`` (batch dynamic,
H x W the input size in use) to the pooled last-layer token (the CLS token, or the mean of the
patch tokens), L2-normalised, ``(N, D) float32``; the preprocessing stays the encoder's own, so
torch and ONNX see the same input. int8 is ONNX Runtime's block-wise weight quantization of
every matrix multiplication with a constant weight (``MatMulNBits``, 8 bits, blocks of
:data:`INT8_BLOCK` along the input dimension, one scale each, symmetric), run with
``accuracy_level`` 4: the kernel quantizes its input to int8 at run time row by row, block by
block, and multiplies in int8 (``onnxruntime.quantization.matmul_nbits_quantizer``;
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html). Each row of an
activation is one token of one image, so an image's embedding does not depend on the other
images of its batch, unlike dynamic quantization (``quantize_dynamic``), whose per-tensor
activation scale spans the whole batch (``benchmarks/runtimes.py`` measures both).

Each export is cached beside the model (``<model folder>/.vitsearch-onnx/``), or in
``<cache_dir>/onnx/`` where the model's folder is read-only, under a name made of the weights'
sha256, the runtime, the pooling and the input size, with a ``.json`` record holding the sha256
of the ONNX file itself: a file that does not hash to its record (truncated, overwritten, half
written) or that ONNX Runtime cannot load is exported again. Files are written to a temporary name
and renamed (:func:`~.files.written`), so concurrent processes never see half a file.

Nothing here imports torch but the export: a cached file is run with ONNX Runtime alone.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import warnings
from pathlib import Path

import numpy as np

from .config import DEFAULT_CPU_RUNTIME, RUNTIMES
from .encoder_info import EncoderInfo
from .errors import UnsupportedRuntimeError
from .files import written
from .models import file_sha256
from .pooling import pooled_embedding

log = logging.getLogger(__name__)

#: ONNX opset of the export (ONNX Runtime >= 1.12 runs it; opset 17 has LayerNormalization).
OPSET = 17
#: Weights per quantization block (and scale) of the int8 runtime, along a matrix's input dimension.
INT8_BLOCK = 32
#: Version of the int8 recipe, part of the cached file's name: a cache of another recipe is not reused.
INT8_RECIPE = "nbits8b32"
_CACHE = ".vitsearch-onnx"


def default_runtime(device) -> str:
    """The runtime when none is asked: :data:`~.config.DEFAULT_CPU_RUNTIME` on a CPU, torch on
    CUDA and MPS (ONNX Runtime's CPU provider is all ``onnxruntime`` ships)."""
    return DEFAULT_CPU_RUNTIME if device.type == "cpu" else "torch"


def check_runtime(runtime: str, device) -> None:
    """Refuse a runtime this device cannot run.

    Raises:
        UnsupportedRuntimeError: an unknown runtime, or an ONNX one on another device than the CPU.
    """
    if runtime not in RUNTIMES:
        raise UnsupportedRuntimeError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime != "torch" and device.type != "cpu":
        raise UnsupportedRuntimeError(
            f"runtime {runtime} runs on the CPU (ONNX Runtime's CPU provider), not on {device}: "
            f"use --runtime torch there, or --device cpu"
        )


def _embedding(model, pooling: str, forward_kwargs: dict):
    """What is exported: a ``torch.nn.Module`` from pixel values to the pooled, L2-normalised
    last-layer token (:func:`~.pooling.pooled_embedding`, as the torch runtime computes it)."""
    import torch

    class Embedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.pooling, self.kwargs = model, pooling, forward_kwargs

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            tokens = self.model(pixel_values=pixel_values, **self.kwargs).last_hidden_state
            return pooled_embedding(
                tokens, self.pooling, patch_size=self.model.config.patch_size, image_size=pixel_values.shape[2:]
            )

    return Embedding()


class OnnxEmbedder:
    """An exported embedding run by ONNX Runtime on the CPU.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: torch's where torch is loaded, so a process limited
            to N threads for torch, such as a Ray actor, stays limited; else ONNX Runtime's own,
            one per physical core).

    Raises:
        onnxruntime's errors: the file is not a model ONNX Runtime can load.
    """

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        torch = sys.modules.get("torch")
        options.intra_op_num_threads = threads or (torch.get_num_threads() if torch is not None else 0)
        # Idle threads sleep instead of spinning: the decode workers and the writer share the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        """``(N, 3, H, W) float32`` pixel values to ``(N, D) float32`` L2-normalised embeddings."""
        return self.session.run(None, {self._input: np.ascontiguousarray(pixel_values, np.float32)})[0]


def cache_folder(model_folder: Path, cache_dir: Path) -> Path:
    """``<model_folder>/.vitsearch-onnx`` where the model's folder may be written, else
    ``<cache_dir>/onnx``. A folder without write permission bits counts as read-only also for
    root, whom ``os.access`` would let write there (a shared, read-only model folder stays as it is)."""
    if _writable(model_folder):
        beside = model_folder / _CACHE
        try:
            beside.mkdir(exist_ok=True)
            if _writable(beside):
                return beside
        except OSError:
            pass
    fallback = cache_dir / "onnx"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _writable(folder: Path) -> bool:
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(folder, os.W_OK | os.X_OK)


def cache_path(folder: Path, info: EncoderInfo, runtime: str) -> Path:
    """The cached file of ``runtime`` for ``info``'s weights, pooling and input size."""
    recipe = f"-{INT8_RECIPE}" if runtime == "onnx-int8" else ""
    return folder / f"{info.weights_sha256[:32]}-{runtime}{recipe}-{info.pooling}-{info.size_text}.onnx"


def onnx_embedder(model, info: EncoderInfo, forward_kwargs: dict, model_folder: Path, cache_dir: Path) -> OnnxEmbedder:
    """The ONNX Runtime embedder of ``info.runtime`` (``onnx`` or ``onnx-int8``) for ``model``,
    from the cache, exported (and quantized) first where the cache lacks it or does not verify.

    Args:
        model: the checkpoint's fp32 model on the CPU, in eval mode.
        info: the encoder's record (weights sha256, pooling, input size, runtime).
        forward_kwargs: its forward arguments at this input size
            (:func:`~.checkpoint.forward_kwargs`).
        model_folder, cache_dir: where the cache goes (:func:`cache_folder`).
    """
    folder = cache_folder(model_folder, cache_dir)
    path = cache_path(folder, info, info.runtime)
    embedder = _load_cached(path, info)
    if embedder is None:
        if info.runtime == "onnx":
            _export(model, info, forward_kwargs, path)
        else:
            fp32 = cache_path(folder, info, "onnx")
            if _load_cached(fp32, info) is None:
                _export(model, info, forward_kwargs, fp32)
            _quantize(fp32, path, info)
        embedder = OnnxEmbedder(path)
    return embedder


def cached_embedder(model_folder: Path, cache_dir: Path, info: EncoderInfo) -> OnnxEmbedder | None:
    """The ONNX Runtime embedder of ``info.runtime`` for ``info``'s weights, pooling and input
    size where the cache holds it and it verifies, else None (nothing is exported: that takes
    the model, :func:`onnx_embedder`)."""
    return _load_cached(cache_path(cache_folder(model_folder, cache_dir), info, info.runtime), info)


def _load_cached(path: Path, info: EncoderInfo) -> OnnxEmbedder | None:
    """The cached embedder at ``path``, or None (absent, not matching its record, not loadable)."""
    record = path.with_suffix(".json")
    try:
        meta = json.loads(record.read_text())
        if meta.get("sha256") != file_sha256(path) or meta.get("weights_sha256") != info.weights_sha256:
            log.warning("cached ONNX model %s does not match its record: exporting it again", path)
            return None
        return OnnxEmbedder(path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a corrupt record or a file ONNX Runtime refuses, in its many error types
        log.warning("cached ONNX model %s cannot be used (%s): exporting it again", path, exc)
        return None


def _export(model, info: EncoderInfo, forward_kwargs: dict, path: Path) -> None:
    import torch

    h, w = info.image_size
    wrapper = _embedding(model, info.pooling, forward_kwargs).eval()
    log.info("exporting %s to ONNX at %s (%dx%d, %s)", info.model, path, h, w, info.pooling)
    with written(path) as tmp, torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes and tracer warnings: nothing a user acts on
        torch.onnx.export(
            wrapper,
            (torch.zeros(2, 3, h, w),),
            str(tmp),
            input_names=["pixel_values"],
            output_names=["embedding"],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
        )
    _record(path, info, "onnx")


def _quantize(fp32: Path, path: Path, info: EncoderInfo) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    log.info("quantizing %s to int8 at %s", fp32, path)
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(fp32)), bits=8, block_size=INT8_BLOCK, is_symmetric=True, accuracy_level=4
    )
    level = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    previous, level.level = level.level, logging.WARNING  # it logs every node it visits at INFO
    try:
        quantizer.process()
    finally:
        level.setLevel(previous)
    with written(path) as tmp:
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
    _record(path, info, "onnx-int8")


def _record(path: Path, info: EncoderInfo, runtime: str) -> None:
    import onnxruntime
    import torch

    meta = {
        "sha256": file_sha256(path),
        "weights_sha256": info.weights_sha256,
        "runtime": runtime,
        "pooling": info.pooling,
        "image_size": info.size_text,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    with written(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
