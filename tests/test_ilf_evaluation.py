"""ILF evaluation (Scheurer et al. 2023): the win-rate rules by hand, the pairwise judge with a fake LM and end to
end on a tiny hf model, OPT-RM win rates from literal SCORED_SAMPLES tables, the synthetic oracle's win rate and fix
rates from a tiny oracle file in `slf5k_synthetic`'s format, and the metrics table (this run's rows, then the
paper's)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from feedbackflow.cli import main as cli_main
from feedbackflow.core.formats import (
    QA_PROMPTS,
    SAMPLES,
    SCORED_SAMPLES,
    SLF5K_FEEDBACK,
    SLF5K_POSTS,
    read_table,
    write_rows,
)
from feedbackflow.errors import DataError
from feedbackflow.llm.language_model import LMResult, answer_probability
from feedbackflow.papers.ilf.evaluation import (
    ILF_METRICS,
    PAIRWISE_JUDGEMENTS,
    judge_pairs,
    load_oracle_by_post,
    metrics_markdown,
    metrics_rows,
    oracle_win_rate,
    pairwise_win,
    policy_win_rates,
    refinement_quality,
    score_win,
    verdict,
    win_rate,
)
from feedbackflow.papers.ilf.prompts import PAIRWISE_TEMPLATE, pairwise_prompt, summary_prompt


def run(*argv) -> None:
    cli_main([str(a) for a in argv])


# --- the rules ----------------------------------------------------------------------------------------------------


def test_verdict_pairwise_win_score_win_and_win_rate_by_hand():
    assert [verdict(p) for p in (0.7, 0.2, 0.5, None)] == [1.0, 0.0, 0.5, None]
    # A judge that always prefers "A": P(A) = .8 in both orders. First order (policy = A): P(policy) = .8 -> 1;
    # second order (policy = B): P(policy) = .2 -> 0. The post's win is (1 + 0) / 2 = 1/2: position bias cancels,
    # so every post gets 1/2 and the rate is 1/2.
    always_a = [pairwise_win(0.8, 0.2), pairwise_win(0.9, 0.1), pairwise_win(0.6, 0.4)]
    assert always_a == [0.5, 0.5, 0.5] and win_rate(always_a) == (0.5, 3)
    # one order missing: the other order's verdict alone; neither: no win
    assert pairwise_win(None, 0.9) == 1.0 and pairwise_win(0.3, None) == 0.0 and pairwise_win(None, None) is None
    # ties: 1/2 per order -> (1/2 + 1/2) / 2 = 1/2; a win and a tie -> (1 + 1/2) / 2 = 3/4
    assert pairwise_win(0.5, 0.5) == 0.5 and pairwise_win(0.9, 0.5) == 0.75
    assert pairwise_win(0.75, 0.75) == 1.0 and pairwise_win(0.25, 0.4) == 0.0
    # a scalar judge: higher wins, lower loses, equal ties
    assert (score_win(0.7, 0.4), score_win(0.4, 0.7), score_win(0.5, 0.5)) == (1.0, 0.0, 0.5)
    # (1 + 0 + 1/2 + 1) / 4 = 0.625 over the 4 set wins; None is left out
    assert win_rate([1.0, 0.0, 0.5, None, 1.0]) == (0.625, 4)
    assert win_rate([None, None]) == (None, 0) and win_rate([]) == (None, 0)


# --- judge_pairs with a fake LM -------------------------------------------------------------------------------------


class FakeJudgeLM:
    """A FAKE language model (not a real backend): `next_token_logprobs` answers each prompt from a fixed table of
    language_model.LMResult objects and records what it was asked."""

    def __init__(self, answers: dict[str, LMResult]):
        self.answers = answers
        self.calls: list[tuple[list[str], tuple[str, ...]]] = []

    def next_token_logprobs(self, prompts, candidates=()):
        self.calls.append((list(prompts), tuple(candidates)))
        return [self.answers[prompt] for prompt in prompts]


def ok(**probabilities: float) -> LMResult:
    """An ok next-token reply: {token: log p}; keys spelled with a leading underscore stand for a leading space."""
    return LMResult({token.replace("_", " "): math.log(p) for token, p in probabilities.items()})


FAILED = LMResult(None, "HTTP 500 server error", "failed")

JUDGED_POSTS = {
    pid: {"post_id": pid, "title": f"title {pid}", "post": f"the post {pid}", "reference_summary": f"reference {pid}"}
    for pid in ("q1", "q2", "q3", "q4", "q5")
}


def test_judge_pairs_asks_both_orders_and_reads_the_policys_letter():
    summaries = {pid: f"policy summary {pid}" for pid in ("q1", "q2", "q3", "q4", "q5", "q6")}  # q6: no reference

    def prompts_of(pid):  # (policy as A, policy as B)
        post, summary, reference = JUDGED_POSTS[pid], summaries[pid], JUDGED_POSTS[pid]["reference_summary"]
        return (pairwise_prompt(post["title"], post["post"], summary, reference),
                pairwise_prompt(post["title"], post["post"], reference, summary))  # fmt: skip

    answers = {}
    # q1, a judge that always says A: P(A) = .8, P(B) = .2 in both orders -> P(policy) = .8 then .2 -> win 1/2
    answers.update(zip(prompts_of("q1"), (ok(_A=0.8, _B=0.2), ok(_A=0.8, _B=0.2)), strict=True))
    # q2: first order P(A) = .3 + .3 (" A" and "A"), P(B) = .2 -> .6 / .8 = .75; second P(B) = .6, P(A) = .2 -> .75
    answers.update(zip(prompts_of("q2"), (ok(_A=0.3, A=0.3, _B=0.2), ok(_B=0.6, _A=0.2)), strict=True))
    # q3: the first order failed; the second: P(B) = .1, P(A) = .3 -> P(policy) = .25 -> loss from that order alone
    answers.update(zip(prompts_of("q3"), (FAILED, ok(_B=0.1, _A=0.3)), strict=True))
    # q4: a reply without A or B in the first order, no reply in the second -> unparsed
    answers.update(zip(prompts_of("q4"), (ok(_Maybe=0.9), FAILED), strict=True))
    # q5: no reply in either order -> failed
    answers.update(zip(prompts_of("q5"), (FAILED, FAILED), strict=True))
    lm = FakeJudgeLM(answers)

    rows = judge_pairs("ilf", summaries, JUDGED_POSTS, lm)

    ((asked, candidates),) = lm.calls
    assert asked == [prompt for pid in ("q1", "q2", "q3", "q4", "q5") for prompt in prompts_of(pid)]
    assert "Summary A: policy summary q1\n\nSummary B: reference q1" in asked[0]
    assert "Summary A: reference q1\n\nSummary B: policy summary q1" in asked[1]
    assert candidates == (" A", "A", " B", "B")
    got = {r["post_id"]: (r["p_policy_first"], r["p_policy_second"], r["win"], r["status"]) for r in rows}
    assert got["q1"] == (pytest.approx(0.8), pytest.approx(0.2), 0.5, "ok")
    assert got["q2"] == (pytest.approx(0.75), pytest.approx(0.75), 1.0, "ok")
    assert got["q3"] == (None, pytest.approx(0.25), 0.0, "ok")
    assert got["q4"] == (None, None, None, "unparsed")
    assert got["q5"] == (None, None, None, "failed")
    assert list(got) == ["q1", "q2", "q3", "q4", "q5"]  # q6 has no reference: not judged
    by_post = {r["post_id"]: r for r in rows}
    assert by_post["q1"]["reason"] is None
    assert by_post["q4"]["reason"] == (
        "policy first: no A/B token among the next-token log-probabilities; policy second: HTTP 500 server error"
    )
    assert "HTTP 500" in by_post["q5"]["reason"]
    assert {r["policy"] for r in rows} == {"ilf"}
    q2 = by_post["q2"]
    assert (q2["policy_summary"], q2["reference_summary"]) == ("policy summary q2", "reference q2")
    assert win_rate([r["win"] for r in rows]) == (0.5, 3)  # (1/2 + 1 + 0) / 3


# --- ilf-judge end to end on a tiny hf model ------------------------------------------------------------------------

TEST_POSTS = [
    ("t1", "Sister broke my camera", "My sister Mara borrowed my camera and broke it.", "Mara broke my camera."),
    ("t2", "Lent my bike", "Hugo borrowed my bike for a trip and lost it.", "Hugo lost my bike."),
    ("t3", "Need advice", "Lena sold the tent I lent her.", "Lena sold my tent."),
    ("t4", "No reference", "Oskar painted my guitar.", None),
]


def write_posts(path: Path, posts=TEST_POSTS) -> Path:
    write_rows(
        [{"post_id": pid, "subreddit": "Advice", "title": title, "post": post, "reference_summary": ref,
          "source": "test.jsonl", "record": k} for k, (pid, title, post, ref) in enumerate(posts)],
        path, SLF5K_POSTS,
    )  # fmt: skip
    return path


def write_samples(path: Path, texts: dict[tuple[str, int], str], origin: str = "ilf") -> Path:
    write_rows(
        [{"prompt_id": pid, "prompt": f"prompt {pid}", "response": text, "origin": origin, "sample_index": index}
         for (pid, index), text in texts.items()],
        path, SAMPLES,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory) -> Path:
    from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

    root = tmp_path_factory.mktemp("ilf_judge")
    texts = [PAIRWISE_TEMPLATE] + [" ".join(filter(None, post[1:])) for post in TEST_POSTS]
    (root / "corpus.txt").write_text("\n".join(t.replace("\n", " ") for t in texts * 20) + "\nA\nB\n A B\n")
    config = TinyModelConfig(
        seed=9, vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=256,
    )  # fmt: skip
    tokenizer = train_tokenizer([root / "corpus.txt"], config.vocab_size, config.max_position_embeddings)
    model = build_causal_lm(tokenizer, config)
    out = root / "tiny"
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


def direct_answer(model, tokenizer, prompt: str, positive: str, negative: str, k: int) -> float | None:
    """P(positive) / (P(positive) + P(negative)) after bos + the prompt's ids, one unpadded forward pass, over the
    entries the hf backend reports: the k likeliest next tokens (decoded) and each candidate that is one token."""
    ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    values, top = logprobs.topk(k)
    entries: dict[str, float] = {}
    for value, token_id in zip(values.tolist(), top.tolist(), strict=True):
        entries.setdefault(tokenizer.decode([token_id]), value)
    for candidate in (" A", "A", " B", "B"):
        candidate_ids = tokenizer(candidate, add_special_tokens=False)["input_ids"]
        if len(candidate_ids) == 1:
            entries[candidate] = float(logprobs[candidate_ids[0]])
    return answer_probability(entries, positive, negative)


def test_ilf_judge_stage_on_a_tiny_hf_model(tmp_path, tiny_judge_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    posts = write_posts(tmp_path / "test_posts.parquet")
    policy = {("t1", 0): "Mara broke it.", ("t1", 1): "not judged: sample 1", ("t2", 0): "Hugo lost the bike.",
              ("t3", 0): "Lena sold my tent.", ("t4", 0): "Oskar painted it."}  # fmt: skip
    samples = write_samples(tmp_path / "ilf.samples.parquet", policy)
    lm = json.dumps(
        {"backend": "hf", "model": str(tiny_judge_dir), "batch_size": 2, "device": "cpu", "top_logprobs": 3}
    )
    out = tmp_path / "ilf.judgements.parquet"
    run("ilf-judge", "--samples", samples, "--posts", posts, "--policy", "ilf", "--lm", lm,
        "--cache", tmp_path / "judge.sqlite", "--output", out)  # fmt: skip
    rows = read_table(out, PAIRWISE_JUDGEMENTS).to_pylist()
    assert [r["post_id"] for r in rows] == ["t1", "t2", "t3"]  # t4 has no reference summary

    model = AutoModelForCausalLM.from_pretrained(tiny_judge_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_judge_dir)
    for row, (pid, title, post, reference) in zip(rows, TEST_POSTS, strict=False):
        summary = policy[(pid, 0)]
        assert (row["policy"], row["policy_summary"], row["reference_summary"]) == ("ilf", summary, reference)
        # the policy is A in the first prompt and B in the second
        first = direct_answer(model, tokenizer, pairwise_prompt(title, post, summary, reference), "A", "B", 3)
        second = direct_answer(model, tokenizer, pairwise_prompt(title, post, reference, summary), "B", "A", 3)
        assert row["p_policy_first"] == pytest.approx(first, abs=1e-4)
        assert row["p_policy_second"] == pytest.approx(second, abs=1e-4)
        assert row["win"] == pairwise_win(row["p_policy_first"], row["p_policy_second"])
        assert row["status"] == "ok" and row["reason"] is None

    # ilf-win-rates reads the judgements: their mean win, and the number of judged posts
    result_path = tmp_path / "ilf.json"
    run("ilf-win-rates", "--policy", "ilf", "--samples", samples, "--posts", posts, "--judgements", out,
        "--output", result_path)  # fmt: skip
    result = json.loads(result_path.read_text())
    assert result["win_rate_judge"] == pytest.approx(sum(r["win"] for r in rows) / 3)
    assert (result["judged_pairs"], result["judge_unparsed"], result["judge_failed"], result["posts"]) == (3, 0, 0, 4)
    # the judgements of another policy are refused
    with pytest.raises(SystemExit, match="field 'policy'"):
        run("ilf-win-rates", "--policy", "human", "--samples", samples, "--posts", posts, "--judgements", out,
            "--output", tmp_path / "human.json")  # fmt: skip


# --- OPT-RM win rates from literal SCORED_SAMPLES ------------------------------------------------------------------


def write_scored(path: Path, scores: list[tuple[str, int, float | None, str]], origin: str) -> Path:
    write_rows(
        [{"prompt_id": pid, "prompt": f"prompt {pid}", "response": f"{origin} {pid} {index}", "origin": origin,
          "sample_index": index, "score": score, "status": status, "reason": None if status == "ok" else "no reply",
          "scorer": "opt-rm:tiny", "prompt_tokens": None, "completion_tokens": None}
         for pid, index, score, status in scores],
        path, SCORED_SAMPLES,
    )  # fmt: skip
    return path


def test_opt_rm_win_rate_from_scored_samples(tmp_path):
    posts = write_posts(tmp_path / "posts.parquet")
    samples = write_samples(tmp_path / "s.parquet", {("t1", 0): "one two three", ("t2", 0): "one", ("t3", 0): "a b",
                                                     ("t4", 0): "x y z w"})  # fmt: skip
    policy = write_scored(tmp_path / "policy.opt_rm.parquet", [
        ("t1", 0, 0.9, "ok"), ("t1", 1, 0.1, "ok"),  # sample 1 is not the policy's test summary
        ("t2", 0, 0.3, "ok"), ("t3", 0, 0.5, "ok"), ("t4", 0, None, "failed"),
    ], "ilf")  # fmt: skip
    reference = write_scored(tmp_path / "reference.opt_rm.parquet", [
        ("t1", 0, 0.6, "ok"), ("t2", 0, 0.4, "ok"), ("t3", 0, 0.5, "ok"), ("t4", 0, 0.7, "ok"),
    ], "reference")  # fmt: skip
    out = tmp_path / "ilf.json"
    run("ilf-win-rates", "--policy", "ilf", "--samples", samples, "--posts", posts, "--opt-rm-policy", policy,
        "--opt-rm-reference", reference, "--output", out)  # fmt: skip
    result = json.loads(out.read_text())
    # t1: .9 > .6 win; t2: .3 < .4 loss; t3: .5 = .5 tie; t4: the policy's score failed -> not a pair
    # rate = (1 + 0 + 1/2) / 3 = 1/2
    assert result["win_rate_opt_rm"] == pytest.approx(0.5) and result["opt_rm_pairs"] == 3
    assert result["mean_opt_rm_p_yes"] == pytest.approx((0.9 + 0.3 + 0.5) / 3)
    assert result["mean_words"] == pytest.approx((3 + 1 + 2 + 4) / 4)
    assert result["posts"] == 4 and "win_rate_judge" not in result and "win_rate_oracle" not in result

    twice = write_scored(tmp_path / "twice.parquet", [("t1", 0, 0.9, "ok"), ("t1", 0, 0.2, "ok")], "ilf")
    with pytest.raises(DataError) as caught:
        policy_win_rates("ilf", samples, posts, opt_rm_policy_path=twice, opt_rm_reference_path=reference)
    assert (caught.value.path, caught.value.record, caught.value.field) == (str(twice), 1, "prompt_id")
    with pytest.raises(SystemExit, match="go together"):
        run("ilf-win-rates", "--policy", "ilf", "--samples", samples, "--posts", posts, "--opt-rm-policy", policy,
            "--output", out)  # fmt: skip


# --- the synthetic oracle ------------------------------------------------------------------------------------------


def fact(name: str, item: str, outcome: str) -> dict:
    return {"name": name, "item": item, "outcome": outcome}


NAMES = ("Mara", "Hugo", "Lena", "Oskar", "Tomas")  # the persons of this literal world


def oracle_entry(split: str, post_id: str, facts: dict, flaw: dict | None) -> dict:
    """An oracle line: a summary naming any other person of this world gets the name wrong."""
    alternatives = {"name": [name for name in NAMES if name != facts["name"]]}
    return {"split": split, "id": post_id, "facts": facts, "alternatives": alternatives, "flaw": flaw}


ORACLE = [
    # test posts (no feedback summary flaw recorded) and train posts whose feedback summary has a flaw
    oracle_entry("test", "t1", fact("Mara", "camera", "broke"), None),
    oracle_entry("test", "t2", fact("Hugo", "bike", "lost"), None),
    oracle_entry("test", "t3", fact("Lena", "tent", "sold"), None),
    oracle_entry("test", "t4", fact("Oskar", "guitar", "painted"), None),
    oracle_entry("train", "r1", fact("Mara", "camera", "broke"),
                 {"type": "missing_fact", "fact": "item", "required": ["camera"], "forbidden": [], "wrong": "thing"}),
    oracle_entry("train", "r2", fact("Hugo", "bike", "lost"),
                 {"type": "wrong_name", "fact": "name", "required": ["Hugo"], "forbidden": ["Tomas"],
                  "wrong": "Tomas"}),
]  # fmt: skip


def write_oracle(path: Path, entries=ORACLE) -> Path:
    path.write_text("".join(json.dumps(entry, sort_keys=True) + "\n" for entry in entries))
    return path


def test_oracle_by_post_and_the_oracle_win_rate(tmp_path):
    oracle_path = write_oracle(tmp_path / "oracle.jsonl")
    oracle = load_oracle_by_post(oracle_path)
    others = {"name": ["Mara", "Lena", "Oskar", "Tomas"]}
    assert oracle["r2"] == {"split": "train", "facts": fact("Hugo", "bike", "lost"), "alternatives": others,
                            "flaw": ORACLE[5]["flaw"]}  # fmt: skip
    assert oracle["t1"]["facts"] == fact("Mara", "camera", "broke") and "zz" not in oracle
    with pytest.raises(DataError, match="'t1' is in splits 'test' and 'validation'"):
        load_oracle_by_post(write_oracle(tmp_path / "twice.jsonl", [*ORACLE, {**ORACLE[0], "split": "validation"}]))

    posts = {pid: {"title": title, "post": post, "reference_summary": ref} for pid, title, post, ref in TEST_POSTS}
    posts["t1"]["reference_summary"] = "Mara broke my thing."  # the item missing: quality 2/3
    summaries = {
        "t1": "Mara broke my camera.",  # 3/3 against the reference's 2/3: win
        "t2": "Tomas lost my bike.",  # the name wrong: 2/3 against "Hugo lost my bike." 3/3: loss
        "t3": "Lena sold the tent I lent her.",  # 3/3 against 3/3: tie
        "t4": "Oskar painted my guitar.",  # t4 has no reference summary: not judged
    }
    judged = {pid: p for pid, p in posts.items() if p["reference_summary"]}
    # (1 + 0 + 1/2) / 3 = 1/2
    assert oracle_win_rate(summaries, judged, oracle_path) == (pytest.approx(0.5), 3)
    summaries["t3"] = "Lena and Hugo sold the tent."  # another name beside the right one: the name is wrong, 2/3
    assert oracle_win_rate(summaries, judged, oracle_path) == (pytest.approx(1 / 3), 3)
    with pytest.raises(DataError, match="'t9' is not in the oracle"):
        oracle_win_rate({"t9": "x"}, {"t9": {"reference_summary": "y"}}, oracle_path)

    # through the stage, beside the other judges
    posts_path = write_posts(tmp_path / "posts.parquet", [(pid, p["title"], p["post"], p["reference_summary"])
                                                          for pid, p in posts.items()])  # fmt: skip
    samples = write_samples(tmp_path / "s.parquet", {(pid, 0): text for pid, text in summaries.items()})
    out = tmp_path / "ilf.json"
    run("ilf-win-rates", "--policy", "ilf", "--samples", samples, "--posts", posts_path, "--oracle", oracle_path,
        "--output", out)  # fmt: skip
    result = json.loads(out.read_text())
    assert result["win_rate_oracle"] == pytest.approx(1 / 3) and result["oracle_pairs"] == 3


def test_refinement_quality_by_the_oracle(tmp_path):
    oracle = write_oracle(tmp_path / "oracle.jsonl")
    feedback = tmp_path / "train_feedback.parquet"
    write_rows(
        [{"post_id": pid, "title": "t", "post": "p", "summary": summary, "feedback": "fb", "ideal_summary": None,
          "source": "train.jsonl", "record": k}
         for k, (pid, summary) in enumerate([("r1", "Mara broke my thing."), ("r2", "Tomas lost my bike.")])],
        feedback, SLF5K_FEEDBACK,
    )  # fmt: skip

    def qa_rows(chosen: dict[str, str]) -> list[dict]:
        return [
            {"prompt_id": pid, "prompt": summary_prompt("t", "p"), "question": "t", "references": [text],
             "passages": [], "source": "f", "record": k}
            for k, (pid, text) in enumerate(chosen.items())
        ]  # fmt: skip

    selected = tmp_path / "instructrm.sft.parquet"
    # r1's choice names the camera (fixed); r2's has Hugo but still the forbidden Tomas (not fixed)
    write_rows(qa_rows({"r1": "Mara broke my camera.", "r2": "Tomas, not Hugo, lost my bike."}), selected, QA_PROMPTS)
    refinements = write_samples(tmp_path / "refinements.parquet", {
        ("r1", 0): "Mara broke my camera.", ("r1", 1): "Mara broke my thing.", ("r1", 2): "Mara broke my laptop.",
        ("r2", 0): "Hugo lost my bike.", ("r2", 1): "Tomas lost my bike.",
    }, origin="refinement")  # fmt: skip
    out = tmp_path / "refinements_instructrm.json"
    run("ilf-refinement-quality", "--scorer", "instructrm", "--selected", selected, "--feedback", feedback,
        "--refinements", refinements, "--oracle", oracle, "--output", out)  # fmt: skip
    assert json.loads(out.read_text()) == {
        "scorer": "instructrm",
        "posts_with_feedback": 2,
        "chosen": 2,
        "fix_rate": 0.5,  # 1 of 2 chosen
        "fix_rate_all_refinements": 0.4,  # r1: 1 of 3, r2: 1 of 2 -> 2 of 5
        "fix_rate_initial_summary": 0.0,  # the summaries the feedback was written on keep their flaws
    }
    # without the oracle only the counts
    assert refinement_quality("random", selected, feedback) == {"scorer": "random", "posts_with_feedback": 2,
                                                                "chosen": 2}  # fmt: skip

    # a chosen post the oracle does not know, or one the oracle says has no flaw: the oracle of another world
    unknown = tmp_path / "unknown.parquet"
    write_rows(qa_rows({"r1": "x", "r7": "y"}), unknown, QA_PROMPTS)
    with pytest.raises(DataError) as caught:
        refinement_quality("random", unknown, feedback, oracle)
    assert (caught.value.path, caught.value.record, caught.value.field) == (str(unknown), 1, "prompt_id")
    no_flaw = write_oracle(tmp_path / "no_flaw.jsonl", [*ORACLE[:5], {**ORACLE[5], "flaw": None}])
    with pytest.raises(DataError, match="no flaw"):
        refinement_quality("random", selected, feedback, no_flaw)


# --- the metrics table ---------------------------------------------------------------------------------------------

# Scheurer et al. 2023: win rates (%) vs human summaries with 100 / 1K / 5K training samples, human raters
SPEC_PUBLISHED = [
    ("ilf", "100", 19.6), ("ilf", "1K", 29.2), ("ilf", "5K", 31.3),
    ("human", "100", 16.8), ("human", "1K", 26.3), ("human", "5K", 28.9),
    ("initial_summaries", "100", 19.6), ("initial_summaries", "1K", 25.1), ("initial_summaries", "5K", 27.3),
    ("opt_rm_best_of_64", "100", 25.5), ("opt_rm_best_of_64", "1K", 42.0), ("opt_rm_best_of_64", "5K", 43.7),
    ("ilf_best_of_n", "5K", 50.8),
]  # fmt: skip


def test_metrics_rows_and_markdown(tmp_path):
    results = {
        "ilf": {"policy": "ilf", "win_rate_judge": 0.25, "win_rate_opt_rm": 0.5, "win_rate_oracle": 0.75,
                "mean_words": 9.5, "posts": 60},
        "initial": {"policy": "initial", "win_rate_judge": 0.1, "mean_words": 12.0, "posts": 60},
        "ilf_direct": {"policy": "ilf_direct", "win_rate_judge": 0.2, "posts": 60},  # not a known row: kept, last
        "human": {"policy": "human", "win_rate_judge": None, "win_rate_opt_rm": 0.4, "posts": 60},
    }  # fmt: skip
    rows = metrics_rows(results, "tiny")
    ours = [r for r in rows if r["source"] == "this run"]
    assert [r["policy"] for r in ours] == ["initial", "human", "ilf", "ilf_direct"]
    assert rows[: len(ours)] == ours  # this run's rows first
    ilf = ours[2]
    assert ilf == {"policy": "ilf", "label": "ILF", "source": "this run", "train_size": "tiny",
                   "win_rate_judge": 25.0, "win_rate_opt_rm": 50.0, "win_rate_oracle": 75.0,
                   "win_rate_published": None, "mean_words": 9.5, "posts": 60}  # fmt: skip
    assert ours[1]["win_rate_judge"] is None and ours[1]["win_rate_opt_rm"] == 40.0
    assert ours[3]["label"] == "ilf_direct"
    published = rows[len(ours) :]
    assert [(r["policy"], r["train_size"], r["win_rate_published"]) for r in published] == SPEC_PUBLISHED
    assert {r["source"] for r in published} == {"published (human raters)"}
    assert all(r["win_rate_judge"] is None and r["posts"] is None for r in published)

    # through the stage: the Parquet holds the rows, the Markdown shows them and the RM accuracies
    paths = []
    for policy, result in results.items():
        paths.append(tmp_path / f"{policy}.json")
        paths[-1].write_text(json.dumps(result))
    opt_rm = tmp_path / "opt_rm_accuracy.json"
    opt_rm.write_text(json.dumps({"accuracy": 0.625, "n_pairs": 40}))
    refinement = tmp_path / "refinements_random.json"
    refinement.write_text(json.dumps({"scorer": "random", "chosen": 2, "fix_rate": 0.5, "fix_rate_all_refinements":
                                      0.4, "fix_rate_initial_summary": 0.0}))  # fmt: skip
    table, markdown = tmp_path / "metrics.parquet", tmp_path / "metrics.md"
    run("ilf-metrics", "--win-rates", *paths, "--opt-rm-accuracy", opt_rm, "--refinements", refinement,
        "--train-size", "tiny", "--output", table, "--markdown", markdown)  # fmt: skip
    assert read_table(table, ILF_METRICS).to_pylist() == rows
    text = markdown.read_text()
    assert text == metrics_markdown(rows, {"accuracy": 0.625, "n_pairs": 40}, [json.loads(refinement.read_text())])
    lines = text.splitlines()
    assert "| ILF | this run | tiny | 25.0 | 50.0 | 75.0 | - | 9.5 |" in lines
    assert "| fine-tuned on human summaries | this run | tiny | - | 40.0 | - | - | - |" in lines
    assert "| ILF | published (human raters) | 5K | - | - | - | 31.3 | - |" in lines
    assert "| OPT-RM best-of-64 | published (human raters) | 1K | - | - | - | 42.0 | - |" in lines
    assert "| ILF + OPT-RM best-of-n | published (human raters) | 5K | - | - | - | 50.8 | - |" in lines
    assert lines.index("| ILF | this run | tiny | 25.0 | 50.0 | 75.0 | - | 9.5 |") < lines.index(
        "| ILF | published (human raters) | 100 | - | - | - | 19.6 | - |"
    )
    assert ("OPT-RM accuracy on held-out comparisons: 62.5% over 40 pairs (published, OPT classification: "
            "5K 73.4%, 1K 67.2%, 100 53.4%).") in lines  # fmt: skip
    assert "| random | 2 | 50.0 | 40.0 | 0.0 |" in lines

    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps(results["ilf"]))
    with pytest.raises(SystemExit, match="in two --win-rates files"):
        run("ilf-metrics", "--win-rates", paths[0], twice, "--output", table, "--markdown", markdown)
