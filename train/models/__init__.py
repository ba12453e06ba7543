"""The model library: ConVIRT and GLoRIA over ResNet / transformers vision encoders and BERT-family /
smallbert / bag-of-words text encoders, created by name from train/model_configs/*.json, with their
losses (losses), cross-rank gathering with gradient (gather), the from-scratch tokenizer (tokenizer)
and the model-input frame of every image (frame). It imports no Ray and nothing of the trainer around
it (train.loop, train.driver, train.data; workflows.tune): eval and `syncxr embed` use it alone.

    model = create_model("convirt-resnet18-bow", text_corpus=reports)
    tok = model.tokenize(sentences)                      # input_ids, attention_mask, truncated
    features = model(images, tok["input_ids"], tok["attention_mask"])
    loss = model.loss(features)                          # gathers across ranks when distributed
    model.save_pretrained(out_dir); model = load_model(out_dir, expect_name=model.name)

The names below load on first use, so `train.models.frame` (imported by Ray Data decoding tasks)
does not pull torch in with it.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"ContrastiveModel": "train.models.base", "list_models": "train.models.configs",
            "load_config": "train.models.configs", "create_model": "train.models.factory",
            "load_model": "train.models.factory", "model_dir": "train.models.factory"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'train.models' has no attribute {name!r}")
