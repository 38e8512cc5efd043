"""Saving a trained backbone as a plain ``transformers`` model folder, atomically."""

from __future__ import annotations

import json
from pathlib import Path

from vitsearch.search.errors import BadQueryError
from vitsearch.search.files import written_folder

#: The record vitsearch writes beside the model; it lists the files of the folder it wrote.
RECORD = "training.json"
#: What a folder written before the record listed its files holds.
_WRITTEN_BEFORE = {"config.json", "model.safetensors", "preprocessor_config.json", RECORD}


def resolve_out(out: Path) -> Path:
    """``out`` with symbolic links resolved: a link to a folder is written through, never replaced."""
    return out.expanduser().absolute().resolve()


def check_out(out: Path, overwrite: bool) -> None:
    """Check that ``out`` may be written: it does not exist, is an empty folder, or (with
    ``overwrite``) is a model folder vitsearch wrote that holds nothing else (the files its
    ``training.json`` lists). Anything else in it (notes, photos, a checkpoint of someone else)
    keeps it from being replaced.

    Raises:
        BadQueryError: any other ``out``; the message names what is in the way.
    """
    out = resolve_out(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    record = out / RECORD
    if not out.is_dir() or not (out / "config.json").is_file() or not record.is_file():
        raise BadQueryError(
            f"{out} exists and is not an empty folder nor a model folder vitsearch wrote "
            f"(config.json and {RECORD}): choose another --out"
        )
    if not overwrite:
        raise BadQueryError(f"{out} exists and is not an empty folder: choose another --out or overwrite it")
    try:
        written = set(json.loads(record.read_text()).get("files") or _WRITTEN_BEFORE) | {RECORD}
    except (OSError, ValueError, AttributeError):
        raise BadQueryError(
            f"{record} cannot be read as the record vitsearch writes: {out} is left as it is; choose another --out"
        ) from None
    others = sorted(p.name for p in out.iterdir() if p.name not in written or p.is_dir() or p.is_symlink())
    if others:
        raise BadQueryError(
            f"{out} holds {len(others)} entries vitsearch did not write there (e.g. {others[0]!r}): "
            f"--overwrite replaces only a model folder it wrote; choose another --out"
        )


def save(backbone, processor, out: Path, overwrite: bool, record: dict) -> Path:
    """Write the backbone (safetensors), its processor and ``training.json`` (``record`` plus the
    list of files written) to ``out`` (links resolved), atomically: a new folder beside it is
    filled, then renamed over it.

    Returns:
        the folder written (``out`` with links resolved).

    Raises:
        BadQueryError: ``out`` was filled meanwhile (see :func:`check_out`).
    """
    check_out(out, overwrite)
    out = resolve_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with written_folder(out) as tmp:  # renamed over out when filled, removed on failure
        backbone.to("cpu").save_pretrained(tmp)  # model.safetensors
        processor.save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir()) + [RECORD]
        (tmp / RECORD).write_text(json.dumps({**record, "files": files}, indent=2))
    return out
