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
``vitsearch eval`` (mAP, recall@1, recall@10; :func:`~.evaluate.ranking_figures`): every
validation image queries the other validation images by exact cosine search, and the images of
its class are relevant. Their embeddings are computed by :class:`~.encoder.Encoder`, as indexing
computes them. With ``from_model`` an epoch-0 report gives the pretrained encoder's own figures.

What is saved is the backbone alone, as a plain ``transformers`` folder (``config.json``,
``model.safetensors``, ``preprocessor_config.json``), which ``AutoModel.from_pretrained`` and
``vitsearch index --model FOLDER`` load like any checkpoint, plus ``training.json`` (what was done).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .config import Settings
from .encoder import Encoder, EncoderInfo, pick_device
from .errors import BadImageError, BadQueryError, ModelNotFoundError
from .evaluate import class_folders, exact_ranking, ranking_figures
from .images import Limits, decode_bytes, read_file
from .models import resolve_model
from .preprocess import Preprocess

log = logging.getLogger(__name__)

OBJECTIVES = ("normalized-softmax", "softmax")
#: Logit scale of the cosine head: 1 / temperature 0.05 (Zhai & Wu 2019).
COSINE_SCALE = 20.0
#: Default peak learning rates of AdamW: from scratch, and fine-tuning a pretrained encoder.
LR_SCRATCH, LR_FINETUNE = 1e-3, 1e-4
#: Images a class needs: with a validation split, 2 to validate (one query, one relevant) and 1
#: to train; without one, 1.
MIN_VAL_PER_CLASS = 2


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
        return (f"{name}  loss {f(self.train_loss)}  val acc {f(self.val_accuracy)}  mAP {f(self.map)}  "
                f"R@1 {f(self.recall_at_1)}  R@10 {f(self.recall_at_10)}  P@1 {f(self.precision_at_1)}  "
                f"{self.seconds:.1f} s")


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

    @property
    def final(self) -> EpochReport:
        """The last epoch's report: the saved weights'."""
        return self.epochs[-1]


@dataclass(frozen=True)
class Augment:
    """Training augmentation on an upright RGB image: Inception-style random resized crop then a
    horizontal flip with probability 1/2, as ``torchvision.transforms.RandomResizedCrop`` and
    ``RandomHorizontalFlip`` do (same sampling: 10 tries of a random area fraction in ``scale`` and
    a log-uniform aspect ratio in ``ratio``, else a centre crop). Written with Pillow because the
    PyPI torchvision wheel does not load beside the CPU build of torch. Random numbers come from
    torch's generator, which ``Trainer`` seeds and DataLoader workers re-seed each.

    Attributes:
        size_hw: output ``(height, width)`` in pixels: the model input size.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).
        hflip: whether to flip.
        resample: Pillow resample filter (the checkpoint's).
    """

    size_hw: tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    resample: int = Image.Resampling.BILINEAR

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A random ``(left, top, right, bottom)`` crop box in an image of that size, in pixels."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(*self.scale)
            aspect = math.exp(_uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                return left, top, left + w, top + h
        aspect = width / height  # fallback: the largest centre crop within the ratio range
        if aspect < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif aspect > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, image: Image.Image) -> Image.Image:
        """A ``size_hw`` crop of ``image``, maybe flipped."""
        out = image.resize((self.size_hw[1], self.size_hw[0]), resample=self.resample,
                           box=self.crop_box(*image.size))
        if self.hflip and float(torch.rand(())) < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return out


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


class ImageFolderSet(torch.utils.data.Dataset):
    """``{"pixel_values": (3, H, W) float32, "labels": int64 scalar}`` items from image files, for
    ``Trainer``: decoded (:func:`~.images.decode_bytes`), augmented (training) or not
    (validation: the checkpoint's own resize and crop), then rescaled and normalised by the
    checkpoint's :class:`~.preprocess.Preprocess` (for a processor it does not implement, the
    processor itself is called on the crop, which then resizes it its own way)."""

    def __init__(self, items: Sequence[tuple[str, int]], preprocess: Preprocess,
                 augment: Augment | None, limits: Limits):
        self.items = list(items)
        self.augment = augment
        self.limits = limits
        if augment is None:
            self.preprocess = preprocess
        else:  # the crop is already the input size: keep only rescale and normalise
            self.preprocess = dataclasses.replace(preprocess, short_edge=None, size_hw=augment.size_hw,
                                                  crop_hw=None)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path, label = self.items[i]
        image = decode_bytes(read_file(path, self.limits), path, limits=self.limits)
        if self.augment is not None:
            image = self.augment(image)
        return {"pixel_values": torch.from_numpy(self.preprocess(image)),
                "labels": torch.tensor(label, dtype=torch.long)}


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
        cls = self.backbone(pixel_values=pixel_values).last_hidden_state[:, 0]
        if self.cosine:
            logits = COSINE_SCALE * torch.nn.functional.linear(
                torch.nn.functional.normalize(cls, dim=-1), torch.nn.functional.normalize(self.head.weight, dim=-1))
        else:
            logits = self.head(cls)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits.float(), labels)
        return out


