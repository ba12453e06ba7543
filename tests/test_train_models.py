"""train/models: factory and configs, tokenisation, word pooling, features/similarities, saving and
loading, encoders from transformers directories, and a few training steps that must learn."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.core.errors import ConfigError, UserError
from train.models import ContrastiveModel, create_model, list_models, load_model
from train.models.word_pooling import pool_words

CORPUS = [
    "Left pleural effusion. No pneumothorax.",
    "Right upper lobe opacity consistent with pneumonia.",
    "Cardiomegaly with mild pulmonary edema.",
    "The lungs are clear. Heart size is normal.",
    "Small left apical pneumothorax. No effusion.",
    "Bibasilar atelectasis. Stable cardiomediastinal silhouette.",
] * 5
TINY_TEXT = {"vocab_size": 300, "min_frequency": 1, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64}
TINY = {"image": {"image_size": 64, "resize_to": 72}, "text_encoder": TINY_TEXT}
TINY_BOW = {"vocab_size": 300, "min_frequency": 1, "hidden_size": 32}  # the bag-of-words tower's settings
NAMES = ("convirt-resnet18-smallbert", "gloria-resnet18-smallbert", "convirt-resnet18-bow", "gloria-resnet18-bow")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread; on a shared 2-core machine it costs 5-10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name: str, **extra) -> ContrastiveModel:
    torch.manual_seed(0)
    overrides = json.loads(json.dumps(TINY))
    if name.endswith("-bow"):
        overrides["text_encoder"] = dict(TINY_BOW)
    for key, value in extra.items():
        overrides.setdefault(key, {}).update(value)
    if name.startswith("gloria"):
        overrides.setdefault("head", {})["embed_dim"] = 32
    return create_model(name, text_corpus=CORPUS, overrides=overrides)


def _batch(model, texts, n_images=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n_images or len(texts), 1, model.image_size, model.image_size, generator=g) * 2 - 1
    tok = model.tokenize(texts)
    return images, tok["input_ids"], tok["attention_mask"]


def test_list_models_and_unknown_name_lists_them():
    names = list_models()
    assert {"convirt-resnet18-smallbert", "convirt-resnet50-bioclinicalbert", "gloria-resnet50-bioclinicalbert",
            "gloria-resnet18-smallbert"} <= set(names)
    with pytest.raises(UserError, match="unknown model 'clip-vit'.*convirt-resnet18-smallbert"):
        create_model("clip-vit", text_corpus=CORPUS)


def test_configs_hold_the_paper_values():
    from train.models import load_config
    convirt = load_config("convirt-resnet50-bioclinicalbert")
    assert convirt["loss"] == {"temperature": 0.1, "lambda_i2t": 0.75} and convirt["head"]["embed_dim"] == 512
    gloria = load_config("gloria-resnet50-bioclinicalbert")
    assert (gloria["loss"]["temp_attention"], gloria["loss"]["temp_aggregation"], gloria["loss"]["temp_logits"]) == (4.0, 5.0, 10.0)
    assert gloria["text"] == {"max_tokens": 97, "last_n_layers": 4} and gloria["head"]["embed_dim"] == 768
    assert gloria["image"] == {"image_size": 224, "resize_to": 256}
    assert gloria["text_encoder"]["path"] == "emilyalsentzer/Bio_ClinicalBERT"
    from train.augment import DEFAULT_AUGMENT
    for name in list_models():  # the loop passes config["augment"] to train.augment
        aug = load_config(name)["augment"]
        assert set(aug) == set(DEFAULT_AUGMENT) and aug["hflip"] is False


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="text corpus.*tokenizer_dir"):
        create_model("convirt-resnet18-smallbert", overrides=TINY)
    with pytest.raises(ConfigError, match=r"overrides\.image\.size: unknown"):
        create_model("convirt-resnet18-smallbert", text_corpus=CORPUS, overrides={"image": {"size": 3}})
    with pytest.raises(ConfigError, match="image_size"):
        create_model("convirt-resnet18-smallbert", text_corpus=CORPUS,
                     overrides={"image": {"image_size": 300, "resize_to": 256}})


def test_tokenize_flags_truncation_and_keeps_sep(tmp_path):
    model = tiny("convirt-resnet18-smallbert", text={"max_tokens": 6})
    out = model.tokenize(["left pleural effusion", "left pleural effusion no pneumothorax heart size is normal"])
    assert out["truncated"].tolist() == [False, True]
    assert out["input_ids"].shape == (2, 6) and out["input_ids"].dtype == torch.long
    tok = model.tokenizer
    assert out["input_ids"][1, -1].item() == tok.sep_token_id and out["input_ids"][1, 0].item() == tok.cls_token_id
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]


def test_pool_words_sums_subwords_by_hand():
    # vocab: 0 [PAD] 1 [CLS] 2 [SEP] 3 "pleur" 4 "##al" 5 "eff" 6 "##usion" 7 "left" 8 "##s"
    is_cont = torch.tensor([False, False, False, False, True, False, True, False, True])
    special = torch.tensor([0, 1, 2])
    ids = torch.tensor([[1, 7, 3, 4, 5, 6, 8, 2], [1, 4, 7, 2, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    feats = torch.arange(16, dtype=torch.float64).reshape(2, 8, 1) + 1  # token j of row 0 has value j+1
    words, wmask = pool_words(feats, ids, mask, is_cont, special)
    assert wmask.tolist() == [[True, True, True], [True, True, False]]
    # row 0: "left" = 2, "pleur ##al" = 3 + 4, "eff ##usion ##s" = 5 + 6 + 7; [CLS]/[SEP] dropped
    assert words[0, :, 0].tolist() == [2.0, 7.0, 18.0]
    # row 1: a "##" right after [CLS] starts its own word; padding contributes nothing
    assert words[1, :, 0].tolist() == [10.0, 11.0, 0.0]


@pytest.mark.parametrize("name", NAMES)
def test_features_similarity_and_maps(name):
    model = tiny(name).eval()
    assert model.method == name.split("-")[0] and model.name == name
    assert model.backbone_name == "resnet18" and model.image_size == 64 and model.resize_to == 72
    images, ids, mask = _batch(model, ["left pleural effusion", "cardiomegaly", "clear lungs"], n_images=2)
    with torch.no_grad():
        e_img, e_txt = model.embed_image(images), model.embed_text(ids, mask)
        sim = model.similarity(images, ids, mask)
        maps = model.similarity_maps(images, ids, mask)
    assert e_img.shape == (2, model.embed_dim) and e_txt.shape == (3, model.embed_dim)
    assert torch.allclose(e_img.norm(dim=1), torch.ones(2)) and torch.allclose(e_txt.norm(dim=1), torch.ones(3))
    assert sim.shape == (2, 3)
    if model.method == "convirt":
        assert torch.allclose(sim, e_img @ e_txt.t(), atol=1e-6)
        assert maps.shape == (2, 3, 2, 2)  # layer4 at 64 px
        assert maps.abs().max() <= 1 + 1e-6
    else:
        assert maps.shape == (2, 3, 4, 4)  # layer3 at 64 px
        # word attention over regions sums to one, so its mean over words does too
        assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(2, 3), atol=1e-5)
        with torch.no_grad():
            img, txt = model.encode_image(images), model.encode_text(ids, mask)
            from train.models import losses
            local = losses.local_similarity(txt["words"], txt["word_mask"], img["image_local"], 4.0, 5.0, True)
        assert torch.allclose(sim, (e_img @ e_txt.t() + local) / 2, atol=1e-5)
        # "left pleural effusion" pools to 3 words (the tiny vocab splits some of them)
        assert txt["word_mask"][0].sum().item() == 3


@pytest.mark.parametrize("name", NAMES)
def test_save_load_roundtrip(name, tmp_path):
    model = tiny(name).eval()
    model.save_pretrained(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    again = load_model(tmp_path / "m", expect_name=name).eval()
    assert type(again) is type(model) and again.config == model.config
    images, ids, mask = _batch(model, ["left pleural effusion", "no pneumothorax"])
    with torch.no_grad():
        assert torch.equal(model.embed_image(images), again.embed_image(images))
        assert torch.equal(model.embed_text(ids, mask), again.embed_text(ids, mask))
    assert torch.equal(again.tokenize(["left effusion"])["input_ids"], model.tokenize(["left effusion"])["input_ids"])


def test_negation_scope_runs_from_a_cue_to_the_end_of_its_clause():
    from train.models.text_encoders import negation_scope

    # [CLS] no effusion or edema . there is cardiomegaly but no pneumothorax [SEP] [PAD]
    ids = torch.tensor([[1, 10, 20, 21, 22, 5, 30, 31, 23, 6, 10, 24, 2, 0]])
    cues, ends = torch.tensor([10]), torch.tensor([5, 6, 2])
    assert negation_scope(ids, cues, ends).int().tolist() == [[0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0]]
    assert not negation_scope(ids[:, 5:10], cues, ends).any()  # no cue: nothing negated


def test_a_negated_finding_has_its_own_embedding_in_the_bow_tower(tmp_path):
    model = tiny("convirt-resnet18-bow", text_encoder={"negation": True}).eval()
    enc = model.text_encoder.model
    assert enc.embeddings.num_embeddings == 2 * len(model.tokenizer) and len(enc.cue_ids) >= 1
    words = lambda texts: model.text_encoder(*_batch(model, texts)[1:])[0]  # noqa: E731
    plain, negated = words(["effusion .", "no effusion ."])
    # "effusion" (position 1 after [CLS], 2 after "no") looks up another row once negated
    assert not torch.equal(plain[1], negated[2])
    assert torch.equal(words(["effusion . no"])[0][1], plain[1])  # a cue reaches forward only
    model.save_pretrained(tmp_path / "m")
    again = load_model(tmp_path / "m").eval()
    _, ids, mask = _batch(model, ["no effusion. edema", "effusion"])
    with torch.no_grad():
        assert torch.equal(model.embed_text(ids, mask), again.embed_text(ids, mask))
    without = tiny("convirt-resnet18-bow", text_encoder={"negation": False}).eval()
    assert without.text_encoder.model.embeddings.num_embeddings == len(without.tokenizer)


def test_weighted_pooling_starts_as_the_mean_and_needs_token_weights():
    from train.models.convirt import pool_tokens

    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    zeros = torch.zeros(2, 4)
    assert torch.allclose(pool_tokens(hidden, mask, "weighted", zeros), pool_tokens(hidden, mask, "mean"), atol=1e-6)
    sharp = torch.tensor([[0.0, 50.0, 0.0, 99.0], [0.0, 0.0, 0.0, 0.0]])  # padding never counts, however large
    assert torch.allclose(pool_tokens(hidden, mask, "weighted", sharp)[0], hidden[0, 1], atol=1e-5)
    model = tiny("convirt-resnet18-bow", text_encoder={"token_weights": True}, text={"pooling": "weighted"})
    assert model.text_encoder.model.weights.weight.abs().sum() == 0
    with pytest.raises(ConfigError, match="token_weights"):
        tiny("convirt-resnet18-bow", text={"pooling": "weighted"})


def test_load_refuses_other_architecture_and_bad_dirs(tmp_path):
    convirt = tiny("convirt-resnet18-smallbert")
    convirt.save_pretrained(tmp_path / "c")
    with pytest.raises(UserError, match="holds model 'convirt-resnet18-smallbert'.*expected 'gloria"):
        load_model(tmp_path / "c", expect_name="gloria-resnet18-smallbert")
    with pytest.raises(UserError, match="not a saved syncxr model"):
        load_model(tmp_path / "nothing")
    # weights of another architecture under a convirt config
    tiny("gloria-resnet18-smallbert").save_pretrained(tmp_path / "g")
    (tmp_path / "c" / "weights.pt").write_bytes((tmp_path / "g" / "weights.pt").read_bytes())
    with pytest.raises(UserError, match="do not fit"):
        load_model(tmp_path / "c")


def test_tokenizer_dir_is_reused(tmp_path):
    a = create_model("convirt-resnet18-smallbert", text_corpus=CORPUS, tokenizer_dir=str(tmp_path / "tok"), overrides=TINY)
    b = create_model("convirt-resnet18-smallbert", tokenizer_dir=str(tmp_path / "tok"), overrides=TINY)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def test_backbone_state_dict_is_torchvision_resnet_and_loads_back(tmp_path):
    import torchvision

    model = tiny("convirt-resnet18-smallbert")
    sd = model.backbone_state_dict()
    assert not any(k.startswith("fc.") for k in sd) and "conv1.weight" in sd and "layer4.1.bn2.weight" in sd
    missing, unexpected = torchvision.models.resnet18(weights=None).load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    torch.save(sd, tmp_path / "r18.pt")
    other = tiny("gloria-resnet18-smallbert", image_encoder={"weights": str(tmp_path / "r18.pt")})
    assert all(torch.equal(v, other.backbone_state_dict()[k]) for k, v in sd.items())
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="not a resnet18 state dict"):
        tiny("gloria-resnet18-smallbert", image_encoder={"weights": str(tmp_path / "bad.pt")})


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_our_resnet_trunk_is_torchvision_s_in_names_weights_and_outputs(arch):
    """The trunk is built without torchvision (its import costs seconds per worker): the same
    seed gives torchvision's initial weights, key for key, and the same feature maps."""
    import torchvision

    from train.models.resnet import ResNetTrunk

    torch.manual_seed(3)
    reference = getattr(torchvision.models, arch)(weights=None).eval()
    torch.manual_seed(3)
    ours = ResNetTrunk(arch).eval()
    theirs = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert list(ours.state_dict()) == list(theirs)
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        local, last = ours(x)
        r = reference
        y = r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))
        assert torch.equal(local, r.layer3(y)) and torch.equal(last, r.layer4(r.layer3(y)))


