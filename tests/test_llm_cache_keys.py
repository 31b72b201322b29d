"""A reply cache written before the house restructure is hit by the code now, so a paid reply is never asked for twice.

tests/data/llm_cache_before_house holds reply caches written by the code before the restructure (its flat modules
feedbackflow.judge, feedbackflow.language_model and feedbackflow.toxicity) through their real request paths: the
judge and the ILF language model against the loopback OpenAI stub, the Perspective scorer against the loopback
Perspective stub, and the hf backends of both with a small model directory (its files go into the key; the replies
of the hf runs were made up, as no model is loaded there). `python tests/test_llm_cache_keys.py --write` with that
code first on PYTHONPATH wrote them (README.md there says how).

Each test here makes the same requests with the same configs through the code now against a copy of a cache: the
stub listening on the same endpoint (the endpoint URL is part of every key) receives nothing, the backends send
nothing, every row of the cache is hit, and every reply equals the one recorded when the cache was written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.server
import importlib
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
from openai_stub_server import Action, StubOpenAIServer
from perspective_stub_server import StubPerspectiveServer

DATA = Path(__file__).parent / "data" / "llm_cache_before_house"
EXPECTED = DATA / "expected.json"
HF_MODEL = "hf_model"  # a directory beside the caches; relative, as the model name is part of the key

KEY_ENV = "FF_TEST_CACHE_KEYS_OPENAI_KEY"
PERSPECTIVE_KEY_ENV = "FF_TEST_CACHE_KEYS_PERSPECTIVE_KEY"
# Fixed loopback ports below Linux's ephemeral range (32768-60999), so no other test's stub takes them.
OPENAI_PORT = 29417
PERSPECTIVE_PORT = 29418
BASE_URL = f"http://127.0.0.1:{OPENAI_PORT}/v1"
PERSPECTIVE_URL = f"http://127.0.0.1:{PERSPECTIVE_PORT}/v1alpha1/comments:analyze"

CACHES = ("judge_openai", "judge_hf", "lm_openai", "lm_hf", "perspective")


@dataclasses.dataclass(frozen=True)
class Code:
    """The three client modules of one version of the code."""

    judge: ModuleType
    lm: ModuleType
    toxicity: ModuleType


def code_now() -> Code:
    return Code(
        importlib.import_module("feedbackflow.llm.judge"),
        importlib.import_module("feedbackflow.llm.language_model"),
        importlib.import_module("feedbackflow.papers.fgrlhf.detox.toxicity"),
    )


def code_before() -> Code:
    if importlib.util.find_spec("feedbackflow.llm") is not None:
        raise SystemExit("--write needs the code before the restructure first on PYTHONPATH (see the README)")
    return Code(
        importlib.import_module("feedbackflow.judge"),
        importlib.import_module("feedbackflow.language_model"),
        importlib.import_module("feedbackflow.toxicity"),
    )


def on_port(port: int, make):
    """make(), a loopback stub, listening on `port` instead of an ephemeral one."""
    real = http.server.ThreadingHTTPServer
    http.server.ThreadingHTTPServer = lambda address, handler: real((address[0], port), handler)
    try:
        return make()
    finally:
        http.server.ThreadingHTTPServer = real


def openai_script(text: str, attempt: int) -> Action:
    """The stub's replies: a score for a rating, a verdict, log-probabilities, or two-line summaries."""
    if "case:logprobs" in text:
        return Action(top_logprobs=[{" Yes": -0.25, " No": -1.5, " Maybe": -3.0}])
    match = re.search(r"case:score-(\d+)", text)
    if match:
        return Action(text=f"Score: {match.group(1)}")
    if "case:verdict" in text:
        return Action(text="Summary A is better.")
    return Action(text=f"A short summary ({len(text)} characters).\nA second line that the stop string cuts.")


# --------------------------------------------------------------------------------------------------------------
# The requests: the same for the code before (writing the caches) and the code now (reading them)


