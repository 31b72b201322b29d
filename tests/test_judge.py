"""The LLM judge with real components: the official openai client against a scripted OpenAI-compatible server on
loopback, and a tiny local transformers model for the hf backend.

The scripted server reads "case:NAME" in the user message and answers as that case says (see `script`).
Malformed replies (a body that is not JSON, a completion without choices) are retried like server errors, then
recorded as "failed" with the reason "malformed reply: ...".
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import sqlite3
import time
from pathlib import Path

import pytest
from openai_stub_server import Action, StubOpenAIServer

from feedbackflow.core.formats import SAMPLES, SCORED_SAMPLES, read_table, write_rows
from feedbackflow.errors import ConfigError
from feedbackflow.llm import judge as judge_module
from feedbackflow.llm.hf_backend import directory_fingerprint
from feedbackflow.llm.judge import (
    HFBackend,
    Judge,
    JudgeConfig,
    judge_samples,
    parse_score,
    parse_score_with_reason,
    rating_messages,
)

KEY_ENV = "FF_TEST_JUDGE_KEY"


def script(user: str, attempt: int) -> Action:
    match = re.search(r"case:([\w-]+)", user)
    case = match.group(1) if match else "score-5"
    if case.startswith("score-"):
        return Action(text=case.removeprefix("score-"))
    if case.startswith("slowscore-"):
        return Action(text=case.removeprefix("slowscore-"), delay_s=0.15)
    if case == "rate-limit-once":
        return Action(429, headers={"Retry-After": "0"}) if attempt == 0 else Action(text="8")
    if case == "rate-limit-long-once":
        return Action(429, headers={"Retry-After": "1000"}) if attempt == 0 else Action(text="7")
    if case == "server-error-once":
        return Action(500) if attempt == 0 else Action(text="6")
    if case == "server-error-always":
        return Action(500)
    if case == "slow-once":
        return Action(text="5", delay_s=2.5) if attempt == 0 else Action(text="5")
    if case == "bad-json-once":
        return Action(body=b'{"id": "chatcmpl-x", "choices": [') if attempt == 0 else Action(text="4")
    if case == "no-choices-always":
        return Action(body={"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "stub"})
    if case == "no-score":
        return Action(text="I would rather not say.")
    if case == "out-of-range":
        return Action(text="Score: 42")
    if case == "bad-request":
        return Action(400)
    if case == "unauthorized":
        return Action(401)
    raise AssertionError(f"unknown case {case!r}")


@pytest.fixture
def server():
    with StubOpenAIServer(script, max_requests=200, max_delay_s=3.0) as stub:
        yield stub


@pytest.fixture
def api_key(monkeypatch) -> str:
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, key)
    return key


def openai_config(server: StubOpenAIServer, **overrides) -> JudgeConfig:
    values = dict(
        backend="openai",
        model="stub-judge",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        max_retries=2,
        timeout_s=1.0,
        backoff_s=0.01,
        max_backoff_s=0.05,
        max_concurrency=3,
    )
    values.update(overrides)
    return JudgeConfig(**values)


def write_samples(path: Path, cases: list[str]) -> Path:
    rows = [
        {
            "prompt_id": f"p{i}",
            "prompt": f"\n\nHuman: question {i} {{with braces}}?\n\nAssistant:",
            "response": f"answer {i} case:{case}",
            "origin": "policy",
            "sample_index": 0,
        }
        for i, case in enumerate(cases)
    ]
    write_rows(rows, path, SAMPLES)
    return path


def run_stage(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    judge_module.configure(parser)
    judge_module.main(parser.parse_args(argv))


def stage_argv(samples: Path, output: Path, cache: Path, server: StubOpenAIServer, **hparams) -> list[str]:
    values = dict(
        backend="openai",
        model="stub-judge",
        api_key_env=KEY_ENV,
        max_retries=2,
        timeout_s=1.0,
        backoff_s=0.01,
        max_backoff_s=0.05,
    )
    values.update(hparams)
    return [
        "--samples",
        str(samples),
        "--output",
        str(output),
        "--cache",
        str(cache),
        "--hparams",
        json.dumps(values),
        "--base-url",
        server.base_url,
        "--max-concurrency",
        "3",
    ]


def test_parse_score():
    pattern = judge_module.DEFAULT_SCORE_PATTERN
    assert parse_score("7", pattern, 1, 10) == 7.0
    assert parse_score("Score: 8.5/10", pattern, 1, 10) == 8.5
    assert parse_score("  10\n", pattern, 1, 10) == 10.0
    assert parse_score("no idea", pattern, 1, 10) is None
    assert parse_score("42", pattern, 1, 10) is None
    assert parse_score("0", pattern, 1, 10) is None
    assert parse_score("Rating: [[3]]", r"\[\[(\d+)\]\]", 1, 10) == 3.0
    assert parse_score_with_reason("no idea", pattern, 1, 10) == (None, "no score in reply 'no idea'")
    score, reason = parse_score_with_reason("42", pattern, 1, 10)
    assert score is None and reason.startswith("score 42 outside [1, 10]")
    score, reason = parse_score_with_reason("x=abc", r"x=(\w+)", 1, 10)
    assert score is None and "cannot read a number" in reason


def test_config_errors():
    with pytest.raises(ConfigError, match="backend"):
        JudgeConfig(backend="anthropic", model="m")
    with pytest.raises(ConfigError, match="model"):
        JudgeConfig(backend="openai")
    with pytest.raises(ConfigError, match="exactly one group"):
        JudgeConfig(model="m", score_pattern=r"\d+")
    with pytest.raises(ConfigError, match="prompt_template"):
        JudgeConfig(model="m", prompt_template="{question} {response}")
    with pytest.raises(ConfigError, match="score_min"):
        JudgeConfig(model="m", score_min=10, score_max=1)
    with pytest.raises(ConfigError, match="temperature"):
        JudgeConfig(backend="hf", model="m", temperature=0.7)


def test_statuses_reasons_and_retries(tmp_path, server, api_key):
    cases = [
        "score-7",
        "rate-limit-once",
        "server-error-once",
        "server-error-always",
        "slow-once",
        "bad-json-once",
        "no-choices-always",
        "no-score",
        "out-of-range",
        "bad-request",
    ]
    samples = write_samples(tmp_path / "samples.parquet", cases)
    output, cache = tmp_path / "out" / "scored.parquet", tmp_path / "cache" / "judge.sqlite"
    run_stage(stage_argv(samples, output, cache, server))

    table = read_table(output, SCORED_SAMPLES)
    rows = {re.search(r"case:([\w-]+)", r["response"]).group(1): r for r in table.to_pylist()}
    assert {c: (rows[c]["status"], rows[c]["score"]) for c in cases} == {
        "score-7": ("ok", 7.0),
        "rate-limit-once": ("ok", 8.0),
        "server-error-once": ("ok", 6.0),
        "server-error-always": ("failed", None),
        "slow-once": ("ok", 5.0),
        "bad-json-once": ("ok", 4.0),
        "no-choices-always": ("failed", None),
        "no-score": ("unparsed", None),
        "out-of-range": ("unparsed", None),
        "bad-request": ("failed", None),
    }
    for case in ("score-7", "rate-limit-once", "server-error-once", "slow-once", "bad-json-once"):
        assert rows[case]["reason"] is None
    assert rows["server-error-always"]["reason"].startswith("HTTP 500 server error")
    assert rows["server-error-always"]["reason"].endswith("(gave up after 3 attempts)")
    assert rows["no-choices-always"]["reason"] == "malformed reply: no choices in the reply (gave up after 3 attempts)"
    assert rows["no-score"]["reason"] == "no score in reply 'I would rather not say.'"
    assert rows["out-of-range"]["reason"].startswith("score 42 outside [1, 10]")
    assert rows["bad-request"]["reason"].startswith("HTTP 400")
    assert all(r["scorer"] == "judge:openai:stub-judge" for r in rows.values())
    assert rows["score-7"]["prompt_tokens"] > 0 and rows["score-7"]["completion_tokens"] == 1
    assert rows["server-error-always"]["prompt_tokens"] is None

    # Attempts per case, as the server saw them: retried on 429 / 5xx / timeout / malformed, not on 400.
    attempts = {re.search(r"case:([\w-]+)", user).group(1): n for user, n in server.attempts.items()}
    assert attempts == {
        "score-7": 1,
        "rate-limit-once": 2,
        "server-error-once": 2,
        "server-error-always": 3,
        "slow-once": 2,
        "bad-json-once": 2,
        "no-choices-always": 3,
        "no-score": 1,
        "out-of-range": 1,
        "bad-request": 1,
    }
    assert server.models == {"stub-judge"}
    assert server.authorization == {f"Bearer {api_key}"}
    with sqlite3.connect(cache) as conn:
        assert conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == 7  # failures are not cached

    # A rerun sends only the failed items again (3 + 3 + 1 attempts) and writes the same table.
    before = server.requests
    run_stage(stage_argv(samples, output, cache, server))
    assert server.requests - before == 7
    assert read_table(output, SCORED_SAMPLES).equals(table)


def test_rerun_sends_nothing_and_key_leaks_nowhere(tmp_path, server, api_key, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    cases = ["score-3", "score-9", "rate-limit-once", "server-error-once", "no-score", "out-of-range", "score-3"]
    samples = write_samples(tmp_path / "samples.parquet", cases)
    output, cache = tmp_path / "out" / "scored.parquet", tmp_path / "out" / "judge.sqlite"
    stats = judge_samples(samples, output, cache, openai_config(server))
    assert (stats.items, stats.unique_requests, stats.cache_hits, stats.requests_sent) == (7, 7, 0, 7)
    assert (stats.ok, stats.unparsed, stats.failed, stats.attempts) == (5, 2, 0, 9)
    first = read_table(output, SCORED_SAMPLES)
    sent = server.requests
    assert sent == 9

    again = judge_samples(samples, output, cache, openai_config(server))
    assert server.requests == sent, "a rerun with the same cache must send no request"
    assert (again.cache_hits, again.requests_sent, again.attempts) == (7, 0, 0)
    assert read_table(output, SCORED_SAMPLES).equals(first)

    # A fully cached run needs no key at all.
    monkeypatch.delenv(KEY_ENV)
    judge_samples(samples, tmp_path / "out" / "third.parquet", cache, openai_config(server))
    assert server.requests == sent
    assert read_table(tmp_path / "out" / "third.parquet", SCORED_SAMPLES).equals(first)

    # The key reached the server, and nothing on disk or in the log holds it.
    assert server.authorization == {f"Bearer {api_key}"}
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("judge.sqlite") for p in files)
    for path in files:
        assert api_key.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "sk-test-" not in logged
    assert "3 cache hits" not in logged and "7 cache hits" in logged


def test_retry_after_is_honoured_and_capped(tmp_path, server, api_key):
    # Retry-After: 0 overrides a long backoff ...
    config = openai_config(server, backoff_s=5.0, max_backoff_s=30.0)
    with Judge(config, tmp_path / "a.sqlite") as judge:
        start = time.monotonic()
        (completion,) = judge.complete([judge.messages("q", "case:rate-limit-once")])
        assert completion.text == "8" and time.monotonic() - start < 2.0
    # ... and a huge Retry-After is cut at max_backoff_s.
    config = openai_config(server, backoff_s=0.01, max_backoff_s=0.1)
    with Judge(config, tmp_path / "b.sqlite") as judge:
        start = time.monotonic()
        (completion,) = judge.complete([judge.messages("q", "case:rate-limit-long-once")])
        assert completion.text == "7" and time.monotonic() - start < 2.0


def test_bounded_concurrency(tmp_path, server, api_key):
    config = openai_config(server, max_concurrency=3)
    with Judge(config, tmp_path / "c.sqlite") as judge:
        ratings = judge.rate([(f"q{i}", f"r{i} case:slowscore-{1 + i % 9}") for i in range(12)])
    assert [r.score for r in ratings] == [float(1 + i % 9) for i in range(12)]
    assert server.requests == 12
    assert 2 <= server.max_in_flight <= 3


def test_missing_key_env_is_a_config_error(tmp_path, server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    samples = write_samples(tmp_path / "samples.parquet", ["score-4"])
    with pytest.raises(ConfigError, match=KEY_ENV):
        judge_samples(samples, tmp_path / "out.parquet", tmp_path / "d.sqlite", openai_config(server))
    assert server.requests == 0
    assert not (tmp_path / "out.parquet").exists()


def test_rejected_key_aborts(tmp_path, server, api_key):
    samples = write_samples(tmp_path / "samples.parquet", ["unauthorized"])
    with pytest.raises(ConfigError, match=f"refused the key in \\${KEY_ENV}") as info:
        judge_samples(samples, tmp_path / "out.parquet", tmp_path / "e.sqlite", openai_config(server))
    assert api_key not in str(info.value)
    assert server.requests == 1
    assert not (tmp_path / "out.parquet").exists()


# ------------------------------------------------------------------------------------------------------------
# hf backend on a tiny local model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

    root = tmp_path_factory.mktemp("judge_hf")
    corpus = root / "corpus.txt"
    words = "the a helpful answer question assistant human rate response score good bad please thanks".split()
    corpus.write_text("\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(60)))
    config = TinyModelConfig(
        seed=3, vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    tokenizer = train_tokenizer([corpus], config.vocab_size, config.max_position_embeddings)
    model = build_causal_lm(tokenizer, config)
    out = root / "tiny"
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


def hf_config(model_dir: Path, **overrides) -> JudgeConfig:
    values = dict(
        backend="hf",
        model=str(model_dir),
        system_prompt="Rate the response.",
        prompt_template="{prompt}\n{response}\nScore:",
        score_pattern=r"<score>(\d+)<",
        max_tokens=6,
        batch_size=3,
        device="cpu",
    )
    values.update(overrides)
    return JudgeConfig(**values)


def test_hf_backend_parses_caches_and_reruns(tmp_path, tiny_model_dir):
    samples = write_samples(tmp_path / "samples.parquet", ["a", "b", "c", "d", "e"])
    rows = read_table(samples).to_pylist()
    rows[4].update(prompt=rows[0]["prompt"], response=rows[0]["response"], origin="chosen")  # the same request
    write_rows(rows, samples, SAMPLES)
    output, cache = tmp_path / "scored.parquet", tmp_path / "hf.sqlite"
    stats = judge_samples(samples, output, cache, hf_config(tiny_model_dir))
    assert (stats.items, stats.unique_requests, stats.requests_sent, stats.replies) == (5, 4, 4, 4)
    table = read_table(output, SCORED_SAMPLES)
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["unparsed"] * 5  # random text: never guessed
    assert all(r["reason"].startswith("no score in reply ") for r in rows)
    assert all(r["score"] is None and r["scorer"] == f"judge:hf:{tiny_model_dir}" for r in rows)
    assert all(1 <= r["completion_tokens"] <= 6 for r in rows)
    assert rows[0]["reason"] == rows[4]["reason"]

    backend = HFBackend(hf_config(tiny_model_dir))
    with Judge(hf_config(tiny_model_dir), tmp_path / "unused.sqlite", backend=backend) as judge:
        expected = len(backend.prompt_ids(judge.messages(rows[0]["prompt"], rows[0]["response"])))
    assert rows[0]["prompt_tokens"] == expected

    # A rerun loads no model and sends nothing; the table is the same.
    again = judge_samples(samples, output, cache, hf_config(tiny_model_dir))
    assert (again.cache_hits, again.requests_sent, again.attempts) == (4, 0, 0)
    assert read_table(output, SCORED_SAMPLES).equals(table)

    # Left padding is right: one prompt at a time gives the same replies as batches of three.
    single = judge_samples(
        samples, tmp_path / "single.parquet", tmp_path / "single.sqlite", hf_config(tiny_model_dir, batch_size=1)
    )
    assert single.requests_sent == 4
    assert read_table(tmp_path / "single.parquet", SCORED_SAMPLES).equals(table)

    # A score pattern that matches the reply turns the same cached replies into scores, without a new request.
    anything = hf_config(tiny_model_dir, score_pattern=r"(?s)^(.*)$", score_min=0, score_max=0)
    with Judge(anything, cache) as judge:
        ratings = judge.rate([(r["prompt"], r["response"]) for r in rows])
        assert judge.stats.requests_sent == 0
    assert {r.status for r in ratings} <= {"unparsed"}
    assert all("cannot read a number" in r.reason or "outside" in r.reason for r in ratings)


def test_hf_chat_template_and_model_fingerprint(tmp_path, tiny_model_dir):
    backend = HFBackend(hf_config(tiny_model_dir))
    messages = [{"role": "system", "content": "be fair"}, {"role": "user", "content": "rate this"}]
    plain = backend.prompt_ids(messages)
    tokenizer = backend._tokenizer
    assert plain == [tokenizer.bos_token_id, *tokenizer("be fair\n\nrate this", add_special_tokens=False)["input_ids"]]
    tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    templated = backend.prompt_ids(messages)
    expected = tokenizer("[system] be fair\n[user] rate this\n[assistant]", add_special_tokens=False)["input_ids"]
    assert templated == expected

    # The cache key covers the model's files: a changed file is a different model.
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in tiny_model_dir.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    assert directory_fingerprint(copy) == directory_fingerprint(tiny_model_dir)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("\n", "\n\n", 1))
    assert directory_fingerprint(copy) != directory_fingerprint(tiny_model_dir)


def test_judge_training_rows_are_the_exact_rating_requests(tmp_path, tiny_model_dir):
    """The tiny run's local judge is trained on what the hf backend will send: the trainer's tokens of a row
    (bos + query + reply + eos) must start with exactly the backend's prompt ids, then the target reply."""
    from transformers import AutoTokenizer

    from feedbackflow.llm.judge import rating_sft_rows
    from feedbackflow.papers.rrhf.training import RankedQueries, tokenize_ranked

    samples = write_samples(tmp_path / "samples.parquet", ["a", "b", "c"])
    rows = read_table(samples).to_pylist()
    rows[0]["origin"], rows[1]["origin"], rows[2]["origin"] = "chosen", "rejected", "policy"
    config = hf_config(tiny_model_dir, score_pattern=r"(\d+)")
    out = rating_sft_rows(rows, config, {"chosen": 8.0, "rejected": 3.0})
    assert [r["responses"] for r in out] == [["8"], ["3"]]  # the policy sample has no target: left out
    assert [r["prompt_id"] for r in out] == [rows[0]["prompt_id"], rows[1]["prompt_id"]]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plan = tokenize_ranked(
        RankedQueries([r["query"] for r in out], [r["responses"] for r in out], [[0.0]] * 2, [("t", 0), ("t", 1)]),
        tokenizer,
        max_length=256,
    )
    backend = HFBackend(config)
    for q, row in enumerate(rows[:2]):
        request = backend.prompt_ids(rating_messages(config, row["prompt"], row["response"]))
        ids = plan.token_ids[q][0]
        assert ids[: len(request)] == request
        assert ids[len(request) :] == [
            *tokenizer(out[q]["responses"][0], add_special_tokens=False)["input_ids"],
            tokenizer.eos_token_id,
        ]
        assert plan.prompt_lengths[q] == len(request)


def test_judge_training_targets_must_read_back(tiny_model_dir, tmp_path):
    from feedbackflow.llm.judge import rating_sft_rows

    config = hf_config(tiny_model_dir, score_pattern=r"(\d+)", score_min=1, score_max=5)
    with pytest.raises(ConfigError, match=r"targets: chosen=8 is not a score this judge reads back"):
        rating_sft_rows([], config, {"chosen": 8.0})
    samples = write_samples(tmp_path / "samples.parquet", ["a"])
    argv = [
        "judge-sft-data",
        "--samples",
        str(samples),
        "--output",
        str(tmp_path / "out.parquet"),
        "--target",
        "chosen=4",
        "--backend",
        "hf",
        "--model",
        str(tiny_model_dir),
    ]
    from feedbackflow.cli import main as cli_main

    with pytest.raises(SystemExit, match=r"samples.parquet: field 'origin': no sample has one of the target"):
        cli_main(argv)
    assert not (tmp_path / "out.parquet").exists()
