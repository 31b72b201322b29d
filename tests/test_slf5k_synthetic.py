"""The tiny synthetic SLF5K (ILF, Scheurer et al. 2023): the oracle functions on literal summaries, the files in SLF5K's
format that convert-slf5k reads, reproducibility, and tiny-LM tables whose labels agree with the oracle."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from feedbackflow import cli
from feedbackflow.core.formats import QA_PROMPTS, SLF5K_FEEDBACK, read_table
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.ilf.oracle import fixes_flaw, load_oracle, summary_quality
from feedbackflow.papers.ilf.prompts import (
    TINY_INSTRUCT_RM_TEMPLATES,
    pairwise_prompt,
    refinement_prompt,
    summary_prompt,
)
from feedbackflow.papers.ilf.slf5k import convert_slf5k
from feedbackflow.tiny.slf5k import (
    CORPUS_FILE,
    FACT_VALUES,
    INSTRUCT_RM_FILES,
    JUDGE_FILES,
    MADE_UP_ITEMS,
    MADE_UP_NAMES,
    ORACLE_FILE,
    POLICY_FILES,
    REFINER_FILES,
    REFINER_NAMES,
    REFINER_VAGUE_ITEM,
    SPLIT_FILES,
    SPLITS,
    SyntheticSLF5KConfig,
    fact_alternatives,
    make_synthetic_slf5k,
)
from feedbackflow.tiny.synthetic import unescape_corpus_line

SMALL = SyntheticSLF5KConfig(
    train_posts=120, development_posts=20, validation_posts=20, test_posts=30, lm_train_posts=150, lm_dev_posts=20
)
FACTS = {"name": "Mara", "item": "camera", "outcome": "broke"}


def quality(summary: str, facts: dict) -> float:
    """The oracle's summary quality with the world's alternatives, as the tiny oracle file lists them."""
    return summary_quality(summary, facts, fact_alternatives(facts))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slf5k")
    make_synthetic_slf5k(out, SMALL)
    return out


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def field_of(prompt: str, label: str) -> str:
    """The text after "{label}: " up to the next blank line in a prompt."""
    return re.search(rf"(?:^|\n){re.escape(label)}: (.*?)(?:\n\n|$)", prompt, re.S).group(1)


def facts_of(post: str) -> dict[str, str]:
    """The key facts read off a post's text: it names exactly one person, one item and one outcome of the lists."""
    words = re.findall(r"[a-z0-9]+", post.lower())
    facts = {}
    for kind, values in FACT_VALUES.items():
        found = [value for value in values if value.lower() in words]
        assert len(found) == 1, (kind, found, post)
        facts[kind] = found[0]
    return facts


# --- the oracle, by hand ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        ("My sister Mara borrowed my camera for a wedding and broke it.", 1.0),  # 3 of 3 facts
        ("my sister MARA borrowed my Camera and BROKE it", 1.0),  # case does not matter
        ("My sister Mara borrowed my thing for a wedding and broke it.", 2 / 3),  # the item is missing
        ("My sister Clara borrowed my camera for a wedding and broke it.", 2 / 3),  # a wrong name
        ("Mara and Hugo borrowed my camera and broke it.", 2 / 3),  # another name beside the right one: wrong
        ("Clara borrowed my thing and broke it.", 1 / 3),  # wrong name and no item
        ("Mara borrowed my camera and my drone and lost it.", 1 / 3),  # another item, another outcome: 1 of 3
        ("Maras cameras broken.", 0.0),  # whole words only
        ("", 0.0),
    ],
)
def test_summary_quality_by_hand(summary, expected):
    assert quality(summary, FACTS) == pytest.approx(expected)


def test_fixes_flaw_by_hand():
    missing = {"type": "missing_fact", "required": ["camera"], "forbidden": []}
    wrong_name = {"type": "wrong_name", "required": ["Mara"], "forbidden": ["Clara"]}
    assert fixes_flaw("Mara borrowed my camera.", missing)
    assert not fixes_flaw("Mara borrowed my thing.", missing)
    assert not fixes_flaw("Mara borrowed my cameras.", missing)  # whole words
    assert fixes_flaw("mara borrowed my thing.", wrong_name)  # the named flaw only: the item does not matter
    assert not fixes_flaw("Clara borrowed my camera.", wrong_name)  # kept the wrong name
    assert not fixes_flaw("Mara, not Clara, borrowed my camera.", wrong_name)  # the forbidden word is there
    assert not fixes_flaw("Emil borrowed my camera.", wrong_name)  # a third name
    assert fixes_flaw("Anything at all.", {"required": [], "forbidden": []})
    with pytest.raises(ValueError, match="at least one fact"):
        summary_quality("x", {})


