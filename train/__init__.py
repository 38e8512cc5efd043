"""Training an encoder on labelled class folders (``vitsearch train``): :func:`train`.

- :mod:`.config`: the scratch ViT's shape and every option's default;
- :mod:`.data`: class folders, the split, augmentation, the dataset;
- :mod:`.model`: the head on the class token, the backbone (a checkpoint or a new ViT);
- :mod:`.loop`: the ``transformers.Trainer`` loop;
- :mod:`.report`: the per-epoch figures and the result;
- :mod:`.save`: the saved model folder.

Names are imported on first use: importing :mod:`.config` (what ``vitsearch`` reads for its
``--help``) does not import torch and transformers.
"""

from importlib import import_module

_EXPORTS = {
    "DEFAULTS": "config",
    "LR_FINETUNE": "config",
    "LR_SCRATCH": "config",
    "OBJECTIVES": "config",
    "ScratchConfig": "config",
    "Augment": "data",
    "split_classes": "data",
    "EpochReport": "report",
    "TrainResult": "report",
    "retrieval_figures": "report",
    "train": "loop",
}

__all__ = [
    "train",
    "TrainResult",
    "EpochReport",
    "ScratchConfig",
    "DEFAULTS",
    "OBJECTIVES",
    "LR_SCRATCH",
    "LR_FINETUNE",
    "Augment",
    "split_classes",
    "retrieval_figures",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
