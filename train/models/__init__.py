"""The model library of train/: ConVIRT and GLoRIA over ResNet / transformers vision encoders and
BERT-family / smallbert text encoders, created by name from train/model_configs/*.json.

    model = create_model("convirt-resnet18-smallbert", text_corpus=reports)
    tok = model.tokenize(sentences)                      # input_ids, attention_mask, truncated
    features = model(images, tok["input_ids"], tok["attention_mask"])
    loss = model.loss(features)                          # gathers across ranks when distributed
    model.save_pretrained(out_dir); model = load_model(out_dir, expect_name=model.name)
"""
from train.models.base import ContrastiveModel
from train.models.configs import list_models, load_config
from train.models.factory import create_model, load_model, model_dir

__all__ = ["ContrastiveModel", "create_model", "list_models", "load_config", "load_model", "model_dir"]