def test_load_oracle(small, tmp_path):
    oracle = load_oracle(small / ORACLE_FILE)
    assert len(oracle) == sum(SMALL.split_sizes().values())
    entry = oracle[("test", "test_00000")]
    assert set(entry) == {"facts", "alternatives", "flaw"} and set(entry["facts"]) == {"name", "item", "outcome"}
    assert entry["alternatives"] == fact_alternatives(entry["facts"]) and entry["facts"]["name"] not in entry[
        "alternatives"]["name"]  # fmt: skip
    bad = tmp_path / "oracle.jsonl"
    bad.write_text('{"split": "train", "id": "a", "facts": {"name": "Mara"}, "flaw": null}\n\n{"split": "train"}\n')
    with pytest.raises(DataError) as caught:
        load_oracle(bad)
    assert (caught.value.record, caught.value.field) == (2, "id")
    bad.write_text('{"split": "train", "id": "a", "facts": {"name": "Mara"}, "flaw": {"type": "x"}}\n')
    with pytest.raises(DataError, match="flaw"):
        load_oracle(bad)
    bad.write_text('{"split": "train", "id": "a", "facts": {"name": "Mara"}, "alternatives": {"name": "Hugo"}, '
                   '"flaw": null}\n')  # fmt: skip
    with pytest.raises(DataError, match="alternatives"):
        load_oracle(bad)


# --- the SLF5K files --------------------------------------------------------------------------------------------


def test_records_convert_and_agree_with_the_oracle(small, tmp_path):
    report = convert_slf5k(str(small), tmp_path / "data")
    oracle = load_oracle(small / ORACLE_FILE)
    for split in SPLITS:
        records = load(small / SPLIT_FILES[split])
        counts = report["splits"][split]
        flawed = [r for r in records if oracle[(split, r["id"])]["flaw"] is not None]
        assert counts["records"] == counts["posts"] == counts["comparisons"] == SMALL.split_sizes()[split]
        assert counts["feedback"] == len(flawed) > 0 and counts["no_reference"] == []
        assert counts["no_feedback"] == [r["id"] for r in records if not r["feedback"]]
        for r in records:
            entry = oracle[(split, r["id"])]
            assert facts_of(r["post"]) == entry["facts"]  # the oracle's facts are the post's
            assert 25 <= len(r["post"].split()) <= 45 and len(r["title"].split()) <= 9
            assert r["summary_prompt"] == summary_prompt(r["title"], r["post"])
            assert quality(r["ideal_human_summary"], entry["facts"]) == 1.0
            initial = r["generated_summary_for_feedback"]
            if entry["flaw"] is None:  # a correct summary, no feedback
                assert quality(initial, entry["facts"]) == 1.0 and r["feedback"] == ""
            else:  # one flaw, which the feedback names with the right value and which the summary has
                assert quality(initial, entry["facts"]) == pytest.approx(2 / 3)
                assert not fixes_flaw(initial, entry["flaw"])
                assert entry["flaw"]["required"][0] in r["feedback"]
        feedback = read_table(tmp_path / "data" / f"{split}_feedback.parquet", SLF5K_FEEDBACK).to_pylist()
        assert [row["post_id"] for row in feedback] == [r["id"] for r in flawed]
    # rates over all splits: flawed initial summaries, reference summaries missing the item, comparison noise
    records = [(split, r) for split in SPLITS for r in load(small / SPLIT_FILES[split])]
    n = len(records)
    assert abs(sum(oracle[(s, r["id"])]["flaw"] is not None for s, r in records) / n - SMALL.flawed_rate) < 0.1
    references = [quality(r["tldr_human_reference_summary"], oracle[(s, r["id"])]["facts"]) for s, r in records]
    assert set(references) <= {1.0, 2 / 3} and abs(references.count(2 / 3) / n - SMALL.reference_missing_rate) < 0.06
    agree = 0
    for s, r in records:
        facts = oracle[(s, r["id"])]["facts"]
        a = quality(r["generated_summary_for_comparison_A"], facts)
        b = quality(r["generated_summary_for_comparison_B"], facts)
        assert a != b  # the two summaries always differ in quality
        agree += (a > b) == (r["comparison_preference"] == "Summary A")
    assert abs(agree / n - (1 - SMALL.comparison_label_noise)) < 0.06


