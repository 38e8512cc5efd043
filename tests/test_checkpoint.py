"""Contract of search/checkpoint.py: a checkpoint that is not a ViT-family vision model (a text
model, a CNN) is refused with its class named, before anything is indexed or trained with it
(the ViT, DeiT, DINOv2 and CLIP checkpoints that load are pinned by test_encoder.py)."""

from __future__ import annotations

import pytest

from vitsearch.search.encoder import Encoder
from vitsearch.search.errors import ModelNotFoundError


def test_a_text_model_is_refused_as_not_a_vision_transformer(tmp_path):
    from transformers import BertConfig, BertModel, ViTImageProcessor

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    ).save_pretrained(tmp_path)
    ViTImageProcessor().save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="BertModel.*not a ViT-family vision model"):
        Encoder.load(str(tmp_path))


def test_a_vision_model_without_a_class_token_is_refused(tmp_path):
    from transformers import ConvNextConfig, ConvNextImageProcessor, ConvNextModel

    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])).save_pretrained(tmp_path)
    ConvNextImageProcessor().save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="ConvNextModel.*not a ViT-family vision model"):
        Encoder.load(str(tmp_path))
