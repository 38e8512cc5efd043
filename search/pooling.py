"""Pooling of a Vision Transformer's last layer into one embedding, and its L2 normalisation: the
one function that the torch runtime (:class:`~vitsearch.search.encoder.Encoder`), the ONNX export
(:mod:`~vitsearch.search.runtimes`) and training (:mod:`vitsearch.train.model`) run, so that an
index, its queries and the classifier trained on the vector all see the same one.

Nothing here imports torch at import time (the CLI's ``--help`` reads :class:`Pooling`).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

__all__ = ["Pooling", "POOLINGS", "check_pooling", "pooled_embedding"]


class Pooling(StrEnum):
    """How the last hidden state becomes one vector: the class token, as in the ViT paper
    (Dosovitskiy et al. 2020), or the mean of the patch tokens (the "GAP" variant its ablations
    compare; extra prefix tokens such as DeiT's distillation token or DINOv2's registers are left
    out of the mean). The values are ``--pooling``'s and ``VITSEARCH_POOLING``'s."""

    cls = "cls"
    mean = "mean"


#: The values of :class:`Pooling`, as plain strings.
POOLINGS: tuple[str, ...] = tuple(p.value for p in Pooling)


def check_pooling(pooling: str) -> None:
    """Raises: ValueError: ``pooling`` is none of :data:`POOLINGS` (the message lists them)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")


def pooled_embedding(
    last_hidden_state,
    pooling: str = Pooling.cls,
    *,
    patch_size: int | None = None,
    image_size: Sequence[int] | None = None,
    normalize: bool = True,
    float32: bool = True,
):
    """The embedding of each image from its last layer's tokens.

    Args:
        last_hidden_state: ``(N, T, D)`` tensor of any float dtype, ``T`` = prefix tokens (the
            class token first, then any distillation or register tokens) + patch tokens.
        pooling: ``cls`` (``last_hidden_state[:, 0]``) or ``mean`` (the mean of the last
            ``patches`` tokens, the patch tokens): see :class:`Pooling`.
        patch_size, image_size: the model's patch side and the input's ``(H, W)`` in pixels,
            which give the number of patch tokens, ``(H // patch_size) * (W // patch_size)``;
            needed for ``mean`` only.
        normalize: divide each row by its L2 norm (``torch.nn.functional.normalize``, eps 1e-12).
        float32: cast to float32 before normalising (inference: the vectors stored and compared);
            False keeps the tokens' dtype (training under autocast).

    Returns:
        ``(N, D)`` tensor on the tokens' device: float32 (or the tokens' dtype with
        ``float32=False``), each row of L2 norm 1 with ``normalize``.

    Raises:
        ValueError: an unknown pooling, or ``mean`` without ``patch_size`` and ``image_size``.
    """
    import torch

    check_pooling(pooling)
    if pooling == Pooling.cls:
        pooled = last_hidden_state[:, 0]
    elif patch_size is None or image_size is None:
        raise ValueError("mean pooling needs the patch size and the input size")
    else:
        patches = (image_size[0] // patch_size) * (image_size[1] // patch_size)
        pooled = last_hidden_state[:, last_hidden_state.shape[1] - patches :].mean(dim=1)
    if float32:
        pooled = pooled.float()
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled
