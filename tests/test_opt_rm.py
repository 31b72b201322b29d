"""OPT-RM (Scheurer et al. 2023): the answer loss, P(Yes) and pair accuracy by hand on literal logits, the length
rule, and training / evaluation / scoring / best-of-n on a tiny causal LM built here, in this process.

The tiny comparison world: every post is about a topic; the preferred summary says the trip was "great", the other
that it was "awful", so a model that reads the summary can reach accuracy 1 on held-out posts of other topics.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from feedbackflow import cli
from feedbackflow.core.formats import SAMPLES, SCORED_SAMPLES, SLF5K_COMPARISONS, SLF5K_POSTS, read_table, write_rows
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.ilf import opt_rm as rm
from feedbackflow.papers.ilf.prompts import opt_rm_prompt
from feedbackflow.tiny.models import TinyModelConfig, build_tiny_models, train_tokenizer

TRAIN_TOPICS = ["apples", "rivers", "stars", "trains", "music", "gardens", "clocks", "bridges"]
HELD_OUT_TOPICS = ["boats", "castles", "forests", "markets"]
HPARAMS = {
    "batch_size": 8,
    "micro_batch_size": 4,  # 2 micro batches a step: gradient accumulation is on
    "learning_rate": 1e-2,
    "num_epochs": 8,
    "warmup_ratio": 0.0,
    "max_input_length": 96,
    "checkpoint_every": 5,
    "eval_batch_size": 16,
}
N_TRAIN = 32  # 64 examples, 8 steps an epoch, 64 steps


def comparison_rows(topics: list[str], n: int, seed: int, source: str) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        good, bad = f"the {topic} trip was great.", f"the {topic} trip was awful."
        a_first = rng.random() < 0.5
        rows.append(
            {
                "post_id": f"{source}{i}",
                "title": f"About {topic}",
                "post": f"I went to see the {topic} with my friend {rng.choice(['Ann', 'Bob', 'Cy'])} on day {i}.",
                "summary_a": good if a_first else bad,
                "summary_b": bad if a_first else good,
                "preferred": "A" if a_first else "B",
                "source": source,
                "record": i,
            }
        )
    return rows


@pytest.fixture
def in_process_training():
    """Restore what a trainer run in this process changes: the SIGTERM handler (its StopSignal) and torch's threads."""
    previous, threads = signal.getsignal(signal.SIGTERM), torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    signal.signal(signal.SIGTERM, previous)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("opt_rm")
    train = comparison_rows(TRAIN_TOPICS, N_TRAIN, seed=0, source="train")
    test = comparison_rows(HELD_OUT_TOPICS, 12, seed=1, source="test")
    corpus = root / "corpus.txt"
    lines = [
        opt_rm_prompt(r["title"], r["post"], r[s]).replace("\n", "\\n") + answer
        for r in train + test
        for s, answer in (("summary_a", " Yes"), ("summary_b", " No"))
    ]
    corpus.write_text("\n".join(lines) + "\n")
    config = TinyModelConfig(vocab_size=400, hidden_size=32, intermediate_size=64, max_position_embeddings=128)
    model = build_tiny_models([corpus], root / "model", config)
    paths = {"train": root / "train.parquet", "test": root / "test.parquet"}
    write_rows(train, paths["train"], SLF5K_COMPARISONS)
    write_rows(test, paths["test"], SLF5K_COMPARISONS)
    return {"root": root, "model": model, "corpus": corpus, "test_rows": test, **paths}


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["model"])


# --- the rules, by hand --------------------------------------------------------------------------------------------

YES_ID, NO_ID = 1, 2
# Row 0: exp(logits) = [1, 3, 1, 1], sum 6: P(Yes) = 3/6, P(No) = 1/6.
# Row 1: exp(logits) = [2, 1, 4, 2], sum 9: P(Yes) = 1/9, P(No) = 4/9.
LOGITS = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0], [math.log(2.0), 0.0, math.log(4.0), math.log(2.0)]])


