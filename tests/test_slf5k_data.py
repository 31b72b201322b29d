"""convert-slf5k on small literal SLF5K-format files: tables, the train-size subset, recorded outcomes, bad input."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest

from feedbackflow import cli
from feedbackflow.core.formats import SLF5K_COMPARISONS, SLF5K_FEEDBACK, SLF5K_POSTS, read_table
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.ilf.slf5k import SPLITS, SLF5KConversionConfig, convert_slf5k, is_hub_id

SCHEMAS = {"posts": SLF5K_POSTS, "feedback": SLF5K_FEEDBACK, "comparisons": SLF5K_COMPARISONS}


def record(index: int, **overrides) -> dict:
    base = {
        "id": f"t3_{index}",
        "subreddit": "relationships",
        "title": f"Title {index}",
        "post": f"Post text {index}.",
        "tldr_human_reference_summary": f"reference {index}",
        "summary_prompt": "unused",
        "generated_summary_for_comparison_A": f"summary A {index}",
        "generated_summary_for_comparison_B": f"summary B {index}",
        "comparison_preference": "Summary B" if index % 2 else "Summary A",
        "generated_summary_for_feedback": f"initial {index}",
        "feedback": f"feedback {index}",
        "ideal_human_summary": f"ideal {index}",
    }
    return {**base, **overrides}


def write_splits(directory, records_by_split: dict[str, list], gz: bool = False) -> None:
    """One file per split; a str item is written as that raw line (blank lines, broken JSON)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        records = records_by_split.get(split, [record(100 + k) for k in range(2)])
        text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
        if gz:
            (directory / f"{split}.jsonl.gz").write_bytes(gzip.compress(text.encode()))
        else:
            (directory / f"{split}.jsonl").write_text(text)


def tables(out, split: str) -> dict[str, list[dict]]:
    return {name: read_table(out / f"{split}_{name}.parquet", schema).to_pylist() for name, schema in SCHEMAS.items()}


def test_tables_and_recorded_outcomes(tmp_path):
    train = [
        record(0),
        record(1, feedback="", ideal_human_summary=None),  # no feedback: recorded, no feedback row
        record(2, generated_summary_for_comparison_B=None, comparison_preference=None),  # no comparison
        record(3, tldr_human_reference_summary=""),  # no reference summary
    ]
    write_splits(tmp_path / "raw", {"train": train})
    report = convert_slf5k(str(tmp_path / "raw"), tmp_path / "out", SLF5KConversionConfig())
    posts = pq.read_table(tmp_path / "out" / "train_posts.parquet").to_pylist()
    feedback = pq.read_table(tmp_path / "out" / "train_feedback.parquet").to_pylist()
    comparisons = pq.read_table(tmp_path / "out" / "train_comparisons.parquet").to_pylist()
    assert [p["post_id"] for p in posts] == ["t3_0", "t3_1", "t3_2", "t3_3"]
    assert posts[3]["reference_summary"] is None and posts[0]["reference_summary"] == "reference 0"
    assert [f["post_id"] for f in feedback] == ["t3_0", "t3_2", "t3_3"]
    assert feedback[0] == {
        "post_id": "t3_0", "title": "Title 0", "post": "Post text 0.", "summary": "initial 0",
        "feedback": "feedback 0", "ideal_summary": "ideal 0", "source": str(tmp_path / "raw" / "train.jsonl"),
        "record": 0,
    }  # fmt: skip
    assert [(c["post_id"], c["preferred"]) for c in comparisons] == [("t3_0", "A"), ("t3_1", "B"), ("t3_3", "B")]
    split = report["splits"]["train"]
    assert split["no_feedback"] == ["t3_1"] and split["no_comparison"] == ["t3_2"] and split["no_reference"] == ["t3_3"]
    assert (split["posts"], split["feedback"], split["comparisons"]) == (4, 3, 3)
    assert json.loads((tmp_path / "out" / "conversion.json").read_text()) == report


