"""The transformers token-classification backend: BIO decoding on hand-made inputs, and a tiny
random BERT (config + locally trained WordPiece tokenizer, saved to a temp dir) loaded through
the same from_config -> extract path a real RaTE-NER checkpoint takes."""
from __future__ import annotations

import numpy as np
import pytest

from engine.core.config import CorpusConfig, ExtractorConfig
from engine.text.corpora import load_corpus
from engine.text.entities import ENTITY_TYPES, build_extractor
from engine.core.errors import ConfigError, UserError
from engine.text.sections import normalise_entity_text

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from actors.ner import (decode_bio, pack_windows, parse_labels, spans_to_entities,  # noqa: E402
                        split_words, word_labels)

BIO_LABELS = ["O"] + [f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")]  # the 11 RaTE-NER labels
ID2LABEL = dict(enumerate(BIO_LABELS))
LABELS = parse_labels(ID2LABEL)
SENTENCES = [
    "There is a small left pleural effusion.", "No pneumothorax or focal consolidation.",
    "Heart size is normal and the lungs are clear.", "Mild cardiomegaly with pulmonary vascular congestion.",
    "Calcified granuloma in the right upper lobe.", "Degenerative changes of the thoracic spine.",
]


# --- pure decoding ------------------------------------------------------------------------------
def test_parse_labels_reads_bio_and_rejects_unknown():
    assert len(LABELS) == 11
    assert LABELS[0] == ("O", None)
    assert ("I", "NON-DISEASE") in LABELS.values() and ("B", "ANATOMY") in LABELS.values()
    assert parse_labels({"0": "O", "1": "b-abnormality"})[1] == ("B", "ABNORMALITY")  # JSON keys, any case
    with pytest.raises(UserError, match="unknown label 'B-FINDING'"):
        parse_labels({0: "O", 1: "B-FINDING"}, "some/model")
    with pytest.raises(UserError, match="unknown label 'LABEL_1'"):
        parse_labels({0: "LABEL_0", 1: "LABEL_1"} | {0: "O"})
    with pytest.raises(UserError, match="no id2label"):
        parse_labels({})


def T(label):
    return ("O", None) if label == "O" else tuple(label.split("-", 1))


@pytest.mark.parametrize("labels, spans", [
    (["B-ABNORMALITY", "I-ABNORMALITY", "O"], [(0, 2, "ABNORMALITY")]),
    (["B-ANATOMY", "B-ANATOMY"], [(0, 1, "ANATOMY"), (1, 2, "ANATOMY")]),  # B always starts a span
    (["I-DISEASE", "I-DISEASE"], [(0, 2, "DISEASE")]),  # I without B starts one
    (["B-ABNORMALITY", "I-ANATOMY", "I-ANATOMY"], [(0, 1, "ABNORMALITY"), (1, 3, "ANATOMY")]),  # type change
    (["O", "B-NON-ABNORMALITY", "I-NON-ABNORMALITY", "O", "B-NON-ABNORMALITY"],
     [(1, 3, "NON-ABNORMALITY"), (4, 5, "NON-ABNORMALITY")]),
    (["O", "O"], []),
    ([], []),
])
def test_decode_bio(labels, spans):
    assert decode_bio([T(x) for x in labels]) == spans


def test_word_labels_use_the_first_subtoken():
    # [CLS] pleur ##al eff ##usion [SEP] [PAD]: the second sub-token of each word disagrees.
    word_ids = [None, 0, 0, 1, 1, None, None]
    logits = np.full((7, 11), -5.0)
    b_abn, i_abn, b_dis = BIO_LABELS.index("B-ABNORMALITY"), BIO_LABELS.index("I-ABNORMALITY"), BIO_LABELS.index("B-DISEASE")
    logits[1, b_abn] = logits[2, b_dis] = 3.0
    logits[3, i_abn] = logits[4, 0] = 3.0
    logits[0, b_dis] = logits[5, b_dis] = logits[6, b_dis] = 9.0  # special/padding tokens are ignored
    tags = word_labels(logits, word_ids, 3, LABELS)  # word 2 was cut by truncation -> O
    assert tags == [("B", "ABNORMALITY"), ("I", "ABNORMALITY"), ("O", None)]
    words = ["Pleural", "effusion", "."]
    assert spans_to_entities(words, decode_bio(tags)) == [{"text": "pleural effusion", "type": "ABNORMALITY"}]


def test_pack_windows():
    assert pack_windows([1, 1, 1, 1, 1], 2) == [(0, 2), (2, 4), (4, 5)]
    assert pack_windows([3, 1, 5, 1], 4) == [(0, 2), (2, 3), (3, 4)]  # an over-long word stands alone
    assert pack_windows([], 4) == []


def test_span_text_normalisation():
    assert split_words("Air-space disease, right-sided (mild).") == [
        "Air-space", "disease", ",", "right-sided", "(", "mild", ")", "."]
    assert normalise_entity_text("  Pleural   Effusion. ") == "pleural effusion"
    assert normalise_entity_text("air - space") == "air-space"
    assert spans_to_entities([".", ","], [(0, 2, "ANATOMY")]) == []  # punctuation-only spans vanish


# --- a tiny random model through the real loading code ------------------------------------------
def _save_tiny_model(path, bias_label=None):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForTokenClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, id2label=ID2LABEL,
                        label2id={v: k for k, v in ID2LABEL.items()})
    model = BertForTokenClassification(config)
    if bias_label is not None:  # make the head's output known: every word gets this label
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.fill_(-10.0)
            model.classifier.bias[BIO_LABELS.index(bias_label)] = 10.0
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    return _save_tiny_model(tmp_path_factory.mktemp("ner-random"))


