"""What a collection records about the encoder that filled it (:class:`EncoderInfo`): read by the
store and the client without loading torch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .errors import EncoderMismatchError


@dataclass(frozen=True)
class EncoderInfo:
    """What a collection records about the encoder that filled it.

    Attributes:
        model: hub id, pulled model name or absolute folder path the encoder was loaded from.
        weights_sha256: sha256 of the weights file(s); two encoders are the same model iff equal.
        dim: embedding dimension D.
        pooling: how the image vector is taken from the last layer's tokens: ``"cls"`` (the class
            token, the product's default) or ``"mean"`` (the mean of the patch tokens).
        image_size: model input ``(height, width)`` in pixels after preprocessing; given as such
            or as the ``"HxW"`` text the collection records, parsed once here.
        runtime: what computed the vectors: ``torch``, ``onnx`` or ``onnx-int8``
            (:data:`~.config.RUNTIMES`); a record written before runtimes existed reads as torch.
    """

    model: str
    weights_sha256: str
    dim: int
    pooling: str
    image_size: tuple[int, int]
    runtime: str = "torch"

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, str):
            size = size.split("x")
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))

    @property
    def square_size(self) -> int | None:
        """N for an N x N input size (what ``--image-size N`` gives), else None."""
        h, w = self.image_size
        return h if h == w else None

    @property
    def size_text(self) -> str:
        """The input size as recorded and shown: ``"HxW"``, e.g. ``"224x224"``."""
        return f"{self.image_size[0]}x{self.image_size[1]}"

    def facts(self) -> dict:
        """``stats``'s facts of the encoder: ``model``, ``dim``, ``pooling``, ``image_size``
        (``"HxW"``) and ``runtime``."""
        return {
            "model": self.model,
            "dim": self.dim,
            "pooling": self.pooling,
            "image_size": self.size_text,
            "runtime": self.runtime,
        }

    def to_json(self) -> str:
        """Serialise to a JSON object string (the image size as ``"HxW"``)."""
        return json.dumps({**asdict(self), "image_size": self.size_text}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EncoderInfo:
        """Parse what :meth:`to_json` wrote."""
        return cls(**json.loads(text))

    def check_same(self, other: EncoderInfo, where: str, *, queries: bool = False) -> None:
        """Refuse to mix vectors: raise unless ``other`` computes the same embeddings.

        The ``model`` name may differ (a hub id and its local copy); weights, dimension, pooling,
        input size and runtime may not, except that an encoder that only embeds queries
        (``queries``) may use another runtime than the collection's (its vectors are within
        cosine 0.995 of each other and are never stored).

        Raises:
            EncoderMismatchError: naming ``where`` (the collection) and both encoders.
        """
        fields = ("weights_sha256", "dim", "pooling", "image_size") + (() if queries else ("runtime",))
        diffs = [f for f in fields if getattr(self, f) != getattr(other, f)]
        if diffs:
            raise EncoderMismatchError(
                f"{where} was indexed with model {self.model!r} "
                f"(dim {self.dim}, {self.pooling}, {self.size_text}, runtime {self.runtime}, "
                f"weights {self.weights_sha256[:12]}), not with {other.model!r} (dim {other.dim}, "
                f"{other.pooling}, {other.size_text}, runtime {other.runtime}, weights {other.weights_sha256[:12]}); "
                f"differing: {', '.join(diffs)}. Leave --model and --runtime out to use the collection's own "
                f"encoder, or index into another collection (--collection NAME)."
            )
