"""Tiny tokenizers and models (causal LM, T5, Longformer) built from config, reloaded with the same from_pretrained
code as hub ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from feedbackflow import cli
from feedbackflow.tiny.models import (
    TinyModelConfig,
    build_causal_lm,
    build_encoder,
    build_seq2seq_lm,
    build_sequence_classifier,
    build_tiny_models,
    build_token_classifier,
    train_tokenizer,
)
from feedbackflow.tiny.synthetic import CORPUS_FILE, SyntheticDataConfig, make_synthetic_data, unescape_corpus_line

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


# -- seq2seq (T5) and longformer builders (Wu et al. 2023: the policy and the reward models of Fine-Grained RLHF) ---


@pytest.fixture(scope="module")
def seq2seq_dir(corpus, tmp_path_factory) -> Path:
    return build_tiny_models([corpus], tmp_path_factory.mktemp("models") / "t5", CONFIG, architecture="seq2seq")


@pytest.fixture(scope="module")
def longformer_dir(corpus, tmp_path_factory) -> Path:
    return build_tiny_models([corpus], tmp_path_factory.mktemp("models") / "lf", CONFIG, architecture="longformer")


def test_seq2seq_tokenizer_appends_eos_like_t5(seq2seq_dir, model_dir):
    tokenizer = AutoTokenizer.from_pretrained(seq2seq_dir)
    causal = AutoTokenizer.from_pretrained(model_dir)
    plain = causal("Happy to help.")["input_ids"]
    assert tokenizer("Happy to help.")["input_ids"] == plain + [1]  # same vocabulary, then </s>
    assert tokenizer("Happy to help.", "Thanks.")["input_ids"] == plain + [1] + causal("Thanks.")["input_ids"] + [1]
    batch = tokenizer(["Hi.", "Happy to help."], padding=True)["input_ids"]
    assert batch[0][-1] == tokenizer.pad_token_id == 2  # right padding with <pad>


def test_seq2seq_model_reloads_learns_and_generates_with_cache(seq2seq_dir):
    tokenizer = AutoTokenizer.from_pretrained(seq2seq_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(seq2seq_dir)
    config = model.config
    assert config.model_type == "t5"
    assert (config.d_model, config.d_ff, config.num_layers, config.num_decoder_layers) == (64, 128, 2, 2)
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (2, 1, 2)
    assert model.generation_config.decoder_start_token_id == 2
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()

    # A few steps teach it one mapping; greedy decoding must then reproduce the target with and without KV cache.
    source = tokenizer(["Can you give me some advice?", "Happy to help."], padding=True, return_tensors="pt")
    target = tokenizer(["Of course, baking bread.", "Thanks!"], padding=True, return_tensors="pt")["input_ids"]
    labels = target.masked_fill(target == tokenizer.pad_token_id, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):  # the decoded output is right after about 10 steps
        optimizer.zero_grad()
        model(**source, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        cached = model.generate(**source, do_sample=False, max_new_tokens=12, use_cache=True)
        uncached = model.generate(**source, do_sample=False, max_new_tokens=12, use_cache=False)
    assert torch.equal(cached, uncached)
    assert (cached[:, 0] == 2).all(), "decoding starts from <pad>"
    decoded = tokenizer.batch_decode(cached, skip_special_tokens=True)
    assert decoded == ["Of course, baking bread.", "Thanks!"]

    # Incremental decoding with the cache gives the logits of a full forward pass.
    decoder_input = cached[:1, :6]
    with torch.no_grad():
        full = model(**{k: v[:1] for k, v in source.items()}, decoder_input_ids=decoder_input).logits
        step = model(**{k: v[:1] for k, v in source.items()}, decoder_input_ids=decoder_input[:, :5], use_cache=True)
        assert step.past_key_values is not None
        last = model(
            **{k: v[:1] for k, v in source.items()},
            decoder_input_ids=decoder_input[:, 5:],
            past_key_values=step.past_key_values,
        ).logits
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-4, rtol=1e-4)


def test_seq2seq_same_seed_same_weights(seq2seq_dir):
    tokenizer = AutoTokenizer.from_pretrained(seq2seq_dir)
    saved = AutoModelForSeq2SeqLM.from_pretrained(seq2seq_dir).state_dict()
    again = build_seq2seq_lm(tokenizer, CONFIG).state_dict()
    assert saved.keys() == again.keys()
    assert all(torch.equal(saved[k], again[k]) for k in saved)


def test_longformer_tokenizer_wraps_like_roberta(longformer_dir, model_dir):
    tokenizer = AutoTokenizer.from_pretrained(longformer_dir)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    ids = tokenizer("question: who? answer: </s> It is. </s> Yes it is.")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 1 and ids.count(1) == 3  # <s> ... two separators ... </s>
    pair = tokenizer("a question", "an answer")["input_ids"]
    assert pair[0] == 0 and pair.count(1) == 3 and pair[-1] == 1
    # With the prefix space, words tokenized one by one get the tokens they have in running text.
    text = "question: Who directed the film? answer: </s> The film was directed by Mara."
    running = tokenizer(text)["input_ids"]
    split = tokenizer(text.split(), is_split_into_words=True)["input_ids"]
    # (Running text keeps the space before the separator as a token of its own, as RoBERTa's tokenizer does.)
    space = tokenizer.convert_tokens_to_ids("Ġ")
    assert [i for i, after in zip(running, running[1:] + [None], strict=True) if (i, after) != (space, 1)] == split
    # Same vocabulary as the causal tokenizer.
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(model_dir).get_vocab()


def _separator_labels(batch, label_per_separator: list[list[int]]) -> torch.Tensor:
    """-100 everywhere but on the inner </s> separators (the last </s> is the tokenizer's own)."""
    labels = torch.full_like(batch["input_ids"], -100)
    for row, values in enumerate(label_per_separator):
        positions = (batch["input_ids"][row] == 1).nonzero().flatten()[:-1]
        assert len(positions) == len(values)
        labels[row, positions] = torch.tensor(values)
    return labels


def test_longformer_token_classifier_with_padding_labels_and_reload(longformer_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(longformer_dir)
    model = AutoModelForTokenClassification.from_pretrained(longformer_dir, num_labels=3)
    assert model.config.max_position_embeddings == CONFIG.max_position_embeddings + 2 + 1  # pad id 2, offset
    assert model.config.attention_window == [CONFIG.attention_window] * CONFIG.num_hidden_layers
    assert model.config.sep_token_id == 1
    texts = [
        "question: Any tips for baking bread? answer: </s> Use active yeast. </s> Knead it well. </s> Bake it.",
        "question: Why? answer: </s> No idea.",
    ]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] % CONFIG.attention_window != 0, "the model must pad to the window itself"
    assert (batch["input_ids"][1] == 2).any(), "the second text is padded"
    labels = _separator_labels(batch, [[0, 1, 2], [1]])

    model.eval()
    output = model(**batch, labels=labels)
    assert output.logits.shape == (2, batch["input_ids"].shape[1], 3)
    # The loss is the mean cross-entropy over the four labelled separators only.
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(output.logits[keep], labels[keep])
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    # Padding does not change the logits of the short text.
    alone = tokenizer(texts[1:], return_tensors="pt")
    with torch.no_grad():
        single = model(**alone).logits[0]
        padded = model(**batch).logits[1, : single.shape[0]]
    torch.testing.assert_close(padded, single, atol=1e-5, rtol=1e-4)
    # Also with global attention on <s> and the separators (Longformer's usual choice for task tokens).
    with torch.no_grad():
        single = model(**alone, global_attention_mask=(alone["input_ids"] <= 1).long()).logits[0]
        padded = model(**batch, global_attention_mask=(batch["input_ids"] <= 1).long()).logits[1, : single.shape[0]]
    torch.testing.assert_close(padded, single, atol=1e-5, rtol=1e-4)

    # A text of the full model_max_length fits the position table.
    long_batch = tokenizer(["word " * 1000], truncation=True, return_tensors="pt")
    assert long_batch["input_ids"].shape[1] == CONFIG.max_position_embeddings
    with torch.no_grad():
        assert torch.isfinite(model(**long_batch).logits).all()

    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "rm").eval()
    assert reloaded.config.num_labels == 3
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)