def test_answer_token_loss_is_the_full_vocabulary_cross_entropy_of_the_answer():
    targets = torch.tensor([True, False])  # row 0 is a preferred summary (Yes), row 1 the other (No)
    # row 0: -ln(3/6) = ln 2 = 0.69315; row 1: -ln(4/9) = ln(9/4) = 0.81093
    per_example = rm.answer_token_loss(LOGITS, targets, YES_ID, NO_ID, reduction="none")
    torch.testing.assert_close(per_example, torch.tensor([math.log(2.0), math.log(9 / 4)]))
    torch.testing.assert_close(rm.answer_token_loss(LOGITS, targets, YES_ID, NO_ID), per_example.mean())
    torch.testing.assert_close(rm.answer_token_loss(LOGITS, targets, YES_ID, NO_ID, reduction="sum"), per_example.sum())
    # the same rows with the other targets: row 0 No: -ln(1/6) = ln 6; row 1 Yes: -ln(1/9) = ln 9
    swapped = rm.answer_token_loss(LOGITS, ~targets, YES_ID, NO_ID, reduction="none")
    torch.testing.assert_close(swapped, torch.tensor([math.log(6.0), math.log(9.0)]))
    # not a two-way softmax over Yes/No, which would give row 0 -ln(3/4) = 0.28768
    assert not math.isclose(per_example[0].item(), -math.log(3 / 4), abs_tol=1e-3)


def test_yes_probability_is_normalised_over_the_two_answers():
    # row 0: (3/6) / (3/6 + 1/6) = 3/4; row 1: (1/9) / (1/9 + 4/9) = 1/5
    torch.testing.assert_close(rm.yes_probability(LOGITS, YES_ID, NO_ID), torch.tensor([0.75, 0.2]))
    # the same from full-vocabulary log-probs (the scoring path): log P(Yes), log P(No) per row
    log_probs = torch.tensor([[math.log(3 / 6), math.log(1 / 6)], [math.log(1 / 9), math.log(4 / 9)]]).double()
    torch.testing.assert_close(rm.normalised_p_yes(log_probs), torch.tensor([0.75, 0.2], dtype=torch.float64))


def test_pair_accuracy_counts_a_tie_as_half():
    # pairs: 0.9 > 0.1 win (1), 0.5 = 0.5 tie (1/2), 0.2 < 0.3 loss (0), 0.8 > 0.7 win (1): 2.5 / 4
    assert rm.pair_accuracy([0.9, 0.5, 0.2, 0.8], [0.1, 0.5, 0.3, 0.7]) == 0.625
    assert rm.pair_accuracy(torch.tensor([0.4, 0.4]), torch.tensor([0.4, 0.4])) == 0.5  # a constant scorer: chance
    with pytest.raises(ValueError, match="no pairs"):
        rm.pair_accuracy([], [])
    with pytest.raises(ValueError, match="equal length"):
        rm.pair_accuracy([0.1, 0.2], [0.3])


def test_comparison_metrics_read_examples_as_preferred_then_other():
    # pair 0: P(Yes|preferred) = 3/4 (row 0) vs 1/5 (row 1): a win; raw P(Yes) 1/2 vs 1/9: a win too
    log_probs = torch.tensor([[math.log(3 / 6), math.log(1 / 6)], [math.log(1 / 9), math.log(4 / 9)]])
    metrics = rm.comparison_metrics(log_probs.double())
    assert (metrics["accuracy"], metrics["accuracy_unnormalised"], metrics["n_pairs"], metrics["ties"]) == (1, 1, 1, 0)
    assert metrics["mean_p_yes_preferred"] == pytest.approx(0.75) and metrics["mean_p_yes_other"] == pytest.approx(0.2)
    assert metrics["mean_yes_no_mass"] == pytest.approx((4 / 6 + 5 / 9) / 2)


# --- the length rule ----------------------------------------------------------------------------------------------


