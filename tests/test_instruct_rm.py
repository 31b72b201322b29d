"""InstructRM and the refinement-selection stage (Scheurer et al. 2023; docs/methods/ilf.md).

The paper-scale templates are compared character for character with the original code's (as recorded in
../shared/data/ilf/instructrm_templates.json). The pure rules are checked on literal numbers computed by hand; the
scorers' status handling and the tie rules on literal items with small FAKE language models (they implement only the
two methods the scorers call, returning the real `language_model.LMResult`); the embedding scorer with the real
bundled MiniLM; the stage end to end with the real `hf` backend on a tiny causal LM built here.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from feedbackflow.cli import main as cli_main
from feedbackflow.core.formats import QA_PROMPTS, REFINEMENT_SCORES, SAMPLES, SLF5K_FEEDBACK, read_table, write_rows
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.llm.language_model import LMResult
from feedbackflow.papers.ilf.instruct_rm import (
    SCORER_TIES,
    RefinementItem,
    ScorerContext,
    SelectionConfig,
    answer_candidates,
    choose_per_post,
    embedding_scorer,
    instruct_rm_score,
    instructrm_scorer,
    logprob_scorer,
    missing_answer_tokens,
    random_scorer,
    select_argmax,
    select_refinements,
    template_score,
)
from feedbackflow.papers.ilf.prompts import (
    INSTRUCT_RM_TEMPLATE_SETS,
    INSTRUCT_RM_TEMPLATES,
    TINY_INSTRUCT_RM_TEMPLATES,
    instruct_rm_prompt,
    refinement_prompt,
    summary_prompt,
)

YES_NO = INSTRUCT_RM_TEMPLATES[0]  # the original's prompt_1
TRUE_FALSE = INSTRUCT_RM_TEMPLATES[2]  # prompt_3
log = math.log


# --------------------------------------------------------------------------------------------------------------
# The paper-scale templates are the original code's


def test_paper_templates_are_the_original_codes_character_for_character(repo_root):
    path = repo_root.parent / "shared" / "data" / "ilf" / "instructrm_templates.json"
    if not path.is_file():  # never skipped: without the file the templates are unchecked
        pytest.fail(f"{path} is missing: the original InstructRM templates must be beside the checkout")
    original = json.loads(path.read_text(encoding="utf-8"))
    assert len(original["templates"]) == len(INSTRUCT_RM_TEMPLATES) == 5
    for theirs, ours in zip(original["templates"], INSTRUCT_RM_TEMPLATES, strict=True):
        assert ours.name == theirs["name"]
        assert ours.text == theirs["template"], ours.name
        assert (ours.positive, ours.negative) == (theirs["positive"], theirs["negative"]), ours.name
        fields = {field for _, field, _, _ in string.Formatter().parse(ours.text) if field}
        assert fields == set(original["placeholders"]), ours.name
    # prompts 1, 2 and 4 read " Yes" / " No", prompts 3 and 5 " True" / " False" (the leading space included)
    assert [(t.positive, t.negative) for t in INSTRUCT_RM_TEMPLATES] == [
        (" Yes", " No"), (" Yes", " No"), (" True", " False"), (" Yes", " No"), (" True", " False"),
    ]
    # they are the default set of the stage
    assert INSTRUCT_RM_TEMPLATE_SETS["paper"] is INSTRUCT_RM_TEMPLATES
    assert SelectionConfig().instructrm_templates == "paper"


def test_the_paper_config_takes_the_paper_templates_and_the_tiny_config_its_own(repo_root):
    paper = yaml.safe_load((repo_root / "config" / "experiments" / "ilf_slf5k.yaml").read_text())
    assert SelectionConfig(**paper["ilf"]["selection"].get("settings", {})).instructrm_templates == "paper"
    tiny = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    assert SelectionConfig(**tiny["ilf"]["selection"]["settings"]).instructrm_templates == "tiny"
    assert INSTRUCT_RM_TEMPLATE_SETS["tiny"] is TINY_INSTRUCT_RM_TEMPLATES
    with pytest.raises(ConfigError, match="instructrm_templates"):
        SelectionConfig(instructrm_templates="mine")


def test_instruct_rm_prompt_fills_the_original_summary():
    # prompt_2 filled by hand
    assert instruct_rm_prompt(INSTRUCT_RM_TEMPLATES[1], "T", "P", "S", "F", "R") == (
        "Post title: T\n\nOriginal post: P\n\nOriginal summary: S\n\nFeedback: F\n\nNew summary: R\n\n"
        "Question: Does the new summary incorporate the feedback provided? Answer Yes or No.\n\nAnswer:"
    )
    # prompt_5 names the feedback twice
    assert instruct_rm_prompt(INSTRUCT_RM_TEMPLATES[4], "T", "P", "S", "FEEDBACK", "R").count("FEEDBACK") == 2


# --------------------------------------------------------------------------------------------------------------
# Pure rules, by hand


def test_template_score_reads_exactly_the_templates_two_tokens():
    # P(" Yes") = .6, P(" No") = .2 -> .6 / (.6 + .2) = .75; "Yes" and "yes" are not " Yes" and do not count
    assert template_score({" Yes": log(0.6), " No": log(0.2), "Yes": log(0.1), "yes": log(0.05), " the": log(0.03)},
                          YES_NO) == pytest.approx(0.75)
    # P(" Yes") = .3, P(" No") = .1 -> .3 / .4 = .75, whatever "No" (no space) has
    assert template_score({" Yes": log(0.3), " No": log(0.1), "No": log(0.5)}, YES_NO) == pytest.approx(0.75)
    # a token absent -> no score (the original's top_logprobs lookup would raise); not 1.0 or 0.0
    assert template_score({" Yes": log(0.9), " the": log(0.05)}, YES_NO) is None
    assert template_score({" No": log(0.2), " the": log(0.5)}, YES_NO) is None
    assert template_score({"Yes": log(0.5), "No": log(0.3)}, YES_NO) is None  # without the space: not the tokens
    assert missing_answer_tokens({" Yes": log(0.9)}, YES_NO) == [" No"]
    assert missing_answer_tokens({"Yes": 0.0, "no": 0.0}, YES_NO) == [" Yes", " No"]


def test_template_score_true_false_template_reads_true_and_false():
    assert (TRUE_FALSE.positive, TRUE_FALSE.negative) == (" True", " False")
    # P(" True") = .1, P(" False") = .3 -> .1 / .4 = .25; the " Yes" entry is not this template's answer
    assert template_score({" True": log(0.1), " False": log(0.3), " Yes": log(0.5)}, TRUE_FALSE) == pytest.approx(0.25)
    assert template_score({" Yes": log(0.6), " No": log(0.2)}, TRUE_FALSE) is None


def test_template_score_extremes():
    # log-probabilities -800 / -801: e^-800 / (e^-800 + e^-801) = 1 / (1 + e^-1) = 0.7310585786...
    assert template_score({" Yes": -800.0, " No": -801.0}, YES_NO) == pytest.approx(1 / (1 + math.exp(-1)))
    # a difference of 1000 nats: 1 / (1 + e^-1000) = 1.0 and e^-1000 / (1 + e^-1000) = 0.0 in floats, no overflow
    assert template_score({" Yes": 0.0, " No": -1000.0}, YES_NO) == 1.0
    assert template_score({" Yes": -1000.0, " No": 0.0}, YES_NO) == 0.0
    # probability 0 for one of the two (-inf): 0 / (0 + .2) = 0.0; both 0: 0 / 0, no score
    assert template_score({" Yes": -math.inf, " No": log(0.2)}, YES_NO) == 0.0
    assert template_score({" Yes": -math.inf, " No": -math.inf}, YES_NO) is None


def test_instruct_rm_score_is_the_mean_over_the_templates_that_answered():
    # (.75 + .25 + .5) / 3 = .5: the two None templates are left out, not counted as 0
    assert instruct_rm_score([0.75, None, 0.25, 0.5, None]) == pytest.approx(0.5)
    assert instruct_rm_score([0.9]) == pytest.approx(0.9)
    assert instruct_rm_score([None, None]) is None
    assert instruct_rm_score([]) is None


def test_select_argmax_ties_follow_the_original():
    scores = [0.2, 0.9, 0.5, 0.9, 0.1]
    # np.argsort(scores) (stable on 5 values) = [4, 0, 2, 1, 3]; reversed [3, 1, 2, 0, 4]: the tie 1 / 3 -> 3
    assert select_argmax(scores) == select_argmax(scores, "last") == 3
    # the log-probability baseline: np.argsort(-scores) = [1, 3, 2, 0, 4]: the tie -> 1
    assert select_argmax(scores, "first") == 1
    assert select_argmax([0.7, None, 0.7]) == 2 and select_argmax([0.7, None, 0.7], "first") == 0
    assert select_argmax([-3.0, -1.0, None]) == 1  # log-probabilities: negative scores still compare
    assert select_argmax([None, 0.1, None]) == 1
    assert select_argmax([float("nan"), 0.1]) == 1  # NaN never chosen (the original's reversed argsort takes it)
    assert select_argmax([None, None]) is None
    assert select_argmax([]) is None
    with pytest.raises(ValueError, match="ties"):
        select_argmax([0.1], "middle")
    assert SCORER_TIES == {"instructrm": "last", "random": "last", "embedding": "last", "logprob": "first"}


def test_answer_candidates_are_the_exact_answer_tokens():
    assert answer_candidates() == [" False", " No", " True", " Yes"]
    assert answer_candidates(TINY_INSTRUCT_RM_TEMPLATES) == [" False", " No", " True", " Yes"]


# --------------------------------------------------------------------------------------------------------------
# Scorers on literal items


def item(refinement: str, index: int = 0, post_id: str = "p1", feedback: str = "Mention the dog.", prompt: str = ""):
    return RefinementItem(post_id, "A title", "The post text.", "A summary.", feedback, index, refinement, prompt)


def template_of(prompt: str, templates=INSTRUCT_RM_TEMPLATES):
    """The one template whose text before its first field and after its last one frame `prompt`."""
    (template,) = [t for t in templates
                   if prompt.startswith(t.text.split("{", 1)[0]) and prompt.endswith(t.text.rsplit("}", 1)[1])]
    return template


class FakeNextTokenLM:
    """A FAKE language model: next_token_logprobs answers from a table keyed by (refinement, template name)."""

    def __init__(self, replies: dict, templates=INSTRUCT_RM_TEMPLATES):
        self.replies = replies
        self.templates = templates
        self.calls: list[tuple[list[str], list[str]]] = []

    def next_token_logprobs(self, prompts, candidates=()):
        self.calls.append((list(prompts), list(candidates)))
        out = []
        for prompt in prompts:
            template = template_of(prompt, self.templates)
            refinement = prompt.split("New summary: ", 1)[1].split("\n\n", 1)[0]
            reply = self.replies[refinement]
            reply = reply(template) if callable(reply) else reply
            out.append(reply if isinstance(reply, LMResult) else LMResult(reply))
        return out


def _yes_no_or_true_false(yes_no: dict, true_false: dict):
    return lambda template: yes_no if template.positive == " Yes" else true_false


def test_instructrm_scorer_statuses():
    fake = FakeNextTokenLM({
        # Yes/No templates (1, 2, 4) .6/(.6+.2) = .75; True/False (3, 5) .9/(.9+.1) = .9; mean (3 * .75 + 2 * .9) / 5
        # = .81; the "yes" entry (another token) is ignored
        "good": _yes_no_or_true_false({" Yes": log(0.6), " No": log(0.2), "yes": log(0.1)},
                                      {" True": log(0.9), " False": log(0.1)}),
        # no answer token anywhere -> every template None -> "unparsed"
        "gibberish": {" the": log(0.5), " a": log(0.2)},
        # Yes/No templates .2/(.2+.6) = .25; True/False templates without an answer -> mean over 3 = .25, recorded
        "partly": _yes_no_or_true_false({" Yes": log(0.2), " No": log(0.6)}, {" the": log(0.5)}),
        # one template's request failed -> the item is "failed" with the reason
        "boom": lambda t: LMResult(None, "HTTP 500: boom", "failed") if t.name == "prompt_2"
        else LMResult({" Yes": log(0.5), " No": log(0.5), " True": log(0.5), " False": log(0.5)}),
        # a reply without log-probabilities ("unparsed" from the LM) on every template -> "unparsed"
        "nologprobs": LMResult(None, "no log-probabilities in the reply", "unparsed"),
        # only the positive token among the alternatives (openai's top-k without " No"): no score, not 1.0
        "onlyyes": {" Yes": log(0.9), " True": log(0.9), " the": log(0.05)},
        # the answers without their space are other tokens: no score
        "nospace": {"Yes": log(0.6), "No": log(0.2), "True": log(0.6), "False": log(0.2)},
    })
    items = [item("good", 0), item("   ", 1), item("gibberish", 2), item("partly", 3), item("boom", 4),
             item("nologprobs", 5), item("onlyyes", 6), item("nospace", 7)]
    scores = instructrm_scorer(items, ScorerContext(SelectionConfig(), fake))

    assert len(fake.calls) == 1  # one batched call for all items x templates
    prompts, candidates = fake.calls[0]
    assert len(prompts) == 7 * 5  # the empty refinement is not asked about
    assert prompts[0] == instruct_rm_prompt(YES_NO, "A title", "The post text.", "A summary.", "Mention the dog.",
                                            "good")
    assert candidates == answer_candidates()

    good, empty, gibberish, partly, boom, nologprobs, onlyyes, nospace = scores
    assert (good.status, good.score, good.reason) == ("ok", pytest.approx(0.81), None)
    assert good.template_scores == pytest.approx((0.75, 0.75, 0.9, 0.75, 0.9))
    assert (empty.status, empty.score, empty.template_scores) == ("empty", None, ())
    assert (gibberish.status, gibberish.score, gibberish.template_scores) == ("unparsed", None, (None,) * 5)
    assert "prompt_1: ' Yes' and ' No' not among the next-token log-probabilities" in gibberish.reason
    assert (partly.status, partly.score) == ("ok", pytest.approx(0.25))
    assert [partly.template_scores[i] for i in (0, 1, 3)] == pytest.approx([0.25, 0.25, 0.25])
    assert (partly.template_scores[2], partly.template_scores[4]) == (None, None)
    assert "prompt_3" in partly.reason and "prompt_5" in partly.reason and "prompt_1" not in partly.reason
    assert (boom.status, boom.score) == ("failed", None)
    assert boom.reason == "prompt_2: HTTP 500: boom"
    assert (nologprobs.status, nologprobs.score) == ("unparsed", None)
    assert "no log-probabilities in the reply" in nologprobs.reason
    assert (onlyyes.status, onlyyes.score) == ("unparsed", None)
    assert "prompt_1: ' No' not among" in onlyyes.reason and "prompt_3: ' False' not among" in onlyyes.reason
    assert (nospace.status, nospace.score) == ("unparsed", None)

    # among the post's refinements the "ok" argmax wins: good (.81) over partly (.25); the rest never chosen
    assert choose_per_post(items, scores) == {"p1": items[0]}


def test_instructrm_scorer_with_the_tiny_templates():
    # every template .6 / (.6 + .2) = .75 (Yes/No) or .3 / (.3 + .1) = .75 (True/False) -> mean .75
    fake = FakeNextTokenLM({"fixed": {" Yes": log(0.6), " No": log(0.2), " True": log(0.3), " False": log(0.1)}},
                           TINY_INSTRUCT_RM_TEMPLATES)
    (score,) = instructrm_scorer([item("fixed")], ScorerContext(SelectionConfig(instructrm_templates="tiny"), fake))
    prompts, candidates = fake.calls[0]
    assert prompts == [instruct_rm_prompt(t, "A title", "The post text.", "A summary.", "Mention the dog.", "fixed")
                       for t in TINY_INSTRUCT_RM_TEMPLATES]
    assert prompts[0].startswith("Here's a summary") and "\n\nSummary: A summary.\n\n" in prompts[0]
    assert (score.status, score.score) == ("ok", pytest.approx(0.75))


def test_exact_ties_go_to_the_highest_index_for_instructrm_and_the_lowest_for_logprob(tmp_path):
    refinements = [("p1", 0, "Same words."), ("p1", 1, "Other words."), ("p1", 2, "Same words again.")]
    feedback, samples = write_inputs(tmp_path, refinements)
    # "Same words." and "Same words again." get equal replies on every template: mean (3 * .75 + 2 * .9) / 5 = .81
    # each, an exact tie; "Other words." .25 on every template
    same = _yes_no_or_true_false({" Yes": log(0.6), " No": log(0.2)}, {" True": log(0.9), " False": log(0.1)})
    other = {" Yes": log(0.2), " No": log(0.6), " True": log(0.2), " False": log(0.6)}
    fake = FakeNextTokenLM({"Same words.": same, "Other words.": other, "Same words again.": same})
    out = tmp_path / "chosen.parquet"
    report = select_refinements(feedback, samples, "instructrm", tmp_path / "s.parquet", out, tmp_path / "r.json",
                                SelectionConfig(), fake)
    scores = read_table(tmp_path / "s.parquet", REFINEMENT_SCORES).to_pylist()
    assert scores[0]["score"] == scores[2]["score"] == pytest.approx(0.81)
    assert [r["references"] for r in read_table(out, QA_PROMPTS).to_pylist()] == [["Same words again."]]  # index 2
    assert (report["ties"], report["instructrm_templates"]) == ("last", "paper")

    # the log-probability baseline: mean token log-probabilities -1.0, -2.0, -1.0 -> the tie goes to index 0
    fake_seq = FakeSequenceLM({" Same words.": LMResult((-3.0, 3)), " Other words.": LMResult((-4.0, 2)),
                               " Same words again.": LMResult((-4.0, 4))})
    report = select_refinements(feedback, samples, "logprob", tmp_path / "s.parquet", out, tmp_path / "r.json",
                                SelectionConfig(), fake_seq)
    assert [r["references"] for r in read_table(out, QA_PROMPTS).to_pylist()] == [["Same words."]]  # index 0
    assert (report["ties"], report["instructrm_templates"]) == ("first", None)


def test_lm_scorers_need_a_language_model():
    with pytest.raises(ConfigError, match="instructrm"):
        instructrm_scorer([item("x")], ScorerContext())
    with pytest.raises(ConfigError, match="logprob"):
        logprob_scorer([item("x")], ScorerContext())


class FakeSequenceLM:
    """A FAKE language model: sequence_logprob answers from a table keyed by the continuation."""

    def __init__(self, replies: dict):
        self.replies = replies
        self.calls: list[tuple[list[str], list[str]]] = []

    def sequence_logprob(self, prompts, continuations):
        self.calls.append((list(prompts), list(continuations)))
        return [self.replies[c] for c in continuations]


def test_logprob_scorer_mean_token_logprob_and_statuses():
    fake = FakeSequenceLM({
        " short": LMResult((-6.0, 3)),  # mean -6 / 3 = -2.0
        " longer one": LMResult((-5.0, 5)),  # mean -1.0: higher, although its sum is about the same
        " zero": LMResult((0.0, 0)),  # no tokens -> unparsed
        " down": LMResult(None, "connection error", "failed"),
    })
    items = [item("short", 0, prompt="PROMPT-0"), item("longer one", 1, prompt="PROMPT-1"), item("", 2),
             item("zero", 3, prompt="PROMPT-3"), item("down", 4, prompt="")]
    scores = logprob_scorer(items, ScorerContext(SelectionConfig(use_feedback=False), fake))
    prompts, continuations = fake.calls[0]
    # the row's own refinement prompt; with none, the prompt rebuilt (here the no-feedback ablation)
    assert prompts == ["PROMPT-0", "PROMPT-1", "PROMPT-3",
                       refinement_prompt("A title", "The post text.", "A summary.", "Mention the dog.", False)]
    assert continuations == [" short", " longer one", " zero", " down"]
    assert [(s.status, s.score) for s in scores] == [
        ("ok", pytest.approx(-2.0)), ("ok", pytest.approx(-1.0)), ("empty", None), ("unparsed", None),
        ("failed", None),
    ]
    assert scores[4].reason == "connection error"
    assert choose_per_post(items, scores)["p1"] is items[1]


def test_random_scorer_is_seeded_stable_and_a_uniform_choice():
    items = [item(f"r{k}", k, post_id=f"p{n}") for n in range(3000) for k in range(3)] + [item("", 3, post_id="p0")]
    config = ScorerContext(SelectionConfig(seed=7))
    scores = random_scorer(items, config)
    assert scores[-1].status == "empty"
    assert all(s.status == "ok" and 0.0 <= s.score < 1.0 for s in scores[:-1])
    # stable: the same seed gives the same score to a refinement whatever the order of the rows
    reversed_scores = random_scorer(items[::-1], config)[::-1]
    assert [s.score for s in reversed_scores] == [s.score for s in scores]
    # another seed gives other scores
    other = random_scorer(items[:10], ScorerContext(SelectionConfig(seed=8)))
    assert [s.score for s in other] != [s.score for s in scores[:10]]
    # the argmax of i.i.d. uniforms is a uniform choice: each of 3 indices chosen ~1/3 of 3000 posts
    # (standard deviation sqrt(3000 * 1/3 * 2/3) ~ 26, so 1000 +- 100 is ~4 sd)
    chosen = choose_per_post(items, scores)
    counts = [sum(1 for c in chosen.values() if c.refinement_index == k) for k in range(3)]
    assert all(900 < c < 1100 for c in counts), counts


def test_embedding_scorer_prefers_the_refinement_that_uses_the_feedback():
    feedback = "The summary should say that the dog was adopted from the animal shelter last week."
    items = [
        item("Stock prices fell sharply on Tuesday after the bank report.", 0, feedback=feedback),
        item("The dog was adopted from the animal shelter last week.", 1, feedback=feedback),
        item("", 2, feedback=feedback),
    ]
    scores = embedding_scorer(items, ScorerContext(SelectionConfig()))  # the real bundled all-MiniLM-L6-v2
    unrelated, repeats, empty = scores
    assert empty.status == "empty"
    assert unrelated.status == repeats.status == "ok"
    assert -1.0 <= unrelated.score < repeats.score <= 1.0
    assert repeats.score > 0.6 and unrelated.score < 0.3
    assert choose_per_post(items, scores)["p1"] is items[1]


# --------------------------------------------------------------------------------------------------------------
# The stage, end to end, with the hf backend on a tiny causal LM

POSTS = {
    "p1": ("My dog", "I adopted a dog from the shelter. He is shy but sweet.", "Got a dog.", "Say he is shy."),
    "p2": ("Rent", "My landlord raised the rent again and I need advice.", "Rent is up.", "Mention the advice."),
    "p3": ("Job", "I got a new job but the commute is long.", "New job.", "Mention the commute."),
    "p4": ("Cat", "My cat keeps waking me up at night.", "Cat problem.", "Say it is at night."),
}
REFINEMENTS = [  # (post, sample_index, refinement)
    ("p1", 0, "Adopted a shy but sweet dog."),
    ("p1", 1, ""),
    ("p1", 2, "Got a dog from the shelter, he is shy."),
    ("p2", 0, "  "),
    ("p2", 1, ""),
    ("p3", 0, "New job with a long commute."),
]  # p4 has no refinement at all


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> Path:
    from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

    root = tmp_path_factory.mktemp("instruct_rm_lm")
    lines = []
    for post_id, (title, post, summary, feedback) in POSTS.items():
        for _, _, refinement in (r for r in REFINEMENTS if r[0] == post_id):
            for template in INSTRUCT_RM_TEMPLATES:
                lines.append(instruct_rm_prompt(template, title, post, summary, feedback, refinement)
                             .replace("\n", "\\n") + template.positive)
        lines.append(refinement_prompt(title, post, summary, feedback).replace("\n", "\\n"))
    lines += ["Answer: Yes", "Answer: No", "Answer: True", "Answer: False"] * 50
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    config = TinyModelConfig(seed=5, vocab_size=700, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=512)
    tokenizer = train_tokenizer([corpus], config.vocab_size, config.max_position_embeddings)
    for word in (" Yes", " No", " True", " False"):  # a precondition of the test: the answers are single tokens
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    model = build_causal_lm(tokenizer, config)
    out = root / "tiny"
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


def write_inputs(root: Path, refinements=REFINEMENTS) -> tuple[Path, Path]:
    feedback_rows = [
        {"post_id": post_id, "title": title, "post": post, "summary": summary, "feedback": feedback,
         "ideal_summary": None, "source": "raw/train.jsonl", "record": record}
        for record, (post_id, (title, post, summary, feedback)) in enumerate(POSTS.items())
    ]
    write_rows(feedback_rows, root / "feedback.parquet", SLF5K_FEEDBACK)
    sample_rows = [
        {"prompt_id": post_id, "prompt": refinement_prompt(*POSTS.get(post_id, POSTS["p1"])), "response": text,
         "origin": "refiner", "sample_index": index}
        for post_id, index, text in refinements
    ]
    write_rows(sample_rows, root / "refinements.parquet", SAMPLES)
    return root / "feedback.parquet", root / "refinements.parquet"


def run_stage(root: Path, scorer: str, *extra: str) -> dict:
    feedback, refinements = root / "feedback.parquet", root / "refinements.parquet"
    cli_main(["select-refinements", "--feedback", str(feedback), "--refinements", str(refinements), "--scorer", scorer,
              "--scores", str(root / f"{scorer}_scores.parquet"), "--output", str(root / f"{scorer}_chosen.parquet"),
              "--report", str(root / f"{scorer}_report.json"), *extra])
    return json.loads((root / f"{scorer}_report.json").read_text())


def direct_instruct_rm_score(model_dir: Path, title, post, summary, feedback, refinement) -> float:
    """InstructRM's score computed here without the LanguageModel: softmax over the full vocabulary of the next
    token after bos + prompt ids, P(pos) / (P(pos) + P(neg)) of the single tokens " Yes" / " No" (" True" /
    " False"), mean over the 5."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    per_template = []
    for template in INSTRUCT_RM_TEMPLATES:
        prompt = instruct_rm_prompt(template, title, post, summary, feedback, refinement)
        ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
        (pos,), (neg,) = (tokenizer(token, add_special_tokens=False)["input_ids"]
                          for token in (template.positive, template.negative))
        per_template.append(float(probs[pos]) / (float(probs[pos]) + float(probs[neg])))
    return sum(per_template) / len(per_template)


