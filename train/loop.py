"""Training an encoder on labelled class folders, so that its CLS token retrieves by class.

``DATA_DIR`` holds one subfolder per class (the ``classes`` layout of ``vitsearch eval``). A
classifier is put on the class token of the last layer, ``last_hidden_state[:, 0]``, the very
vector the product indexes, and the backbone is trained through it with cross-entropy (label
smoothing, Szegedy et al. 2016), either with a plain linear head (``objective="softmax"``) or with
a cosine head, whose logits are ``scale * cos(embedding, class weight)`` (``"normalized-softmax"``,
the default: Wang et al. 2017 "NormFace"; Zhai & Wu 2019 "Classification is a Strong Baseline for
Deep Metric Learning"): it trains the angles that cosine search ranks by.

The recipe is the one Vision Transformers need on small data (Touvron et al. 2021, DeiT; Steiner
et al. 2021, "How to train your ViT? Data, Augmentation, and Regularization in Vision
Transformers"): random resized crop and horizontal flip (:class:`Augment`), AdamW with weight
decay, linear warm-up then cosine decay of the learning rate, gradient norm clipped at 1.
The loop is ``transformers.Trainer`` (with ``accelerate``); on CUDA it trains in bfloat16 autocast.

Validation images (a seeded, stratified ``val_split`` of every class) are never trained on. After
every epoch they give the validation accuracy of the head and the retrieval figures of
``vitsearch eval`` (mAP, recall@1, recall@10; :func:`~vitsearch.search.metrics.ranking_figures`): every
validation image queries the other validation images by exact cosine search, and the images of
its class are relevant. Their embeddings are computed by :class:`~vitsearch.search.encoder.Encoder`, as indexing
computes them. With ``from_model`` an epoch-0 report gives the pretrained encoder's own figures.

What is saved is the backbone alone, as a plain ``transformers`` folder (``config.json``,
``model.safetensors``, ``preprocessor_config.json``), which ``AutoModel.from_pretrained`` and
``vitsearch index --model FOLDER`` load like any checkpoint, plus ``training.json`` (what was done).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitsearch.search.config import DEFAULT_BATCH_SIZE, Settings
from vitsearch.search.encoder import Encoder, pick_device
from vitsearch.search.encoder_info import EncoderInfo
from vitsearch.search.errors import BadImageError, BadQueryError
from vitsearch.search.images import Limits, read_file
from vitsearch.search.metrics import exact_rankings, ranking_figures
from vitsearch.search.preprocess import Preprocess

from .config import DEFAULTS, LR_FINETUNE, LR_SCRATCH, OBJECTIVES, ScratchConfig
from .data import Augment, ImageFolderSet, split_classes
from .model import ClassifierOnCLS, load_backbone
from .save import check_out, resolve_out, save

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


def train(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    from_model: str | None = None,
    scratch: ScratchConfig | None = None,
    epochs: int = DEFAULTS.epochs,
    batch_size: int = DEFAULTS.batch_size,
    lr: float | None = None,
    val_split: float = DEFAULTS.val_split,
    objective: str = DEFAULTS.objective,
    label_smoothing: float = DEFAULTS.label_smoothing,
    weight_decay: float = DEFAULTS.weight_decay,
    warmup_ratio: float = DEFAULTS.warmup_ratio,
    augment_scale: tuple[float, float] = DEFAULTS.augment_scale,
    hflip: bool = DEFAULTS.hflip,
    seed: int = DEFAULTS.seed,
    device: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    settings: Settings | None = None,
) -> TrainResult:
    """Train an encoder on the class folders of ``data_dir`` and save it to ``out_dir``.

    Exactly one of ``from_model`` (fine-tune a checkpoint: hub id, folder or pulled model, found
    as ``--model`` finds it; for a CLIP-style checkpoint the vision tower) and ``scratch`` (a
    randomly initialised ``ViTModel`` of that shape, with a ``ViTImageProcessor`` resizing to
    ``image_size`` and normalising with mean = std = 0.5) is given.

    The weights of the **last** epoch are saved (the cosine schedule has brought the learning
    rate to 0 by then), written atomically: a temporary sibling folder renamed to ``out_dir``.
    Each file is decoded once before training; one that cannot be read or decoded is reported to
    ``on_failure(path, reason)``, listed in the result and left out.

    Args:
        epochs: passes over the training images.
        batch_size: images per optimisation step (and per validation forward pass).
        lr: peak learning rate of AdamW; default :data:`LR_SCRATCH` or :data:`LR_FINETUNE`.
        val_split: fraction of each class held out for validation, in [0, 1); 0: no validation
            (the reports then carry only the training loss).
        objective: ``"normalized-softmax"`` (cosine head) or ``"softmax"`` (linear head).
        label_smoothing: epsilon of the smoothed cross-entropy, in [0, 1).
        weight_decay: AdamW's decoupled weight decay (biases and norms excluded by ``Trainer``).
        warmup_ratio: fraction of the steps of linear warm-up before the cosine decay.
        augment_scale: area range of the random resized crop (:class:`Augment`).
        hflip: flip training images horizontally at random.
        seed: seeds the split, the initialisation, the augmentation and the batch order.
        device: ``cuda``, ``mps`` or ``cpu``; default ``VITSEARCH_DEVICE``, else CUDA, MPS, CPU.
        workers: DataLoader worker processes decoding images; default ``VITSEARCH_WORKERS``.
        overwrite: replace an ``out_dir`` that holds a model vitsearch wrote and nothing else
            (:func:`~.save.check_out`); a folder that is not empty is otherwise refused, and one
            holding anything else always is. A link is resolved: its target is written.
        on_epoch: called with each :class:`EpochReport` as soon as it is known.

    Raises:
        BadQueryError: both or neither of ``from_model`` and ``scratch``, a bad option value, a
            non-empty ``out_dir`` without ``overwrite``, or a dataset that cannot be split (see
            :func:`split_classes`).
        ModelNotFoundError: ``from_model`` cannot be found or loaded.
    """
    import transformers
    from PIL import Image
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    started = time.perf_counter()
    settings = settings or Settings()
    if (from_model is None) == (scratch is None):
        raise BadQueryError("give exactly one of --from MODEL (fine-tune a checkpoint) and --scratch (a new ViT)")
    if scratch is not None:
        scratch.check()
    if epochs < 1 or batch_size < 1:
        raise BadQueryError(f"--epochs and --batch-size must be positive, got {epochs} and {batch_size}")
    if not 0 <= val_split < 1 or not 0 <= label_smoothing < 1 or not 0 <= warmup_ratio < 1:
        raise BadQueryError(
            f"--val-split, label smoothing and warm-up ratio must be in [0, 1), got "
            f"{val_split}, {label_smoothing} and {warmup_ratio}"
        )
    if objective not in OBJECTIVES:
        raise BadQueryError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if lr is not None and lr <= 0:
        raise BadQueryError(f"--lr must be positive, got {lr}")
    out = resolve_out(Path(out_dir))  # a link to a folder is written through
    check_out(out, overwrite)

    transformers.set_seed(seed)
    backbone, processor, source, folder = load_backbone(from_model, scratch, settings)
    if folder is not None and folder.resolve() == out.resolve():
        raise BadQueryError(f"--out {out} is the folder of --from: write the trained model elsewhere")
    preprocess = Preprocess.from_processor(processor)
    input_hw = tuple(preprocess.batch([Image.new("RGB", (64, 48))]).shape[2:])
    limits = Limits.from_settings(settings)

    def check(path: str) -> str | None:
        try:  # JPEGs at reduced scale: only whether it decodes matters here
            preprocess.decode(read_file(path, limits), path, limits)
        except BadImageError as exc:
            log.warning("skipped %s: %s", path, exc.reason)
            if on_failure:
                on_failure(path, exc.reason)
            return exc.reason
        return None

    classes, train_items, val_items, failures = split_classes(data_dir, val_split, seed, check)
    model = ClassifierOnCLS(backbone, len(classes), objective)
    dev = pick_device(device or settings.device)
    model.to(dev)
    info = EncoderInfo(
        model=str(out),
        weights_sha256="(training)",
        dim=int(backbone.config.hidden_size),
        pooling="cls",
        image_size=input_hw,
    )

    def encoder() -> Encoder:  # the backbone as indexing runs it (no dropout, fp32 weights)
        param = next(backbone.parameters())
        return Encoder(backbone.eval(), processor, info, param.device, param.dtype, limits)

    if from_model is not None and model.cosine:
        model.imprint(
            encoder().embed([p for p, _ in train_items], batch_size), np.array([label for _, label in train_items])
        )
    workers = settings.workers if workers is None else workers
    augment = Augment(input_hw, scale=augment_scale, hflip=hflip, resample=preprocess.resample)
    train_set = ImageFolderSet(train_items, preprocess, augment, limits)
    val_set = ImageFolderSet(val_items, preprocess, None, limits) if val_items else None
    reports: list[EpochReport] = []

    def report(epoch: int, loss: float | None, accuracy: float | None, since: float) -> None:
        figures: dict[str, Any] = dict.fromkeys(("map", "recall_at_1", "recall_at_10", "precision_at_1"))
        if val_items:
            was_training = backbone.training
            figures = retrieval_figures(encoder(), val_items, batch_size)
            backbone.train(was_training)
        rep = EpochReport(epoch, loss, accuracy, seconds=time.perf_counter() - since, **figures)
        reports.append(rep)
        log.info("%s", rep.line(epochs))
        if on_epoch:
            on_epoch(rep)

    if from_model is not None:  # epoch 0: the pretrained encoder's own figures
        report(0, None, None, time.perf_counter())

    class Reporter(TrainerCallback):
        """Turns Trainer's per-epoch log and evaluation into :class:`EpochReport` s."""

        def __init__(self):
            self.since, self.loss = time.perf_counter(), None

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.since = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # the epoch's mean training loss
                self.loss = float(logs["loss"])
                if val_set is None:
                    report(round(state.epoch), self.loss, None, self.since)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            report(round(state.epoch), self.loss, float(metrics["eval_accuracy"]), self.since)

    cuda = dev.type == "cuda"
    if cuda and dev.index is not None:
        torch.cuda.set_device(dev)  # Trainer (accelerate) trains on the current CUDA device
    with tempfile.TemporaryDirectory(prefix="vitsearch-train-") as scratch_dir:
        args = TrainingArguments(
            output_dir=scratch_dir,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size,
            learning_rate=lr or (LR_SCRATCH if scratch else LR_FINETUNE),
            weight_decay=weight_decay,
            lr_scheduler_type="cosine",
            warmup_steps=warmup_ratio,
            label_smoothing_factor=label_smoothing,
            max_grad_norm=1.0,
            eval_strategy="epoch" if val_set is not None else "no",
            logging_strategy="epoch",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=seed,
            data_seed=seed,
            use_cpu=dev.type == "cpu",
            bf16=cuda and torch.cuda.is_bf16_supported(),
            dataloader_num_workers=workers,
            dataloader_persistent_workers=workers > 0,
            dataloader_pin_memory=cuda,
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=val_set,
            compute_metrics=_accuracy,
            callbacks=[Reporter()],
        )
        for quiet in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(quiet)
        trainer.train()

    save(
        backbone,
        processor,
        out,
        overwrite,
        {
            "source": source,
            "scratch": asdict(scratch) if scratch else None,
            "classes": classes,
            "train_images": len(train_items),
            "val_images": len(val_items),
            "failed": len(failures),
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": args.learning_rate,
            "val_split": val_split,
            "objective": objective,
            "label_smoothing": label_smoothing,
            "weight_decay": weight_decay,
            "warmup_ratio": warmup_ratio,
            "augment_scale": list(augment_scale),
            "hflip": hflip,
            "seed": seed,
            "device": dev.type,
            "saved": "last epoch",
            "reports": [asdict(r) for r in reports],
        },
    )
    return TrainResult(
        out_dir=out,
        classes=classes,
        train_images=len(train_items),
        val_images=len(val_items),
        epochs=reports,
        failures=failures,
        device=dev.type,
        seconds=time.perf_counter() - started,
    )


def _accuracy(prediction) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}
