"""The image encoder: a Vision Transformer's CLS token, L2-normalised.

One :class:`Encoder` object serves the indexer, :class:`~vitsearch.search.client.SearchClient`
and the UI, so index and query vectors are computed by the same code. The embedding is
``last_hidden_state[:, 0]``, the class token of the last layer (Dosovitskiy et al. 2020, "An Image
is Worth 16x16 Words"), never ``pooler_output``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .config import DEFAULT_BATCH_SIZE, DEFAULT_CPU_RUNTIME, Runtime, Settings
from .devices import DTYPES, batch_size_for, fit_batch, on_cpu, pick_device, pick_dtype
from .encoder_info import EncoderInfo
from .errors import EncoderMismatchError
from .images import ImageLike, Limits
from .models import resolve_model, weights_sha256
from .pooling import POOLINGS, check_pooling, pooled_embedding
from .preprocess import Preprocess, at_size, processor_settings
from .runtimes import OnnxEmbedder, cached_embedder, check_runtime, default_runtime, onnx_embedder

__all__ = [
    "Encoder",
    "EncoderInfo",
    "encoder_for",
    "check_image_size",
    "batch_size_for",
    "fit_batch",
    "pick_device",
    "pick_dtype",
    "POOLINGS",
]

log = logging.getLogger(__name__)


class Encoder:
    """A ViT-family checkpoint turning RGB images into ``(N, D) float32`` L2-normalised CLS embeddings.

    Build one with :meth:`load`. :attr:`preprocessor` (CPU, picklable, run in worker processes
    by the indexer) and :meth:`embed_pixels` (the model) can be called separately; :meth:`embed`
    does both.

    Attributes:
        info: the :class:`EncoderInfo` recorded in collections.
        processor: the checkpoint's ``AutoImageProcessor``.
        preprocessor: its settings applied with Pillow/NumPy (:class:`~.preprocess.Preprocess`).
        device, dtype: where and in which precision the model runs (fp32 on the CPU for the ONNX
            runtimes).
        runtime: ``info.runtime``: ``torch``, ``onnx`` or ``onnx-int8``.
        onnx: the ONNX Runtime embedder that :meth:`embed_pixels` runs for the ONNX runtimes
            (:mod:`~.runtimes`), else None.
        limits: what decoding one image may cost (:class:`~.images.Limits`, from the settings).
    """

    def __init__(
        self,
        model,
        processor,
        info: EncoderInfo,
        device,
        dtype,
        limits: Limits = Limits(),
        onnx: OnnxEmbedder | None = None,
    ):
        check_pooling(info.pooling)
        self.model = model
        self.processor = processor
        self.preprocessor = Preprocess.from_processor(processor)
        self.info = info
        self._device, self._dtype = device, dtype
        self.limits = limits
        self.onnx = onnx
        if model is None and onnx is None:
            raise ValueError("an encoder needs a model or an ONNX embedder")
        if model is not None:
            from .checkpoint import forward_kwargs

            self._forward_kwargs = forward_kwargs(model, info.image_size)

    @property
    def device(self):
        """The ``torch.device`` the model runs on (the CPU for an ONNX runtime)."""
        if isinstance(self._device, str):
            import torch

            self._device = torch.device(self._device)
        return self._device

    @property
    def dtype(self):
        """The ``torch.dtype`` the model runs in (float32 for an ONNX runtime)."""
        if isinstance(self._dtype, str):
            import torch

            self._dtype = getattr(torch, self._dtype)
        return self._dtype

    @property
    def runtime(self) -> str:
        """``torch``, ``onnx`` or ``onnx-int8``."""
        return self.info.runtime

    @classmethod
    def load(
        cls,
        model: str | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        pooling: str | None = None,
        image_size: int | None = None,
        compile: bool = False,
        runtime: str | None = None,
        settings: Settings | None = None,
        quick: bool = False,
    ) -> Encoder:
        """Load a checkpoint by hub id, local folder or pulled model name.

        Args:
            model: default ``VITSEARCH_MODEL``, else ``facebook/dinov2-small``.
            device: ``cuda``, ``mps``, ``cpu``...; default: auto (CUDA, MPS, CPU).
            dtype: ``bfloat16``/``float16``/``float32``; default bf16 on CUDA, fp32 elsewhere.
            pooling: ``cls`` (default, ``VITSEARCH_POOLING``) or ``mean`` (see :data:`POOLINGS`).
            image_size: model input N x N pixels (default ``VITSEARCH_IMAGE_SIZE``, else the
                checkpoint's own). The processor resizes and crops to N (:func:`~.preprocess.at_size`);
                the position embeddings are interpolated to the new patch grid (bicubic, as in
                the ViT paper's fine-tuning at higher resolution, Dosovitskiy et al. 2020, 3.2).
            compile: run the model through ``torch.compile`` (Inductor): a one-off compile cost of
                tens of seconds per batch shape, for faster forward passes on large runs (torch
                runtime only).
            runtime: ``torch``, ``onnx`` or ``onnx-int8`` (:mod:`~.runtimes`; default
                ``VITSEARCH_RUNTIME``, else :func:`~.runtimes.default_runtime` for the device). An
                ONNX runtime exports the model once and caches it (beside the model, or in
                ``settings.cache_dir``); it runs on the CPU in fp32, whatever ``dtype``.
            quick: for an ONNX runtime on the CPU, run the cached export where it exists
                (:meth:`exported`), without loading torch, transformers or the checkpoint: what a
                search does. Where it does not, the model is loaded and exported as without.

        Raises:
            ModelNotFoundError: the model cannot be found locally nor fetched.
            UnsupportedModelError: the checkpoint is not a ViT-family vision model (no
                ``pixel_values`` input, or no class token before the patch tokens).
            ValueError: an unknown pooling or dtype, or an image size the processor cannot take.
            UnsupportedRuntimeError: an unknown runtime, or an ONNX runtime off the CPU.
        """
        settings = settings or Settings()
        if (dtype or settings.dtype) and (dtype or settings.dtype) not in DTYPES:
            raise ValueError(f"unknown dtype {dtype or settings.dtype!r}; use one of float32, bfloat16, float16")
        if quick and not compile and not settings.compile and on_cpu(device or settings.device):
            ready = cls.exported(
                model or settings.model,
                runtime=runtime or settings.runtime or DEFAULT_CPU_RUNTIME,
                pooling=pooling or settings.pooling,
                image_size=image_size or settings.image_size,
                settings=settings,
            )
            if ready is not None:
                return ready
        import torch

        from .checkpoint import forward_kwargs, load_checkpoint

        checkpoint = load_checkpoint(model or settings.model, settings)
        processor = checkpoint.processor
        if image_size or settings.image_size:
            processor = at_size(processor, image_size or settings.image_size)
        dev = pick_device(device or settings.device)
        runtime = runtime or settings.runtime or default_runtime(dev)
        check_runtime(runtime, dev)
        dt = pick_dtype(dev, dtype or settings.dtype)  # an unknown name is refused whatever the runtime
        if runtime != "torch":
            dt = torch.float32
        net = checkpoint.model.to(dev, dt).eval()
        pixel = Preprocess.from_processor(processor).batch([Image.new("RGB", (64, 48))])
        info = EncoderInfo(
            model=checkpoint.name,
            weights_sha256=weights_sha256(checkpoint.folder),
            dim=int(net.config.hidden_size),
            pooling=pooling or settings.pooling,
            image_size=(pixel.shape[2], pixel.shape[3]),
            runtime=runtime,
        )
        check_pooling(info.pooling)
        onnx = None
        if runtime != "torch":
            onnx = onnx_embedder(net, info, forward_kwargs(net, info.image_size), checkpoint.folder, settings.cache_dir)
        elif compile or settings.compile:
            net = torch.compile(net, dynamic=False)
        log.info("loaded %s on %s (%s, %s), dim %d", checkpoint.name, dev, runtime, dt, info.dim)
        return cls(net, processor, info, dev, dt, Limits.from_settings(settings), onnx)

    @classmethod
    def exported(
        cls,
        model: str,
        *,
        runtime: str,
        pooling: str = "cls",
        image_size: int | None = None,
        settings: Settings | None = None,
    ) -> Encoder | None:
        """The encoder of an ONNX runtime from its cached export alone (made by an earlier
        :meth:`load`, such as the one `vitsearch index` runs), without torch, transformers or the
        checkpoint's model: preprocessing from the checkpoint's ``preprocessor_config.json`` and
        the dimension from its ``config.json``, both read as JSON, the weights' sha256 to find the
        export by, ONNX Runtime to run it.

        Args:
            model: hub id, local folder or pulled model name (:func:`~.models.resolve_model`).
            runtime: ``onnx`` or ``onnx-int8``.
            pooling, image_size: as in :meth:`load` (None: the checkpoint's input size).

        Returns:
            The encoder (:attr:`model` and :attr:`processor` None; :attr:`preprocessor` set), or
            None where this cannot be done without transformers: no verified export in the cache,
            a ``torch`` runtime, a processor setting left to its class's default or not
            implemented by :class:`~.preprocess.Preprocess`, a text + vision ``config.json``.

        Raises:
            ModelNotFoundError: the model cannot be found locally nor fetched, or has no weights.
            ValueError: an unknown pooling, or an image size the processor cannot take.
        """
        settings = settings or Settings()
        if runtime not in (Runtime.onnx, Runtime.onnx_int8):
            return None
        check_pooling(pooling)
        resolved = resolve_model(model, settings.models_dir)
        processor = processor_settings(resolved.folder)
        try:
            config = json.loads((resolved.folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if processor is None or not isinstance(config, dict) or not isinstance(config.get("hidden_size"), int):
            return None
        if image_size:
            processor = at_size(processor, image_size)
        preprocess = Preprocess.from_processor(processor)
        pixel = preprocess.array([Image.new("RGB", (64, 48))])
        info = EncoderInfo(
            model=resolved.name,
            weights_sha256=weights_sha256(resolved.folder),
            dim=config["hidden_size"],
            pooling=pooling,
            image_size=(pixel.shape[2], pixel.shape[3]),
            runtime=runtime,
        )
        onnx = cached_embedder(resolved.folder, settings.cache_dir, info)
        if onnx is None:
            return None
        log.info("loaded %s from its ONNX export %s (%s), dim %d", resolved.name, onnx.path, runtime, info.dim)
        return cls(None, processor, info, "cpu", "float32", Limits.from_settings(settings), onnx)

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return self.info.dim

    def preprocess(self, images: Sequence[Image.Image]):
        """RGB PIL images to model input, an ``(N, 3, H, W) float32`` ``torch.Tensor`` (resize,
        crop, normalise); :meth:`~.preprocess.Preprocess.array` of :attr:`preprocessor` gives
        it as a NumPy array, without torch."""
        return self.preprocessor.batch(images)

    def embed_pixels(self, pixel_values) -> np.ndarray:
        """Model input ``(N, 3, H, W)`` to embeddings ``(N, D) float32``, each row of L2 norm 1:
        the CLS token of the last layer, or the mean of its patch tokens (``info.pooling``),
        computed by :attr:`runtime` (the ONNX runtimes run the same graph, exported).

        ``pixel_values`` is a ``torch.Tensor`` or, for the ONNX runtimes, also a NumPy array.
        From pinned memory the copy to the GPU is asynchronous (``non_blocking``); the cast to
        the model's dtype happens on the device.
        """
        if self.onnx is not None:
            return self.onnx(np.asarray(pixel_values))
        import torch

        if isinstance(pixel_values, np.ndarray):
            pixel_values = torch.from_numpy(pixel_values)
        with torch.inference_mode():
            x = pixel_values.to(self.device, non_blocking=True).to(self.dtype)
            tokens = self.model(pixel_values=x, **self._forward_kwargs).last_hidden_state  # (N, prefix + patches, D)
            pooled = pooled_embedding(
                tokens, self.info.pooling, patch_size=self.model.config.patch_size, image_size=x.shape[2:]
            )
            return pooled.cpu().numpy()

    def embed(self, images: Sequence[ImageLike], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Images (paths, bytes, PIL, ``(H, W, 3) uint8`` arrays) to ``(N, D) float32`` embeddings.

        Always 2-D, also for one image.

        Raises:
            BadImageError: an input cannot be decoded.
        """
        out = [np.empty((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            batch = [self.preprocessor.load(im, self.limits) for im in images[start : start + batch_size]]
            out.append(
                self.embed_pixels(self.preprocessor.array(batch) if self.model is None else self.preprocess(batch))
            )
        return np.concatenate(out)


def encoder_for(
    recorded: EncoderInfo | None,
    settings: Settings,
    where: str = "the collection",
    *,
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    follow: Sequence[str] = ("model", "pooling", "image_size", "runtime"),
    queries: bool = False,
) -> Encoder:
    """The encoder to index or search a collection with: the model, pooling, input size and
    runtime asked for (``model``, else those of ``follow`` set in ``settings``:
    ``VITSEARCH_MODEL`` / ``VITSEARCH_POOLING`` / ``VITSEARCH_IMAGE_SIZE`` /
    ``VITSEARCH_RUNTIME`` or the flags that set them), else those the collection records
    (``recorded``; None for a new collection), else the defaults (the runtime:
    :func:`~.runtimes.default_runtime` for the device). The one rule for the indexer, eval and
    ``SearchClient``.

    Args:
        where: names the collection in errors.
        follow: the settings that may override the record: all four to index; a search takes
            the collection's model and pooling, only checks an input size it is given, and may
            embed its queries with another runtime.
        queries: the encoder only embeds queries (a search): a runtime other than the
            collection's is accepted (:meth:`EncoderInfo.check_same`), and an ONNX runtime's
            cached export is run without loading torch or transformers (``Encoder.load(quick=True)``).

    Raises:
        EncoderMismatchError: what was asked is not the collection's encoder (an input size is
            refused before any model is loaded).
        ModelNotFoundError: the model cannot be loaded (also
            :class:`~.errors.UnsupportedModelError`).
        UnsupportedRuntimeError: an ONNX runtime asked on another device than the CPU.
    """
    asked = settings.model_fields_set & set(follow)
    if recorded is not None and "image_size" in asked:
        check_image_size(recorded, settings.image_size, where)
    keep = recorded is not None
    name = model or (recorded.model if keep and "model" not in asked else settings.model)
    pooling = recorded.pooling if keep and "pooling" not in asked else settings.pooling
    size = recorded.square_size if keep and "image_size" not in asked else settings.image_size
    runtime = recorded.runtime if keep and "runtime" not in asked else settings.runtime
    if runtime != "torch" and "runtime" not in asked and not on_cpu(device or settings.device):
        runtime = None  # a collection indexed with ONNX on a CPU, searched on a GPU: its default there
    encoder = Encoder.load(
        name,
        device=device,
        dtype=dtype,
        pooling=pooling,
        image_size=size,
        runtime=runtime,
        settings=settings,
        quick=queries,
    )
    if recorded is not None:
        recorded.check_same(encoder.info, where, queries=queries)
    return encoder


def check_image_size(recorded: EncoderInfo, size: int | None, where: str = "the collection") -> None:
    """Refuse an input size ``size`` x ``size`` (None: none asked) that is not the collection's.

    Raises:
        EncoderMismatchError: naming ``where`` and both sizes.
    """
    if size and (size, size) != recorded.image_size:
        raise EncoderMismatchError(
            f"{where} was indexed at image size {recorded.size_text}, not {size}x{size}: "
            f"leave --image-size out to use the collection's"
        )