def test_transformers_encoders_from_directories(tmp_path):
    """A tiny random ViT and BERT saved like hub models: the real AutoModel/AutoTokenizer paths."""
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    from train.models.tokenizer import train_wordpiece

    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_channels=3)).save_pretrained(tmp_path / "vit")  # with a pooler
    tok = train_wordpiece(CORPUS, vocab_size=200, min_frequency=1)
    tok.save_pretrained(tmp_path / "bert")
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(tmp_path / "bert")
    overrides = {"image": {"image_size": 64, "resize_to": 64}, "head": {"embed_dim": 32},
                 "image_encoder": {"type": "hf", "path": str(tmp_path / "vit")},
                 "text_encoder": {"type": "hf", "path": str(tmp_path / "bert")}}
    model = create_model("gloria-resnet50-bioclinicalbert", overrides=overrides).eval()
    assert model.backbone_name is None
    images, ids, mask = _batch(model, ["left pleural effusion", "cardiomegaly"])
    feats = model(images, ids, mask)
    assert feats["image_local"].shape == (2, 32, 4, 4)
    loss = model.loss(feats)
    loss.backward()
    # every trainable parameter takes part (DDP requires it): the ViT's pooler is not built
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.save_pretrained(tmp_path / "saved")
    again = load_model(tmp_path / "saved").eval()
    with torch.no_grad():
        assert torch.allclose(model.similarity(images, ids, mask), again.similarity(images, ids, mask))
    frozen = create_model("convirt-resnet50-bioclinicalbert",
                          overrides={**overrides, "head": {"embed_dim": 16, "hidden_dim": 16}})
    enc = frozen.text_encoder.model
    assert not any(p.requires_grad for p in enc.embeddings.parameters())
    assert not any(p.requires_grad for p in enc.encoder.layer[3].parameters())  # 6 frozen >= 4 layers
    assert all(p.requires_grad for p in frozen.image_proj.parameters())
    # the paper-scale GLoRIA image side: ResNet-50 layer3 (1024 ch) and layer4 (2048 ch) to 768
    r50 = create_model("gloria-resnet50-bioclinicalbert", overrides={
        "image": {"image_size": 64, "resize_to": 64}, "text_encoder": overrides["text_encoder"]})
    assert (r50.local_proj.in_channels, r50.local_proj.out_channels) == (1024, 768)
    assert (r50.global_proj.in_features, r50.global_proj.out_features) == (2048, 768)
    assert r50.encode_image(images)["image_local"].shape == (2, 768, 4, 4)


