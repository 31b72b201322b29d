"""Raw preference files -> preference-lists Parquet (Cheng et al. 2023; docs/methods/dsp.md): real DSP/HH files,
text-score, bad input."""

from __future__ import annotations

import collections
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from feedbackflow.core.formats import PREFERENCE_LISTS
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.stages.preferences import (
    DSP_DOMAINS,
    convert_preferences,
    count_pairs,
    dsp_prompt,
    read_dsp_pairs,
    read_hh_pairs,
    read_preferences,
    read_text_score,
)


@pytest.fixture(scope="module")
def dsp_file(shared_data: Path) -> Path:
    return shared_data / "dsp" / "domain_specific_preference.test.json"


@pytest.fixture(scope="module")
def hh_file(shared_data: Path) -> Path:
    return shared_data / "hh" / "harmless-base-test.jsonl.gz"


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _dsp_record(query: str = "q?", **overrides) -> dict:
    responses = {domain: f"{domain} answer to {query}" for domain in DSP_DOMAINS}
    responses.update(overrides)
    return {"query": query, "responses": responses}


def _assert_names(error: DataError, path: Path, record: int | None, field: str | None) -> None:
    text = str(error)
    assert str(path) in text
    if record is not None:
        assert f"record {record}" in text
    if field is not None:
        assert field in text
    assert (error.record, error.field) == (record, field)


# --- dsp_prompt -----------------------------------------------------------------------------------


def test_dsp_prompt_is_exact():
    assert dsp_prompt("Why?", "Because.") == "## Human:\nWhy?\n\n## Assistant:\nBecause."


# --- real DSP file --------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["academy", "business", "entertainment", "literature"])
def test_real_dsp_file_gives_four_pairs_per_query(dsp_file: Path, domain: str):
    raw = json.loads(dsp_file.read_text())
    assert len(raw) == 661
    rows = read_dsp_pairs(dsp_file, domain)
    assert len(rows) == 2644
    per_record = collections.Counter(row["record"] for row in rows)
    assert sorted(per_record) == list(range(661))
    assert set(per_record.values()) == {4}
    assert all(row["score"] == [1.0, 0.0] for row in rows)
    assert all(row["source"] == str(dsp_file) for row in rows)

    # Record 5 against the raw JSON: chosen is the domain's response, the others come in the file's key order.
    record = raw[5]
    pairs = [row for row in rows if row["record"] == 5]
    others = [name for name in record["responses"] if name != domain]
    assert len(others) == 4
    for row, other in zip(pairs, others, strict=True):
        assert row["text"][0] == ("## Human:\n" + record["query"] + "\n\n## Assistant:\n" + record["responses"][domain])
        assert row["text"][1] == ("## Human:\n" + record["query"] + "\n\n## Assistant:\n" + record["responses"][other])


def test_real_dsp_file_converts_to_parquet(dsp_file: Path, tmp_path: Path):
    output = tmp_path / "out" / "academy.parquet"
    rows = convert_preferences(dsp_file, "dsp", output, domain="academy")
    table = pq.read_table(output)
    assert table.schema.equals(PREFERENCE_LISTS)
    assert table.num_rows == 2644
    assert table.to_pylist() == rows
    first = table.slice(0, 1).to_pylist()[0]
    raw = json.loads(dsp_file.read_text())[0]
    assert first["text"] == [
        dsp_prompt(raw["query"], raw["responses"]["academy"]),
        dsp_prompt(raw["query"], raw["responses"]["business"]),
    ]
    assert first["score"] == [1.0, 0.0]
    assert first["record"] == 0
    assert count_pairs(rows) == 2644
    assert not [p for p in output.parent.iterdir() if p.name != output.name]  # no temporary file left


# --- real HH file ---------------------------------------------------------------------------------