def test_select_refinements_stage_end_to_end_with_hf(tmp_path, tiny_lm_dir):
    feedback_path, _ = write_inputs(tmp_path)
    lm = json.dumps({"backend": "hf", "model": str(tiny_lm_dir), "device": "cpu", "batch_size": 4})
    cache = str(tmp_path / "cache.sqlite")
    report = run_stage(tmp_path, "instructrm", "--lm", lm, "--cache", cache)

    scores = read_table(tmp_path / "instructrm_scores.parquet", REFINEMENT_SCORES).to_pylist()
    assert [(r["post_id"], r["refinement_index"]) for r in scores] == [(p, i) for p, i, _ in REFINEMENTS]
    assert [r["status"] for r in scores] == ["ok", "empty", "ok", "empty", "empty", "ok"]
    assert all(r["scorer"] == f"instructrm:lm:hf:{tiny_lm_dir}" for r in scores)
    ok = [r for r in scores if r["status"] == "ok"]
    assert all(len(r["template_scores"]) == 5 and 0.0 < r["score"] < 1.0 for r in ok)
    assert all(r["score"] == pytest.approx(sum(r["template_scores"]) / 5) for r in ok)
    # the wiring (prompts, candidates, normalisation, mean) agrees with a direct computation on the model
    title, post, summary, feedback = POSTS["p3"]
    assert scores[5]["score"] == pytest.approx(
        direct_instruct_rm_score(tiny_lm_dir, title, post, summary, feedback, REFINEMENTS[5][2]), abs=1e-5)

    chosen = read_table(tmp_path / "instructrm_chosen.parquet", QA_PROMPTS).to_pylist()
    assert [r["prompt_id"] for r in chosen] == ["p1", "p3"]  # one row per post with a valid refinement
    best_p1 = max((scores[0], scores[2]), key=lambda r: (r["score"], r["refinement_index"]))  # ties: the highest
    assert chosen[0]["references"] == [best_p1["refinement"]]
    assert chosen[1] == {
        "prompt_id": "p3", "prompt": summary_prompt("Job", POSTS["p3"][1]), "question": "Job",
        "references": ["New job with a long commute."], "passages": [], "source": str(feedback_path), "record": 2,
    }

    assert report["status_counts"] == {"ok": 3, "empty": 3, "unparsed": 0, "failed": 0}
    assert report["refinements"] == 6 and report["feedback_posts"] == 4 and report["chosen"] == 2
    assert report["posts_without_valid_refinement"] == ["p2"]
    assert report["posts_without_refinements"] == ["p4"]
    assert (report["requests_sent"], report["cache_hits"]) == (15, 0)  # 3 refinements x 5 templates

    # a rerun answers everything from the cache and writes the same choice
    rerun = run_stage(tmp_path, "instructrm", "--lm", lm, "--cache", cache)
    assert (rerun["requests_sent"], rerun["cache_hits"]) == (0, 15)
    assert read_table(tmp_path / "instructrm_chosen.parquet").to_pylist() == chosen


