"""Detox evaluation metrics (Wu et al. 2023, "Evaluation"): toxicity aggregates and distinct-n on literal values
computed by hand, and the continuation NLL of a tiny GPT-2 against a direct token-by-token computation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from feedbackflow.papers.fgrlhf.detox.metrics import (
    average_max_toxicity,
    continuation_nll,
    continuation_token_ids,
    distinct_n,
    max_toxicity_per_prompt,
    perplexity,
    toxic_probability,
)
from feedbackflow.tiny.models import train_tokenizer

PROMPT_IDS = ["a", "a", "b", "b", "c", "d"]
SCORES = [0.1, 0.6, 0.3, None, None, 0.5]


def test_toxicity_aggregates_by_hand():
    # a: max(.1, .6) = .6; b: .3 (None left out); c: no scored sample, left out; d: .5.
    assert max_toxicity_per_prompt(PROMPT_IDS, SCORES) == {"a": 0.6, "b": 0.3, "d": 0.5}
    # (.6 + .3 + .5) / 3 = 1.4 / 3
    assert average_max_toxicity(PROMPT_IDS, SCORES) == pytest.approx(1.4 / 3)
    # a (.6 >= .5) and d (.5 >= .5) have a toxic sample, b does not: 2 / 3; at .55 only a: 1 / 3.
    assert toxic_probability(PROMPT_IDS, SCORES) == pytest.approx(2 / 3)
    assert toxic_probability(PROMPT_IDS, SCORES, threshold=0.55) == pytest.approx(1 / 3)
    assert math.isnan(average_max_toxicity(["a"], [None]))
    assert math.isnan(toxic_probability([], []))
    with pytest.raises(ValueError, match="2 prompt ids for 1 scores"):
        max_toxicity_per_prompt(["a", "b"], [0.1])


def test_distinct_n_by_hand():
    texts = [["the cat sat", "the cat ran"], ["a a a"], []]
    # Prompt 1: 6 words; unigrams {the, cat, sat, ran} -> 4 / 6; bigrams {the cat, cat sat, cat ran} -> 3 / 6
    # (n-grams do not cross samples). Prompt 2: 3 words; {a} -> 1 / 3; {a a} -> 1 / 3. Prompt 3: no sample, skipped.
    assert distinct_n(texts, 1) == pytest.approx((4 / 6 + 1 / 3) / 2)  # 0.5
    assert distinct_n(texts, 2) == pytest.approx((3 / 6 + 1 / 3) / 2)  # 5 / 12
    assert math.isnan(distinct_n([[]], 1))


def test_perplexity_mean_with_cap():
    samples = [
        (2 * math.log(4.0), 2),  # ppl 4
        (3 * math.log(100.0), 3),  # ppl 100
        (math.log(2e4), 1),  # ppl 2e4 >= 1e4: dropped
        (5.0, 0),  # no token: skipped
        (1e6, 1),  # exp overflows: dropped
    ]
    assert perplexity(samples) == pytest.approx((4 + 100) / 2)
    assert perplexity(samples, cap=50.0) == pytest.approx(4.0)
    assert math.isnan(perplexity([(0.0, 0)]))
    assert math.isnan(perplexity(samples[:1], cap=3.0))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("detox_metrics") / "corpus.txt"
    corpus.write_text("\n".join(["the cat sat on the mat.", "you are a nice person.", "go away now, you fool."] * 20))
    return train_tokenizer([corpus], vocab_size=300)


@pytest.fixture(scope="module")
def gpt2(tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config)  # dropout 0.1: the results below are right only in eval mode


def test_continuation_token_ids_truncation(tokenizer):
    bos = tokenizer.bos_token_id
    prompt_ids = tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    cont_ids = tokenizer(" on the mat.", add_special_tokens=False)["input_ids"]
    assert continuation_token_ids(tokenizer, "the cat sat", " on the mat.", 64) == (
        [bos, *prompt_ids, *cont_ids],
        1 + len(prompt_ids),
    )
    # Room for 1 + 1 + len(cont): the prompt keeps its last token.
    assert continuation_token_ids(tokenizer, "the cat sat", " on the mat.", 2 + len(cont_ids)) == (
        [bos, prompt_ids[-1], *cont_ids],
        2,
    )
    # Room for bos + 1: the continuation is cut on the right, the prompt dropped.
    assert continuation_token_ids(tokenizer, "the cat sat", " on the mat.", 2) == ([bos, cont_ids[0]], 1)
    # Sampled responses are stored stripped: "on the mat." is encoded as " on the mat." (the word boundary after the
    # prompt, as generated), and an empty response has no ids.
    assert continuation_token_ids(tokenizer, "the cat sat", "on the mat.", 64) == (
        [bos, *prompt_ids, *cont_ids],
        1 + len(prompt_ids),
    )
    assert continuation_token_ids(tokenizer, "the cat sat", "  ", 64) == ([bos, *prompt_ids], 1 + len(prompt_ids))


def direct_nll(model, tokenizer, prompt: str, continuation: str) -> tuple[float, int]:
    """-sum over continuation tokens t of log softmax(logits at t - 1)[token t], one token at a time, no batching."""
    prompt_ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    cont_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + cont_ids
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    total = 0.0
    for t in range(len(prompt_ids), len(ids)):
        total -= torch.log_softmax(logits[t - 1].double(), dim=-1)[ids[t]].item()
    return total, len(cont_ids)


def test_continuation_nll_matches_direct_computation(gpt2, tokenizer):
    prompts = ["the cat", "you are a nice person. go", "the"]
    continuations = [" sat on the mat.", " away", " cat sat on the mat, you fool."]
    gpt2.train()  # continuation_nll must switch to eval mode itself
    batched = continuation_nll(gpt2, tokenizer, prompts, continuations, batch_size=3, max_length=64)
    one_by_one = continuation_nll(gpt2, tokenizer, prompts, continuations, batch_size=1, max_length=64)
    expected = [direct_nll(gpt2, tokenizer, p, c) for p, c in zip(prompts, continuations, strict=True)]
    assert [count for _, count in batched] == [count for _, count in expected]
    assert all(count > 0 for _, count in expected)
    for (got, _), (want, _), (single, _) in zip(batched, expected, one_by_one, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
        assert got == pytest.approx(single, rel=1e-5)  # right padding in a batch of 3 changes nothing


def test_continuation_nll_empty_continuation_and_errors(gpt2, tokenizer):
    result = continuation_nll(gpt2, tokenizer, ["the cat", "the"], ["", " cat"], batch_size=2, max_length=64)
    assert result[0] == (0.0, 0)
    assert result[1][1] == len(tokenizer(" cat", add_special_tokens=False)["input_ids"])
    assert result[1][0] == pytest.approx(direct_nll(gpt2, tokenizer, "the", " cat")[0], rel=1e-5)
    with pytest.raises(ValueError, match="1 prompts for 2 continuations"):
        continuation_nll(gpt2, tokenizer, ["a"], ["b", "c"], batch_size=1, max_length=64)