def test_every_field_of_a_full_record_and_line_numbers(tmp_path):
    # Line 1 is blank (counted: `record` is the line number). Texts are stripped; a null subreddit stays null.
    full = record(
        7,
        subreddit=None,
        title="  My sister broke my camera ",
        post="\nShe borrowed it for a wedding.  ",
        tldr_human_reference_summary=" Sister broke my camera.",
        generated_summary_for_comparison_A="A says something. ",
        generated_summary_for_comparison_B=" B says more.",
        comparison_preference="Summary B",
        generated_summary_for_feedback="  My brother broke it.",
        feedback=" Wrong person: it was the sister. ",
        ideal_human_summary="My sister broke my camera at a wedding.",
    )
    write_splits(tmp_path / "raw", {"test": [record(0), "", full]})
    report = convert_slf5k(str(tmp_path / "raw"), tmp_path / "out")
    source = str(tmp_path / "raw" / "test.jsonl")
    got = tables(tmp_path / "out", "test")
    assert got["posts"][1] == {
        "post_id": "t3_7", "subreddit": None, "title": "My sister broke my camera",
        "post": "She borrowed it for a wedding.", "reference_summary": "Sister broke my camera.", "source": source,
        "record": 2,
    }  # fmt: skip
    assert got["feedback"][1] == {
        "post_id": "t3_7", "title": "My sister broke my camera", "post": "She borrowed it for a wedding.",
        "summary": "My brother broke it.", "feedback": "Wrong person: it was the sister.",
        "ideal_summary": "My sister broke my camera at a wedding.", "source": source, "record": 2,
    }  # fmt: skip
    assert got["comparisons"][1] == {
        "post_id": "t3_7", "title": "My sister broke my camera", "post": "She borrowed it for a wedding.",
        "summary_a": "A says something.", "summary_b": "B says more.", "preferred": "B", "source": source,
        "record": 2,
    }  # fmt: skip
    # every split is converted, with its counts and (here empty) recorded outcomes
    assert set(report["splits"]) == set(SPLITS)
    for split in SPLITS:
        counts = report["splits"][split]
        assert counts["records"] == counts["posts"] == counts["feedback"] == counts["comparisons"] == 2
        assert counts["left_out_by_size"] == 0
        assert counts["no_feedback"] == counts["no_comparison"] == counts["no_reference"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["conversion.json"] + [f"{split}_{name}.parquet" for split in SPLITS for name in SCHEMAS]
    )


def test_feedback_and_comparison_need_all_their_parts(tmp_path):
    train = [
        record(0, generated_summary_for_feedback="   "),  # feedback on no summary: no feedback row
        record(1, feedback=None),
        record(2, ideal_human_summary=""),  # feedback row with a null ideal summary
        record(3, comparison_preference=""),  # both summaries, no preference: no comparison, not an error
        record(4, generated_summary_for_comparison_A="", comparison_preference="Summary C"),  # one summary: ignored
    ]
    write_splits(tmp_path / "raw", {"train": train})
    report = convert_slf5k(str(tmp_path / "raw"), tmp_path / "out")
    got = tables(tmp_path / "out", "train")
    assert [row["post_id"] for row in got["feedback"]] == ["t3_2", "t3_3", "t3_4"]
    assert got["feedback"][0]["ideal_summary"] is None
    assert [row["post_id"] for row in got["comparisons"]] == ["t3_0", "t3_1", "t3_2"]
    split = report["splits"]["train"]
    assert split["no_feedback"] == ["t3_0", "t3_1"] and split["no_comparison"] == ["t3_3", "t3_4"]
    assert (split["posts"], split["feedback"], split["comparisons"]) == (5, 3, 3)


def test_gzip_gives_the_same_tables(tmp_path):
    splits = {"train": [record(k) for k in range(4)], "test": [record(9), record(10, feedback="")]}
    write_splits(tmp_path / "plain", splits)
    write_splits(tmp_path / "packed", splits, gz=True)
    convert_slf5k(str(tmp_path / "plain"), tmp_path / "a")
    convert_slf5k(str(tmp_path / "packed"), tmp_path / "b")
    for split in SPLITS:
        a, b = tables(tmp_path / "a", split), tables(tmp_path / "b", split)
        strip = {name: [{**row, "source": None} for row in rows] for name, rows in a.items()}
        assert strip == {name: [{**row, "source": None} for row in rows] for name, rows in b.items()}
        assert b["posts"][0]["source"] == str(tmp_path / "packed" / f"{split}.jsonl.gz")


def test_train_size_is_one_seeded_subset_for_all_train_tables(tmp_path):
    write_splits(tmp_path / "raw", {"train": [record(k) for k in range(20)]})
    convert_slf5k(str(tmp_path / "raw"), tmp_path / "a", SLF5KConversionConfig(seed=3, train_size=5))
    convert_slf5k(str(tmp_path / "raw"), tmp_path / "b", SLF5KConversionConfig(seed=4, train_size=5))
    convert_slf5k(str(tmp_path / "raw"), tmp_path / "c", SLF5KConversionConfig(seed=3, train_size=5))
    ids = {
        table: pq.read_table(tmp_path / "a" / f"train_{table}.parquet").column("post_id").to_pylist()
        for table in ("posts", "feedback", "comparisons")
    }
    assert len(ids["posts"]) == 5 and ids["posts"] == ids["feedback"] == ids["comparisons"]
    assert ids["posts"] == sorted(ids["posts"], key=lambda i: int(i[3:]))  # kept in record order
    other = pq.read_table(tmp_path / "b" / "train_posts.parquet").column("post_id").to_pylist()
    assert other != ids["posts"]  # another seed, another subset
    again = pq.read_table(tmp_path / "c" / "train_posts.parquet").column("post_id").to_pylist()
    assert again == ids["posts"]  # the same seed, the same subset
    assert pq.read_table(tmp_path / "a" / "test_posts.parquet").num_rows == 2  # other splits untouched
    report = json.loads((tmp_path / "a" / "conversion.json").read_text())
    assert report["splits"]["train"]["records"] == 20 and report["splits"]["train"]["left_out_by_size"] == 15


