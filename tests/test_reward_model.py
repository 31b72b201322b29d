"""DSP reward model (Cheng et al. 2023; docs/methods/dsp.md): pooling, text encoding, the head, and the save/load
round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from feedbackflow.errors import ConfigError
from feedbackflow.models.reward_model import (
    HEAD_FILE,
    META_FILE,
    POOLINGS,
    RewardModel,
    encode_texts,
    fit_reward_sequence,
    is_reward_model_dir,
    load_reward_model,
    pool_hidden_states,
    save_reward_model,
)
from feedbackflow.text.tokens import pad_id_of, pad_right
from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

TINY = TinyModelConfig(
    seed=3,
    vocab_size=300,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=64,
)

CORPUS = [
    "## Human:\\nWhat is the capital of France?\\n\\n## Assistant:\\nParis is the capital of France.",
    "the quick brown fox jumps over the lazy dog",
    "one two three four five six seven eight nine ten",
    "Human: how do I bake bread? Assistant: mix flour, water, salt and yeast, then bake.",
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda",
]


# ---------------------------------------------------------------------------------------------------------------
# pooling on a literal hidden tensor

# seq 0: length 4 (bos, a, b, eos); seq 1: length 3 (bos, a, eos) + one pad position with large values
HIDDEN = torch.tensor(
    [
        [[1.0, 2.0], [3.0, -4.0], [5.0, 6.0], [7.0, 8.0]],
        [[-1.0, -5.0], [2.0, -3.0], [4.0, -2.0], [100.0, 100.0]],
    ]
)
ATTENTION = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


@pytest.mark.parametrize(
    "pooling, expected",
    [
        # last real token before eos: position length - 2 -> seq 0 pos 2, seq 1 pos 1
        ("last", [[5.0, 6.0], [2.0, -3.0]]),
        # eos: position length - 1 -> seq 0 pos 3, seq 1 pos 2
        ("eos", [[7.0, 8.0], [4.0, -2.0]]),
        # average over real tokens: seq 0 ((1+3+5+7)/4, (2-4+6+8)/4) = (4, 3);
        # seq 1 ((-1+2+4)/3, (-5-3-2)/3) = (5/3, -10/3)
        ("average", [[4.0, 3.0], [5 / 3, -10 / 3]]),
        # max over real tokens: seq 0 (7, 8); seq 1 (4, -2): the pad (100, 100) is excluded, and not replaced by 0
        ("max", [[7.0, 8.0], [4.0, -2.0]]),
    ],
)
def test_pooling_literal(pooling, expected):
    got = pool_hidden_states(HIDDEN, ATTENTION, pooling)
    assert got.shape == (2, 2)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6), got


def test_pooling_bool_mask_and_bfloat16():
    got = pool_hidden_states(HIDDEN.to(torch.bfloat16), ATTENTION.bool(), "max")
    assert got.float().tolist() == [[7.0, 8.0], [4.0, -2.0]]


def test_pooling_unknown_raises():
    with pytest.raises(ConfigError):
        pool_hidden_states(HIDDEN, ATTENTION, "first")


# ---------------------------------------------------------------------------------------------------------------
# tokenizer and encoding


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 3) + "\n", encoding="utf-8")
    return train_tokenizer([corpus], vocab_size=TINY.vocab_size, model_max_length=TINY.max_position_embeddings)


def test_tokenizer_specials(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert pad_id_of(tokenizer) == 2


def test_encode_adds_bos_and_eos(tokenizer):
    texts = ["the lazy dog", "Paris"]
    raw = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert all(raw) and all(0 not in ids and 1 not in ids for ids in raw)
    assert encode_texts(tokenizer, texts, 64) == [[0, *raw[0], 1], [0, *raw[1], 1]]


def test_fit_reward_sequence_by_hand():
    # bos [0], ids [10, 11, 12, 13, 14, 15], eos 1: the full sequence [0, 10, 11, 12, 13, 14, 15, 1] has 8 tokens.
    # DSP's rule (Linear95/DSP reward_tokenize, truncation side left: inp_ids[-max_length:]): its last 5 tokens,
    # [12, 13, 14, 15, 1] -- the bos goes with the beginning.
    ids = [10, 11, 12, 13, 14, 15]
    assert fit_reward_sequence([0], ids, 1, 5) == [12, 13, 14, 15, 1]
    # keep_bos (RRHF scoring): bos + the last 5 - 2 = 3 text ids + eos = [0, 13, 14, 15, 1]
    assert fit_reward_sequence([0], ids, 1, 5, keep_bos=True) == [0, 13, 14, 15, 1]
    # exactly max_length (8) or shorter: untouched, bos included
    assert fit_reward_sequence([0], ids, 1, 8) == [0, 10, 11, 12, 13, 14, 15, 1]
    assert fit_reward_sequence([0], ids, 1, 8, keep_bos=True) == [0, 10, 11, 12, 13, 14, 15, 1]
    # one over: only the bos goes under DSP's rule, only the first id under keep_bos
    assert fit_reward_sequence([0], ids, 1, 7) == [10, 11, 12, 13, 14, 15, 1]
    assert fit_reward_sequence([0], ids, 1, 7, keep_bos=True) == [0, 11, 12, 13, 14, 15, 1]
    # no bos: both rules keep the last 5 tokens, [12, 13, 14, 15, 1]
    assert fit_reward_sequence([], ids, 1, 5) == [12, 13, 14, 15, 1]
    assert fit_reward_sequence([], ids, 1, 5, keep_bos=True) == [12, 13, 14, 15, 1]


def test_encode_truncates_on_the_left(tokenizer):
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda"
    raw = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(raw) > 6
    (encoded,) = encode_texts(tokenizer, [text], 6)
    # DSP's rule: the last 6 tokens of bos + ids + eos: the last 5 text ids and eos, no bos
    assert encoded == [raw[-5], raw[-4], raw[-3], raw[-2], raw[-1], 1]
    kept = tokenizer.decode(encoded[:-1])
    assert kept and text.endswith(kept) and "alpha" not in kept
    # keep_bos: bos, the last 4 text ids, eos
    assert encode_texts(tokenizer, [text], 6, keep_bos=True) == [[0, raw[-4], raw[-3], raw[-2], raw[-1], 1]]
    # the smallest length allowed (bos, one text token, eos)
    assert encode_texts(tokenizer, [text], 3) == [[raw[-2], raw[-1], 1]]
    assert encode_texts(tokenizer, [text], 3, keep_bos=True) == [[0, raw[-1], 1]]
    # a short text is not padded nor truncated
    short = tokenizer("dog", add_special_tokens=False)["input_ids"]
    assert encode_texts(tokenizer, ["dog"], 6) == [[0, *short, 1]]


@pytest.mark.parametrize("max_length", [0, 1, 2])
def test_encode_max_length_too_small(tokenizer, max_length):
    with pytest.raises(ConfigError):
        encode_texts(tokenizer, ["the lazy dog"], max_length)


def test_pad_right():
    ids, mask = pad_right([[0, 5, 1], [0, 1], [0, 7, 8, 9, 1]], pad_id=2)
    assert ids.tolist() == [[0, 5, 1, 2, 2], [0, 1, 2, 2, 2], [0, 7, 8, 9, 1]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert ids.dtype == torch.long


# ---------------------------------------------------------------------------------------------------------------
# the model


@pytest.fixture(scope="module")
def lm_dir(tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "tiny"
    lm = build_causal_lm(tokenizer, TINY)
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def batch(tokenizer):
    sequences = encode_texts(tokenizer, ["the quick brown fox", "Paris", "one two three four five six"], 32)
    return sequences, *pad_right(sequences, pad_id_of(tokenizer))


def rewards_of(model, input_ids, attention_mask):
    with torch.no_grad():
        return model(input_ids, attention_mask).rewards


def test_plain_lm_gets_seeded_head(lm_dir, batch):
    _, input_ids, attention = batch
    a, tokenizer = load_reward_model(str(lm_dir), seed=11)
    b, _ = load_reward_model(str(lm_dir), seed=11)
    c, _ = load_reward_model(str(lm_dir), seed=12)
    assert not is_reward_model_dir(lm_dir)
    assert a.pooling == "last"
    assert a.reward_head.bias is None
    assert a.reward_head.weight.shape == (1, TINY.hidden_size)
    assert torch.equal(a.reward_head.weight, b.reward_head.weight)
    assert not torch.equal(a.reward_head.weight, c.reward_head.weight)
    # drawn from N(0, initializer_range = 0.02): 16 values, none larger than 10 sigma, not all zero
    weight = a.reward_head.weight.abs()
    assert 0 < weight.max().item() < 0.2
    assert torch.equal(rewards_of(a, input_ids, attention), rewards_of(b, input_ids, attention))
    assert not torch.equal(rewards_of(a, input_ids, attention), rewards_of(c, input_ids, attention))
    assert tokenizer.eos_token_id == 1


def test_save_and_reload_gives_identical_rewards(lm_dir, batch, tmp_path):
    _, input_ids, attention = batch
    model, tokenizer = load_reward_model(str(lm_dir), pooling="average", seed=5)
    with torch.no_grad():
        model.reward_head.weight.mul_(10)  # a trained-looking head, not the seed's
    before = rewards_of(model, input_ids, attention)
    out = tmp_path / "rm"
    save_reward_model(model, tokenizer, out, extra_metadata={"mean": 0.5, "std": 2.0})
    assert is_reward_model_dir(out)
    assert (out / HEAD_FILE).is_file() and (out / "model.safetensors").is_file()
    meta = json.loads((out / META_FILE).read_text())
    assert meta["pooling"] == "average"
    assert meta["head"] == "linear_no_bias"
    assert meta["hidden_size"] == TINY.hidden_size
    assert (meta["mean"], meta["std"]) == (0.5, 2.0)

    # the seed does not matter for a saved reward model
    reloaded, reloaded_tokenizer = load_reward_model(str(out), seed=999)
    assert reloaded.pooling == "average"
    assert torch.equal(reloaded.reward_head.weight, model.reward_head.weight)
    assert torch.equal(rewards_of(reloaded, input_ids, attention), before)
    assert reloaded_tokenizer.eos_token_id == tokenizer.eos_token_id

    overridden, _ = load_reward_model(str(out), pooling="max")
    assert overridden.pooling == "max"
    assert torch.equal(overridden.reward_head.weight, model.reward_head.weight)
    assert not torch.equal(rewards_of(overridden, input_ids, attention), before)


def test_save_uses_given_state_dict(lm_dir, tmp_path):
    model, tokenizer = load_reward_model(str(lm_dir), seed=5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["reward_head.weight"] = torch.full_like(state["reward_head.weight"], 0.25)
    save_reward_model(model, tokenizer, tmp_path / "rm", state_dict=state)
    reloaded, _ = load_reward_model(str(tmp_path / "rm"))
    assert reloaded.reward_head.weight.tolist() == [[0.25] * TINY.hidden_size]


def test_pooling_override_on_plain_lm(lm_dir):
    model, _ = load_reward_model(str(lm_dir), pooling="eos")
    assert model.pooling == "eos"


def test_unknown_pooling_raises(lm_dir):
    with pytest.raises(ConfigError):
        load_reward_model(str(lm_dir), pooling="mean")


@pytest.mark.parametrize("pooling", POOLINGS)
def test_reward_does_not_depend_on_right_padding(lm_dir, batch, pooling):
    sequences, input_ids, attention = batch
    model, _ = load_reward_model(str(lm_dir), pooling=pooling, seed=1)
    model.eval()
    batched = rewards_of(model, input_ids, attention)
    for row, seq in enumerate(sequences):
        alone = rewards_of(model, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
        assert batched[row].item() == pytest.approx(alone.item(), abs=1e-5)
    # the pooled value is the head applied to the pooled hidden state of the body
    with torch.no_grad():
        hidden = model.lm.base_model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        pooled = pool_hidden_states(hidden, attention, pooling)
    assert torch.allclose(batched, pooled @ model.reward_head.weight[0], atol=1e-6)


def test_rewards_differ_between_poolings(lm_dir, batch):
    _, input_ids, attention = batch
    values = {}
    for pooling in POOLINGS:
        model, _ = load_reward_model(str(lm_dir), pooling=pooling, seed=1)
        values[pooling] = rewards_of(model, input_ids, attention)
    for i, first in enumerate(POOLINGS):
        for second in POOLINGS[i + 1 :]:
            assert not torch.allclose(values[first], values[second]), (first, second)


def test_lm_logits_when_asked(lm_dir, batch):
    _, input_ids, attention = batch
    model, tokenizer = load_reward_model(str(lm_dir), seed=1)
    model.eval()
    with torch.no_grad():
        plain = model(input_ids, attention)
        out = model(input_ids, attention, return_lm_logits=True)
        reference = model.lm(input_ids=input_ids, attention_mask=attention).logits
    assert plain.lm_logits is None
    assert out.lm_logits.shape == (input_ids.shape[0], input_ids.shape[1], len(tokenizer))
    assert torch.allclose(out.lm_logits, reference, atol=1e-5)
    assert out.rewards.shape == (input_ids.shape[0],)


def test_reward_model_constructor(tokenizer):
    lm = build_causal_lm(tokenizer, TINY)
    with pytest.raises(ConfigError):
        RewardModel(lm, pooling="sum")
    model = RewardModel(lm, pooling="max")
    assert model.config is lm.config
    assert model.reward_head.weight.shape == (1, TINY.hidden_size)
