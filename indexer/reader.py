"""Reading stage: file bytes to model input, in worker processes.

Each item is read once: its sha256 is taken from the same bytes that are decoded. A file that
cannot be read or decoded becomes a failure record; it never stops the batch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from vitsearch.search.errors import BadImageError
from vitsearch.search.images import decode_bytes, read_file

from .scan import FileEntry


@dataclass
class Batch:
    """Decoded, preprocessed images ready for the encoder.

    Attributes:
        pixel_values: ``(B, 3, H, W) float32`` model input.
        entries: the B files, in the same order.
        info: per file ``{"width", "height", "sha256"}`` of the original image (upright).
        failures: ``(path, reason)`` of files of this batch that could not be used.
    """

    pixel_values: torch.Tensor
    entries: list[FileEntry]
    info: list[dict[str, Any]]
    failures: list[tuple[str, str]]

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning thread (CUDA only): page-lock the pixels."""
        self.pixel_values = self.pixel_values.pin_memory()
        return self


class ImageFiles(Dataset):
    """Map-style dataset: ``FileEntry`` to ``(entry, pixel_values (3, H, W), info)`` or ``(entry, reason)``.

    ``processor`` is the encoder's (picklable) image processor, run here in the worker.
    """

    def __init__(self, entries: Sequence[FileEntry], processor):
        self.entries = entries
        self.processor = processor

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        entry = self.entries[i]
        try:
            data = read_file(entry.path)
            image = decode_bytes(data, entry.path)
            pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"][0]
        except BadImageError as exc:
            return entry, exc.reason
        except Exception as exc:  # a processor failing on an odd image must not stop the run
            return entry, f"preprocessing failed: {type(exc).__name__}: {exc}"
        info = {"width": image.width, "height": image.height, "sha256": hashlib.sha256(data).hexdigest()}
        return entry, pixels, info


def collate(items) -> Batch:
    """Stack the good items of a batch; keep the failures beside them."""
    good = [it for it in items if len(it) == 3]
    failures = [(it[0].path, it[1]) for it in items if len(it) == 2]
    pixels = torch.stack([it[1] for it in good]) if good else torch.empty(0)
    return Batch(pixels, [it[0] for it in good], [it[2] for it in good], failures)


def batches(entries: Sequence[FileEntry], processor, batch_size: int, workers: int,
            pin_memory: bool = False) -> DataLoader:
    """Batches of decoded images, produced by ``workers`` processes (0: in this process)."""
    return DataLoader(ImageFiles(entries, processor), batch_size=batch_size, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      prefetch_factor=4 if workers else None, persistent_workers=False)
