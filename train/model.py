"""The network trained: a classification head on the class token of a backbone
(:class:`ClassifierOnCLS`), the backbone a checkpoint (:func:`~vitsearch.search.checkpoint.load_checkpoint`)
or a new ViT (:func:`load_backbone`)."""

from __future__ import annotations

import numpy as np
import torch

from vitsearch.search.checkpoint import load_checkpoint
from vitsearch.search.config import Settings
from vitsearch.search.pooling import Pooling, pooled_embedding

from .config import ScratchConfig

#: Logit scale of the cosine head: 1 / temperature 0.05 (Zhai & Wu 2019).
COSINE_SCALE = 20.0


class ClassifierOnCLS(torch.nn.Module):
    """A backbone and a classification head on its class token, for ``Trainer``.

    ``forward(pixel_values (N, 3, H, W), labels (N,) int64 | None)`` returns ``{"logits": (N, C)}``
    and, with labels, ``"loss"`` (plain cross-entropy; ``Trainer`` applies label smoothing itself).
    """

    def __init__(self, backbone: torch.nn.Module, classes: int, objective: str):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config  # Trainer reads model.config
        self.cosine = objective == "normalized-softmax"
        self.head = torch.nn.Linear(int(backbone.config.hidden_size), classes, bias=not self.cosine)

    @torch.no_grad()
    def imprint(self, embeddings: np.ndarray, labels: np.ndarray) -> None:
        """Set each class weight of the cosine head to the normalised mean of the class's
        embeddings (``(N, D) float32``, L2-normalised; ``labels (N,)`` int): "imprinted weights"
        (Qi, Brown & Lowe 2018). Fine-tuning then starts from the nearest-class-mean classifier
        of the pretrained features instead of a random head, whose first gradients would distort
        them (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features")."""
        means = np.stack([embeddings[labels == c].mean(axis=0) for c in range(self.head.out_features)])
        self.head.weight.copy_(torch.nn.functional.normalize(torch.from_numpy(means), dim=-1))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        tokens = self.backbone(pixel_values=pixel_values).last_hidden_state
        # the class token as indexing pools it, L2-normalised for the cosine head (in the dtype of autocast)
        cls = pooled_embedding(tokens, Pooling.cls, normalize=self.cosine, float32=False)
        if self.cosine:
            logits = COSINE_SCALE * torch.nn.functional.linear(
                cls, torch.nn.functional.normalize(self.head.weight, dim=-1)
            )
        else:
            logits = self.head(cls)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits.float(), labels)
        return out


def load_backbone(from_model: str | None, scratch: ScratchConfig | None, settings: Settings):
    """``(backbone, image processor, source name, source folder or None)``: a pretrained
    checkpoint (:func:`~vitsearch.search.checkpoint.load_checkpoint`, the vision model alone for
    CLIP) or a new ViT of ``scratch``'s shape.

    Raises:
        ModelNotFoundError: ``from_model`` cannot be found or loaded (also UnsupportedModelError).
    """
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    if scratch is not None:
        config = ViTConfig(
            image_size=scratch.image_size,
            patch_size=scratch.patch_size,
            hidden_size=scratch.dim,
            num_hidden_layers=scratch.depth,
            num_attention_heads=scratch.heads,
            intermediate_size=scratch.mlp_dim,
        )
        processor = ViTImageProcessor(size={"height": scratch.image_size, "width": scratch.image_size})
        return ViTModel(config, add_pooling_layer=False), processor, "scratch", None
    checkpoint = load_checkpoint(from_model, settings)
    return checkpoint.model, checkpoint.processor, checkpoint.name, checkpoint.folder
