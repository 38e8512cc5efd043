"""Training data: class folders split into seeded, stratified train and validation sets
(:func:`split_classes`), random resized crops and flips (:class:`Augment`), and the dataset that
decodes, augments and preprocesses images for ``Trainer`` (:class:`ImageFolderSet`)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitsearch.search.errors import BadQueryError
from vitsearch.search.images import Limits, read_file
from vitsearch.search.metrics import class_folders
from vitsearch.search.preprocess import Preprocess

#: Images a class needs: with a validation split, 2 to validate (one query, one relevant) and 1
#: to train; without one, 1.
MIN_VAL_PER_CLASS = 2


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
        out = image.resize((self.size_hw[1], self.size_hw[0]), resample=self.resample, box=self.crop_box(*image.size))
        if self.hflip and float(torch.rand(())) < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return out


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


class ImageFolderSet(torch.utils.data.Dataset):
    """``{"pixel_values": (3, H, W) float32, "labels": int64 scalar}`` items from image files, for
    ``Trainer``: decoded as indexing decodes them (the checkpoint's
    :meth:`~vitsearch.search.preprocess.Preprocess.decode`), augmented (training) or not
    (validation: the checkpoint's own resize and crop), then rescaled and normalised by the
    checkpoint's :class:`~vitsearch.search.preprocess.Preprocess` (for a processor it does not
    implement, the processor itself is called on the crop, which then resizes it its own way)."""

    def __init__(
        self, items: Sequence[tuple[str, int]], preprocess: Preprocess, augment: Augment | None, limits: Limits
    ):
        self.items = list(items)
        self.augment = augment
        self.limits = limits
        self.decoder = preprocess
        if augment is None:
            self.preprocess = preprocess
        else:  # the crop is already the input size: keep only rescale and normalise
            self.preprocess = dataclasses.replace(preprocess, short_edge=None, size_hw=augment.size_hw, crop_hw=None)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path, label = self.items[i]
        image, _ = self.decoder.decode(read_file(path, self.limits), path, self.limits)
        if self.augment is not None:
            image = self.augment(image)
        return {
            "pixel_values": torch.from_numpy(self.preprocess(image)),
            "labels": torch.tensor(label, dtype=torch.long),
        }


def split_classes(
    data_dir: str | os.PathLike, val_split: float, seed: int, check: Callable[[str], str | None] | None = None
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
        raise BadQueryError(
            f"{root}: expected one subfolder of images per class, at least 2 classes "
            f"(found {len(found)} class folders with images)"
        )
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
            raise BadQueryError(
                f"class folder {c} has {len(files)} usable images; at least {need} are needed "
                f"({MIN_VAL_PER_CLASS} to validate and 1 to train)"
                if val_split > 0
                else f"class folder {c} has no usable images"
            )
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, files in enumerate(usable.values()):
        order = rng.permutation(len(files))
        n_val = 0 if val_split == 0 else min(len(files) - 1, max(MIN_VAL_PER_CLASS, round(val_split * len(files))))
        val += [(files[i], label) for i in sorted(order[:n_val])]
        train += [(files[i], label) for i in sorted(order[n_val:])]
    return [c.name for c in usable], train, val, failures
