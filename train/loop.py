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
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitsearch.search.config import Settings
from vitsearch.search.encoder import pick_device
from vitsearch.search.errors import BadImageError, BadQueryError
from vitsearch.search.images import Limits, read_file
from vitsearch.search.preprocess import Preprocess

from .config import DEFAULTS, LR_FINETUNE, LR_SCRATCH, OBJECTIVES, ScratchConfig
from .data import Augment, ImageFolderSet, split_classes
from .model import ClassifierOnCLS, load_backbone
from .report import EpochReport, EpochReporter, TrainResult
from .report import retrieval_figures as retrieval_figures  # re-exported: it lived here
from .save import check_out, resolve_out, save

log = logging.getLogger(__name__)


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

    started = time.perf_counter()
    settings = settings or Settings()
    _check_options(from_model, scratch, epochs, batch_size, lr, val_split, objective, label_smoothing, warmup_ratio)
    out = resolve_out(Path(out_dir))  # a link to a folder is written through
    check_out(out, overwrite)

    transformers.set_seed(seed)
    backbone, processor, source, folder = load_backbone(from_model, scratch, settings)
    if folder is not None and folder.resolve() == out.resolve():
        raise BadQueryError(f"--out {out} is the folder of --from: write the trained model elsewhere")
    preprocess = Preprocess.from_processor(processor)
    input_hw = tuple(preprocess.batch([Image.new("RGB", (64, 48))]).shape[2:])
    limits = Limits.from_settings(settings)
    checked = _decodable(preprocess, limits, on_failure)
    classes, train_items, val_items, failures = split_classes(data_dir, val_split, seed, checked)
    model = ClassifierOnCLS(backbone, len(classes), objective)
    dev = pick_device(device or settings.device)
    model.to(dev)
    reporter = EpochReporter(backbone, processor, str(out), input_hw, limits, val_items, batch_size, epochs, on_epoch)
    if from_model is not None and model.cosine:
        vectors = reporter.encoder().embed([p for p, _ in train_items], batch_size)
        model.imprint(vectors, np.array([label for _, label in train_items]))
    augment = Augment(input_hw, scale=augment_scale, hflip=hflip, resample=preprocess.resample)
    train_set = ImageFolderSet(train_items, preprocess, augment, limits)
    val_set = ImageFolderSet(val_items, preprocess, None, limits) if val_items else None
    if from_model is not None:  # epoch 0: the pretrained encoder's own figures
        reporter.report(0, None, None, time.perf_counter())
    options = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr or (LR_SCRATCH if scratch else LR_FINETUNE),
        "val_split": val_split,
        "objective": objective,
        "label_smoothing": label_smoothing,
        "weight_decay": weight_decay,
        "warmup_ratio": warmup_ratio,
        "augment_scale": list(augment_scale),
        "hflip": hflip,
        "seed": seed,
    }
    workers = settings.workers if workers is None else workers
    options["lr"] = _fit(model, dev, train_set, val_set, reporter.callback(), options, workers)
    record = _record(source, scratch, classes, train_items, val_items, failures, options, dev.type, reporter.reports)
    save(backbone, processor, out, overwrite, record)
    return TrainResult(
        out_dir=out,
        classes=classes,
        train_images=len(train_items),
        val_images=len(val_items),
        epochs=reporter.reports,
        failures=failures,
        device=dev.type,
        seconds=time.perf_counter() - started,
    )


def _record(source, scratch, classes, train_items, val_items, failures, options, device, reports) -> dict[str, Any]:
    """What ``training.json`` holds besides the list of files (:func:`~.save.save`)."""
    return {
        "source": source,
        "scratch": asdict(scratch) if scratch else None,
        "classes": classes,
        "train_images": len(train_items),
        "val_images": len(val_items),
        "failed": len(failures),
        **options,  # epochs, batch_size, lr (the peak), val_split, objective, ... seed
        "device": device,
        "saved": "last epoch",
        "reports": [asdict(r) for r in reports],
    }


def _check_options(
    from_model: str | None,
    scratch: ScratchConfig | None,
    epochs: int,
    batch_size: int,
    lr: float | None,
    val_split: float,
    objective: str,
    label_smoothing: float,
    warmup_ratio: float,
) -> None:
    """Raises: BadQueryError: both or neither of ``from_model`` and ``scratch``, or a bad value."""
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


def _decodable(
    preprocess: Preprocess, limits: Limits, on_failure: Callable[[str, str], None] | None
) -> Callable[[str], str | None]:
    """The check :func:`~.data.split_classes` runs on each file: None where it decodes, else the
    reason, logged and handed to ``on_failure(path, reason)``."""

    def check(path: str) -> str | None:
        try:  # JPEGs at reduced scale: only whether it decodes matters here
            preprocess.decode(read_file(path, limits), path, limits)
        except BadImageError as exc:
            log.warning("skipped %s: %s", path, exc.reason)
            if on_failure:
                on_failure(path, exc.reason)
            return exc.reason
        return None

    return check


def _fit(model, dev, train_set, val_set, callback, options: dict[str, Any], workers: int) -> float:
    """Train ``model`` on ``dev`` with ``transformers.Trainer`` (AdamW, warm-up then cosine decay,
    gradients clipped at 1, bf16 autocast on CUDA), evaluating on ``val_set`` after every epoch
    when there is one; its checkpoints go to a temporary folder, removed after. ``options``: the
    record's ``epochs``, ``batch_size``, ``lr`` (peak), ``weight_decay``, ``warmup_ratio``,
    ``label_smoothing`` and ``seed``. Returns the peak learning rate Trainer ran with."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    cuda = dev.type == "cuda"
    if cuda and dev.index is not None:
        torch.cuda.set_device(dev)  # Trainer (accelerate) trains on the current CUDA device
    with tempfile.TemporaryDirectory(prefix="vitsearch-train-") as scratch_dir:
        args = TrainingArguments(
            output_dir=scratch_dir,
            num_train_epochs=options["epochs"],
            per_device_train_batch_size=options["batch_size"],
            per_device_eval_batch_size=options["batch_size"],
            learning_rate=options["lr"],
            weight_decay=options["weight_decay"],
            lr_scheduler_type="cosine",
            warmup_steps=options["warmup_ratio"],
            label_smoothing_factor=options["label_smoothing"],
            max_grad_norm=1.0,
            eval_strategy="epoch" if val_set is not None else "no",
            logging_strategy="epoch",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=options["seed"],
            data_seed=options["seed"],
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
            callbacks=[callback],
        )
        for quiet in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(quiet)
        trainer.train()
    return args.learning_rate


def _accuracy(prediction) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}