def split_classes(data_dir: str | os.PathLike, val_split: float, seed: int,
                  check: Callable[[str], str | None] | None = None
                  ) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, str]]]:
    """Class folders to a stratified, seeded train/validation split.

    Classes are the subfolders of ``data_dir`` holding image files (searched recursively, as
    ``vitsearch eval`` does), sorted by name; label i is the i-th. Of a class of n usable images,
    ``min(n - 1, max(2, round(val_split * n)))`` go to validation (none when ``val_split`` is 0),
    drawn by a generator seeded with ``seed``.

    Args:
        check: ``check(path)`` returns a reason when a file cannot be used (it is then left out
            and listed in the failures), else None.

    Returns:
        ``(classes, train, val, failures)``: ``train``/``val`` are ``(path, label)`` lists,
        ``failures`` ``(path, reason)``.

    Raises:
        BadQueryError: ``data_dir`` is not a folder, has fewer than 2 class folders with images,
            or a class has too few images to split (the message names the class folder).
    """
    root = Path(data_dir).absolute()
    if not root.is_dir():
        raise BadQueryError(f"{root} is not a folder: expected one subfolder of images per class")
    found = class_folders(root)
    if len(found) < 2:
        raise BadQueryError(f"{root}: expected one subfolder of images per class, at least 2 classes "
                            f"(found {len(found)} class folders with images)")
    failures: list[tuple[str, str]] = []
    usable = {}
    for c, files in found.items():
        usable[c] = []
        for p in files:
            reason = check(p) if check else None
            if reason is None:
                usable[c].append(p)
            else:
                failures.append((p, reason))
    need = MIN_VAL_PER_CLASS + 1 if val_split > 0 else 1
    for c, files in usable.items():
        if len(files) < need:
            raise BadQueryError(f"class folder {c} has {len(files)} usable images; at least {need} are needed "
                                f"({MIN_VAL_PER_CLASS} to validate and 1 to train)" if val_split > 0 else
                                f"class folder {c} has no usable images")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, files in enumerate(usable.values()):
        order = rng.permutation(len(files))
        n_val = 0 if val_split == 0 else min(len(files) - 1, max(MIN_VAL_PER_CLASS, round(val_split * len(files))))
        val += [(files[i], label) for i in sorted(order[:n_val])]
        train += [(files[i], label) for i in sorted(order[n_val:])]
    return [c.name for c in usable], train, val, failures


def retrieval_figures(encoder: Encoder, items: Sequence[tuple[str, int]], batch_size: int = 32) -> dict[str, float]:
    """mAP, recall@1, recall@10 and precision@1 of ``items`` (``(path, label)``) querying each other.

    Each image is embedded with ``encoder.embed`` (as indexing embeds it), queries all the others
    by exact cosine search (itself left out) and has the other images of its label as relevant
    set; the figures are :func:`~.evaluate.ranking_figures`'.

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
    rankings = {p: exact_ranking(vectors, paths, vectors[i], leave_out=p) for i, p in enumerate(paths)}
    relevant = {p: by_label[label] - {p} for p, label in items}
    figures = ranking_figures(rankings, relevant, (1, 10))
    return {"map": figures.map, "recall_at_1": figures.recall[1], "recall_at_10": figures.recall[10],
            "precision_at_1": figures.precision[1]}


def train(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, from_model: str | None = None,
          scratch: ScratchConfig | None = None, epochs: int = 10, batch_size: int = 32,
          lr: float | None = None, val_split: float = 0.2, objective: str = "normalized-softmax",
          label_smoothing: float = 0.1, weight_decay: float = 0.05, warmup_ratio: float = 0.1,
          augment_scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True, seed: int = 0,
          device: str | None = None, workers: int | None = None, overwrite: bool = False,
          on_epoch: Callable[[EpochReport], None] | None = None,
          on_failure: Callable[[str, str], None] | None = None,
          settings: Settings | None = None) -> TrainResult:
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
        overwrite: replace an ``out_dir`` that holds a model (``config.json``); a folder that is
            not empty is otherwise refused, and one without ``config.json`` always is.
        on_epoch: called with each :class:`EpochReport` as soon as it is known.

    Raises:
        BadQueryError: both or neither of ``from_model`` and ``scratch``, a bad option value, a
            non-empty ``out_dir`` without ``overwrite``, or a dataset that cannot be split (see
            :func:`split_classes`).
        ModelNotFoundError: ``from_model`` cannot be found or loaded.
    """
    import transformers
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
        raise BadQueryError(f"--val-split, label smoothing and warm-up ratio must be in [0, 1), got "
                            f"{val_split}, {label_smoothing} and {warmup_ratio}")
    if objective not in OBJECTIVES:
        raise BadQueryError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if lr is not None and lr <= 0:
        raise BadQueryError(f"--lr must be positive, got {lr}")
    out = Path(out_dir).expanduser().absolute()
    _check_out(out, overwrite)

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.set_seed(seed)
    backbone, processor, source, folder = _load_backbone(from_model, scratch, settings)
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
    info = EncoderInfo(model=str(out), weights_sha256="(training)", dim=int(backbone.config.hidden_size),
                       pooling="cls", image_size=f"{input_hw[0]}x{input_hw[1]}")

    def encoder() -> Encoder:  # the backbone as indexing runs it (no dropout, fp32 weights)
        param = next(backbone.parameters())
        return Encoder(backbone.eval(), processor, info, param.device, param.dtype)

    if from_model is not None and model.cosine:
        model.imprint(encoder().embed([p for p, _ in train_items], batch_size),
                      np.array([label for _, label in train_items]))
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
            output_dir=scratch_dir, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size, learning_rate=lr or (LR_SCRATCH if scratch else LR_FINETUNE),
            weight_decay=weight_decay, lr_scheduler_type="cosine", warmup_steps=warmup_ratio,
            label_smoothing_factor=label_smoothing, max_grad_norm=1.0,
            eval_strategy="epoch" if val_set is not None else "no", logging_strategy="epoch",
            save_strategy="no", report_to=[], disable_tqdm=True, seed=seed, data_seed=seed,
            use_cpu=dev.type == "cpu", bf16=cuda and torch.cuda.is_bf16_supported(),
            dataloader_num_workers=workers, dataloader_persistent_workers=workers > 0,
            dataloader_pin_memory=cuda, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                          compute_metrics=_accuracy, callbacks=[Reporter()])
        for quiet in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(quiet)
        trainer.train()

    _save(backbone, processor, out, overwrite, {
        "source": source, "scratch": asdict(scratch) if scratch else None, "classes": classes,
        "train_images": len(train_items), "val_images": len(val_items), "failed": len(failures),
        "epochs": epochs, "batch_size": batch_size, "lr": args.learning_rate, "val_split": val_split,
        "objective": objective, "label_smoothing": label_smoothing, "weight_decay": weight_decay,
        "warmup_ratio": warmup_ratio, "augment_scale": list(augment_scale), "hflip": hflip,
        "seed": seed, "device": dev.type, "saved": "last epoch", "reports": [asdict(r) for r in reports],
    })
    return TrainResult(out_dir=out, classes=classes, train_images=len(train_items), val_images=len(val_items),
                       epochs=reports, failures=failures, device=dev.type, seconds=time.perf_counter() - started)


