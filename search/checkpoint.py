"""Loading a checkpoint: the one place that turns a model name into a vision backbone and its
image processor, for the encoder (:meth:`~.encoder.Encoder.load`) and for training.

A name is found as :func:`~.models.resolve_model` finds it (a folder, a pulled model, a hub id).
A text + vision checkpoint (CLIP) gives its vision model alone. A checkpoint that is not a
ViT-family vision model (a text model, a CNN, Swin: no class token before the patch tokens) is
refused here, before anything is indexed or trained with it.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .config import Settings
from .errors import ModelNotFoundError, UnsupportedModelError
from .models import resolve_model
from .preprocess import Preprocess


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        name: what a collection records: the hub id, the pulled model's name or the folder.
        folder: the local folder of its files.
        model: the vision backbone, a ``transformers.PreTrainedModel`` in fp32, in eval mode
            (``AutoModel.from_pretrained`` loads it back from what ``save_pretrained`` writes).
        processor: its ``AutoImageProcessor``.
    """

    name: str
    folder: Path
    model: torch.nn.Module
    processor: Any


def load_checkpoint(model: str, settings: Settings | None = None) -> Checkpoint:
    """Load a ViT-family checkpoint by hub id, local folder or pulled model name.

    SDPA attention where the model has it; for a CLIP-style checkpoint its vision model alone
    (transformers 5 holds one; 4.x a bare tower, copied into one).

    Raises:
        ModelNotFoundError: the model cannot be found locally nor fetched, or not loaded.
        UnsupportedModelError: it is not a ViT-family vision model (see :func:`check_vision_transformer`).
    """
    from transformers import AutoImageProcessor, AutoModel, PreTrainedModel

    settings = settings or Settings()
    resolved = resolve_model(model, settings.models_dir)
    with _quiet_transformers():
        return _load(resolved, AutoImageProcessor, AutoModel, PreTrainedModel)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers without its progress bars (``Loading weights``) and advice (a processor's
    backend, an unused weight), for the time of a load: the library's own errors say what
    matters. Its settings are put back after, so a caller's own choices stand."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(resolved, AutoImageProcessor, AutoModel, PreTrainedModel) -> Checkpoint:
    """:func:`load_checkpoint`'s work once the folder is found (transformers' classes passed in)."""
    try:
        processor = AutoImageProcessor.from_pretrained(resolved.folder)
        try:
            net = AutoModel.from_pretrained(resolved.folder, attn_implementation="sdpa")
        except ValueError as exc:  # a model without SDPA attention (or without attention)
            if "attention implementation" not in str(exc):
                raise
            net = AutoModel.from_pretrained(resolved.folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(
            f"cannot load model {resolved.name!r} from {resolved.folder}: {str(exc).splitlines()[0]}"
        ) from exc
    vision_config = getattr(net.config, "vision_config", None)
    if vision_config is not None and hasattr(net, "vision_model"):
        tower = net.vision_model
        if isinstance(tower, PreTrainedModel):
            net = tower
        else:
            net = AutoModel.from_config(vision_config, attn_implementation="sdpa")
            getattr(net, "vision_model", net).load_state_dict(tower.state_dict())
    net = net.float().eval()
    check_vision_transformer(net, processor, resolved.name)
    return Checkpoint(resolved.name, resolved.folder, net, processor)


def check_vision_transformer(net: torch.nn.Module, processor: Any, name: str) -> None:
    """Refuse a model whose last hidden state does not start with a class token: one that takes
    no ``pixel_values`` (a text model), or whose output is not ``(N, prefix + patches, D)`` with a
    prefix of 1 to 16 tokens (CLS, distillation, registers), found by one forward pass of one
    image at the processor's input size.

    Raises:
        UnsupportedModelError: naming the model, its class and why.
    """
    kind = type(net).__name__

    def refuse(why: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"model {name!r} is a {kind}, not a ViT-family vision model: {why}. Use a ViT, DeiT, DINO, "
            f"DINOv2 or CLIP vision checkpoint (the embedding is the class token of the last layer)"
        )

    if "pixel_values" not in inspect.signature(net.forward).parameters:
        raise refuse("it takes no pixel_values")
    patch = getattr(net.config, "patch_size", None)
    patch = tuple(patch) if isinstance(patch, (list, tuple)) else (patch, patch)
    pixel = Preprocess.from_processor(processor).batch([Image.new("RGB", (64, 48))])
    try:
        with torch.inference_mode():
            first = next(net.parameters(), torch.empty(0))
            out = net(
                pixel_values=pixel.to(first.device, first.dtype),
                **forward_kwargs(net, (pixel.shape[2], pixel.shape[3])),
            )
        tokens = getattr(out, "last_hidden_state", None)
    except Exception as exc:  # any model's own error on image input: it is not one of ours
        raise refuse(f"a forward pass on an image failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if tokens is None or tokens.ndim != 3 or None in patch:
        raise refuse("its output is not a sequence of tokens")
    patches = (pixel.shape[2] // patch[0]) * (pixel.shape[3] // patch[1])
    if not 1 <= tokens.shape[1] - patches <= 16:
        raise refuse(f"its {tokens.shape[1]} output tokens are not a class token and {patches} patch tokens")


def forward_kwargs(model: torch.nn.Module, image_hw: tuple[int, int]) -> dict:
    """Forward arguments for input of ``image_hw`` pixels: ``interpolate_pos_encoding=True``
    where it differs from the size the position embeddings were trained at and the model takes
    that argument (ViT, DeiT, CLIP); DINOv2 interpolates by itself."""
    base = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    trained = getattr(base.config, "image_size", None)
    if trained is None:
        return {}
    trained = tuple(trained) if isinstance(trained, (list, tuple)) else (trained, trained)
    if tuple(image_hw) == trained or "interpolate_pos_encoding" not in inspect.signature(base.forward).parameters:
        return {}
    return {"interpolate_pos_encoding": True}
