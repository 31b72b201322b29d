"""RealToxicityPrompts conversion (Wu et al. 2023, detoxification): real JSONL(.gz) files in, real Parquet out;
the selection, the seeded split, the recorded skips and the errors that name file, record and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from feedbackflow import cli
from feedbackflow.core.formats import DETOX_PROMPTS, QA_PROMPTS, read_json, read_table
from feedbackflow.core.records import is_hub_id
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.fgrlhf.detox.data import REPORT_FILE, RTPSelectionConfig, convert_rtp, iter_rtp_records

ATTRIBUTES = ("profanity", "sexually_explicit", "identity_attack", "flirtation", "threat", "insult", "severe_toxicity")


def rtp(text, toxicity, challenging, continuation=" and so on.", continuation_toxicity=0.1) -> dict:
    """One record shaped like allenai/real-toxicity-prompts."""
    return {
        "filename": "0123-abc.txt",
        "begin": 10,
        "end": 90,
        "challenging": challenging,
        "prompt": {"text": text, "toxicity": toxicity, **dict.fromkeys(ATTRIBUTES, 0.01)},
        "continuation": {"text": continuation, "toxicity": continuation_toxicity, **dict.fromkeys(ATTRIBUTES, 0.01)},
    }


# Line 8 is blank (not a record, but counted: ids follow line numbers). Records 2 and 5 are skipped (an empty prompt;
# a 12-word prompt with max_prompt_words 10). Record 3 has no prompt toxicity; record 4 a blank continuation.
RECORDS = [
    rtp("The mayor said that", 0.1, False, " the bridge opens soon."),
    rtp("A neighbour shouted that", 0.8, True, " he was an idiot.", 0.97),
    rtp("   ", 0.2, False),
    rtp("The coach told us", None, False, " nothing new."),
    rtp("The teacher wrote", 0.45, True, "  ", None),
    rtp("one two three four five six seven eight nine ten eleven twelve", 0.2, False),
    rtp("The chef announced", 0.3, False, " dinner at eight."),
    rtp("The referee yelled", 0.95, True, " you stupid jerk.", 0.99),
    "",
    rtp("The captain said", 0.6, False, " we won."),
    rtp("The landlord wrote", 0.05, False, " rent is due."),
    rtp("The manager said", 0.5, True, " hello."),
]
VALID = [0, 1, 3, 4, 6, 7, 9, 10, 11]
SKIPPED = [
    {"record": 2, "field": "prompt.text", "reason": "empty prompt"},
    {"record": 5, "field": "prompt.text", "reason": "12 words, more than max_prompt_words 10"},
]
BASE = RTPSelectionConfig(max_prompt_words=10, dev_size=2, test_size=3, seed=7)
OUTPUT_FILES = {"train.parquet", "dev.parquet", "test.parquet", "sft_train.parquet", "sft_dev.parquet", REPORT_FILE}


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def tables(out: Path) -> dict[str, list[dict]]:
    result = {
        split: read_table(out / f"{split}.parquet", DETOX_PROMPTS).to_pylist() for split in ("train", "dev", "test")
    }
    for split in ("train", "dev"):
        result[f"sft_{split}"] = read_table(out / f"sft_{split}.parquet", QA_PROMPTS).to_pylist()
    return result


def records_of(rows: list[dict]) -> list[int]:
    return [row["record"] for row in rows]


def test_counts_rows_and_report(tmp_path):
    path = write_jsonl(tmp_path / "rtp.jsonl", RECORDS)
    out = tmp_path / "out"
    report = convert_rtp(path, out, BASE)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    got = tables(out)
    assert [len(got[split]) for split in ("train", "dev", "test")] == [4, 2, 3]
    assert sorted(records_of(got["train"] + got["dev"] + got["test"])) == VALID
    for split in ("train", "dev", "test"):
        assert records_of(got[split]) == sorted(records_of(got[split]))  # written in record order
    row = next(r for split in ("train", "dev", "test") for r in got[split] if r["record"] == 1)
    assert row == {
        "prompt_id": "rtp-1",
        "prompt": "A neighbour shouted that",
        "prompt_toxicity": 0.8,
        "challenging": True,
        "continuation": " he was an idiot.",
        "source": str(path),
        "record": 1,
    }
    row3 = next(r for split in ("train", "dev", "test") for r in got[split] if r["record"] == 3)
    assert row3["prompt_toxicity"] is None and row3["prompt_id"] == "rtp-3"
    # SFT rows: the split's prompts whose continuation is not blank (record 4's is "  ").
    for split in ("train", "dev"):
        expected = [r for r in got[split] if r["record"] != 4]
        assert [s["prompt_id"] for s in got[f"sft_{split}"]] == [r["prompt_id"] for r in expected]
        for sft, row in zip(got[f"sft_{split}"], expected, strict=True):
            assert sft["prompt"] == sft["question"] == row["prompt"]
            assert sft["references"] == [row["continuation"]] and sft["passages"] == []
            assert (sft["source"], sft["record"]) == (str(path), row["record"])
    on_disk = read_json(out / REPORT_FILE)
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["skipped"] == SKIPPED
    assert on_disk["selection"]["max_prompt_words"] == 10 and on_disk["selection"]["seed"] == 7
    counts = on_disk["counts"]
    assert {k: counts[k] for k in ("records", "skipped", "selected", "used", "train", "dev", "test")} == {
        "records": 11, "skipped": 2, "selected": 9, "used": 9, "train": 4, "dev": 2, "test": 3,
    }  # fmt: skip
    assert counts["excluded"] == {}
    assert counts["sft_train"] == len(got["sft_train"]) and counts["sft_dev"] == len(got["sft_dev"])
    assert sum(counts["challenging"].values()) == 4  # records 1, 4, 7, 11


def test_gzip_gives_the_same_tables(tmp_path):
    plain, packed = write_jsonl(tmp_path / "rtp.jsonl", RECORDS), write_jsonl(tmp_path / "rtp.jsonl.gz", RECORDS, True)
    convert_rtp(plain, tmp_path / "a", BASE)
    convert_rtp(packed, tmp_path / "b", BASE)
    a, b = tables(tmp_path / "a"), tables(tmp_path / "b")
    assert a == {name: [{**row, "source": str(plain)} for row in rows] for name, rows in b.items()}


def test_seeded_split_is_reproducible_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "rtp.jsonl", RECORDS)
    convert_rtp(path, tmp_path / "a", BASE)
    convert_rtp(path, tmp_path / "b", BASE)
    assert tables(tmp_path / "a") == tables(tmp_path / "b")
    assignments = set()
    for seed in (1, 2, 3, 4):
        out = tmp_path / f"seed{seed}"
        convert_rtp(path, out, RTPSelectionConfig(max_prompt_words=10, dev_size=2, test_size=3, seed=seed))
        parts = {split: set(records_of(rows)) for split, rows in tables(out).items() if not split.startswith("sft")}
        assert not (parts["train"] & parts["dev"] or parts["train"] & parts["test"] or parts["dev"] & parts["test"])
        assert sorted(parts["train"] | parts["dev"] | parts["test"]) == VALID
        assignments.add((frozenset(parts["dev"]), frozenset(parts["test"])))
    assert len(assignments) > 1  # the seed decides the split
    # max_prompts takes the first N of the shuffle: a subset of the full run's prompts, sizes as asked.
    convert_rtp(path, tmp_path / "few", RTPSelectionConfig(max_prompt_words=10, dev_size=1, test_size=1, max_prompts=5))
    few = tables(tmp_path / "few")
    assert [len(few[s]) for s in ("train", "dev", "test")] == [3, 1, 1]
    assert read_json(tmp_path / "few" / REPORT_FILE)["counts"]["used"] == 5


@pytest.mark.parametrize(
    ("options", "expected", "excluded"),
    [
        ({"challenging_only": True}, [1, 4, 7, 11], {"not challenging": 5}),
        # toxicities of the valid records: 0 .1, 1 .8, 3 None, 4 .45, 6 .3, 7 .95, 9 .6, 10 .05, 11 .5;
        # bounds are inclusive and a record without toxicity is left out once any bound is set.
        (
            {"min_prompt_toxicity": 0.3, "max_prompt_toxicity": 0.8},
            [1, 4, 6, 9, 11],
            {
                "no prompt toxicity": 1,
                "prompt toxicity below min_prompt_toxicity": 2,
                "prompt toxicity above max_prompt_toxicity": 1,
            },
        ),
        (
            {"challenging_only": True, "max_prompt_toxicity": 0.5},
            [4, 11],
            {"not challenging": 5, "prompt toxicity above max_prompt_toxicity": 2},
        ),
        ({"min_prompt_toxicity": 0.0}, [0, 1, 4, 6, 7, 9, 10, 11], {"no prompt toxicity": 1}),
    ],
)
def test_selection(tmp_path, options, expected, excluded):
    path = write_jsonl(tmp_path / "rtp.jsonl", RECORDS)
    config = RTPSelectionConfig(max_prompt_words=10, dev_size=1, test_size=1, **options)
    report = convert_rtp(path, tmp_path / "out", config)
    got = tables(tmp_path / "out")
    assert sorted(records_of(got["train"] + got["dev"] + got["test"])) == expected
    assert report["counts"]["excluded"] == excluded
    assert report["counts"]["selected"] == len(expected) and report["skipped"] == SKIPPED


def test_max_prompt_words_null_keeps_long_prompts(tmp_path):
    path = write_jsonl(tmp_path / "rtp.jsonl", RECORDS)
    report = convert_rtp(path, tmp_path / "out", RTPSelectionConfig(max_prompt_words=None, dev_size=0, test_size=0))
    assert report["skipped"] == SKIPPED[:1] and report["counts"]["train"] == 10


def bad_record(**changes) -> dict:
    record = rtp("The judge said", 0.2, False)
    for key, value in changes.items():
        if key.startswith("prompt_"):
            record["prompt"][key[len("prompt_") :]] = value
        else:
            record[key] = value
    return record


def without_prompt_text() -> dict:
    record = rtp("The judge said", 0.2, False)
    del record["prompt"]["text"]
    return record


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        (without_prompt_text(), "prompt.text", "missing"),
        (bad_record(prompt_toxicity=1.7), "prompt.toxicity", "got 1.7"),
        (bad_record(prompt_toxicity="high"), "prompt.toxicity", "got a JSON string"),
        (bad_record(continuation={"text": " x", "toxicity": -0.1}), "continuation.toxicity", "got -0.1"),
        (bad_record(prompt_text=7), "prompt.text", "expected a string"),
        (bad_record(prompt="The judge said"), "prompt", "expected a JSON object"),
        ({"challenging": False}, "prompt", "missing"),
        (bad_record(challenging="yes"), "challenging", "expected a boolean"),
        (bad_record(continuation=" and so on."), "continuation", "expected a JSON object"),
        ([1, 2], None, "expected a JSON object"),
        ("{not json", None, "not valid JSON"),
    ],
)
def test_malformed_records_name_file_record_and_field(tmp_path, bad, field, message):
    # The bad record comes after valid ones: the whole file is checked before anything is written.
    path = write_jsonl(tmp_path / "rtp.jsonl", RECORDS + [bad])
    out = tmp_path / "out"
    with pytest.raises(DataError) as caught:
        convert_rtp(path, out, BASE)
    error = caught.value
    assert (error.path, error.record, error.field) == (str(path), len(RECORDS), field)
    assert str(path) in str(error) and f"record {len(RECORDS)}" in str(error) and message in str(error)
    if field is not None:
        assert f"field {field!r}" in str(error)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["rtp.jsonl"]


def test_cli_reports_a_toxicity_of_1_7(tmp_path):
    path = write_jsonl(tmp_path / "rtp.jsonl.gz", [RECORDS[0], bad_record(prompt_toxicity=1.7)], gz=True)
    with pytest.raises(SystemExit) as caught:
        cli.main(["convert-rtp", "--input", str(path), "--output-dir", str(tmp_path / "out")])
    assert str(caught.value) == (
        f"error: {path}: record 1: field 'prompt.toxicity': expected a toxicity in [0, 1] or null, got 1.7"
    )
    assert not (tmp_path / "out").exists()


def test_impossible_sizes_are_config_errors(tmp_path):
    path = write_jsonl(tmp_path / "rtp.jsonl", RECORDS)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"dev_size 5 \+ test_size 5 is more than the 9 prompts"):
        convert_rtp(path, out, RTPSelectionConfig(max_prompt_words=10, dev_size=5, test_size=5))
    with pytest.raises(ConfigError, match=r"more than the 4 prompts selected \(of 9 before max_prompts 4\)"):
        convert_rtp(path, out, RTPSelectionConfig(max_prompt_words=10, dev_size=2, test_size=3, max_prompts=4))
    with pytest.raises(ConfigError, match="keeps no prompt"):
        convert_rtp(
            path, out, RTPSelectionConfig(max_prompt_words=10, min_prompt_toxicity=0.99, dev_size=0, test_size=0)
        )
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["rtp.jsonl"]
    # exactly dev + test = selected is possible (an empty train split)
    convert_rtp(path, out, RTPSelectionConfig(max_prompt_words=10, dev_size=4, test_size=5))
    assert [len(tables(out)[s]) for s in ("train", "dev", "test")] == [0, 4, 5]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_prompt_toxicity": 1.5}, "min_prompt_toxicity must be null or a number in"),
        ({"min_prompt_toxicity": 0.6, "max_prompt_toxicity": 0.4}, "is above max_prompt_toxicity"),
        ({"dev_size": -1}, "dev_size must be >= 0"),
        ({"max_prompt_words": 0}, "max_prompt_words must be null or at least 1"),
        ({"max_prompts": 0}, "max_prompts must be null or at least 1"),
    ],
)
def test_bad_selection_config(options, message):
    with pytest.raises(ConfigError, match=message):
        RTPSelectionConfig(**options)


def test_outputs_are_replaced_whole_and_the_input_is_protected(tmp_path):
    path = write_jsonl(tmp_path / "rtp.jsonl", RECORDS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.parquet").write_text("from an earlier run")
    convert_rtp(path, out, BASE)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    inside = write_jsonl(out / "rtp.jsonl", RECORDS)
    with pytest.raises(ConfigError, match="inside the output directory"):
        convert_rtp(inside, out, BASE)
    assert inside.exists()


def test_missing_files_and_hub_ids(tmp_path):
    assert is_hub_id("allenai/real-toxicity-prompts")
    assert not is_hub_id("data/rtp.jsonl") and not is_hub_id("rtp.jsonl.gz") and not is_hub_id("a/b/c")
    with pytest.raises(DataError, match="no such file"):
        list(iter_rtp_records(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        convert_rtp(empty, tmp_path / "out", BASE)


def test_cli_flags_and_hparams(tmp_path):
    path = write_jsonl(tmp_path / "rtp.jsonl", RECORDS)
    out = tmp_path / "out"
    hparams = json.dumps({"max_prompt_words": 10, "dev_size": 1, "test_size": 1, "max_prompt_toxicity": None})
    cli.main(
        ["convert-rtp", "--input", str(path), "--output-dir", str(out), "--source-name", "rtp-small",
         "--hparams", hparams, "--challenging-only", "true"]
    )  # fmt: skip
    report = read_json(out / REPORT_FILE)
    assert report["selection"]["challenging_only"] is True and report["counts"]["selected"] == 4
    assert all(row["prompt_id"] == f"rtp-small-{row['record']}" for row in tables(out)["train"])
