"""Saving a trained backbone as a plain ``transformers`` model folder, atomically."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from vitsearch.search.errors import BadQueryError


def check_out(out: Path, overwrite: bool) -> None:
    """Raises: BadQueryError: ``out`` exists and is neither an empty folder nor (with
    ``overwrite``) a model folder."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir() or not (out / "config.json").is_file():
        raise BadQueryError(f"{out} exists and is not an empty folder nor a model folder: choose another --out")
    if not overwrite:
        raise BadQueryError(f"{out} exists and is not an empty folder: choose another --out or overwrite it")


def save(backbone, processor, out: Path, overwrite: bool, record: dict) -> None:
    """Write the backbone (safetensors), its processor and ``training.json`` to ``out``, atomically.

    Raises:
        BadQueryError: ``out`` was filled meanwhile (see :func:`check_out`).
    """
    check_out(out, overwrite)
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