def test_longformer_sequence_classifier_and_builders(longformer_dir):
    tokenizer = AutoTokenizer.from_pretrained(longformer_dir)
    model = AutoModelForSequenceClassification.from_pretrained(longformer_dir, num_labels=1).eval()
    texts = ["question: Why? answer: Because it rains.", "question: Any tips for baking bread? answer: Knead it."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = model(**batch).logits
        alone = model(**tokenizer(texts[:1], return_tensors="pt")).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores[:1], alone, atol=1e-5, rtol=1e-4)

    # What the stage saved is the seeded encoder (no pooler: the heads do not use it).
    saved = load_file(longformer_dir / "model.safetensors")
    encoder = build_encoder(tokenizer, CONFIG).state_dict()
    assert saved.keys() == encoder.keys()
    assert all(torch.equal(saved[k], encoder[k]) for k in saved)
    classifier = build_token_classifier(tokenizer, CONFIG, num_labels=3)
    assert classifier.config.num_labels == 3 and classifier.classifier.out_features == 3
    regressor = build_sequence_classifier(tokenizer, CONFIG)
    assert regressor.config.num_labels == 1
    # Same seed: the encoders of the three builders are the same weights.
    assert all(torch.equal(encoder[k], classifier.longformer.state_dict()[k]) for k in encoder)


def test_command_line_architecture(corpus, tmp_path):
    out = tmp_path / "cli-t5"
    cli.main(["build-tiny-models", "--corpus", str(corpus), "--output-dir", str(out), "--architecture", "seq2seq"])
    assert AutoModelForSeq2SeqLM.from_pretrained(out).config.model_type == "t5"
    out = tmp_path / "cli-lf"
    cli.main(
        ["build-tiny-models", "--corpus", str(corpus), "--output-dir", str(out), "--architecture", "longformer"]
        + ["--attention-window", "16"]
    )
    assert AutoModel.from_pretrained(out).config.attention_window == [16, 16]
    with pytest.raises(SystemExit):
        cli.main(["build-tiny-models", "--corpus", str(corpus), "--output-dir", str(out), "--architecture", "rnn"])
    with pytest.raises(ValueError, match="attention_window"):
        TinyModelConfig(attention_window=15)
    with pytest.raises(ValueError, match="architecture"):
        build_tiny_models([corpus], tmp_path / "x", CONFIG, architecture="rnn")