def test_random_model_runs_on_real_reports(random_model):
    ner = build_extractor(ExtractorConfig(backend="transformers", model=str(random_model), batch_size=4))
    reports = load_corpus(CorpusConfig(limit=12))
    texts = [r.text for r in reports] + [""]
    out = ner.extract(texts)
    assert len(out) == len(texts) and out[-1] == []
    for text, ents in zip(texts, out):
        keys = [(e["text"], e["type"]) for e in ents]
        assert len(keys) == len(set(keys))  # deduplicated
        for e in ents:
            assert set(e) == {"text", "type"} and e["type"] in ENTITY_TYPES
            assert e["text"] == e["text"].strip().lower() and e["text"]
            assert all(word in text.lower() for word in e["text"].split())  # spans come from the text
    assert any(out[:-1])  # a random head labels something


def test_biased_model_merges_each_sentence_into_one_span(tmp_path):
    # Every word predicted I-ABNORMALITY: one span per sentence window, the whole sentence.
    path = _save_tiny_model(tmp_path / "i-abn", bias_label="I-ABNORMALITY")
    ner = build_extractor(ExtractorConfig(backend="transformers", model=str(path)))
    words = [f"w{i}" for i in range(150)]  # far beyond the 64-token model: cut into windows
    out = ner.extract(["No pleural effusion. Heart size is normal.", " ".join(words) + "."])
    assert out[0] == [{"text": "no pleural effusion", "type": "ABNORMALITY"},
                      {"text": "heart size is normal", "type": "ABNORMALITY"}]
    assert len(out[1]) > 1 and {e["type"] for e in out[1]} == {"ABNORMALITY"}
    assert " ".join(e["text"] for e in out[1]).split() == words  # no word lost to truncation


def test_biased_model_b_labels_give_one_entity_per_word(tmp_path):
    path = _save_tiny_model(tmp_path / "b-anat", bias_label="B-ANATOMY")
    ner = build_extractor(ExtractorConfig(backend="transformers", model=str(path)))
    assert ner.extract(["Left lung, right lung."]) == [[
        {"text": "left", "type": "ANATOMY"}, {"text": "lung", "type": "ANATOMY"},
        {"text": "right", "type": "ANATOMY"}]]


def test_stage_call_on_a_batch(random_model):
    from actors.ner import TransformersNER

    ner = TransformersNER(ExtractorConfig(backend="transformers", model=str(random_model)).model_dump())
    batch = {"id": np.array([1, 2, 3]), "text": np.array(["No effusion.", None, 7], dtype=object)}
    out = ner(batch)
    assert list(out["id"]) == [1, 2, 3]
    assert out["extract_error"][0] == "" and out["extract_error"][1] == ""
    assert "text must be a string" in out["extract_error"][2] and out["entities"][2] == []
    assert out["entities"][1] == []


def test_bad_models_are_clear_errors(tmp_path, random_model):
    with pytest.raises(ConfigError, match="extractor.model"):
        build_extractor(ExtractorConfig(backend="transformers"))
    with pytest.raises(UserError, match="model directory not found"):
        build_extractor(ExtractorConfig(backend="transformers", model=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        build_extractor(ExtractorConfig(backend="transformers", model=str(tmp_path / "empty")))
    with pytest.raises(UserError, match="CUDA is not available"):
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        build_extractor(ExtractorConfig(backend="transformers", model=str(random_model), device="cuda"))


def test_unknown_label_in_a_saved_model(tmp_path):
    from transformers import BertConfig, BertForTokenClassification

    path = _save_tiny_model(tmp_path / "m")
    cfg = BertConfig.from_pretrained(path)
    cfg.id2label = {0: "O", 1: "B-FINDING"}
    cfg.label2id = {"O": 0, "B-FINDING": 1}
    BertForTokenClassification(cfg).save_pretrained(path)
    with pytest.raises(UserError, match="unknown label 'B-FINDING'"):
        build_extractor(ExtractorConfig(backend="transformers", model=str(path)))