def test_real_hh_file(hh_file: Path, tmp_path: Path):
    with gzip.open(hh_file, "rt", encoding="utf-8") as handle:
        first_raw = json.loads(handle.readline())
    output = tmp_path / "hh.parquet"
    rows = convert_preferences(hh_file, "hh", output)
    assert len(rows) == 2312
    table = pq.read_table(output)
    assert table.schema.equals(PREFERENCE_LISTS)
    assert table.num_rows == 2312
    first = table.slice(0, 1).to_pylist()[0]
    assert first == {
        "text": [first_raw["chosen"], first_raw["rejected"]],
        "score": [1.0, 0.0],
        "source": str(hh_file),
        "record": 0,
    }
    assert first["text"][0].startswith("\n\nHuman: ")
    assert table.column("record").to_pylist() == list(range(2312))


def test_plain_jsonl_hh_file_keeps_line_numbers(tmp_path: Path):
    path = tmp_path / "hh.jsonl"
    lines = [
        json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}),
        "",
        json.dumps({"chosen": "c2", "rejected": "r2", "extra": 1}),
    ]
    path.write_text("\n".join(lines) + "\n")
    rows = read_hh_pairs(path)
    assert rows == [
        {
            "text": ["\n\nHuman: hi\n\nAssistant: hello", "\n\nHuman: hi\n\nAssistant: go"],
            "score": [1.0, 0.0],
            "source": str(path),
            "record": 0,
        },
        {"text": ["c2", "r2"], "score": [1.0, 0.0], "source": str(path), "record": 2},
    ]


def test_gzip_is_found_by_magic_bytes_not_suffix(tmp_path: Path):
    path = tmp_path / "hh_without_gz_suffix.jsonl"
    path.write_bytes(gzip.compress(json.dumps({"chosen": "a", "rejected": "b"}).encode()))
    assert read_hh_pairs(path)[0]["text"] == ["a", "b"]


# --- text-score -----------------------------------------------------------------------------------


def test_text_score_read_as_it_is(tmp_path: Path):
    records = [
        {"text": ["a", "b"], "score": [1.5, 0.5]},
        {"text": ["tie 1", "tie 2"], "score": [1, 1]},
        {"text": ["x", "y", "z"], "score": [0.0, 2.0, -1.25], "other": "ignored"},
    ]
    path = _write_json(tmp_path / "ts.json", records)
    output = tmp_path / "ts.parquet"
    rows = convert_preferences(path, "text_score", output)
    table = pq.read_table(output)
    assert table.schema.equals(PREFERENCE_LISTS)
    assert (
        table.to_pylist()
        == rows
        == [
            {"text": ["a", "b"], "score": [1.5, 0.5], "source": str(path), "record": 0},
            {"text": ["tie 1", "tie 2"], "score": [1.0, 1.0], "source": str(path), "record": 1},
            {"text": ["x", "y", "z"], "score": [0.0, 2.0, -1.25], "source": str(path), "record": 2},
        ]
    )
    assert count_pairs(rows) == 1 + 0 + 3  # ties are not pairs


@pytest.mark.parametrize(
    ("record", "field", "words"),
    [
        ({"text": ["a", "b"], "score": [1, 0, 2]}, "score", "3 scores for 2 texts"),
        ({"text": ["a"], "score": [1]}, "text", "at least 2"),
        ({"score": [1, 0]}, "text", "missing"),
        ({"text": ["a", "b"]}, "score", "missing"),
        ({"text": ["a", 3], "score": [1, 0]}, "text[1]", "expected a string"),
        ({"text": ["a", "b"], "score": [1, "0"]}, "score[1]", "expected a number"),
        ({"text": ["a", "b"], "score": [1, True]}, "score[1]", "expected a number"),
        ({"text": ["a", "b"], "score": [float("nan"), 0]}, "score[0]", "finite"),
        ({"text": "ab", "score": [1, 0]}, "text", "expected a list"),
    ],
)
def test_text_score_bad_records(tmp_path: Path, record: dict, field: str, words: str):
    path = tmp_path / "ts.json"
    path.write_text(json.dumps([{"text": ["ok", "ok2"], "score": [1, 0]}, record]))  # NaN is written as NaN
    output = tmp_path / "ts.parquet"
    with pytest.raises(DataError) as caught:
        convert_preferences(path, "text_score", output)
    _assert_names(caught.value, path, 1, field)
    assert words in str(caught.value)
    assert not output.exists()