def test_fit_prompt_cuts_the_end_of_the_post_then_the_start():
    ids = [10, 11, 20, 21, 22, 23, 30, 31, 32]  # head 10 11 | post 20-23 (tokens 2..6) | question 30 31 32
    assert rm.fit_prompt(ids, (2, 6), 9) == (ids, False, False)
    assert rm.fit_prompt(ids, (2, 6), 7) == ([10, 11, 20, 21, 30, 31, 32], True, False)  # the post's last 2 go
    assert rm.fit_prompt(ids, (2, 6), 5) == ([10, 11, 30, 31, 32], True, False)  # no post token left
    assert rm.fit_prompt(ids, (2, 6), 3) == ([30, 31, 32], True, True)  # then the start: the question stays
    assert rm.fit_prompt([10, 30, 31], (1, 1), 2) == ([30, 31], False, True)  # an empty post: left truncation


def test_encode_prompts_keeps_the_title_and_the_question_and_cuts_the_post(tokenizer):
    title, summary = "About apples", "the apples trip was great."
    post = " ".join(f"word{i}" for i in range(60))
    full = rm.encode_prompts(tokenizer, [title], [post], [summary], 1000)
    expected = [tokenizer.bos_token_id] + tokenizer(opt_rm_prompt(title, post, summary))["input_ids"]
    assert full.token_ids == [expected] and (full.truncated_posts, full.left_truncated) == (0, 0)
    limit = len(expected) - 40
    cut = rm.encode_prompts(tokenizer, [title], [post], [summary], limit)
    assert len(cut.token_ids[0]) == limit and (cut.truncated_posts, cut.left_truncated) == (1, 0)
    text = tokenizer.decode(cut.token_ids[0][1:])
    head, question = "Title: About apples\n\nText: word0 word1", "\n\nTL;DR: the apples trip was great.\n\nQuestion:"
    assert text.startswith(head) and question in text and text.endswith("Answer with Yes or No.\n\nAnswer:")
    assert "word59" not in text  # the end of the post went
    # With room for the tail only, the title and the whole post go; the end ("... Answer:") is still there.
    tail = tokenizer(opt_rm_prompt(title, "", summary).split("Text: ")[1])["input_ids"]
    short = rm.encode_prompts(tokenizer, [title], [post], [summary], len(tail) - 3)
    assert (short.truncated_posts, short.left_truncated) == (1, 1)
    assert short.token_ids[0][0] == tokenizer.bos_token_id and len(short.token_ids[0]) == len(tail) - 3
    assert tokenizer.decode(short.token_ids[0][1:]).endswith("Yes or No.\n\nAnswer:")


def test_answer_tokens_must_be_single_tokens(tokenizer, tiny, tmp_path):
    yes_id, no_id = rm.answer_token_ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens([yes_id, no_id]) == ["ĠYes", "ĠNo"]  # byte-level " Yes", " No"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Answer: maybe\nAnswer: perhaps\n" * 20)
    bare = train_tokenizer([corpus], vocab_size=270)  # a few merges, none for " Yes"
    with pytest.raises(ConfigError, match="'Yes' after 'Answer:' is not one token"):
        rm.answer_token_ids(bare)


def test_left_padding_gives_the_logits_of_the_unpadded_sequences(tiny, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    rows = tiny["test_rows"][:2]
    encoded = rm.encode_prompts(
        tokenizer, [r["title"] for r in rows], ["a short post.", rows[1]["post"]], [r["summary_a"] for r in rows], 96
    ).token_ids
    assert len(encoded[0]) != len(encoded[1])
    with torch.no_grad():
        batched = rm.answer_logits(model, encoded, tokenizer.pad_token_id, "cpu")
        alone = torch.cat([model(torch.tensor([ids])).logits[:, -1] for ids in encoded])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"preferred": "Summary A"}, "preferred", "not 'A' or 'B'"),
        ({"summary_b": "   "}, "summary_b", "empty summary"),
    ],
)
def test_bad_comparisons_name_file_record_and_field(tmp_path, change, field, message):
    rows = comparison_rows(TRAIN_TOPICS, 5, seed=0, source="x")
    rows[3] = {**rows[3], **change}
    path = tmp_path / "bad.parquet"
    write_rows(rows, path, SLF5K_COMPARISONS)
    with pytest.raises(DataError, match=message) as error:
        rm.load_comparisons([str(path)])
    assert (error.value.path, error.value.record, error.value.field) == (str(path), 3, field)


