"""Training an encoder on labelled class folders (``vitsearch train``): :func:`train`.

- :mod:`.config`: the scratch ViT's shape and every option's default;
- :mod:`.data`: class folders, the split, augmentation, the dataset;
- :mod:`.model`: the head on the class token, the backbone (a checkpoint or a new ViT);
- :mod:`.loop`: the ``transformers.Trainer`` loop and the per-epoch figures;
- :mod:`.save`: the saved model folder.
"""
from .config import DEFAULTS, LR_FINETUNE, LR_SCRATCH, OBJECTIVES, ScratchConfig
from .data import Augment, split_classes
from .loop import EpochReport, TrainResult, retrieval_figures, train

__all__ = ["train", "TrainResult", "EpochReport", "ScratchConfig", "DEFAULTS", "OBJECTIVES", "LR_SCRATCH",
           "LR_FINETUNE", "Augment", "split_classes", "retrieval_figures"]
