"""convert-slf5k on small literal SLF5K-format files: tables, the train-size subset, recorded outcomes, bad input."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from feedbackflow.errors import DataError
from feedbackflow.slf5k_data import SPLITS, SLF5KConversionConfig, convert_slf5k


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


def write_splits(directory, records_by_split: dict[str, list[dict]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        records = records_by_split.get(split, [record(100 + k) for k in range(2)])
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


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


def test_train_size_is_one_seeded_subset_for_all_train_tables(tmp_path):
    write_splits(tmp_path / "raw", {"train": [record(k) for k in range(20)]})
    convert_slf5k(str(tmp_path / "raw"), tmp_path / "a", SLF5KConversionConfig(seed=3, train_size=5))
    convert_slf5k(str(tmp_path / "raw"), tmp_path / "b", SLF5KConversionConfig(seed=4, train_size=5))
    ids = {
        table: pq.read_table(tmp_path / "a" / f"train_{table}.parquet").column("post_id").to_pylist()
        for table in ("posts", "feedback", "comparisons")
    }
    assert len(ids["posts"]) == 5 and ids["posts"] == ids["feedback"] == ids["comparisons"]
    other = pq.read_table(tmp_path / "b" / "train_posts.parquet").column("post_id").to_pylist()
    assert other != ids["posts"]  # another seed, another subset
    assert pq.read_table(tmp_path / "a" / "test_posts.parquet").num_rows == 2  # other splits untouched


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        ({"post": "  "}, "post", "missing or empty"),
        ({"title": None}, "title", "missing or empty"),
        ({"comparison_preference": "Summary C"}, "comparison_preference", "not one of"),
        ({"feedback": 3}, "feedback", "must be a string"),
        ({"id": "t3_0"}, "id", "appears twice"),
    ],
)
def test_bad_record_names_file_record_field_and_writes_nothing(tmp_path, bad, field, message):
    write_splits(tmp_path / "raw", {"validation": [record(0), record(1, **bad)]})
    with pytest.raises(DataError) as caught:
        convert_slf5k(str(tmp_path / "raw"), tmp_path / "out", SLF5KConversionConfig())
    error = caught.value
    assert error.path == str(tmp_path / "raw" / "validation.jsonl") and error.record == 1 and error.field == field
    assert message in str(error)
    assert not (tmp_path / "out").exists()
