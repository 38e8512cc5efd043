"""The image encoder: a Vision Transformer's CLS token, L2-normalised.

One :class:`Encoder` object serves the indexer, :class:`~vitsearch.search.client.SearchClient`
and the UI, so index and query vectors are computed by the same code. The embedding is
``last_hidden_state[:, 0]``, the class token of the last layer (Dosovitskiy et al. 2020, "An Image
is Worth 16x16 Words"), never ``pooler_output``.
"""
from __future__ import annotations

import inspect
import json
import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .config import Settings
from .errors import EncoderMismatchError, ModelNotFoundError, UnsupportedModelError
from .images import ImageLike, Limits
from .models import resolve_model, weights_sha256
from .preprocess import Preprocess, at_size

log = logging.getLogger(__name__)

#: Images per forward pass off CUDA. On a CPU throughput is flat in the batch size (measured:
#: dinov2-small-9l ~16-19 images/s on 2 cores from 8 to 64), so this only bounds memory.
DEFAULT_BATCH_SIZE = 32

#: Pooling of the last hidden state into one vector: the class token, as in the ViT paper
#: (Dosovitskiy et al. 2020), or the mean of the patch tokens (the "GAP" variant its ablations
#: compare; extra prefix tokens such as DeiT's distillation token are left out of the mean).
POOLINGS = ("cls", "mean")

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@dataclass(frozen=True)
class EncoderInfo:
    """What a collection records about the encoder that filled it.

    Attributes:
        model: hub id, pulled model name or absolute folder path the encoder was loaded from.
        weights_sha256: sha256 of the weights file(s); two encoders are the same model iff equal.
        dim: embedding dimension D.
        pooling: how the image vector is taken from the last layer's tokens: ``"cls"`` (the class
            token, the product's default) or ``"mean"`` (the mean of the patch tokens).
        image_size: model input ``"HxW"`` in pixels after preprocessing.
    """

    model: str
    weights_sha256: str
    dim: int
    pooling: str
    image_size: str

    @property
    def square_size(self) -> int | None:
        """N for an ``"NxN"`` input size (what ``--image-size N`` gives), else None."""
        h, w = self.image_size.split("x")
        return int(h) if h == w else None

    def to_json(self) -> str:
        """Serialise to a JSON object string."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EncoderInfo":
        """Parse what :meth:`to_json` wrote."""
        return cls(**json.loads(text))

    def check_same(self, other: "EncoderInfo", where: str) -> None:
        """Refuse to mix vectors: raise unless ``other`` computes the same embeddings.

        The ``model`` name may differ (a hub id and its local copy); weights, dimension, pooling
        and input size may not.

        Raises:
            EncoderMismatchError: naming ``where`` (the collection) and both encoders.
        """
        fields = ("weights_sha256", "dim", "pooling", "image_size")
        diffs = [f for f in fields if getattr(self, f) != getattr(other, f)]
        if diffs:
            raise EncoderMismatchError(
                f"{where} was indexed with model {self.model!r} "
                f"(dim {self.dim}, {self.pooling}, {self.image_size}, weights {self.weights_sha256[:12]}), "
                f"not with {other.model!r} (dim {other.dim}, {other.pooling}, {other.image_size}, "
                f"weights {other.weights_sha256[:12]}); differing: {', '.join(diffs)}. "
                f"Leave --model out to use the collection's own model, or index into another "
                f"collection (--collection NAME)."
            )


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA, then Apple MPS, then CPU."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """``dtype`` if given, else bfloat16 on CUDA and float32 elsewhere.

    Raises:
        ValueError: an unknown dtype name.
    """
    if dtype:
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
        return _DTYPES[dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class Encoder:
    """A ViT-family checkpoint turning RGB images into ``(N, D) float32`` L2-normalised CLS embeddings.

    Build one with :meth:`load`. :attr:`preprocessor` (CPU, picklable, run in worker processes
    by the indexer) and :meth:`embed_pixels` (the model) can be called separately; :meth:`embed`
    does both.

    Attributes:
        info: the :class:`EncoderInfo` recorded in collections.
        processor: the checkpoint's ``AutoImageProcessor``.
        preprocessor: its settings applied with Pillow/NumPy (:class:`~.preprocess.Preprocess`).
        device, dtype: where and in which precision the model runs.
        limits: what decoding one image may cost (:class:`~.images.Limits`, from the settings).
    """

    def __init__(self, model: torch.nn.Module, processor, info: EncoderInfo,
                 device: torch.device, dtype: torch.dtype, limits: Limits = Limits()):
        if info.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {info.pooling!r}; use one of {', '.join(POOLINGS)}")
        self.model = model
        self.processor = processor
        self.preprocessor = Preprocess.from_processor(processor)
        self.info = info
        self.device = device
        self.dtype = dtype
        self.limits = limits
        self._forward_kwargs = _interpolation(model, info.image_size)

    @classmethod
    def load(cls, model: str | None = None, *, device: str | None = None, dtype: str | None = None,
             pooling: str | None = None, image_size: int | None = None, compile: bool = False,
             settings: Settings | None = None) -> "Encoder":
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
                tens of seconds per batch shape, for faster forward passes on large runs.

        Raises:
            ModelNotFoundError: the model cannot be found locally nor fetched.
            UnsupportedModelError: the checkpoint is not a ViT-family vision model (no
                ``pixel_values`` input, or no class token before the patch tokens).
            ValueError: an unknown pooling or dtype, or an image size the processor cannot take.
        """
        import transformers
        from transformers import AutoImageProcessor, AutoModel

        settings = settings or Settings()
        resolved = resolve_model(model or settings.model, settings.models_dir)
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        dev = pick_device(device or settings.device)
        dt = pick_dtype(dev, dtype or settings.dtype)
        try:
            processor = AutoImageProcessor.from_pretrained(resolved.folder)
            try:
                net = AutoModel.from_pretrained(resolved.folder, attn_implementation="sdpa")
            except ValueError as exc:  # a model without SDPA attention (or without attention)
                if "attention implementation" not in str(exc):
                    raise
                net = AutoModel.from_pretrained(resolved.folder)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelNotFoundError(f"cannot load model {resolved.name!r} from {resolved.folder}: "
                                     f"{str(exc).splitlines()[0]}") from exc
        if image_size or settings.image_size:
            processor = at_size(processor, image_size or settings.image_size)
        # A CLIP checkpoint loads as text + vision model: keep the vision tower.
        net = getattr(net, "vision_model", net)
        net = net.to(dev, dt).eval()
        pixel = Preprocess.from_processor(processor).batch([Image.new("RGB", (64, 48))])
        _check_vision_transformer(net, pixel, resolved.name)
        info = EncoderInfo(
            model=resolved.name,
            weights_sha256=weights_sha256(resolved.folder),
            dim=int(net.config.hidden_size),
            pooling=pooling or settings.pooling,
            image_size=f"{pixel.shape[2]}x{pixel.shape[3]}",
        )
        if compile or settings.compile:
            net = torch.compile(net, dynamic=False)
        log.info("loaded %s on %s (%s), dim %d", resolved.name, dev, dt, info.dim)
        return cls(net, processor, info, dev, dt, Limits.from_settings(settings))

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return self.info.dim

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB PIL images to model input, ``(N, 3, H, W) float32`` (resize, crop, normalise)."""
        return self.preprocessor.batch(images)

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        """Model input ``(N, 3, H, W)`` to embeddings ``(N, D) float32``, each row of L2 norm 1:
        the CLS token of the last layer, or the mean of its patch tokens (``info.pooling``).

        From pinned memory the copy to the GPU is asynchronous (``non_blocking``); the cast to
        the model's dtype happens on the device.
        """
        x = pixel_values.to(self.device, non_blocking=True).to(self.dtype)
        tokens = self.model(pixel_values=x, **self._forward_kwargs).last_hidden_state  # (N, prefix + patches, D)
        if self.info.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            patch = self.model.config.patch_size
            patches = (x.shape[2] // patch) * (x.shape[3] // patch)
            pooled = tokens[:, tokens.shape[1] - patches:].mean(dim=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()

    def embed(self, images: Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
        """Images (paths, bytes, PIL, ``(H, W, 3) uint8`` arrays) to ``(N, D) float32`` embeddings.

        Always 2-D, also for one image.

        Raises:
            BadImageError: an input cannot be decoded.
        """
        out = [np.empty((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            batch = [self.preprocessor.load(im, self.limits) for im in images[start:start + batch_size]]
            out.append(self.embed_pixels(self.preprocess(batch)))
        return np.concatenate(out)


def _check_vision_transformer(net: torch.nn.Module, pixel: torch.Tensor, name: str) -> None:
    """Refuse a checkpoint whose last hidden state does not start with a class token: one that
    takes no ``pixel_values`` (a text model), or whose output is not ``(N, prefix + patches, D)``
    with a prefix of at least one token (a CNN, Swin), found by one forward pass.

    Raises:
        UnsupportedModelError: naming the model, its class and why.
    """
    kind = type(net).__name__

    def refuse(why: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"model {name!r} is a {kind}, not a ViT-family vision model: {why}. Use a ViT, DeiT, DINO, "
            f"DINOv2 or CLIP vision checkpoint (the embedding is the class token of the last layer)")

    if "pixel_values" not in inspect.signature(net.forward).parameters:
        raise refuse("it takes no pixel_values")
    patch = getattr(net.config, "patch_size", None)
    patch = tuple(patch) if isinstance(patch, (list, tuple)) else (patch, patch)
    try:
        with torch.inference_mode():
            first = next(net.parameters(), torch.empty(0))
            out = net(pixel_values=pixel.to(first.device, first.dtype), **_interpolation(
                net, f"{pixel.shape[2]}x{pixel.shape[3]}"))
        tokens = getattr(out, "last_hidden_state", None)
    except Exception as exc:  # any model's own error on image input: it is not one of ours
        raise refuse(f"a forward pass on an image failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if tokens is None or tokens.ndim != 3 or None in patch:
        raise refuse("its output is not a sequence of tokens")
    patches = (pixel.shape[2] // patch[0]) * (pixel.shape[3] // patch[1])
    if not 1 <= tokens.shape[1] - patches <= 16:
        raise refuse(f"its {tokens.shape[1]} output tokens are not a class token and {patches} patch tokens")



def _interpolation(model: torch.nn.Module, image_size: str) -> dict:
    """Forward arguments for input of ``image_size`` ("HxW"): ``interpolate_pos_encoding=True``
    where the input differs from the size the position embeddings were trained at and the model
    takes that argument (ViT, DeiT, CLIP); DINOv2 interpolates by itself."""
    base = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    trained = getattr(base.config, "image_size", None)
    if trained is None:
        return {}
    trained = tuple(trained) if isinstance(trained, (list, tuple)) else (trained, trained)
    size = tuple(int(v) for v in image_size.split("x"))
    if size == trained or "interpolate_pos_encoding" not in inspect.signature(base.forward).parameters:
        return {}
    return {"interpolate_pos_encoding": True}


def batch_size_for(encoder: Encoder, fraction: float = 0.5, lo: int = 32, hi: int = 1024) -> int:
    """A batch size for ``encoder``'s device: :data:`DEFAULT_BATCH_SIZE` off CUDA; on CUDA the
    largest power of two whose activations fit in ``fraction`` of the card's free memory, as
    measured by a probe forward pass of 8 images (``torch.cuda.max_memory_allocated``)."""
    if encoder.device.type != "cuda":
        return DEFAULT_BATCH_SIZE
    probe = 8
    h, w = (int(v) for v in encoder.info.image_size.split("x"))
    torch.cuda.synchronize(encoder.device)
    torch.cuda.reset_peak_memory_stats(encoder.device)
    base = torch.cuda.memory_allocated(encoder.device)
    encoder.embed_pixels(torch.zeros(probe, 3, h, w))
    per_image = max(1, (torch.cuda.max_memory_allocated(encoder.device) - base) // probe)
    free, _ = torch.cuda.mem_get_info(encoder.device)
    size = fit_batch(int(free * fraction), per_image, lo, hi)
    log.info("batch size %d: %.1f MB per image, %.1f GB free", size, per_image / 2**20, free / 2**30)
    return size


def fit_batch(budget_bytes: int, per_image_bytes: int, lo: int = 32, hi: int = 1024) -> int:
    """The largest power of two ``n`` with ``n * per_image_bytes <= budget_bytes``, clamped to
    ``[lo, hi]``."""
    n = lo
    while n * 2 <= hi and n * 2 * per_image_bytes <= budget_bytes:
        n *= 2
    return n