def test_each_pair_gives_a_yes_example_and_a_no_example(tmp_path, tokenizer):
    rows = comparison_rows(TRAIN_TOPICS, 6, seed=0, source="x")
    assert {r["preferred"] for r in rows} == {"A", "B"}  # both orders occur in this literal set
    path = tmp_path / "pairs.parquet"
    write_rows(rows, path, SLF5K_COMPARISONS)
    data = rm.load_comparisons([str(path)])
    assert all("great" in s for s in data.preferred) and all("awful" in s for s in data.other)
    assert data.origins == [(str(path), i) for i in range(6)]
    pairs = rm.encode_pairs(data, tokenizer, 96)
    assert pairs.labels == [True, False] * 6  # example 2i: preferred (Yes), 2i + 1: the other (No)
    assert pairs.token_ids[2] == rm.encode_prompts(tokenizer, [data.titles[1]], [data.posts[1]], [data.preferred[1]],
                                                   96).token_ids[0]  # fmt: skip


# --- training, evaluation, scoring, best-of-n ------------------------------------------------------------------------


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> dict:
    """The reference run and the held-out accuracy before and after it (one training run shared by several tests)."""
    previous, threads = signal.getsignal(signal.SIGTERM), torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    config = rm.OptRMTrainingConfig(**HPARAMS)
    try:
        summary = rm.train_opt_rm(
            [str(tiny["train"])], [str(tiny["test"])], str(tiny["model"]), str(root / "out"), str(root / "work"), config
        )
        scoring = rm.OptRMScoringConfig(batch_size=8)
        before = rm.evaluate_opt_rm([str(tiny["test"])], str(tiny["model"]), root / "before.json", scoring)
        after = rm.evaluate_opt_rm([str(tiny["test"])], str(root / "out"), root / "after.json", scoring)
    finally:
        signal.signal(signal.SIGTERM, previous)
        torch.set_num_threads(threads)
    return {"root": root, "out": root / "out", "summary": summary, "before": before, "after": after}


def test_training_raises_held_out_accuracy_and_writes_the_model_directory(trained, tiny):
    from transformers import AutoModelForCausalLM

    out, summary = trained["out"], trained["summary"]
    before, after = trained["before"], trained["after"]
    # the untrained model cannot tell "great" from "awful"; the trained one ranks every held-out pair right
    assert after["accuracy"] == 1.0 and after["n_pairs"] == 12
    assert after["mean_p_yes_preferred"] - after["mean_p_yes_other"] > 0.5
    assert abs(before["mean_p_yes_preferred"] - before["mean_p_yes_other"]) < 0.05
    assert after["paper_accuracy"] == {"5K": 0.734, "1K": 0.672, "100": 0.534}
    log = pd.read_parquet(out / "training_log.parquet")
    assert log["step"].tolist() == list(range(1, 65)) and log["epoch"].tolist() == [s // 8 for s in range(64)]
    # from about ln(vocabulary) to well below ln 2 = 0.693, the loss of a model that only learned "Yes or No, 50/50"
    assert log["loss"].iloc[:4].mean() > 4.0 and log["loss"].iloc[-8:].mean() < 0.4
    meta = json.loads((out / "opt_rm.json").read_text())
    assert meta == summary
    yes_id, no_id = meta["answers"]["yes"]["id"], meta["answers"]["no"]["id"]
    assert meta["answers"]["yes"]["text"] == " Yes" and meta["answers"]["no"]["text"] == " No"
    assert (meta["train_pairs"], meta["train_examples"], meta["steps"], meta["steps_per_epoch"]) == (32, 64, 64, 8)
    assert [e["step"] for e in meta["evaluations"]] == list(range(8, 65, 8))  # dev accuracy after every epoch
    assert meta["evaluations"][-1]["accuracy"] == after["accuracy"]
    assert meta["max_input_length"] == 96 and meta["truncated_posts"] == 0
    model = AutoModelForCausalLM.from_pretrained(out)  # a plain causal-LM directory
    assert model.config.vocab_size > max(yes_id, no_id)
    assert not (trained["root"] / "work").exists()


def test_a_run_stopped_by_sigterm_resumes_to_the_same_model(trained, tiny, tmp_path, monkeypatch, in_process_training):
    """SIGTERM during step 11: the trainer saves a checkpoint after that step and exits 143; the rerun resumes at
    step 11 and ends with the weights and log of the uninterrupted run."""
    calls = {"n": 0}
    original = rm.backward_micro_batch

    def signalling_backward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 21:  # step 11's first micro batch (2 a step)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(rm, "backward_micro_batch", signalling_backward)
    config = rm.OptRMTrainingConfig(**HPARAMS)
    arguments = ([str(tiny["train"])], [str(tiny["test"])], str(tiny["model"]), str(tmp_path / "out"))
    with pytest.raises(SystemExit) as stopped:
        rm.train_opt_rm(*arguments, str(tmp_path / "work"), config)
    assert stopped.value.code == 143 and not (tmp_path / "out").exists()
    assert (tmp_path / "work" / "checkpoint-00000011" / "trainer_state.json").is_file()
    monkeypatch.setattr(rm, "backward_micro_batch", original)
    calls_before = calls["n"]
    rm.train_opt_rm(*arguments, str(tmp_path / "work"), config)
    assert calls["n"] == calls_before  # the rerun did not go through the patched function
    reference, resumed = weights_of(trained["out"]), weights_of(tmp_path / "out")
    assert reference.keys() == resumed.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], atol=0, rtol=0, msg=name)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "out" / "training_log.parquet"),
        pd.read_parquet(trained["out"] / "training_log.parquet"),
    )


