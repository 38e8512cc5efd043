"""Where the encoder runs: the torch device and dtype (CUDA, then Apple MPS, then the CPU; bf16 on
CUDA), whether a GPU can be there at all (told without importing torch), and the batch size that
fits a card's free memory."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .config import DEFAULT_BATCH_SIZE

if TYPE_CHECKING:
    from .encoder import Encoder

log = logging.getLogger(__name__)

#: dtype names accepted (``--dtype``, ``VITSEARCH_DTYPE``) and the torch dtype each means.
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def pick_device(device: str | None = None):
    """``device`` if given, else CUDA, then Apple MPS, then CPU, as a ``torch.device``."""
    import torch

    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device, dtype: str | None = None):
    """``dtype`` if given, else bfloat16 on CUDA and float32 elsewhere, as a ``torch.dtype``.

    Raises:
        ValueError: an unknown dtype name.
    """
    import torch

    if dtype:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
        return getattr(torch, DTYPES[dtype])
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def accelerator_possible() -> bool:
    """Whether torch could find a GPU here (CUDA, ROCm or Apple MPS), told without importing
    torch: False where torch is absent or built for the CPU only (its ``version.py`` names no
    CUDA nor HIP), or where no GPU driver is present (``/proc/driver/nvidia``, ``/dev/nvidiactl``,
    ``/dev/kfd``); True where unsure (macOS, torch already loaded): then ask torch
    (:func:`pick_device`)."""
    if "torch" in sys.modules or sys.platform == "darwin":
        return True
    try:
        spec = importlib.util.find_spec("torch")
        text = (Path(spec.origin).parent / "version.py").read_text() if spec and spec.origin else None
    except (ImportError, OSError, ValueError):
        return True
    if text is None:
        return spec is not None
    built_for_gpu = any(
        not re.search(rf"^{name}(: Optional\[str\])? = None\s*$", text, re.M) for name in ("cuda", "hip")
    )
    return built_for_gpu and any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd"))


def on_cpu(device: str | None) -> bool:
    """Whether ``device`` (None: auto) is the CPU, importing torch only where a GPU may be there."""
    if device:
        return device == "cpu"
    return not accelerator_possible() or pick_device(None).type == "cpu"


def batch_size_for(encoder: Encoder, fraction: float = 0.5, lo: int = 32, hi: int = 1024) -> int:
    """A batch size for ``encoder``'s device: :data:`DEFAULT_BATCH_SIZE` off CUDA; on CUDA the
    largest power of two whose activations fit in ``fraction`` of the card's free memory, as
    measured by a probe forward pass of 8 images (``torch.cuda.max_memory_allocated``)."""
    if encoder.device.type != "cuda":
        return DEFAULT_BATCH_SIZE
    import torch

    probe = 8
    h, w = encoder.info.image_size
    torch.cuda.synchronize(encoder.device)
    torch.cuda.reset_peak_memory_stats(encoder.device)
    base = torch.cuda.memory_allocated(encoder.device)
    encoder.embed_pixels(torch.zeros(probe, 3, h, w))
    per_image = max(1, (torch.cuda.max_memory_allocated(encoder.device) - base) // probe)
    free, _ = torch.cuda.mem_get_info(encoder.device)
    size = fit_batch(int(free * fraction), per_image, lo, hi)
    log.info("batch size %d: %.1f MB per image, %.1f GB free", size, per_image / 2**20, free / 2**30)
    return size


def fit_batch(budget_bytes: int, per_image_bytes: int, lo: int = 32, hi: int = 1024) -> int:
    """The largest power of two ``n`` with ``n * per_image_bytes <= budget_bytes``, clamped to
    ``[lo, hi]``."""
    n = lo
    while n * 2 <= hi and n * 2 * per_image_bytes <= budget_bytes:
        n *= 2
    return n
