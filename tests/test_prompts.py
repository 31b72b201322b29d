"""Prompt sets (Yuan et al. 2023): rm-static and HH raw files -> PROMPTS and SAMPLES Parquet, with clear errors."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feedbackflow.core.formats import PROMPTS, SAMPLES, read_table
from feedbackflow.core.records import default_source_name
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.rrhf.prompts import configure, convert_prompts, main, read_prompts, split_hh_dialogue

RM_ROWS = [
    {
        "prompt": "\n\nHuman: What is 2+2?\n\nAssistant:",
        "response": " 4.",
        "chosen": " 4.",
        "rejected": " Five, probably.",
    },
    {
        "prompt": "\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: Name a colour.\n\nAssistant:",
        "response": " Blue",
        "chosen": " Blue",
        "rejected": " I will not.",
    },
]

HH_ROWS = [
    {
        "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.",
        "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: Five, probably.",
    },
    {
        # the chosen response itself contains an assistant marker: the shared prefix still decides the prompt
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nAssistant: Anything else?",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
    },
]


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n"
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_rm_static_jsonl_and_parquet_give_the_same_rows(tmp_path):
    jsonl = write_jsonl(tmp_path / "rm.jsonl.gz", RM_ROWS, gz=True)
    parquet = tmp_path / "rm.parquet"
    pq.write_table(pa.Table.from_pylist(RM_ROWS), parquet)
    prompts, samples = read_prompts(jsonl, "rm_static", source_name="rm")
    assert read_prompts(parquet, "rm_static", source_name="rm") == (
        [{**row, "source": str(parquet)} for row in prompts],
        samples,
    )
    assert [p["prompt_id"] for p in prompts] == ["rm-0", "rm-1"]
    assert prompts[1]["prompt"] == RM_ROWS[1]["prompt"]
    assert [(s["prompt_id"], s["origin"], s["response"]) for s in samples[:3]] == [
        ("rm-0", "chosen", "4."),
        ("rm-0", "rejected", "Five, probably."),
        ("rm-0", "response", "4."),
    ]
    assert all(s["sample_index"] == 0 for s in samples)
    _, two = read_prompts(jsonl, "rm_static", response_fields=["chosen", "rejected"])
    assert [s["origin"] for s in two] == ["chosen", "rejected"] * 2


def test_hh_split_uses_the_shared_prefix(tmp_path):
    path = write_jsonl(tmp_path / "hh-small.jsonl", HH_ROWS)
    prompts, samples = read_prompts(path, "hh")
    assert [p["prompt_id"] for p in prompts] == ["hh-small-0", "hh-small-1"]
    assert prompts[1]["prompt"] == "\n\nHuman: Hi\n\nAssistant:"
    assert [s["response"] for s in samples[2:]] == ["Hello!\n\nAssistant: Anything else?", "Go away."]
    assert split_hh_dialogue("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: x") is None
    assert default_source_name("dir/harmless-base-test.jsonl.gz") == "harmless-base-test"


def test_max_prompts_and_outputs(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS)
    prompts_out, responses_out = tmp_path / "out" / "prompts.parquet", tmp_path / "out" / "responses.parquet"
    convert_prompts(path, "hh", prompts_out, responses_out, max_prompts=1)
    prompts = read_table(prompts_out, PROMPTS).to_pylist()
    samples = read_table(responses_out, SAMPLES).to_pylist()
    assert prompts == [
        {"prompt_id": "hh-0", "prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "source": str(path), "record": 0}
    ]
    assert [(s["origin"], s["response"]) for s in samples] == [("chosen", "4."), ("rejected", "Five, probably.")]


BAD_CASES = [
    ("rm_static", [RM_ROWS[0], "{not json"], 1, None, "not valid JSON"),
    ("rm_static", [RM_ROWS[0], {k: v for k, v in RM_ROWS[1].items() if k != "rejected"}], 1, "rejected", "missing"),
    ("rm_static", [{**RM_ROWS[0], "prompt": "  "}], 0, "prompt", "empty"),
    ("rm_static", [RM_ROWS[0], {**RM_ROWS[1], "chosen": " "}], 1, "chosen", "empty"),
    ("rm_static", [{**RM_ROWS[0], "response": 3}], 0, "response", "expected a string"),
    ("hh", [HH_ROWS[0], {"chosen": HH_ROWS[0]["chosen"]}], 1, "rejected", "missing"),
    (
        "hh",
        [{"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}],
        0,
        "rejected",
        "share no prompt",
    ),
    (
        "hh",
        [{"chosen": "\n\nHuman: a\n\nAssistant: ", "rejected": "\n\nHuman: a\n\nAssistant: y"}],
        0,
        "chosen",
        "empty",
    ),
    (
        "hh",
        [{"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a\n\nAssistant: y"}],
        0,
        "chosen",
        "no '\\n\\nAssistant:'",
    ),
    ("hh", [["a list"]], 0, None, "expected a JSON object"),
]


@pytest.mark.parametrize("format, rows, record, field, message", BAD_CASES)
def test_bad_input_names_file_record_field_and_writes_nothing(tmp_path, format, rows, record, field, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    prompts_out, responses_out = tmp_path / "prompts.parquet", tmp_path / "responses.parquet"
    prompts_out.write_text("stale output of an earlier run")
    with pytest.raises(DataError) as caught:
        convert_prompts(path, format, prompts_out, responses_out)
    error = caught.value
    assert (error.path, error.record, error.field) == (str(path), record, field)
    assert message in str(error) and str(path) in str(error)
    assert not prompts_out.exists() and not responses_out.exists()
    assert list(tmp_path.iterdir()) == [path]


def test_empty_responses_can_be_skipped(tmp_path):
    rows = [{"chosen": "\n\nHuman: a\n\nAssistant: ", "rejected": "\n\nHuman: a\n\nAssistant: y"}]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    prompts, samples = read_prompts(path, "hh", empty_responses="skip")
    assert len(prompts) == 1 and [(s["origin"], s["response"]) for s in samples] == [("rejected", "y")]


def test_config_errors(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS)
    for kwargs in ({"max_prompts": 0}, {"response_fields": ["chosen"]}, {"empty_responses": "maybe"}):
        with pytest.raises(ConfigError):
            read_prompts(path, "hh", **kwargs)
    with pytest.raises(ConfigError):
        read_prompts(path, "alpaca")
    with pytest.raises(ConfigError):
        read_prompts(path, "rm_static", response_fields=["prompt"])


def test_cli_stage(tmp_path):
    path = write_jsonl(tmp_path / "rm.jsonl", RM_ROWS)
    parser = argparse.ArgumentParser()
    configure(parser)
    out = tmp_path / "p.parquet"
    args = parser.parse_args(
        [
            "--input",
            str(path),
            "--format",
            "rm_static",
            "--prompts",
            str(out),
            "--responses",
            str(tmp_path / "r.parquet"),
        ]
        + ["--max-prompts", "1", "--response-fields", "chosen", "rejected"]
    )
    main(args)
    assert read_table(out, PROMPTS).num_rows == 1
    assert read_table(tmp_path / "r.parquet", SAMPLES).column("origin").to_pylist() == ["chosen", "rejected"]


def test_real_hh_harmless_base_test(shared_data, tmp_path):
    path = shared_data / "hh" / "harmless-base-test.jsonl.gz"
    with pytest.raises(DataError) as caught:  # 4 records have an empty chosen response
        read_prompts(path, "hh")
    assert caught.value.field == "chosen" and caught.value.record == 86
    prompts, samples = convert_prompts(
        path, "hh", tmp_path / "prompts.parquet", tmp_path / "responses.parquet", empty_responses="skip"
    )
    assert len(prompts) == 2312 and len(samples) == 2 * 2312 - 4
    assert len({p["prompt_id"] for p in prompts}) == 2312
    records = [json.loads(line) for line in gzip.open(path, "rt")]
    by_prompt = {}
    for sample in samples:
        by_prompt.setdefault(sample["prompt_id"], {})[sample["origin"]] = sample
    for prompt in prompts:
        raw = records[prompt["record"]]
        for origin, sample in by_prompt[prompt["prompt_id"]].items():
            assert raw[origin].startswith(prompt["prompt"])
            assert raw[origin][len(prompt["prompt"]) :].strip() == sample["response"]
        assert prompt["prompt"].endswith("\n\nAssistant:")
    first = prompts[0]
    assert first["prompt_id"] == "harmless-base-test-0"
    assert first["prompt"].endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
    assert by_prompt[first["prompt_id"]]["chosen"]["response"].startswith("No, sorry!  All of these involve a pen")
    # a record whose chosen response contains another assistant marker
    assert by_prompt["harmless-base-test-1952"]["chosen"]["response"].startswith("Alrighty, I’ll do my best")