def literal_samples() -> list[dict]:
    """Two held-out posts, three samples each: post test0 has one "great" summary (sample 1), post test1 two (samples
    0 and 2, the same text)."""
    responses = {
        "test0": ["the boats trip was awful.", "the boats trip was great.", "the boats trip was awful."],
        "test1": ["the castles trip was great.", "the castles trip was awful.", "the castles trip was great."],
    }
    return [
        {
            "prompt_id": pid,
            "prompt": f"summary prompt of {pid}",
            "response": text,
            "origin": "policy",
            "sample_index": k,
        }
        for pid, texts in responses.items()
        for k, text in enumerate(texts)
    ]


def posts_rows(tiny) -> list[dict]:
    return [
        {"post_id": r["post_id"], "subreddit": "tiny", "title": r["title"], "post": r["post"],
         "reference_summary": None, "source": "test", "record": i}
        for i, r in enumerate(tiny["test_rows"])
    ]  # fmt: skip


def test_score_opt_rm_and_best_of_n_end_to_end(trained, tiny, tmp_path, in_process_training):
    samples, posts = tmp_path / "samples.parquet", tmp_path / "posts.parquet"
    write_rows(literal_samples(), samples, SAMPLES)
    write_rows(posts_rows(tiny), posts, SLF5K_POSTS)
    scored_path, best_path = tmp_path / "scored.parquet", tmp_path / "best.parquet"
    model = str(trained["out"])
    cli.main(["score-opt-rm", "--samples", str(samples), "--posts", str(posts), "--model", model,
              "--output", str(scored_path), "--batch-size", "4"])  # fmt: skip
    scored = read_table(scored_path, SCORED_SAMPLES).to_pylist()
    assert [(r["prompt_id"], r["sample_index"]) for r in scored] == [(r["prompt_id"], r["sample_index"])
                                                                     for r in literal_samples()]  # fmt: skip
    assert {r["scorer"] for r in scored} == {f"opt-rm:{model}"} and {r["status"] for r in scored} == {"ok"}
    great = [r["score"] for r in scored if "great" in r["response"]]
    awful = [r["score"] for r in scored if "awful" in r["response"]]
    assert min(great) > max(awful)
    # the same text scores the same up to float rounding (its batch and padding differ)
    assert scored[0]["score"] == pytest.approx(scored[2]["score"], abs=1e-5)
    assert scored[3]["score"] == pytest.approx(scored[5]["score"], abs=1e-5)
    # the score is yes_probability of the model's logits after bos + opt_rm_prompt (the post fits: no cut)
    loaded = rm.load_opt_rm(model, rm.OptRMScoringConfig())
    post = tiny["test_rows"][0]
    ids = [loaded.tokenizer.bos_token_id] + loaded.tokenizer(
        opt_rm_prompt(post["title"], post["post"], scored[1]["response"])
    )["input_ids"]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids])).logits[0, -1]
    assert scored[1]["score"] == pytest.approx(rm.yes_probability(logits, loaded.yes_id, loaded.no_id).item(), abs=1e-6)

    cli.main(["best-of-n", "--scored", str(scored_path), "--output", str(best_path), "--origin", "policy+opt-rm-bo3",
              "--summary", str(tmp_path / "best.json")])  # fmt: skip
    best = read_table(best_path, SAMPLES).to_pylist()
    assert best == [
        {"prompt_id": "test0", "prompt": "summary prompt of test0", "response": "the boats trip was great.",
         "origin": "policy+opt-rm-bo3", "sample_index": 0},
        {"prompt_id": "test1", "prompt": "summary prompt of test1", "response": "the castles trip was great.",
         "origin": "policy+opt-rm-bo3", "sample_index": 0},
    ]  # fmt: skip
    assert json.loads((tmp_path / "best.json").read_text())["max_samples"] == 3