FINDINGS = [("left pleural effusion", (0, 0)), ("right pleural effusion", (0, 1)),
            ("cardiomegaly", (1, 0)), ("pneumothorax", (1, 1))]


def _structured_pairs(n: int, size: int, seed: int = 0):
    """Images with a bright quadrant that the paired text names (4 kinds)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(-0.5, 0.1, size=(n, 1, size, size)).astype(np.float32)
    texts = []
    half = size // 2
    for i in range(n):
        text, (r, c) = FINDINGS[i % 4]
        images[i, 0, r * half:(r + 1) * half, c * half:(c + 1) * half] += 1.0
        texts.append(text)
    return torch.from_numpy(images), texts


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_a_few_adam_steps_reduce_the_loss(name):
    model = tiny(name)
    images, texts = _structured_pairs(16, model.image_size)
    tok = model.tokenize(texts)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(12):
        loss = model.loss(model(images, tok["input_ids"], tok["attention_mask"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(np.isfinite(history))
    assert np.mean(history[-3:]) < 0.8 * history[0], history


def test_loss_terms_add_up_to_the_training_loss():
    model = tiny("convirt-resnet18-smallbert").eval()
    images, texts = _structured_pairs(4, model.image_size)
    tok = model.tokenize(texts)
    feats = model(images, tok["input_ids"], tok["attention_mask"])
    terms = model.loss_terms(feats)
    lam = model.config["loss"]["lambda_i2t"]
    assert terms["loss"] == pytest.approx(float(model.loss(feats).detach()), abs=1e-6)
    assert terms["loss"] == pytest.approx(lam * terms["loss_i2t"] + (1 - lam) * terms["loss_t2i"], abs=1e-6)
