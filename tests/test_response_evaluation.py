"""Response evaluation: per-origin reward and perplexity (the RRHF paper's Table 2 columns)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from feedbackflow.stages.response_evaluation import ResponseEvaluationConfig, origin_metrics, response_nll
from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer


def test_origin_metrics_by_hand():
    scored = pd.DataFrame(
        {
            "origin": ["chosen", "chosen", "policy", "policy"],
            "score": [1.0, 3.0, -1.0, None],
            "status": ["ok", "ok", "ok", "failed"],
        }
    )
    nll = [(2.0, 2), (4.0, 2), (3.0, 3), (0.0, 1)]
    rows = {row["origin"]: row for row in origin_metrics(scored, nll)}
    # chosen: mean reward (1 + 3) / 2 = 2; perplexity exp((2 + 4) / (2 + 2)) = exp(1.5)
    assert rows["chosen"]["mean_reward"] == 2.0
    assert rows["chosen"]["perplexity"] == pytest.approx(math.exp(1.5))
    assert rows["chosen"]["mean_response_tokens"] == 2.0
    # policy: only the "ok" score counts (-1); perplexity exp((3 + 0) / (3 + 1)) = exp(0.75)
    assert rows["policy"]["mean_reward"] == -1.0 and rows["policy"]["n_scored"] == 1
    assert rows["policy"]["perplexity"] == pytest.approx(math.exp(0.75))
    assert rows["policy"]["n_responses"] == 2


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text("\n".join(["Human: how do I save money? Assistant: make a budget."] * 20 + ["hello world"] * 5))
    config = TinyModelConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=64)  # fmt: skip
    tokenizer = train_tokenizer([corpus], config.vocab_size, config.max_position_embeddings)
    return build_causal_lm(tokenizer, config), tokenizer


def test_response_nll_counts_only_response_tokens_and_ignores_batching(tiny_lm):
    model, tokenizer = tiny_lm
    pairs = [("Human: how do I save money? Assistant:", " make a budget."), ("hello", " world")]
    batched = response_nll(model, tokenizer, pairs, ResponseEvaluationConfig(max_length=64, batch_size=2))
    for (prompt, response), (total, count) in zip(pairs, batched, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert count == len(response_ids)
        ids = torch.tensor([prompt_ids + response_ids])
        with torch.no_grad():
            logprobs = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        expected = -sum(float(logprobs[len(prompt_ids) + k - 1, t]) for k, t in enumerate(response_ids))
        assert total == pytest.approx(expected, rel=1e-4)


def test_long_prompts_are_cut_on_the_left(tiny_lm):
    model, tokenizer = tiny_lm
    long_prompt = "Human: how do I save money? " * 20 + "Assistant:"
    [(total, count)] = response_nll(model, tokenizer, [(long_prompt, " make a budget.")],
                                    ResponseEvaluationConfig(max_length=16, batch_size=1))  # fmt: skip
    assert count == len(tokenizer(" make a budget.", add_special_tokens=False)["input_ids"]) + 1
    assert math.isfinite(total)
