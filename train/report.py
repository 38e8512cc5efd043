"""What a training run reports: one :class:`EpochReport` per epoch (validation accuracy and the
retrieval figures of ``vitsearch eval`` over the validation images, embedded as indexing embeds
them), the :class:`TrainResult`, and :class:`EpochReporter`, which computes the reports during
``transformers.Trainer``'s loop (:func:`~vitsearch.train.loop.train`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitsearch.search.config import DEFAULT_BATCH_SIZE
from vitsearch.search.encoder import Encoder
from vitsearch.search.encoder_info import EncoderInfo
from vitsearch.search.images import Limits
from vitsearch.search.metrics import exact_rankings, ranking_figures

log = logging.getLogger(__name__)


@dataclass
class EpochReport:
    """Figures after one epoch; epoch 0 is the pretrained encoder before training (``from_model``).

    Attributes:
        epoch: 1-based epoch number, 0 before training.
        train_loss: mean training loss (cross-entropy with label smoothing) over the epoch's
            batches; None at epoch 0.
        val_accuracy: top-1 accuracy of the head on the validation images, in [0, 1]; None at
            epoch 0 (the head is untrained) and without a validation split.
        map, recall_at_1, recall_at_10, precision_at_1: retrieval figures over the validation
            images, in [0, 1], as ``vitsearch eval`` defines them (recall@k is the share of a
            query's relevant images in its top k, so recall@1 is at most 1 / their number;
            precision@1 is the share of queries whose first hit is of their class); None without
            a validation split.
        seconds: wall time of the epoch, validation included.
    """

    epoch: int
    train_loss: float | None
    val_accuracy: float | None
    map: float | None
    recall_at_1: float | None
    recall_at_10: float | None
    precision_at_1: float | None
    seconds: float

    def line(self, epochs: int | None = None) -> str:
        """One line for a terminal, e.g.
        ``epoch  3/10  loss 0.812  val acc 0.874  mAP 0.652  R@1 0.031  R@10 0.287  P@1 0.903  12.3 s``."""
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        of = f"/{epochs}" if epochs else ""
        name = f"epoch {self.epoch:>2}{of}" + ("  (pretrained)" if self.epoch == 0 else "")
        return (
            f"{name}  loss {f(self.train_loss)}  val acc {f(self.val_accuracy)}  mAP {f(self.map)}  "
            f"R@1 {f(self.recall_at_1)}  R@10 {f(self.recall_at_10)}  P@1 {f(self.precision_at_1)}  "
            f"{self.seconds:.1f} s"
        )


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        out_dir: the saved model folder (absolute).
        classes: class names (subfolder names), in label order.
        train_images, val_images: images in each split (failed files excluded).
        epochs: one report per epoch, with epoch 0 first when fine-tuning.
        failures: ``(path, reason)`` of files that could not be read or decoded (skipped).
        device: where the model was trained (``cpu``, ``cuda``, ``mps``).
        seconds: wall time of the run, model loading included.
    """

    out_dir: Path
    classes: list[str]
    train_images: int
    val_images: int
    epochs: list[EpochReport]
    failures: list[tuple[str, str]] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0


def retrieval_figures(
    encoder: Encoder, items: Sequence[tuple[str, int]], batch_size: int = DEFAULT_BATCH_SIZE
) -> dict[str, float]:
    """mAP, recall@1, recall@10 and precision@1 of ``items`` (``(path, label)``) querying each other.

    Each image is embedded with ``encoder.embed`` (as indexing embeds it), queries all the others
    by exact cosine search (itself left out) and has the other images of its label as relevant
    set; the figures are :func:`~vitsearch.search.metrics.ranking_figures`'.

    Returns:
        ``{"map", "recall_at_1", "recall_at_10", "precision_at_1"}``, each in [0, 1].

    Raises:
        BadImageError: a file cannot be decoded.
    """
    paths = [p for p, _ in items]
    vectors = encoder.embed(paths, batch_size=batch_size)  # (N, D) float32, L2-normalised
    by_label: dict[int, set[str]] = {}
    for p, label in items:
        by_label.setdefault(label, set()).add(p)
    rankings = dict(zip(paths, exact_rankings(vectors, paths, vectors, leave_out=paths)))
    relevant = {p: by_label[label] - {p} for p, label in items}
    figures = ranking_figures(rankings, relevant, (1, 10))
    return {
        "map": figures.map,
        "recall_at_1": figures.recall[1],
        "recall_at_10": figures.recall[10],
        "precision_at_1": figures.precision[1],
    }


class EpochReporter:
    """The :class:`EpochReport` s of one run, each computed at the end of its epoch and handed to
    ``on_epoch``: the validation images (``val_items``, ``(path, label)``) are embedded by the
    backbone as indexing runs it (:meth:`encoder`: the CLS token at ``image_size``, an
    :class:`~vitsearch.search.encoder_info.EncoderInfo` of model ``name``) and query each other
    (:func:`retrieval_figures`).

    Attributes:
        reports: the reports so far, in order.
    """

    def __init__(
        self,
        backbone,
        processor,
        name: str,
        image_size: tuple[int, int],
        limits: Limits,
        val_items: Sequence[tuple[str, int]],
        batch_size: int,
        epochs: int,
        on_epoch: Callable[[EpochReport], None] | None = None,
    ):
        self.backbone, self.processor, self.limits = backbone, processor, limits
        dim = int(backbone.config.hidden_size)
        self.info = EncoderInfo(model=name, weights_sha256="(training)", dim=dim, pooling="cls", image_size=image_size)
        self.val_items, self.batch_size, self.epochs, self.on_epoch = val_items, batch_size, epochs, on_epoch
        self.reports: list[EpochReport] = []

    def encoder(self) -> Encoder:
        """The backbone as indexing runs it (no dropout, fp32 weights), on its device."""
        param = next(self.backbone.parameters())
        return Encoder(self.backbone.eval(), self.processor, self.info, param.device, param.dtype, self.limits)

    def report(self, epoch: int, loss: float | None, accuracy: float | None, since: float) -> None:
        """Report ``epoch`` (0: before training), begun at ``since`` (``time.perf_counter``), with
        its mean training loss and validation accuracy, and the retrieval figures now."""
        figures: dict[str, Any] = dict.fromkeys(("map", "recall_at_1", "recall_at_10", "precision_at_1"))
        if self.val_items:
            was_training = self.backbone.training
            figures = retrieval_figures(self.encoder(), self.val_items, self.batch_size)
            self.backbone.train(was_training)
        rep = EpochReport(epoch, loss, accuracy, seconds=time.perf_counter() - since, **figures)
        self.reports.append(rep)
        log.info("%s", rep.line(self.epochs))
        if self.on_epoch:
            self.on_epoch(rep)

    def callback(self):
        """A ``transformers.TrainerCallback`` turning Trainer's per-epoch log and evaluation into
        reports (from the log alone without validation images)."""
        from transformers import TrainerCallback

        reporter = self

        class Reporter(TrainerCallback):
            """Turns Trainer's per-epoch log and evaluation into :class:`EpochReport` s."""

            def __init__(self):
                self.since, self.loss = time.perf_counter(), None

            def on_epoch_begin(self, args, state, control, **kwargs):
                self.since = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:  # the epoch's mean training loss
                    self.loss = float(logs["loss"])
                    if not reporter.val_items:
                        reporter.report(round(state.epoch), self.loss, None, self.since)

            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                reporter.report(round(state.epoch), self.loss, float(metrics["eval_accuracy"]), self.since)

        return Reporter()