def test_max_posts_per_split_and_sizes_too_large(tmp_path):
    splits = {split: [record(k) for k in range(6)] for split in SPLITS}
    write_splits(tmp_path / "raw", splits)
    report = convert_slf5k(str(tmp_path / "raw"), tmp_path / "out", SLF5KConversionConfig(max_posts_per_split=4))
    assert [report["splits"][split]["posts"] for split in SPLITS] == [6, 4, 4, 4]
    kept = pq.read_table(tmp_path / "out" / "test_posts.parquet").column("post_id").to_pylist()
    assert set(kept) < {f"t3_{k}" for k in range(6)}
    for options in ({"train_size": 7}, {"max_posts_per_split": 7}):
        with pytest.raises(ConfigError, match="asked for 7 posts, the split has 6"):
            convert_slf5k(str(tmp_path / "raw"), tmp_path / "too_many", SLF5KConversionConfig(**options))
        assert not (tmp_path / "too_many").exists()
    with pytest.raises(ConfigError, match="train_size"):
        SLF5KConversionConfig(train_size=0)


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        ({"post": "  "}, "post", "missing or empty"),
        ({"title": None}, "title", "missing or empty"),
        ("no title", "title", "missing or empty"),
        ({"comparison_preference": "Summary C"}, "comparison_preference", "not one of"),
        ({"comparison_preference": "A"}, "comparison_preference", "not one of"),
        ({"feedback": 3}, "feedback", "must be a string"),
        ({"subreddit": ["a"]}, "subreddit", "must be a string"),
        ({"id": 12}, "id", "must be a string"),
        ({"id": "t3_0"}, "id", "appears twice"),
        ({"id": " "}, "id", "is empty"),
        ("no id", "id", "missing"),
    ],
)
def test_bad_record_names_file_record_field_and_writes_nothing(tmp_path, bad, field, message):
    if bad == "no title":
        bad_record = {k: v for k, v in record(1).items() if k != "title"}
    elif bad == "no id":
        bad_record = {k: v for k, v in record(1).items() if k != "id"}
    else:
        bad_record = record(1, **bad)
    write_splits(tmp_path / "raw", {"validation": [record(0), bad_record]})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("an earlier run")
    with pytest.raises(DataError) as caught:
        convert_slf5k(str(tmp_path / "raw"), tmp_path / "out", SLF5KConversionConfig())
    error = caught.value
    assert error.path == str(tmp_path / "raw" / "validation.jsonl") and error.record == 1 and error.field == field
    assert message in str(error) and "validation.jsonl: record 1" in str(error)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]  # nothing written, nothing replaced
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary directory left


@pytest.mark.parametrize(("line", "message"), [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_malformed_lines(tmp_path, line, message):
    write_splits(tmp_path / "raw", {"development": [record(0), "", line]})
    with pytest.raises(DataError, match=message) as caught:
        convert_slf5k(str(tmp_path / "raw"), tmp_path / "out")
    assert (caught.value.path, caught.value.record) == (str(tmp_path / "raw" / "development.jsonl"), 2)
    assert not (tmp_path / "out").exists()


def test_missing_or_ambiguous_split_files(tmp_path):
    write_splits(tmp_path / "raw", {})
    (tmp_path / "raw" / "test.jsonl").unlink()
    with pytest.raises(DataError, match="missing split file") as caught:
        convert_slf5k(str(tmp_path / "raw"), tmp_path / "out")
    assert caught.value.path == str(tmp_path / "raw" / "test.jsonl")
    (tmp_path / "raw" / "test.jsonl").write_text(json.dumps(record(0)) + "\n")
    (tmp_path / "raw" / "test.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    with pytest.raises(DataError, match="both test.jsonl and test.jsonl.gz"):
        convert_slf5k(str(tmp_path / "raw"), tmp_path / "out")
    (tmp_path / "raw" / "test.jsonl.gz").unlink()
    (tmp_path / "raw" / "test.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        convert_slf5k(str(tmp_path / "raw"), tmp_path / "out")
    with pytest.raises(DataError, match="no such directory"):
        convert_slf5k(str(tmp_path / "nowhere" / "x.jsonl"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert is_hub_id("JeremyAlain/SLF5K") and not is_hub_id("data/train.jsonl")


def test_command_line(tmp_path):
    write_splits(tmp_path / "raw", {"train": [record(k) for k in range(10)]})
    out = tmp_path / "out"
    cli.main(["convert-slf5k", "--input", str(tmp_path / "raw"), "--output-dir", str(out),
              "--hparams", '{"train_size": 4, "seed": 1}', "--max-posts-per-split", "1"])  # fmt: skip
    report = json.loads((out / "conversion.json").read_text())
    assert report["config"] == {"train_size": 4, "max_posts_per_split": 1, "seed": 1}
    assert [report["splits"][split]["posts"] for split in SPLITS] == [4, 1, 1, 1]
    write_splits(tmp_path / "bad", {"test": [record(0), record(0)]})
    with pytest.raises(SystemExit, match="appears twice"):
        cli.main(["convert-slf5k", "--input", str(tmp_path / "bad"), "--output-dir", str(tmp_path / "bad_out")])
