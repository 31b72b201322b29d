"""Stage `generate-texts` (ILF, docs/methods/ilf.md: initial summaries, refinements, test summaries, best-of-n
candidates) with
real components: the official openai client against the scripted OpenAI-compatible server on loopback, and a tiny
local transformers causal LM run through `python -m feedbackflow generate-texts` (feedbackflow.cli.main).

The stub reads "case:NAME" in the prompt and answers as `script` says.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from openai_stub_server import Action, StubOpenAIServer

from feedbackflow.cli import main as cli_main
from feedbackflow.core.formats import PROMPTS, SAMPLES, read_table, write_rows
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.llm.generation import GenerationConfig, generate_texts
from feedbackflow.llm.language_model import LMConfig

KEY_ENV = "FF_TEST_GENERATION_KEY"
N = 3


def script(prompt: str, attempt: int) -> Action:
    match = re.search(r"case:([\w-]+)", prompt)
    case = match.group(1) if match else "default"
    post = re.search(r"post (\w+)", prompt)
    name = post.group(1) if post else "?"
    if case == "ok":
        # three distinct choices; each goes on after a newline, which the stop string cuts off
        return Action(texts=[f" summary {k} of {name}\nmore text" for k in range(N)])
    if case == "empty":
        return Action(texts=["\nnothing before the newline"] * N)
    if case == "flaky":  # fails every attempt of the first run (2 attempts), answers from then on
        return Action(500) if attempt < 2 else Action(texts=[f"late {k}" for k in range(N)])
    raise AssertionError(f"unknown case {case!r}")


@pytest.fixture
def server():
    with StubOpenAIServer(script, max_requests=50, max_delay_s=1.0) as stub:
        yield stub


@pytest.fixture
def api_key(monkeypatch) -> str:
    key = "sk-test-" + secrets.token_hex(8)
    monkeypatch.setenv(KEY_ENV, key)
    return key


def openai_config(server: StubOpenAIServer) -> LMConfig:
    return LMConfig(
        backend="openai", model="stub-lm", base_url=server.base_url, api_key_env=KEY_ENV, max_retries=1,
        timeout_s=2.0, backoff_s=0.01, max_backoff_s=0.02, max_concurrency=2,
    )  # fmt: skip


def write_prompts(path: Path, prompts: list[tuple[str, str]]) -> Path:
    rows = [{"prompt_id": pid, "prompt": text, "source": "test", "record": k} for k, (pid, text) in enumerate(prompts)]
    write_rows(rows, path, PROMPTS)
    return path


def test_n_texts_per_prompt_written_as_samples_and_a_rerun_sends_nothing(tmp_path, server, api_key):
    prompts = write_prompts(tmp_path / "prompts.parquet", [("p1", "post p1 case:ok"), ("p2", "post p2 case:ok"),
                                                           ("p3", "post p3 case:empty")])  # fmt: skip
    config = GenerationConfig(n=N, temperature=0.7, top_p=0.9, max_tokens=20, stop=["\n"], seed=11, origin="refinement")
    out, cache = tmp_path / "out" / "samples.parquet", tmp_path / "cache.sqlite"
    rows = generate_texts(prompts, out, cache, openai_config(server), config)

    table = read_table(out, SAMPLES)
    assert table.to_pylist() == rows
    got = [(r["prompt_id"], r["sample_index"], r["response"], r["origin"]) for r in rows]
    assert got == [
        ("p1", 0, "summary 0 of p1", "refinement"),  # cut at the first "\n" and stripped
        ("p1", 1, "summary 1 of p1", "refinement"),
        ("p1", 2, "summary 2 of p1", "refinement"),
        ("p2", 0, "summary 0 of p2", "refinement"),
        ("p2", 1, "summary 1 of p2", "refinement"),
        ("p2", 2, "summary 2 of p2", "refinement"),
        ("p3", 0, "", "refinement"),  # a model that stopped at once: an empty text is a valid sample
        ("p3", 1, "", "refinement"),
        ("p3", 2, "", "refinement"),
    ]
    assert [r["prompt"] for r in rows[:3]] == ["post p1 case:ok"] * 3
    # one request per prompt, asking for n choices with the stage's decoding
    assert server.requests == 3
    body = next(b for b in server.bodies if b["prompt"] == "post p1 case:ok")
    assert {k: body[k] for k in ("n", "temperature", "top_p", "max_tokens", "stop", "seed")} == {
        "n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 20, "stop": ["\n"], "seed": 11,
    }  # fmt: skip

    # A rerun with the same cache sends zero requests and writes the same table.
    out.unlink()
    again = generate_texts(prompts, out, cache, openai_config(server), config)
    assert server.requests == 3
    assert again == rows and read_table(out, SAMPLES).to_pylist() == rows


def test_a_prompt_that_keeps_failing_writes_nothing_and_the_rerun_sends_only_it(tmp_path, server, api_key):
    prompts = write_prompts(tmp_path / "prompts.parquet", [("p1", "post p1 case:ok"), ("p2", "post p2 case:flaky"),
                                                           ("p3", "post p3 case:ok")])  # fmt: skip
    out, cache = tmp_path / "samples.parquet", tmp_path / "cache.sqlite"
    config = GenerationConfig(n=N, seed=1)
    with pytest.raises(DataError) as caught:
        generate_texts(prompts, out, cache, openai_config(server), config)
    error = caught.value
    assert (error.path, error.record, error.field) == (str(prompts), 1, "prompt")
    assert "1 of 3 prompts got no reply" in str(error) and "record 1 (p2)" in str(error) and "HTTP 500" in str(error)
    assert not out.exists() and list(tmp_path.glob("*samples*")) == []  # nothing written, no temporary left over
    # p1 and p3 once, p2 twice (max_retries 1)
    assert server.requests == 4

    # The two replies that came are cached: the rerun sends only p2's request (which now succeeds).
    rows = generate_texts(prompts, out, cache, openai_config(server), config)
    assert server.requests == 5 and server.bodies[-1]["prompt"] == "post p2 case:flaky"
    assert [(r["prompt_id"], r["sample_index"], r["response"]) for r in rows if r["prompt_id"] == "p2"] == [
        ("p2", 0, "late 0"), ("p2", 1, "late 1"), ("p2", 2, "late 2"),
    ]  # fmt: skip
    assert [r["prompt_id"] for r in rows] == ["p1"] * 3 + ["p2"] * 3 + ["p3"] * 3
    assert {r["origin"] for r in rows} == {"policy"}  # the default origin


def test_bad_prompts_and_config_fail_before_any_request(tmp_path, server, api_key):
    twice = write_prompts(tmp_path / "twice.parquet", [("p1", "post p1 case:ok"), ("p1", "post p1 again case:ok")])
    with pytest.raises(DataError) as caught:
        generate_texts(twice, tmp_path / "o.parquet", tmp_path / "c.sqlite", openai_config(server), GenerationConfig())
    assert (caught.value.record, caught.value.field) == (1, "prompt_id")
    empty = write_prompts(tmp_path / "empty.parquet", [])
    with pytest.raises(DataError, match="no prompts"):
        generate_texts(empty, tmp_path / "o.parquet", tmp_path / "c.sqlite", openai_config(server), GenerationConfig())
    not_prompts = tmp_path / "not_prompts.parquet"
    pq.write_table(read_table(twice).drop(["prompt"]), not_prompts)
    with pytest.raises(DataError, match="missing columns"):
        generate_texts(not_prompts, tmp_path / "o.parquet", tmp_path / "c.sqlite", openai_config(server),
                       GenerationConfig())  # fmt: skip
    with pytest.raises(ConfigError, match="n:"):
        GenerationConfig(n=0)
    with pytest.raises(ConfigError, match="origin"):
        GenerationConfig(origin="")
    assert server.requests == 0 and not (tmp_path / "o.parquet").exists()


# ------------------------------------------------------------------------------------------------------------
# hf backend on a tiny local model, through the command line


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

    root = tmp_path_factory.mktemp("generation_hf")
    corpus = root / "corpus.txt"
    words = "the a summary post title text my sister borrowed camera broke it and lost TL;DR".split()
    corpus.write_text("\n".join(" ".join(words[(i * 3 + j) % len(words)] for j in range(10)) for i in range(60)))
    config = TinyModelConfig(
        seed=3, vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64,
    )  # fmt: skip
    tokenizer = train_tokenizer([corpus], config.vocab_size, config.max_position_embeddings)
    model = build_causal_lm(tokenizer, config)
    out = root / "tiny"
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


def run_stage(prompts: Path, output: Path, cache: Path, model_dir: Path, seed: int) -> list[dict]:
    lm = json.dumps({"backend": "hf", "model": str(model_dir), "batch_size": 2, "device": "cpu"})
    cli_main([
        "generate-texts", "--prompts", str(prompts), "--output", str(output), "--cache", str(cache), "--lm", lm,
        "--threads", "1", "--n", "2", "--max-tokens", "6", "--seed", str(seed), "--origin", "initial",
        "--hparams", json.dumps({"top_p": 0.95, "stop": ["\n"]}),
    ])  # fmt: skip
    return read_table(output, SAMPLES).to_pylist()


def test_hf_backend_through_the_cli_is_deterministic_by_seed(tmp_path, tiny_model_dir):
    prompts = write_prompts(tmp_path / "prompts.parquet", [("a", "Title: my camera\n\nTL;DR:"),
                                                           ("b", "the post about the sister TL;DR:"),
                                                           ("c", "summary")])  # fmt: skip
    first = run_stage(prompts, tmp_path / "s1.parquet", tmp_path / "c1.sqlite", tiny_model_dir, seed=5)
    assert [(r["prompt_id"], r["sample_index"], r["origin"]) for r in first] == [
        (pid, k, "initial") for pid in "abc" for k in range(2)
    ]
    assert all("\n" not in r["response"] and r["response"] == r["response"].strip() for r in first)
    assert len({r["response"] for r in first}) > 1  # sampled, not one text repeated
    # the same seed with a fresh cache draws the same texts; another seed other texts
    assert run_stage(prompts, tmp_path / "s2.parquet", tmp_path / "c2.sqlite", tiny_model_dir, seed=5) == first
    other = run_stage(prompts, tmp_path / "s3.parquet", tmp_path / "c3.sqlite", tiny_model_dir, seed=6)
    assert [r["response"] for r in other] != [r["response"] for r in first]
    # a bad prompts file exits with the DataError's message (file, record, field)
    bad = write_prompts(tmp_path / "bad.parquet", [("a", "x"), ("a", "y")])
    with pytest.raises(SystemExit, match=r"bad\.parquet: record 1: field 'prompt_id'"):
        run_stage(bad, tmp_path / "s4.parquet", tmp_path / "c4.sqlite", tiny_model_dir, seed=5)