def test_a_sample_without_its_post_is_a_data_error(tiny, tmp_path):
    samples, posts = tmp_path / "samples.parquet", tmp_path / "posts.parquet"
    rows = literal_samples()
    rows[4] = {**rows[4], "prompt_id": "nowhere"}
    write_rows(rows, samples, SAMPLES)
    write_rows(posts_rows(tiny), posts, SLF5K_POSTS)
    with pytest.raises(DataError, match="'nowhere' is not a post_id") as error:
        rm.score_samples([samples], [posts], str(tiny["model"]), tmp_path / "out.parquet", rm.OptRMScoringConfig())
    assert (error.value.path, error.value.record, error.value.field) == (str(samples), 4, "prompt_id")
    assert not (tmp_path / "out.parquet").exists()


def scored_row(pid: str, index: int, score: float | None, status: str = "ok", scorer: str = "opt-rm:m") -> dict:
    return {"prompt_id": pid, "prompt": f"p {pid}", "response": f"{pid}-{index}", "origin": "policy",
            "sample_index": index, "score": score, "status": status, "scorer": scorer}  # fmt: skip


def test_best_of_n_rule_on_literal_scores():
    rows = [
        scored_row("a", 2, 0.9),  # a: 0.9 at samples 2 and 1 (a tie: the lower index, 1, wins)
        scored_row("a", 1, 0.9),
        scored_row("a", 0, 0.3),
        scored_row("b", 0, None, status="failed"),  # b: the failed sample is never chosen
        scored_row("b", 1, 0.1),
        scored_row("b", 2, 0.05),
    ]
    best = rm.best_of_n_rows(rows, "bo3")
    assert [(r["prompt_id"], r["response"], r["origin"], r["sample_index"]) for r in best] == [
        ("a", "a-1", "bo3", 0),
        ("b", "b-1", "bo3", 0),
    ]
    # best of 1: only sample_index 0 takes part; b's sample 0 failed, so b has nothing scored
    with pytest.raises(DataError, match="no sample scored 'ok'") as error:
        rm.best_of_n_rows(rows, "bo1", n=1)
    assert (error.value.record, error.value.field) == (3, "status")
    best_of_2 = rm.best_of_n_rows(rows[:3], "bo2", n=2)  # a: samples 1 (0.9) and 0 (0.3)
    assert [r["response"] for r in best_of_2] == ["a-1"]
    with pytest.raises(DataError, match="has 3 of 4 samples"):
        rm.best_of_n_rows(rows, "bo4", n=4)
    with pytest.raises(DataError, match="several scorers"):
        rm.best_of_n_rows([*rows[:3], scored_row("c", 0, 0.5, scorer="rm:other")], "x")
