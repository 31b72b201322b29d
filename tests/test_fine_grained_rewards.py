"""qa-feedback PPO rewards: placement on policy tokens by hand, and R1/R2/R3 on real (tiny) Longformer RMs whose heads
are set so that their output is known."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import (
    LongformerConfig,
    LongformerForSequenceClassification,
    LongformerForTokenClassification,
)

from feedbackflow.errors import ConfigError
from feedbackflow.papers.fgrlhf.qa.rewards import question_of_prompt
from feedbackflow.rl.rewards import build_reward_functions, place_rewards, segment_end_token_indices
from feedbackflow.tiny.models import train_tokenizer

WORDS = "the river star train music garden clock bridge apple old new blue green is was near far".split()
PROMPT = "question: where is the old clock? context: wikipage: Clock text: The old clock is near the river."
RESPONSE = (
    "The old clock is near the river. It was blue and green and old, very near the far bridge by the river. Music."
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("fgr_tok")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) + "." for _ in range(200)))
    return train_tokenizer([corpus], vocab_size=300, model_max_length=512)


def test_question_of_prompt():
    assert question_of_prompt(PROMPT) == "where is the old clock?"
    assert question_of_prompt("question: who? ") == "who?"
    with pytest.raises(ConfigError, match="no leading 'question:'"):
        question_of_prompt("where is it?")


def test_segment_end_token_indices_by_hand(tokenizer):
    text = "The old clock. It was blue."
    ends = [len("The old clock."), len(text)]
    first = tokenizer.tokenize("The old clock.")
    both = tokenizer.tokenize(text)
    got = segment_end_token_indices(tokenizer, text, ends, n_tokens=len(both) + 1)  # + 1: the eos
    assert got == [len(first) - 1, len(both) - 1]
    # A generation cut after 3 tokens: every segment end past it lands on the last generated token (index 2).
    assert segment_end_token_indices(tokenizer, text, ends, n_tokens=3) == [min(len(first) - 1, 2), 2]


def test_place_rewards_adds_on_shared_tokens():
    assert place_rewards(5, [1, 4], [0.3, -0.3]) == [0.0, 0.3, 0.0, 0.0, -0.3]
    assert place_rewards(3, [2, 2], [0.3, 0.5]) == [0.0, 0.0, 0.8]


def longformer_config(tokenizer, **extra):
    return LongformerConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        attention_window=8,
        max_position_embeddings=300,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def token_rm(tmp_path, tokenizer, error_bias: float):
    """A token classifier whose head ignores its input: label 1 (error) wins iff error_bias > 0."""
    model = LongformerForTokenClassification(longformer_config(tokenizer, num_labels=2))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, error_bias]))
    path = tmp_path / f"rm_{error_bias}"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def sequence_rm(tmp_path, tokenizer, score: float):
    """A sequence RM whose output is `score` for every text (zero weights, bias = score)."""
    model = LongformerForSequenceClassification(longformer_config(tokenizer, num_labels=1))
    with torch.no_grad():
        for p in model.classifier.parameters():
            p.zero_()
        model.classifier.out_proj.bias.fill_(score)
    path = tmp_path / "seq_rm"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_relevance_factuality_and_sequence_rewards(tmp_path, tokenizer):
    from feedbackflow.text.segmentation import sentence_spans, sub_sentence_spans

    ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    good, bad = token_rm(tmp_path, tokenizer, -5.0), token_rm(tmp_path, tokenizer, 5.0)
    spec = [
        {"type": "qa_relevance", "name": "r1", "model": good, "device": "cpu"},
        {"type": "qa_factuality", "name": "r2", "model": bad, "device": "cpu"},
        {
            "type": "qa_completeness",
            "name": "r3",
            "model": sequence_rm(tmp_path, tokenizer, 2.0),
            "mean": 1.0,
            "std": 4.0,
            "device": "cpu",
        },
    ]
    r1, r2, r3 = build_reward_functions(spec, tokenizer)

    # R1: no errors -> +0.3 at the end of each sub-sentence.
    subs = sub_sentence_spans(RESPONSE)
    assert len(subs) == 4  # "The old ... river." | "It was ... old," | "very near ... river." | "Music."
    result = r1([PROMPT], [RESPONSE], [ids])
    ends = segment_end_token_indices(tokenizer, RESPONSE, [b for _, b in subs], len(ids))
    assert result.rewards[0] == place_rewards(len(ids), ends, [0.3] * len(subs))
    assert result.stats == {"n_segments": [4.0], "n_correct": [4.0]}

    # R2: every sentence an error -> -0.5 at each sentence end.
    sents = sentence_spans(RESPONSE)
    assert len(sents) == 3
    result = r2([PROMPT], [RESPONSE], [ids])
    ends = segment_end_token_indices(tokenizer, RESPONSE, [b for _, b in sents], len(ids))
    assert result.rewards[0] == place_rewards(len(ids), ends, [-0.5] * 3)
    assert result.stats == {"n_segments": [3.0], "n_correct": [0.0]}

    # R3: ((2 - 1) / 4) * 0.3 = 0.075 on the last token (the eos), nothing elsewhere.
    result = r3([PROMPT], [RESPONSE], [ids])
    assert result.rewards[0][:-1] == [0.0] * (len(ids) - 1)
    assert result.rewards[0][-1] == pytest.approx(0.075, abs=1e-6)
    assert result.stats["normalised"][0] == pytest.approx(0.25, abs=1e-6)