def test_reproducible_with_the_seed(small, tmp_path):
    make_synthetic_slf5k(tmp_path / "same", SMALL)
    make_synthetic_slf5k(tmp_path / "other", dataclasses.replace(SMALL, seed=7))
    names = [*SPLIT_FILES.values(), ORACLE_FILE, CORPUS_FILE, *POLICY_FILES.values(), *REFINER_FILES.values(),
             *INSTRUCT_RM_FILES.values(), *JUDGE_FILES.values()]  # fmt: skip
    assert sorted(p.name for p in small.iterdir()) == sorted(names)
    for name in names:
        assert (tmp_path / "same" / name).read_bytes() == (small / name).read_bytes(), name
        assert (tmp_path / "other" / name).read_bytes() != (small / name).read_bytes(), name


# --- the tiny-LM tables -----------------------------------------------------------------------------------------


def rows_of(small: Path, name: str) -> list[dict]:
    return read_table(small / name, QA_PROMPTS).to_pylist()


def test_policy_rows(small):
    split_ids = {r["id"] for split in SPLITS for r in load(small / SPLIT_FILES[split])}
    flawed = 0
    for pool, size in (("train", SMALL.lm_train_posts), ("dev", SMALL.lm_dev_posts)):
        rows = rows_of(small, POLICY_FILES[pool])
        assert len(rows) == size
        for row in rows:
            post = field_of(row["prompt"], "Text")
            assert row["prompt"] == summary_prompt(field_of(row["prompt"], "Title"), post) == row["question"]
            assert row["passages"] == [] and len(row["references"]) == 1
            assert row["prompt_id"].split(":")[0] not in split_ids  # posts of their own
            score = quality(row["references"][0], facts_of(post))
            assert score in (1.0, pytest.approx(2 / 3))
            flawed += score < 1
    assert abs(flawed / (SMALL.lm_train_posts + SMALL.lm_dev_posts) - SMALL.flawed_rate) < 0.1


def flaw_from_prompt(prompt: str) -> tuple[dict, dict[str, str]]:
    """The flaw of the summary in a refinement or InstructRM prompt, worked out from the post and the summary alone:
    a made-up name in the summary is a wrong name, else the item is missing."""
    facts = facts_of(field_of(prompt, "Text"))
    summary = field_of(prompt, "Summary")
    wrong = [name for name in MADE_UP_NAMES if re.search(rf"\b{name}\b", summary)]
    assert quality(summary, facts) == pytest.approx(2 / 3)  # exactly one flaw
    if wrong:
        return {"required": [facts["name"]], "forbidden": wrong}, facts
    assert not any(re.search(rf"\b{item}\b", summary) for item in FACT_VALUES["item"])  # the item left out
    return {"required": [facts["item"]], "forbidden": []}, facts


def assert_instruct_rm_rows_agree_with_the_oracle(rows: list[dict]) -> None:
    """Each answer is the template's positive word (its answer token without the space SFT adds) exactly when the
    oracle says the refinement fixes the flaw; half of the rows are positive; every tiny template is used."""
    templates = {template.text.split("\n\n")[-2]: template for template in TINY_INSTRUCT_RM_TEMPLATES}
    positives, used = 0, set()
    for row in rows:
        flaw, _ = flaw_from_prompt(row["prompt"])
        template = templates[row["prompt"].split("\n\n")[-2]]
        used.add(template.name)
        label = fixes_flaw(field_of(row["prompt"], "New summary"), flaw)  # recomputed by the oracle
        assert row["references"] == [(template.positive if label else template.negative).strip()]
        assert row["prompt_id"].endswith("yes" if label else "no")
        positives += label
    assert positives * 2 == len(rows) and used == {t.name for t in TINY_INSTRUCT_RM_TEMPLATES}