RATED = [
    ("\n\nHuman: How do I boil an egg?\n\nAssistant:", "Put it in boiling water for nine minutes. case:score-8"),
    ("\n\nHuman: What is 2 + 2? {braces}\n\nAssistant:", "Five. case:score-2"),
    ("\n\nHuman: Name a prime.\n\nAssistant:", "Seven is prime. case:score-9"),
]
VERDICT = [
    {"role": "system", "content": "You compare summaries."},
    {
        "role": "user",
        "content": "Post: a long post.\nSummary A: short.\nSummary B: long.\nWhich is better? case:verdict",
    },
]
SUMMARY_PROMPTS = [
    "SUBREDDIT: r/cooking\nPOST: My soup is always bland.\nTL;DR:",
    "SUBREDDIT: r/running\nPOST: I run 5 km a day and my knee hurts.\nTL;DR:",
]
YES_NO_PROMPT = "Post: soup.\nSummary: bland soup.\nDoes the summary fit the feedback? Answer Yes or No. case:logprobs"


def judge_openai_config(code: Code, **overrides):
    values = dict(backend="openai", model="stub-judge", base_url=BASE_URL, api_key_env=KEY_ENV, max_retries=0,
                  timeout_s=10.0, max_concurrency=2)
    return code.judge.JudgeConfig(**{**values, **overrides})


def lm_openai_config(code: Code, **overrides):
    values = dict(backend="openai", model="stub-lm", base_url=BASE_URL, api_key_env=KEY_ENV, max_retries=0,
                  timeout_s=10.0, max_concurrency=2)
    return code.lm.LMConfig(**{**values, **overrides})


def completions(completed) -> list:
    return [[c.text, c.prompt_tokens, c.completion_tokens, c.error] for c in completed]


def ratings(rated) -> list:
    return [[r.score, r.status, r.reason, r.prompt_tokens, r.completion_tokens] for r in rated]


def lm_results(results) -> list:
    return [[r.value, r.status, r.error, r.prompt_tokens, r.completion_tokens] for r in results]


def run_judge_openai(code: Code, cache: Path) -> tuple[dict, list]:
    out, stats = {}, []
    with code.judge.Judge(judge_openai_config(code), cache) as judge:
        out["rate"] = ratings(judge.rate(RATED))
        out["complete"] = completions(judge.complete([VERDICT]))
        stats.append(judge.stats)
    config = judge_openai_config(code, system_prompt="", temperature=0.7, max_tokens=32, score_max=9.0)
    with code.judge.Judge(config, cache) as judge:
        out["rate_other_settings"] = ratings(judge.rate(RATED[:2]))
        stats.append(judge.stats)
    return out, stats


def run_lm_openai(code: Code, cache: Path) -> tuple[dict, list]:
    out, stats = {}, []
    with code.lm.LanguageModel(lm_openai_config(code), cache) as lm:
        out["sample"] = lm_results(lm.sample(SUMMARY_PROMPTS, n=2, temperature=1.0, top_p=0.95, max_tokens=48,
                                             stop=["\n"], seed=42))
        out["next_token_logprobs"] = lm_results(lm.next_token_logprobs([YES_NO_PROMPT], candidates=["Yes", "No"]))
        out["sequence_logprob"] = lm_results(lm.sequence_logprob(SUMMARY_PROMPTS, [" Season it.", " Rest a week."]))
        stats.append(lm.stats)
    with code.lm.LanguageModel(lm_openai_config(code, api="chat", top_logprobs=3), cache) as lm:
        out["chat_sample"] = lm_results(lm.sample(SUMMARY_PROMPTS[:1], n=1, temperature=0.0, max_tokens=16))
        out["chat_next_token_logprobs"] = lm_results(lm.next_token_logprobs([YES_NO_PROMPT]))
        stats.append(lm.stats)
    return out, stats


def hf_judge_config(code: Code):
    return code.judge.JudgeConfig(backend="hf", model=HF_MODEL, batch_size=2)


def hf_lm_config(code: Code):
    return code.lm.LMConfig(backend="hf", model=HF_MODEL, dtype="float32", max_prompt_tokens=64, batch_size=2)