def test_text_score_not_a_list_or_not_objects(tmp_path: Path):
    path = _write_json(tmp_path / "ts.json", {"text": ["a", "b"], "score": [1, 0]})
    with pytest.raises(DataError, match="expected a JSON list"):
        read_text_score(path)
    path = _write_json(tmp_path / "ts2.json", [["a", "b"]])
    with pytest.raises(DataError) as caught:
        read_text_score(path)
    _assert_names(caught.value, path, 0, None)


# --- bad input: nothing is written ----------------------------------------------------------------


def test_malformed_json_names_file_line_and_column(tmp_path: Path):
    path = tmp_path / "dsp.json"
    path.write_text('[{"query": "q", "responses": {"academy": "a",}}]')
    output = tmp_path / "out.parquet"
    with pytest.raises(DataError) as caught:
        convert_preferences(path, "dsp", output, domain="academy")
    _assert_names(caught.value, path, None, None)
    assert "not valid JSON" in str(caught.value)
    assert "line 1 column" in str(caught.value)
    assert not output.exists()


def test_dsp_record_missing_responses(tmp_path: Path):
    path = _write_json(tmp_path / "dsp.json", [_dsp_record("q0"), _dsp_record("q1"), {"query": "q2"}])
    output = tmp_path / "out.parquet"
    with pytest.raises(DataError) as caught:
        convert_preferences(path, "dsp", output, domain="academy")
    _assert_names(caught.value, path, 2, "responses")
    assert not output.exists()


def test_dsp_record_missing_query(tmp_path: Path):
    path = _write_json(tmp_path / "dsp.json", [{"responses": {"academy": "a", "normal": "n"}}])
    with pytest.raises(DataError) as caught:
        read_dsp_pairs(path, "academy")
    _assert_names(caught.value, path, 0, "query")


def test_dsp_record_missing_domain(tmp_path: Path):
    bad = _dsp_record("q1")
    del bad["responses"]["business"]
    path = _write_json(tmp_path / "dsp.json", [_dsp_record("q0"), bad])
    output = tmp_path / "out.parquet"
    with pytest.raises(DataError) as caught:
        convert_preferences(path, "dsp", output, domain="business")
    _assert_names(caught.value, path, 1, "responses.business")
    assert not output.exists()
    # The other domains of that record still convert: the record just has 3 other domains for them.
    rows = read_dsp_pairs(path, "academy")
    assert [row["record"] for row in rows] == [0, 0, 0, 0, 1, 1, 1]


def test_dsp_non_string_response_names_field(tmp_path: Path):
    path = _write_json(tmp_path / "dsp.json", [_dsp_record("q0", literature=["not", "a", "string"])])
    with pytest.raises(DataError) as caught:
        read_dsp_pairs(path, "academy")
    _assert_names(caught.value, path, 0, "responses.literature")


def test_dsp_unknown_domain(tmp_path: Path, dsp_file: Path):
    output = tmp_path / "out.parquet"
    with pytest.raises(DataError) as caught:
        convert_preferences(dsp_file, "dsp", output, domain="medicine")
    _assert_names(caught.value, dsp_file, 0, "responses.medicine")
    assert "academy" in str(caught.value)  # says which domains there are
    assert not output.exists()


def test_dsp_custom_domain_names(tmp_path: Path):
    path = _write_json(
        tmp_path / "custom.json",
        [{"query": "q", "responses": {"legal": "L", "medical": "M", "casual": "C"}}],
    )
    rows = read_dsp_pairs(path, "medical")
    assert [row["text"] for row in rows] == [
        [dsp_prompt("q", "M"), dsp_prompt("q", "L")],
        [dsp_prompt("q", "M"), dsp_prompt("q", "C")],
    ]