def _accuracy(prediction) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def _load_backbone(from_model: str | None, scratch: ScratchConfig | None, settings: Settings):
    """``(backbone, image processor, source name, source folder or None)``: a pretrained
    checkpoint or a new ViT.

    Raises:
        ModelNotFoundError: ``from_model`` cannot be found or loaded.
    """
    from transformers import (AutoImageProcessor, AutoModel, PreTrainedModel, ViTConfig, ViTImageProcessor,
                              ViTModel)

    if scratch is not None:
        config = ViTConfig(image_size=scratch.image_size, patch_size=scratch.patch_size, hidden_size=scratch.dim,
                           num_hidden_layers=scratch.depth, num_attention_heads=scratch.heads,
                           intermediate_size=scratch.mlp_dim)
        processor = ViTImageProcessor(size={"height": scratch.image_size, "width": scratch.image_size})
        return ViTModel(config, add_pooling_layer=False), processor, "scratch", None
    resolved = resolve_model(from_model, settings.models_dir)
    try:
        processor = AutoImageProcessor.from_pretrained(resolved.folder)
        net = AutoModel.from_pretrained(resolved.folder, attn_implementation="sdpa")
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"cannot load model {resolved.name!r} from {resolved.folder}: {exc}") from exc
    vision_config = getattr(net.config, "vision_config", None)
    if vision_config is not None and hasattr(net, "vision_model"):
        # A text + vision checkpoint (CLIP, SigLIP): train and save its vision model alone, a
        # model of its own (CLIPVisionModel...) that AutoModel loads back and Encoder.load uses.
        # transformers 5 holds one already; 4.x holds a bare tower to copy into one.
        tower = net.vision_model
        if isinstance(tower, PreTrainedModel):
            net = tower
        else:
            net = AutoModel.from_config(vision_config, attn_implementation="sdpa")
            getattr(net, "vision_model", net).load_state_dict(tower.state_dict())
    return net.float(), processor, resolved.name, resolved.folder


def _check_out(out: Path, overwrite: bool) -> None:
    """Raises: BadQueryError: ``out`` exists and is neither an empty folder nor (with
    ``overwrite``) a model folder."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir() or not (out / "config.json").is_file():
        raise BadQueryError(f"{out} exists and is not an empty folder nor a model folder: choose another --out")
    if not overwrite:
        raise BadQueryError(f"{out} exists and is not an empty folder: choose another --out or overwrite it")


def _save(backbone, processor, out: Path, overwrite: bool, record: dict) -> None:
    """Write the backbone (safetensors), its processor and ``training.json`` to ``out``, atomically.

    Raises:
        BadQueryError: ``out`` was filled meanwhile (see :func:`_check_out`).
    """
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        backbone.to("cpu").save_pretrained(tmp)  # model.safetensors
        processor.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=2))
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
