"""Model input from images, with the checkpoint's own preprocessing settings.

:class:`Preprocess` reads size, centre crop, resample filter, rescale factor, mean and std from
the checkpoint's ``AutoImageProcessor`` (its ``preprocessor_config.json``) and applies them the
way transformers' PIL backend does (``PilBackend._preprocess``: resize on the short side, or to
``(height, width)``; centre crop; rescale; normalise), with Pillow and NumPy. Its output equals
the processor's within float32 rounding (``tests/test_preprocess.py`` states the difference).

Because it knows the output size before decoding, it can tell the decoder how small a JPEG may
be decoded (:attr:`Preprocess.draft_px`, for Pillow's ``Image.draft``). :meth:`Preprocess.load`
and :meth:`Preprocess.decode` are the one way from a file or bytes to a model's image: the
indexer, ``SearchClient`` and the page call them, so a query is decoded exactly like an indexed
file.

A processor with options this does not implement (padding, ``longest_edge``, ``crop_pct``,
no resize, ...) is called as it is, so any checkpoint still works, only slower.

:func:`processor_settings` reads the same settings from ``preprocessor_config.json`` as JSON,
without transformers, for a search that runs an exported model (:meth:`Encoder.load
<vitsearch.search.encoder.Encoder.load>` with ``quick``). Nothing here imports torch but
:meth:`Preprocess.batch`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from .images import ImageLike, Limits, decode_sized, load_image

#: A JPEG may be decoded at reduced scale (Image.draft) down to this many times the size the
#: model's resize asks for. 2 keeps a real resampling step after the DCT scaling, so the result
#: stays close to a full decode (tests/test_preprocess.py measures it).
DRAFT_MARGIN = 2


def at_size(processor, size: int):
    """A copy of an image processor that makes ``size`` x ``size`` model input.

    The ratio of the resize to the centre crop is kept (DINOv2's 256 -> 224 becomes 384 -> 336
    at 336), so the crop covers the same part of the image at any size. The model must then
    interpolate its position embeddings to the new patch grid (:class:`~.encoder.Encoder` does).

    Raises:
        ValueError: ``size`` below 8 pixels, or a processor whose resize is not by shortest
            edge or to height x width.
    """
    import copy

    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    out = copy.deepcopy(processor)
    resize = dict(getattr(out, "size", None) or {})
    crop = dict(getattr(out, "crop_size", None) or {}) if getattr(out, "do_center_crop", False) else {}
    # Without a crop the resize gives the model input; with one, the resize scales with it.
    scale = size / crop["height"] if set(crop) == {"height", "width"} else None
    if scale is not None:
        out.crop_size = {"height": size, "width": size}
    if set(resize) == {"shortest_edge"}:
        out.size = {"shortest_edge": round(resize["shortest_edge"] * scale) if scale else size}
    elif set(resize) == {"height", "width"}:
        out.size = (
            {"height": round(resize["height"] * scale), "width": round(resize["width"] * scale)}
            if scale
            else {"height": size, "width": size}
        )
    else:
        raise ValueError(f"cannot set the input size of {type(processor).__name__} (resize {resize})")
    return out


@dataclass(frozen=True)
class Preprocess:
    """Picklable image → ``(3, H, W) float32`` model input (run in the indexer's workers).

    Attributes:
        short_edge: resize so the short side is this many pixels (aspect kept), or None.
        size_hw: resize to exactly ``(height, width)``, or None.
        resample: Pillow resample filter (``Image.Resampling`` value).
        crop_hw: centre crop ``(height, width)``, or None.
        scale: rescale factor (1/255 for 8-bit images), or None.
        mean, std: per-channel normalisation, ``(3,)`` float32, or None.
        processor: the ``AutoImageProcessor``, called as it is when ``native`` is False.
        native: whether this class implements the processor's settings.
    """

    short_edge: int | None
    size_hw: tuple[int, int] | None
    resample: int
    crop_hw: tuple[int, int] | None
    scale: float | None
    mean: np.ndarray | None
    std: np.ndarray | None
    processor: Any
    native: bool

    @classmethod
    def from_processor(cls, processor) -> Preprocess:
        """Settings of a transformers image processor (``ViTImageProcessor``, ``BitImageProcessor``
        of DINOv2, ``CLIPImageProcessor``, ``DeiTImageProcessor``...)."""
        get = lambda name, default=None: getattr(processor, name, default)  # noqa: E731
        size = dict(get("size") or {})
        crop = dict(get("crop_size") or {}) if get("do_center_crop") else {}
        short = size.get("shortest_edge") if set(size) == {"shortest_edge"} else None
        hw = (int(size["height"]), int(size["width"])) if set(size) == {"height", "width"} else None
        native = (
            bool(get("do_resize"))
            and (short is not None or hw is not None)
            and not get("do_pad")
            and get("crop_pct") is None
            and (not crop or set(crop) == {"height", "width"})
            and get("do_convert_rgb") in (None, True)
        )
        mean = np.asarray(get("image_mean"), np.float32) if get("do_normalize") else None
        std = np.asarray(get("image_std"), np.float32) if get("do_normalize") else None
        return cls(
            short_edge=int(short) if short is not None else None,
            size_hw=hw,
            resample=int(get("resample", Image.Resampling.BILINEAR)),
            crop_hw=(int(crop["height"]), int(crop["width"])) if crop else None,
            scale=float(get("rescale_factor")) if get("do_rescale") else None,
            mean=mean,
            std=std,
            processor=processor,
            native=native,
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize step, for an image of ``width`` x ``height``."""
        if self.size_hw is not None:
            return self.size_hw[1], self.size_hw[0]
        short, long = sorted((width, height))
        new_long = int(self.short_edge * long / short)  # as transformers' get_resize_output_image_size
        return (self.short_edge, new_long) if width <= height else (new_long, self.short_edge)

    @property
    def draft_px(self) -> int | None:
        """How small both sides of a JPEG may be decoded (``decode_bytes(draft_px=...)``), or None
        for a full decode. Independent of orientation, so it holds before EXIF rotation."""
        if not self.native:
            return None
        target = self.short_edge if self.size_hw is None else max(self.size_hw)
        return DRAFT_MARGIN * target

    def decode(self, data: bytes, source: str, limits: Limits = Limits()) -> tuple[Image.Image, tuple[int, int]]:
        """Encoded bytes to the upright RGB image this preprocessing takes (a JPEG decoded at the
        smallest scale :attr:`draft_px` allows), and the image's full ``(width, height)``.

        Raises:
            BadImageError: naming ``source``: undecodable, or over ``limits``.
        """
        return decode_sized(data, source, self.draft_px, limits)

    def load(self, image: ImageLike, limits: Limits = Limits()) -> Image.Image:
        """A path, encoded bytes, PIL image or ``(H, W, 3) uint8`` array to the upright RGB image
        this preprocessing takes (files and bytes decoded as :meth:`decode` does).

        Raises:
            BadImageError: unreadable, undecodable or over ``limits``.
        """
        return load_image(image, self.draft_px, limits)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """An upright RGB image to ``(3, H, W) float32`` model input."""
        if not self.native:
            return np.asarray(self.processor(images=[image], return_tensors="np")["pixel_values"][0], np.float32)
        w, h = self.resized_size(*image.size)
        if (w, h) != image.size:
            image = image.resize((w, h), resample=self.resample)
        if self.crop_hw is not None:
            ch, cw = self.crop_hw
            if ch > h or cw > w:  # transformers pads with zeros here: leave that to it
                return np.asarray(self.processor(images=[image], return_tensors="np")["pixel_values"][0], np.float32)
            top, left = (h - ch) // 2, (w - cw) // 2
            image = image.crop((left, top, left + cw, top + ch))
        x = np.asarray(image, np.uint8).transpose(2, 0, 1)
        if self.scale is not None:
            x = (x.astype(np.float64) * self.scale).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.mean is not None:
            x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        return x

    def array(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(N, 3, H, W) float32`` model input for N upright RGB images, as a NumPy array."""
        return np.stack([self(im) for im in images])

    def batch(self, images: Sequence[Image.Image]):
        """``(N, 3, H, W) float32`` model input for N upright RGB images, as a ``torch.Tensor``."""
        import torch

        return torch.from_numpy(self.array(images))


#: The keys of ``preprocessor_config.json`` that :func:`processor_settings` needs written out: a
#: key left out takes its processor class's default, which only transformers knows.
_NEEDED = ("do_resize", "size", "resample", "do_rescale", "do_normalize")
#: Processor classes without a centre crop, whose files may leave ``do_center_crop`` out.
_NO_CROP = ("ViTImageProcessor", "ViTImageProcessorFast", "ViTImageProcessorPil")


def processor_settings(folder: Path) -> SimpleNamespace | None:
    """A checkpoint's ``preprocessor_config.json`` read as JSON, as an object with the image
    processor's attributes (what :meth:`Preprocess.from_processor` and :func:`at_size` read),
    without importing transformers.

    Returns:
        None where the file is missing or unreadable, or leaves out a setting (its class's
        default would apply, which only transformers knows), or asks for something
        :class:`Preprocess` does not implement natively: then load the processor with transformers.
    """
    try:
        config = json.loads((Path(folder) / "preprocessor_config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or any(k not in config for k in _NEEDED) or not isinstance(config["size"], dict):
        return None
    if "do_center_crop" not in config and config.get("image_processor_type") not in _NO_CROP:
        return None
    if (
        config.get("do_center_crop")
        and not isinstance(config.get("crop_size"), dict)
        or config["do_rescale"]
        and "rescale_factor" not in config
        or config["do_normalize"]
        and not ("image_mean" in config and "image_std" in config)
    ):
        return None
    processor = SimpleNamespace(**config)
    try:
        if not Preprocess.from_processor(processor).native:
            return None
    except (TypeError, ValueError, KeyError):
        return None
    return processor