def run_judge_hf(code: Code, cache: Path, make_up_replies: bool = False) -> tuple[dict, list]:
    with code.judge.Judge(hf_judge_config(code), cache) as judge:
        if make_up_replies:
            judge.backend.run = made_up_judge_replies(code)
        out = {"rate": ratings(judge.rate(RATED))}
        return out, [judge.stats]


def run_lm_hf(code: Code, cache: Path, make_up_replies: bool = False) -> tuple[dict, list]:
    with code.lm.LanguageModel(hf_lm_config(code), cache) as lm:
        if make_up_replies:
            make_up_lm_replies(code, lm.backend)
        out = {
            "sample": lm_results(lm.sample(SUMMARY_PROMPTS, n=2, temperature=1.0, top_p=0.95, stop=["\n"])),
            "next_token_logprobs": lm_results(lm.next_token_logprobs([YES_NO_PROMPT], candidates=["Yes", "No"])),
            "sequence_logprob": lm_results(lm.sequence_logprob(SUMMARY_PROMPTS[:1], [" Season it."])),
        }
        return out, [lm.stats]


def perspective_config(code: Code):
    return code.toxicity.ToxicityConfig.from_dict(
        {"backend": "perspective", "perspective_url": PERSPECTIVE_URL, "api_key_env": PERSPECTIVE_KEY_ENV,
         "requests_per_second": 50.0, "max_retries": 0}
    )


def run_perspective(code: Code, cache: Path) -> tuple[dict, list]:
    texts = ["what a lovely day", "you idiot", "I hate stupid rules", "what a lovely day", "  "]
    with code.toxicity.PerspectiveScorer(perspective_config(code), cache) as scorer:
        out = {"score": [[s.score, s.status, s.reason] for s in scorer.score(texts)]}
        return out, [scorer.stats]


RUNS = {
    "judge_openai": run_judge_openai,
    "judge_hf": run_judge_hf,
    "lm_openai": run_lm_openai,
    "lm_hf": run_lm_hf,
    "perspective": run_perspective,
}


def normalized(value):
    """As JSON has it (tuples become lists), for comparing with expected.json."""
    return json.loads(json.dumps(value))


