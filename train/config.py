"""What a training run is given: the shape of a ViT trained from scratch (:class:`ScratchConfig`)
and the defaults of every training option (:data:`DEFAULTS`), the one place they are written
(``vitsearch train`` shows and uses them). No torch here, so ``--help`` answers at once."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vitsearch.search.errors import BadQueryError

OBJECTIVES = ("normalized-softmax", "softmax")
#: Default peak learning rates of AdamW: from scratch, and fine-tuning a pretrained encoder.
LR_SCRATCH, LR_FINETUNE = 1e-3, 1e-4


@dataclass(frozen=True)
class ScratchConfig:
    """Shape of a Vision Transformer trained from random initialisation (``transformers.ViTModel``).

    Attributes:
        image_size: input side in pixels (square); images are resized to it.
        patch_size: patch side in pixels; must divide ``image_size``.
        dim: hidden size, the embedding dimension D; a multiple of ``heads``.
        depth: number of transformer blocks.
        heads: attention heads per block.
        mlp_dim: hidden units of each block's MLP (4 x dim in the ViT paper).
    """

    image_size: int = 224
    patch_size: int = 16
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_dim: int = 768

    def check(self) -> None:
        """Raises: BadQueryError: a non-positive size, or sizes that do not divide."""
        if min(asdict(self).values()) < 1:
            raise BadQueryError(f"every ViT size must be a positive integer, got {asdict(self)}")
        if self.image_size % self.patch_size:
            raise BadQueryError(f"--patch-size {self.patch_size} must divide --image-size {self.image_size}")
        if self.dim % self.heads:
            raise BadQueryError(f"--dim {self.dim} must be a multiple of --heads {self.heads}")


@dataclass(frozen=True)
class TrainDefaults:
    """The default of each option of :func:`~vitsearch.train.train` (see it for their meaning)."""

    epochs: int = 10
    batch_size: int = 32
    val_split: float = 0.2
    objective: str = "normalized-softmax"
    label_smoothing: float = 0.1
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1
    augment_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    seed: int = 0


DEFAULTS = TrainDefaults()