def test_role_tables_hold_only_their_role_questions_about_their_pool(small):
    train_posts = {row["prompt_id"].split(":")[0] for row in rows_of(small, REFINER_FILES["train"])}
    for pool, size in (("train", SMALL.lm_train_posts), ("dev", SMALL.lm_dev_posts)):
        refiner = rows_of(small, REFINER_FILES[pool])
        assert len(refiner) == size * SMALL.refinements_per_post and all(":refine" in r["prompt_id"] for r in refiner)
        rows = rows_of(small, INSTRUCT_RM_FILES[pool])
        assert len(rows) == size * SMALL.instruct_rm_pairs_per_post * 2
        assert all(":instruct_rm" in row["prompt_id"] for row in rows)
        assert_instruct_rm_rows_agree_with_the_oracle(rows)
        posts = {row["prompt_id"].split(":")[0] for row in rows_of(small, REFINER_FILES[pool])}
        assert {row["prompt_id"].split(":")[0] for row in rows} == posts  # the pool's posts
        assert (pool == "train") == bool(posts & train_posts)  # dev questions are about posts never trained on
        judge = rows_of(small, JUDGE_FILES[pool])
        assert len(judge) == size * SMALL.judge_rows_per_post and all(":pairwise" in r["prompt_id"] for r in judge)
        assert {row["prompt_id"].split(":")[0] for row in judge} == posts
        assert_pairwise_rows_agree_with_the_oracle(judge)


def test_refiner_rows_agree_with_the_oracle(small):
    fixed = []
    for row in rows_of(small, REFINER_FILES["train"]):
        flaw, facts = flaw_from_prompt(row["prompt"])
        title, post = field_of(row["prompt"], "Title"), field_of(row["prompt"], "Text")
        summary, feedback = field_of(row["prompt"], "Summary"), field_of(row["prompt"], "Feedback on summary")
        assert row["prompt"] == refinement_prompt(title, post, summary, feedback)
        assert flaw["required"][0] in feedback and not any(w in feedback for w in flaw["forbidden"])
        fixed.append(fixes_flaw(row["references"][0], flaw))
        if fixed[-1]:
            assert quality(row["references"][0], facts) == 1.0  # a fix gets every fact right
        else:  # the refiner's own mistake, never the one the summary made
            refined = row["references"][0]
            own = [*REFINER_NAMES, *MADE_UP_ITEMS, REFINER_VAGUE_ITEM]
            assert any(re.search(rf"\b{word}\b", refined) for word in own), refined
            assert not any(re.search(rf"\b{word}\b", refined) for word in flaw["forbidden"]), refined
    assert abs(sum(fixed) / len(fixed) - SMALL.refinement_fix_rate) < 0.1


def assert_pairwise_rows_agree_with_the_oracle(rows: list[dict]) -> None:
    """The answer names the summary with more facts right; each letter is the answer about half of the time."""
    answers = []
    for row in rows:
        facts = facts_of(field_of(row["prompt"], "Text"))
        a, b = field_of(row["prompt"], "Summary A"), field_of(row["prompt"], "Summary B")
        assert row["prompt"] == pairwise_prompt(field_of(row["prompt"], "Title"), field_of(row["prompt"], "Text"), a, b)
        assert quality(a, facts) != quality(b, facts)
        assert row["references"] == ["A" if quality(a, facts) > quality(b, facts) else "B"]
        answers.append(row["references"][0])
    assert 0.3 < answers.count("A") / len(answers) < 0.7


def test_corpus_holds_every_text(small):
    corpus = {unescape_corpus_line(line) for line in (small / CORPUS_FILE).read_text(encoding="utf-8").splitlines()}
    for name in [*POLICY_FILES.values(), *REFINER_FILES.values(), *INSTRUCT_RM_FILES.values(), *JUDGE_FILES.values()]:
        for row in rows_of(small, name):
            assert row["prompt"] in corpus and row["references"][0] in corpus
    for split in SPLITS:
        for record in load(small / SPLIT_FILES[split]):
            assert record["post"] in corpus and record["generated_summary_for_comparison_A"] in corpus


def test_command_line_and_config_errors(tmp_path):
    out = tmp_path / "raw"
    cli.main(["make-synthetic-slf5k", "--output-dir", str(out), "--hparams",
              '{"train_posts": 5, "development_posts": 2, "validation_posts": 2, "test_posts": 3, '
              '"lm_train_posts": 4, "lm_dev_posts": 2}', "--seed", "3"])  # fmt: skip
    assert [len(load(out / SPLIT_FILES[split])) for split in SPLITS] == [5, 2, 2, 3]
    assert len(rows_of(out, POLICY_FILES["train"])) == 4
    for options, message in (({"train_posts": 0}, "train_posts"), ({"flawed_rate": 1.5}, "flawed_rate"),
                             ({"refinements_per_post": -1}, "refinements_per_post")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            SyntheticSLF5KConfig(**options)
