"""ILF's derived tables (Scheurer et al. 2023) from small literal SLF5K_POSTS / SLF5K_FEEDBACK / SAMPLES tables, through
the stages `ilf-prompts`, `ilf-sft-data` and `ilf-reference-samples` (feedbackflow.cli.main)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedbackflow.cli import main as cli_main
from feedbackflow.core.formats import (
    PROMPTS,
    QA_PROMPTS,
    SAMPLES,
    SLF5K_FEEDBACK,
    SLF5K_POSTS,
    read_table,
    write_rows,
)
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.ilf.data import ILFDataConfig, initial_sft_rows
from feedbackflow.papers.ilf.prompts import refinement_prompt, summary_prompt

POSTS = [
    # post_id, title, post, reference summary (p2 has none, p3 a blank one)
    ("p1", "Sister broke my camera", "My sister Mara borrowed my camera and broke it.", " Mara broke my camera. "),
    ("p2", "Roommate and my bike", "Hugo borrowed my bike for a trip and lost it.", None),
    ("p3", "Need advice", "Lena sold the tent I lent her.", "   "),
    ("p4", "Lent my guitar", "I lent my guitar to Oskar. Oskar painted it.", "Oskar painted my guitar."),
]
FEEDBACK = [
    # post_id, summary (the initial one the feedback is on), feedback, ideal summary (p4 has none)
    ("p1", "Mara broke my thing.", "The summary should say that it was the camera.", "  Mara broke the camera I lent."),
    ("p2", "Tomas lost my bike.", "The name is wrong: it is Hugo, not Tomas.", "Hugo lost the bike I lent him."),
    ("p4", "Oskar painted my thing.", "It should mention the guitar.", None),
]
INITIAL = [
    # prompt_id, sample_index, response (p2's sample 0 is blank; p9 is not a feedback post)
    ("p1", 1, "a later sample of p1"),
    ("p1", 0, "Mara broke my thing."),
    ("p2", 0, "  "),
    ("p4", 0, "Oskar painted my thing."),
    ("p9", 0, "not a feedback post"),
]


def post_of(post_id: str) -> tuple:
    return next(p for p in POSTS if p[0] == post_id)


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.parquet" for name in ("posts", "feedback", "initial")}
    write_rows(
        [{"post_id": pid, "subreddit": "Advice", "title": title, "post": post, "reference_summary": ref,
          "source": "train.jsonl", "record": k} for k, (pid, title, post, ref) in enumerate(POSTS)],
        paths["posts"], SLF5K_POSTS,
    )  # fmt: skip
    write_rows(
        [{"post_id": pid, "title": post_of(pid)[1], "post": post_of(pid)[2], "summary": summary, "feedback": fb,
          "ideal_summary": ideal, "source": "train.jsonl", "record": k}
         for k, (pid, summary, fb, ideal) in enumerate(FEEDBACK)],
        paths["feedback"], SLF5K_FEEDBACK,
    )  # fmt: skip
    write_rows(
        [{"prompt_id": pid, "prompt": summary_prompt(*post_of(pid)[1:3]) if pid != "p9" else "x", "response": text,
          "origin": "initial", "sample_index": index} for pid, index, text in INITIAL],
        paths["initial"], SAMPLES,
    )  # fmt: skip
    return paths


def run(*argv: str) -> None:
    cli_main([str(a) for a in argv])


def test_summary_and_refinement_prompts(tmp_path, data):
    run("ilf-prompts", "--posts", data["posts"], "--output", tmp_path / "summary.parquet")
    rows = read_table(tmp_path / "summary.parquet", PROMPTS).to_pylist()
    assert rows == [
        {"prompt_id": pid, "prompt": summary_prompt(title, post), "source": str(data["posts"]), "record": k}
        for k, (pid, title, post, _) in enumerate(POSTS)
    ]
    # the summary prompt of Scheurer et al. 2023, spelled out once for one post
    assert rows[0]["prompt"] == (
        "Write an excellent summary of the given text.\n\nTitle: Sister broke my camera\n\n"
        "Text: My sister Mara borrowed my camera and broke it.\n\nTL;DR:"
    )

    run("ilf-prompts", "--refinement", data["feedback"], "--output", tmp_path / "refine.parquet")
    rows = read_table(tmp_path / "refine.parquet", PROMPTS).to_pylist()
    assert [r["prompt_id"] for r in rows] == ["p1", "p2", "p4"]
    assert [r["record"] for r in rows] == [0, 1, 2] and {r["source"] for r in rows} == {str(data["feedback"])}
    for row, (pid, summary, feedback, _) in zip(rows, FEEDBACK, strict=True):
        assert row["prompt"] == refinement_prompt(*post_of(pid)[1:3], summary, feedback, True)
        assert f"Feedback on summary: {feedback}" in row["prompt"] and row["prompt"].endswith("Improved TL;DR:")

    # the ablation: the direct-refinement prompt, without the feedback
    run("ilf-prompts", "--refinement", data["feedback"], "--output", tmp_path / "direct.parquet",
        "--use-feedback", "false")  # fmt: skip
    rows = read_table(tmp_path / "direct.parquet", PROMPTS).to_pylist()
    for row, (pid, summary, feedback, _) in zip(rows, FEEDBACK, strict=True):
        assert row["prompt"] == refinement_prompt(*post_of(pid)[1:3], summary, feedback, False)
        assert feedback not in row["prompt"] and "Feedback" not in row["prompt"] and summary in row["prompt"]


def sft(tmp_path: Path, name: str, *argv) -> tuple[list[dict], dict]:
    out, report = tmp_path / f"{name}.parquet", tmp_path / f"{name}.json"
    run("ilf-sft-data", *argv, "--output", out, "--report", report)
    return read_table(out, QA_PROMPTS).to_pylist(), json.loads(report.read_text())


def expected_row(post_id: str, target: str, source: Path, record: int) -> dict:
    _, title, post, _ = post_of(post_id)
    return {"prompt_id": post_id, "prompt": summary_prompt(title, post), "question": title, "references": [target],
            "passages": [], "source": str(source), "record": record}  # fmt: skip


def test_human_sets_ideal_and_reference(tmp_path, data):
    rows, report = sft(tmp_path, "ideal", "--source", "human", "--feedback", data["feedback"])
    # the annotators' ideal summaries (stripped); p4 has none and is left out, reported
    assert rows == [
        expected_row("p1", "Mara broke the camera I lent.", data["feedback"], 0),
        expected_row("p2", "Hugo lost the bike I lent him.", data["feedback"], 1),
    ]
    assert report == {"source": "human", "examples": 2, "left_out_without_target": ["p4"], "same_posts_not_found": []}

    rows, report = sft(tmp_path, "tldr", "--source", "human", "--feedback", data["feedback"], "--posts", data["posts"],
                       "--human-summary", "reference")  # fmt: skip
    # the feedback posts with the post's TL;DR reference instead; p2 has none
    assert rows == [
        expected_row("p1", "Mara broke my camera.", data["feedback"], 0),
        expected_row("p4", "Oskar painted my guitar.", data["feedback"], 2),
    ]
    assert report["left_out_without_target"] == ["p2"]
    with pytest.raises(SystemExit, match="--source human needs --posts"):
        run("ilf-sft-data", "--source", "human", "--feedback", data["feedback"], "--human-summary", "reference",
            "--output", tmp_path / "x.parquet")  # fmt: skip
    with pytest.raises(ConfigError, match="human_summary"):
        ILFDataConfig(human_summary="tldr")


def test_initial_set_takes_sample_zero_and_rejects_two(tmp_path, data):
    rows, report = sft(tmp_path, "initial_set", "--source", "initial", "--feedback", data["feedback"],
                       "--samples", data["initial"])  # fmt: skip
    # sample 0 of each feedback post (not p1's sample 1); p2's blank sample 0 is left out; p9 has no feedback
    assert rows == [
        expected_row("p1", "Mara broke my thing.", data["feedback"], 0),
        expected_row("p4", "Oskar painted my thing.", data["feedback"], 2),
    ]
    assert report["left_out_without_target"] == ["p2"]

    twice = tmp_path / "twice.parquet"
    samples = read_table(data["initial"], SAMPLES).to_pylist()
    write_rows([*samples, {**samples[3], "response": "another sample 0 of p4"}], twice, SAMPLES)
    with pytest.raises(DataError) as caught:
        initial_sft_rows(data["feedback"], twice)
    assert (caught.value.path, caught.value.record, caught.value.field) == (str(twice), 5, "prompt_id")
    assert "'p4' has two samples with index 0" in str(caught.value)


def test_reference_set_and_same_posts_as(tmp_path, data):
    rows, report = sft(tmp_path, "dev", "--source", "reference", "--posts", data["posts"])
    assert rows == [
        expected_row("p1", "Mara broke my camera.", data["posts"], 0),
        expected_row("p4", "Oskar painted my guitar.", data["posts"], 3),
    ]
    assert report["left_out_without_target"] == ["p2", "p3"]

    # --same-posts-as keeps exactly that table's posts, in its order; its posts without a row here are reported
    ilf = tmp_path / "ilf.parquet"
    write_rows([{**expected_row("p1", "a chosen refinement", data["feedback"], 0), "prompt_id": pid}
                for pid in ("p4", "p2", "p9", "p1")], ilf, QA_PROMPTS)  # fmt: skip
    rows, report = sft(tmp_path, "same", "--source", "human", "--feedback", data["feedback"], "--same-posts-as", ilf)
    assert [r["prompt_id"] for r in rows] == ["p2", "p1"]
    assert rows[0] == expected_row("p2", "Hugo lost the bike I lent him.", data["feedback"], 1)
    assert report["examples"] == 2 and report["same_posts_not_found"] == ["p4", "p9"]
    rows, _ = sft(tmp_path, "same_initial", "--source", "initial", "--feedback", data["feedback"],
                  "--samples", data["initial"], "--same-posts-as", ilf)  # fmt: skip
    assert [r["prompt_id"] for r in rows] == ["p4", "p1"]

    # nothing left: a DataError naming the selection (the cause), not the feedback file, and nothing written
    only_p3 = tmp_path / "only_p3.parquet"
    write_rows([expected_row("p1", "x", data["feedback"], 0) | {"prompt_id": "p3"}], only_p3, QA_PROMPTS)
    cause = r"no human fine-tuning examples: none of this selection's 1 posts \(p3\) has one$"
    with pytest.raises(SystemExit, match=rf"^error: {only_p3}: field 'prompt_id': {cause}"):
        sft(tmp_path, "none", "--source", "human", "--feedback", data["feedback"], "--same-posts-as", only_p3)
    assert not (tmp_path / "none.parquet").exists()
    # an empty selection (e.g. InstructRM kept no refinement): named as such
    empty = tmp_path / "empty.parquet"
    write_rows([], empty, QA_PROMPTS)
    cause = r"no human fine-tuning examples: this selection \(--same-posts-as\) has no post$"
    with pytest.raises(SystemExit, match=rf"^error: {empty}: field 'prompt_id': {cause}"):
        sft(tmp_path, "none", "--source", "human", "--feedback", data["feedback"], "--same-posts-as", empty)


def test_reference_samples(tmp_path, data):
    out = tmp_path / "reference.samples.parquet"
    run("ilf-reference-samples", "--posts", data["posts"], "--output", out)
    assert read_table(out, SAMPLES).to_pylist() == [
        {"prompt_id": "p1", "prompt": summary_prompt(*post_of("p1")[1:3]), "response": "Mara broke my camera.",
         "origin": "reference", "sample_index": 0},
        {"prompt_id": "p4", "prompt": summary_prompt(*post_of("p4")[1:3]), "response": "Oskar painted my guitar.",
         "origin": "reference", "sample_index": 0},
    ]  # fmt: skip
