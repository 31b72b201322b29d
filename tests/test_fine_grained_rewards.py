"""qa-feedback PPO rewards: placement on policy tokens by hand, R1/R2/R3 on real (tiny) Longformer RMs whose heads
are set so that their output is known, and the original's rules (docs/methods/fine_grained_rlhf.md) on literal
inputs: how samples are decoded, two segments on one token, ties between the error and O logits, over-long inputs."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    LongformerConfig,
    LongformerForSequenceClassification,
    LongformerForTokenClassification,
    T5Tokenizer,
)

from feedbackflow.errors import ConfigError
from feedbackflow.papers.fgrlhf.qa.reward_models import SegmentInput, segment_error_predictions
from feedbackflow.papers.fgrlhf.qa.rewards import question_of_prompt
from feedbackflow.rl.rewards import build_reward_functions, place_rewards, segment_end_token_indices
from feedbackflow.text.segmentation import sentence_spans, sub_sentence_spans
from feedbackflow.text.tokens import clean_up_tokenization_spaces, decode_response, decode_tokens
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


def test_place_rewards_adds_or_overwrites_on_shared_tokens():
    assert place_rewards(5, [1, 4], [0.3, -0.3]) == [0.0, 0.3, 0.0, 0.0, -0.3]
    assert place_rewards(3, [2, 2], [0.3, 0.5]) == [0.0, 0.0, 0.8]  # detox: 0.3 + 0.5
    # the original's qa rule (reward[end_idx] = value): the later segment's value replaces the earlier one's
    assert place_rewards(3, [2, 2], [0.3, -0.5], overwrite=True) == [0.0, 0.0, -0.5]
    assert place_rewards(4, [1, 3, 3], [0.3, 0.3, -0.3], overwrite=True) == [0.0, 0.3, 0.0, -0.3]


def t5_tokenizer() -> T5Tokenizer:
    """A real T5Tokenizer (SentencePiece Unigram with Metaspace, as t5-large's) on a literal vocabulary, built offline:
    <pad> 0, </s> 1, <unk> 2, then the pieces from id 3."""
    pieces = ["▁He", "▁said", "▁,", ",", "▁yes", "▁.", "."]
    return T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0) for p in pieces], extra_ids=0)


def test_policy_samples_are_decoded_with_the_originals_space_clean_up(tokenizer):
    t5 = t5_tokenizer()
    # the literal sample "_He _said _, _yes _. </s>" (ids 3 4 5 7 8 1): Metaspace gives "He said , yes ."; the
    # original (skip_special_tokens, clean_up_tokenization_spaces) then removes the spaces before "," and "."
    ids = [3, 4, 5, 7, 8, 1]
    assert t5.convert_ids_to_tokens(ids) == ["▁He", "▁said", "▁,", "▁yes", "▁.", "</s>"]
    assert decode_tokens(t5, ids) == "He said , yes ."  # special tokens skipped, nothing else (the old decoding)
    assert decode_tokens(t5, ids, clean_up_spaces=True) == "He said, yes."
    assert decode_response(t5, ids, {1}, [], clean_up_spaces=True) == "He said, yes."
    # the tiny models' byte-level BPE: the same clean-up (transformers 5 would skip its own flag for BPE)
    bpe_ids = tokenizer("He said , yes .", add_special_tokens=False)["input_ids"]
    assert decode_tokens(tokenizer, bpe_ids) == "He said , yes ."
    assert decode_tokens(tokenizer, bpe_ids, clean_up_spaces=True) == "He said, yes."
    # the contractions: " 's" -> "'s", " n't" -> "n't", " 're" -> "'re"
    assert clean_up_tokenization_spaces("it 's , do n't ! they 're ?") == "it's, don't! they're?"


class LiteralLogits(torch.nn.Module):
    """Stands in for a token RM so that the decision is checked on literal logits (one parameter: its device)."""

    def __init__(self, logits):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.logits = torch.tensor(logits)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits)


def test_a_tie_between_the_error_and_o_logits_is_an_error(tokenizer):
    # one input, separators at 1, 2, 3; logits [O, ERR]: a tie (0.5, 0.5), O ahead (1.0, 0.2), ERR ahead (0.2, 1.0).
    # The original takes argmax over [ERR, O], whose first maximum is ERR on a tie: labels 1, 0, 1 (1 = error).
    logits = [[[9.0, 0.0], [0.5, 0.5], [1.0, 0.2], [0.2, 1.0]]]
    inputs = [SegmentInput(input_ids=[5, 6, 7, 8], separator_positions=[1, 2, 3], prefix_truncated=False)]
    assert segment_error_predictions(LiteralLogits(logits), tokenizer, inputs) == [[1, 0, 1]]


class ErrorWhereTheTokenIsHigh(torch.nn.Module):
    """Stands in for a token RM whose error logit is the token id and whose O logit is 5: a separator is an error
    when its token id is at least 5 (the labels follow each input's own ids, whatever batch it lands in)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=torch.stack([torch.full(input_ids.shape, 5.0), input_ids.float()], dim=-1))


def test_predictions_come_back_in_input_order_from_length_sorted_batches(tokenizer):
    # Batches of 2 by length: [input 1 (2 ids), input 2 (3 ids)], then [input 0 (5 ids)]. By hand, per input: the ids
    # at its separators against 5: input 0 ids [1, 9, 2, 6, 3] at 1, 3 -> 9, 6 -> [1, 1]; input 1 [1, 4] at 1 -> [0];
    # input 2 [1, 7, 2] at 1, 2 -> 7, 2 -> [1, 0].
    inputs = [
        SegmentInput(input_ids=[1, 9, 2, 6, 3], separator_positions=[1, 3], prefix_truncated=False),
        SegmentInput(input_ids=[1, 4], separator_positions=[1], prefix_truncated=False),
        SegmentInput(input_ids=[1, 7, 2], separator_positions=[1, 2], prefix_truncated=False),
    ]
    expected = [[1, 1], [0], [1, 0]]
    assert segment_error_predictions(ErrorWhereTheTokenIsHigh(), tokenizer, inputs, batch_size=2) == expected
    assert segment_error_predictions(ErrorWhereTheTokenIsHigh(), tokenizer, inputs, batch_size=1) == expected


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


def test_two_segments_on_one_token_keep_the_later_reward(tmp_path, tokenizer):
    # A generation cut after 3 tokens: all 4 sub-sentence ends land on token 2 (each text[:end] has more than 3
    # tokens). Every one is judged relevant (+0.3); the original assigns, so token 2 holds 0.3, not 4 x 0.3 = 1.2.
    ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"][:3]
    assert all(len(tokenizer.tokenize(RESPONSE[:end])) > 3 for _, end in sub_sentence_spans(RESPONSE))
    (r1,) = build_reward_functions(
        [{"type": "qa_relevance", "model": token_rm(tmp_path, tokenizer, -5.0), "device": "cpu"}], tokenizer
    )
    result = r1([PROMPT], [RESPONSE], [ids])
    assert result.rewards[0] == [0.0, 0.0, 0.3]
    assert result.stats == {"n_segments": [4.0], "n_correct": [4.0]}


def test_segments_past_the_reward_models_max_length_get_no_reward(tmp_path, tokenizer):
    # R2 on the 3 sentences with max_length = bos + eos + the first two segments ([sep] + ids(" " + sentence)):
    # the prefix is cut to nothing, sentences 1 and 2 are judged (errors: -0.5 each), sentence 3 is dropped.
    ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    spans = sentence_spans(RESPONSE)
    pieces = [1 + len(tokenizer(" " + RESPONSE[a:b], add_special_tokens=False)["input_ids"]) for a, b in spans]
    max_length = 2 + pieces[0] + pieces[1]
    spec = [{"type": "qa_factuality", "model": token_rm(tmp_path, tokenizer, 5.0), "max_length": max_length,
             "device": "cpu"}]  # fmt: skip
    (r2,) = build_reward_functions(spec, tokenizer)
    result = r2([PROMPT], [RESPONSE], [ids])
    first, second, third = (len(tokenizer.tokenize(RESPONSE[:end])) - 1 for _, end in spans)
    assert third == len(ids) - 2  # the last sentence ends on the token before the eos
    expected = [0.0] * len(ids)
    expected[first], expected[second] = -0.5, -0.5
    assert result.rewards[0] == expected  # nothing at the third sentence's end
    assert result.stats == {"n_segments": [2.0], "n_correct": [0.0]}  # the dropped sentence counts in neither
    # with room for the third sentence too, it is judged (-0.5 at its end)
    spec[0]["max_length"] = max_length + pieces[2]
    (r2,) = build_reward_functions(spec, tokenizer)
    expected[third] = -0.5
    assert r2([PROMPT], [RESPONSE], [ids]).rewards[0] == expected