def test_bad_hh_line(tmp_path: Path):
    path = tmp_path / "hh.jsonl"
    good = json.dumps({"chosen": "c", "rejected": "r"})
    path.write_text("\n".join([good, good, '{"chosen": "c", "rejected": ', good]) + "\n")
    output = tmp_path / "out.parquet"
    with pytest.raises(DataError) as caught:
        convert_preferences(path, "hh", output)
    _assert_names(caught.value, path, 2, None)
    assert "not valid JSON" in str(caught.value)
    assert not output.exists()


@pytest.mark.parametrize(("line", "field"), [({"chosen": "c"}, "rejected"), ({"chosen": 1, "rejected": "r"}, "chosen")])
def test_hh_missing_or_non_string_field(tmp_path: Path, line: dict, field: str):
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError) as caught:
        read_hh_pairs(path)
    _assert_names(caught.value, path, 0, field)


@pytest.mark.parametrize(("format", "content"), [("hh", "\n\n"), ("text_score", "[]"), ("dsp", "[]")])
def test_empty_file_is_an_error(tmp_path: Path, format: str, content: str):
    path = tmp_path / "empty"
    path.write_text(content)
    with pytest.raises(DataError, match="no records"):
        read_preferences(path, format, domain="academy" if format == "dsp" else None)


def test_missing_input_file_is_a_data_error(tmp_path: Path):
    path = tmp_path / "absent.json"
    with pytest.raises(DataError, match="cannot read"):
        read_text_score(path)


def test_error_removes_stale_output(tmp_path: Path):
    path = _write_json(tmp_path / "dsp.json", [{"query": "q"}])
    output = tmp_path / "out.parquet"
    output.write_bytes(b"left by an earlier run")
    with pytest.raises(DataError):
        convert_preferences(path, "dsp", output, domain="academy")
    assert not output.exists()


def test_output_may_not_be_the_input(tmp_path: Path):
    path = _write_json(tmp_path / "ts.json", [{"text": ["a", "b"], "score": [1, 0]}])
    with pytest.raises(ConfigError):
        convert_preferences(path, "text_score", path)
    assert path.exists()


def test_format_and_domain_configuration(tmp_path: Path):
    path = _write_json(tmp_path / "ts.json", [{"text": ["a", "b"], "score": [1, 0]}])
    with pytest.raises(ConfigError, match="'csv'"):
        read_preferences(path, "csv")
    with pytest.raises(ConfigError, match="domain"):
        read_preferences(path, "dsp")
    with pytest.raises(ConfigError, match="only for format 'dsp'"):
        read_preferences(path, "text_score", domain="academy")
    assert len(read_preferences(path, "text_score")) == 1


# --- command line ---------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "feedbackflow", "convert-preferences", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_help():
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--input", "--format", "--domain", "--output"):
        assert flag in result.stdout


def test_cli_converts(tmp_path: Path):
    path = _write_json(tmp_path / "dsp.json", [_dsp_record("q0"), _dsp_record("q1")])
    output = tmp_path / "out.parquet"
    result = _cli("--input", str(path), "--format", "dsp", "--domain", "normal", "--output", str(output))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(output)
    assert table.schema.equals(PREFERENCE_LISTS)
    assert table.num_rows == 8
    assert table.column("text").to_pylist()[0] == [
        dsp_prompt("q0", "normal answer to q0"),
        dsp_prompt("q0", "academy answer to q0"),
    ]
    assert "wrote 8 preference lists" in result.stderr


def test_cli_bad_file(tmp_path: Path):
    path = _write_json(tmp_path / "ts.json", [{"text": ["a", "b"], "score": [1, 0]}, {"text": ["a", "b"]}])
    output = tmp_path / "out.parquet"
    result = _cli("--input", str(path), "--format", "text_score", "--output", str(output))
    assert result.returncode != 0
    assert str(path) in result.stderr
    assert "record 1" in result.stderr
    assert "'score'" in result.stderr
    assert not output.exists()