def cache_rows(path: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT key, reply FROM replies").fetchall())


# --------------------------------------------------------------------------------------------------------------
# The code now against the caches of the code before


@pytest.fixture
def servers(monkeypatch):
    """Both stubs on the endpoints the caches were written against, with keys set, so a miss would reach them."""
    monkeypatch.setenv(KEY_ENV, "sk-cache-keys-test")
    monkeypatch.setenv(PERSPECTIVE_KEY_ENV, "pk-cache-keys-test")
    with on_port(OPENAI_PORT, lambda: StubOpenAIServer(openai_script)) as openai_stub:
        with on_port(PERSPECTIVE_PORT, StubPerspectiveServer) as perspective_stub:
            assert openai_stub.base_url == BASE_URL and perspective_stub.url == PERSPECTIVE_URL
            yield openai_stub, perspective_stub


@pytest.mark.parametrize("name", CACHES)
def test_cache_of_the_code_before_is_hit(name, servers, tmp_path, monkeypatch):
    openai_stub, perspective_stub = servers
    cache = tmp_path / f"{name}.sqlite"
    shutil.copyfile(DATA / f"{name}.sqlite", cache)
    shutil.copytree(DATA / HF_MODEL, tmp_path / HF_MODEL)
    monkeypatch.chdir(tmp_path)
    rows_before = cache_rows(cache)
    assert rows_before

    out, stats = RUNS[name](code_now(), cache)

    assert openai_stub.requests == 0 and perspective_stub.requests == []
    for one in stats:
        assert one.requests_sent == 0
        assert getattr(one, "attempts", 0) == 0
        assert getattr(one, "scored", 0) == 0
    assert sum(one.cache_hits for one in stats) == len(rows_before)  # every cached reply was asked for
    assert cache_rows(cache) == rows_before
    assert normalized(out) == json.loads(EXPECTED.read_text())[name]


def test_the_cached_replies_are_the_recorded_ones():
    """expected.json holds what the code before returned while writing the caches; the stored replies back it."""
    expected = json.loads(EXPECTED.read_text())
    assert sorted(expected) == sorted(CACHES)
    judge = cache_rows(DATA / "judge_openai.sqlite").values()
    assert sorted(judge) == sorted(["Score: 8", "Score: 2", "Score: 9", "Summary A is better.", "Score: 8", "Score: 2"])
    assert [row[0] for row in expected["judge_openai"]["complete"]] == ["Summary A is better."]
    scores = sorted(json.loads(reply) for reply in cache_rows(DATA / "perspective.sqlite").values())
    assert scores == sorted({row[0] for row in expected["perspective"]["score"] if row[2] is None})


# --------------------------------------------------------------------------------------------------------------
# Writing the caches (with the code before; never run by the tests)


def made_up_judge_replies(code: Code):
    """A stand-in for HFBackend.run: the hf judge's keys are real, its replies made up (no model is loaded)."""

    def run(conversations, on_reply) -> None:
        for index, messages in enumerate(conversations):
            score = re.search(r"case:score-(\d+)", messages[-1]["content"]).group(1)
            on_reply(index, code.judge.Reply(text=score, prompt_tokens=10 + index, completion_tokens=1))

    return run


def make_up_lm_replies(code: Code, backend) -> None:
    """Stand-ins for HFLMBackend's methods: the keys are real, the replies made up (no model is loaded)."""
    outcome = code.lm.Outcome

    def sample(requests, on_outcome) -> None:
        for index, request in enumerate(requests):
            texts = [f"hf summary {k} of {len(request['prompt'])}\ncut" for k in range(request["n"])]
            on_outcome(index, outcome({"texts": texts}, None, "ok", 12, None))

    def next_token_logprobs(requests, on_outcome) -> None:
        for index, _ in enumerate(requests):
            on_outcome(index, outcome({"logprobs": {"Yes": -0.5, "No": -0.9, " the": -2.0}}, None, "ok", 20, None))

    def sequence_logprob(requests, on_outcome) -> None:
        for index, _ in enumerate(requests):
            on_outcome(index, outcome({"logprob": -3.25, "tokens": 4}, None, "ok", 15, None))

    backend.sample = sample
    backend.next_token_logprobs = next_token_logprobs
    backend.sequence_logprob = sequence_logprob


def write_caches() -> None:
    """Run every request with the code before, against the stubs, into fresh caches; copy them and the results here."""
    code = code_before()
    os.environ[KEY_ENV] = "sk-cache-keys-writer"
    os.environ[PERSPECTIVE_KEY_ENV] = "pk-cache-keys-writer"
    expected = {}
    openai_stub = on_port(OPENAI_PORT, lambda: StubOpenAIServer(openai_script))
    with tempfile.TemporaryDirectory() as tmp, openai_stub:
        with on_port(PERSPECTIVE_PORT, StubPerspectiveServer) as perspective_stub:
            os.chdir(DATA)  # the hf model directory is named relative to here
            for name in CACHES:
                cache = Path(tmp) / name / f"{name}.sqlite"
                run = RUNS[name]
                out, _ = run(code, cache, make_up_replies=True) if name.endswith("_hf") else run(code, cache)
                expected[name] = normalized(out)
                with contextlib.closing(sqlite3.connect(cache)) as conn:  # one self-contained file: no -wal beside it
                    conn.execute("PRAGMA journal_mode=DELETE")
                    conn.execute("VACUUM")
                shutil.copyfile(cache, DATA / f"{name}.sqlite")
            print(f"openai stub: {openai_stub.requests} requests; perspective stub: {len(perspective_stub.requests)}")
    EXPECTED.write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    for name in CACHES:
        print(name, len(cache_rows(DATA / f"{name}.sqlite")), "replies")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the caches (code before first on PYTHONPATH)")
    if parser.parse_args().write:
        sys.exit(write_caches())
