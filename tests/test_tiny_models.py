"""Tiny tokenizer + causal LM built from config, reloaded with the same from_pretrained code as hub ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from feedbackflow import cli
from feedbackflow.synthetic import CORPUS_FILE, SyntheticDataConfig, make_synthetic_data, unescape_corpus_line
from feedbackflow.tiny_models import TinyModelConfig, build_causal_lm, build_tiny_models, train_tokenizer

CONFIG = TinyModelConfig(seed=5, vocab_size=500, max_position_embeddings=128)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    small = SyntheticDataConfig(
        dsp_train_queries=30,
        dsp_test_queries=10,
        hh_train_pairs=40,
        hh_test_pairs=10,
        text_score_train_lists=20,
        text_score_test_lists=10,
    )
    return make_synthetic_data(out, small)[CORPUS_FILE]


@pytest.fixture(scope="module")
def model_dir(corpus, tmp_path_factory) -> Path:
    return build_tiny_models([corpus], tmp_path_factory.mktemp("models") / "tiny", CONFIG)


def corpus_texts(corpus: Path) -> list[str]:
    return [unescape_corpus_line(line) for line in corpus.read_text(encoding="utf-8").splitlines()]


def test_saved_files(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(name.endswith(".bin") for name in names)
    assert model_dir.stat().st_mode & 0o055 == 0o055, "the model folder should be readable by others"
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_tokenizer_reloads_with_special_tokens(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert len(tokenizer) == CONFIG.vocab_size
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert tokenizer.model_max_length == CONFIG.max_position_embeddings
    # Callers add bos / eos themselves.
    ids = tokenizer("Happy to help.")["input_ids"]
    assert ids and not set(ids) & {0, 1, 2, 3}


def test_encode_decode_roundtrip(model_dir, corpus):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = corpus_texts(corpus)
    dialogue = next(t for t in texts if t.startswith("\n\nHuman: "))
    for text in [*texts[:20], dialogue, "unseen wörds, émojis 🙂 and\ttabs"]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
    # Training learned merges: a corpus text needs far fewer tokens than bytes.
    assert len(tokenizer(dialogue)["input_ids"]) < len(dialogue.encode()) / 2
    # Newlines in the corpus were unescaped for training: the dialogue marker is one token.
    assert "Assistant" in tokenizer.get_vocab()


def test_model_reloads_and_runs(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.config
    assert config.model_type == "llama"
    assert (config.hidden_size, config.intermediate_size) == (CONFIG.hidden_size, CONFIG.intermediate_size)
    assert (config.num_hidden_layers, config.num_attention_heads) == (2, 4)
    assert config.max_position_embeddings == CONFIG.max_position_embeddings
    assert config.vocab_size == len(tokenizer)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 1, 2)
    assert config.tie_word_embeddings is False
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()

    batch = tokenizer(["Happy to help.", "There is a quiet poetry in baking bread."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_same_seed_same_weights(model_dir, corpus):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    saved = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    again = build_causal_lm(tokenizer, CONFIG).state_dict()
    other = build_causal_lm(tokenizer, TinyModelConfig(**{**CONFIG.__dict__, "seed": 6})).state_dict()
    assert saved.keys() == again.keys()
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    assert not torch.equal(saved["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_tokenizer_training_is_deterministic(model_dir, corpus):
    first = train_tokenizer([corpus], CONFIG.vocab_size).backend_tokenizer.to_str()
    second = train_tokenizer([corpus], CONFIG.vocab_size).backend_tokenizer.to_str()
    assert first == second
    saved = json.loads((model_dir / "tokenizer.json").read_text())
    assert json.loads(first)["model"]["merges"] == saved["model"]["merges"]


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        TinyModelConfig(hidden_size=64, num_attention_heads=5)
    with pytest.raises(ValueError, match="vocab_size"):
        TinyModelConfig(vocab_size=100)
    with pytest.raises(ValueError, match="corpus"):
        train_tokenizer([], 500)


def test_command_line(corpus, tmp_path):
    out = tmp_path / "cli-model"
    cli.main(
        [
            "build-tiny-models",
            "--corpus",
            str(corpus),
            str(corpus),
            "--output-dir",
            str(out),
            "--vocab-size",
            "400",
            "--hparams",
            json.dumps({"hidden_size": 32, "num_attention_heads": 2}),
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.config.vocab_size, model.config.hidden_size, model.config.num_attention_heads) == (400, 32, 2)