def test_logprob_and_random_scorers_through_the_stage(tmp_path, tiny_lm_dir):
    write_inputs(tmp_path)
    lm = json.dumps({"backend": "hf", "model": str(tiny_lm_dir), "device": "cpu"})
    report = run_stage(tmp_path, "logprob", "--lm", lm, "--cache", str(tmp_path / "cache.sqlite"))
    assert report["status_counts"] == {"ok": 3, "empty": 3, "unparsed": 0, "failed": 0}
    assert report["requests_sent"] == 3
    scores = pq.read_table(tmp_path / "logprob_scores.parquet").to_pylist()
    assert all(r["score"] < 0 and r["template_scores"] == [] for r in scores if r["status"] == "ok")

    report = run_stage(tmp_path, "random", "--seed", "3")
    assert report["scorer"] == "random:seed=3" and report["chosen"] == 2 and report["requests_sent"] is None
    assert report["posts_without_valid_refinement"] == ["p2"]


def test_bad_input_names_file_record_and_field(tmp_path):
    _, refinements = write_inputs(tmp_path, [*REFINEMENTS, ("p9", 0, "A post nobody gave feedback on.")])
    with pytest.raises(DataError) as info:
        select_refinements(tmp_path / "feedback.parquet", refinements, "random", tmp_path / "s.parquet",
                           tmp_path / "o.parquet", tmp_path / "r.json", SelectionConfig())
    assert (info.value.path, info.value.record, info.value.field) == (str(refinements), 6, "prompt_id")
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "o.parquet").exists()

    _, refinements = write_inputs(tmp_path, [*REFINEMENTS, ("p1", 2, "A second refinement 2.")])
    with pytest.raises(DataError) as info:
        select_refinements(tmp_path / "feedback.parquet", refinements, "random", tmp_path / "s.parquet",
                           tmp_path / "o.parquet", tmp_path / "r.json", SelectionConfig())
    assert (info.value.record, info.value.field) == (6, "sample_index")

    with pytest.raises(SystemExit, match="needs --lm"):
        run_stage(tmp_path, "logprob")
    with pytest.raises(SystemExit, match="unknown key"):
        run_stage(tmp_path, "logprob", "--lm", json.dumps({"backend": "hf", "model": "m", "modle": "x"}),
                  "--cache", str(tmp_path / "c.sqlite"))
