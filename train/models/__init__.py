"""The model library of train/: ConVIRT and GLoRIA over ResNet / transformers vision encoders and
BERT-family / smallbert text encoders, created by name from train/model_configs/*.json.

    model = create_model("convirt-resnet18-smallbert", text_corpus=reports)
    feats = model(images, **model.tokenize(texts) minus "truncated")
    loss, logs = model.loss(feats)
"""
from train.models.base import ContrastiveModel
from train.models.configs import list_models, load_config
from train.models.factory import create_model, load_model

__all__ = ["ContrastiveModel", "create_model", "list_models", "load_config", "load_model"]
