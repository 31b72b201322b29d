"""Toxicity scorers with real components: the Perspective scorer's httpx client against a Perspective-speaking server
on loopback (tests/perspective_stub_server.py), a real SQLite cache, and alt-profanity-check's shipped model.

Waits (rate limit, retries) go through an injected clock and sleep (`FakeTime`: sleeping moves the clock, a request
takes no time), so the tests check each wait exactly without taking it.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from perspective_stub_server import StubPerspectiveServer, analyze_body

from feedbackflow.core.formats import SAMPLES, SCORED_SAMPLES, read_json, read_table, write_rows
from feedbackflow.errors import ConfigError
from feedbackflow.papers.fgrlhf.detox import toxicity
from feedbackflow.papers.fgrlhf.detox.toxicity import (
    EMPTY_REASON,
    MAX_WAIT_S,
    PerspectiveScorer,
    ProfanityCheckScorer,
    ToxicityConfig,
    ToxicityScore,
    make_toxicity_scorer,
)

KEY_ENV = "FF_TEST_PERSPECTIVE_KEY"


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def server():
    with StubPerspectiveServer(max_requests=100) as stub:
        yield stub


@pytest.fixture
def api_key(monkeypatch) -> str:
    key = "pk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, key)
    return key


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def perspective_config(server: StubPerspectiveServer, **overrides) -> ToxicityConfig:
    return ToxicityConfig.from_dict(
        {"backend": "perspective", "perspective_url": server.url, "api_key_env": KEY_ENV, **overrides}
    )


def perspective(server, cache: Path | None, fake: FakeTime, **overrides) -> PerspectiveScorer:
    return PerspectiveScorer(perspective_config(server, **overrides), cache, clock=fake.clock, sleep=fake.sleep)


def cache_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0]


# --------------------------------------------------------------------------------------------------------------
# Perspective: request and reply


def test_request_format_and_parsing(server, api_key, fake, tmp_path):
    with perspective(server, tmp_path / "cache.sqlite", fake, languages=["en", "de"]) as scorer:
        results = scorer.score(["You are an idiot.", "What a lovely day."])
    # The stub's word list: "idiot" -> 0.9; no listed word -> clean_score 0.05.
    assert results == [ToxicityScore(0.9, "ok", None, False), ToxicityScore(0.05, "ok", None, False)]
    assert len(server.requests) == 2
    first = server.requests[0]
    assert first.path == "/v1alpha1/comments:analyze"
    assert first.query == {"key": [api_key]}
    assert first.body == {
        "comment": {"text": "You are an idiot."},
        "languages": ["en", "de"],
        "requestedAttributes": {"TOXICITY": {}},
        "doNotStore": True,
    }
    assert server.texts() == ["You are an idiot.", "What a lovely day."]


def test_parse_perspective_reply():
    assert toxicity.parse_perspective_reply(analyze_body(0.25, "x", ["en"])) == (0.25, None)
    assert toxicity.parse_perspective_reply(analyze_body(0, "x", ["en"])) == (0.0, None)
    score, reason = toxicity.parse_perspective_reply({"attributeScores": {"INSULT": {}}})
    assert score is None and "attributeScores.TOXICITY.summaryScore.value" in reason
    score, reason = toxicity.parse_perspective_reply(analyze_body(-0.1, "x", ["en"]))
    assert score is None and "-0.1" in reason
    assert toxicity.parse_perspective_reply(["not", "a", "dict"])[0] is None
    assert toxicity.parse_perspective_reply({"attributeScores": {"TOXICITY": {"summaryScore": {"value": "0.5"}}}})[
        0
    ] is None  # a string is not a score


# --------------------------------------------------------------------------------------------------------------
# Retries and rate limit


def test_429_then_success_waits_as_retry_after_says(server, api_key, fake, tmp_path):
    server.rate_limit_next(1, retry_after="3")
    with perspective(server, tmp_path / "cache.sqlite", fake) as scorer:
        [result] = scorer.score(["I hate mondays"])
        assert scorer.stats.requests_sent == 2
    assert result == ToxicityScore(0.7, "ok", None, False)
    # The retry waits the 3 s of Retry-After; the rate limit (1 request/s) adds nothing, 3 s having passed.
    assert fake.sleeps == [3.0]
    assert server.texts() == ["I hate mondays", "I hate mondays"]


def test_429_and_503_without_retry_after_back_off_exponentially(server, api_key, fake, tmp_path):
    server.rate_limit_next(2)
    server.error_next(1, 503, "The service is currently unavailable.")
    with perspective(server, tmp_path / "cache.sqlite", fake, max_retries=3) as scorer:
        [result] = scorer.score(["fine words"])
    assert result.status == "ok" and result.score == 0.05
    # Backoff BACKOFF_S = 1 doubling: 1, 2, 4 s before retries 1, 2, 3.
    assert fake.sleeps == [1.0, 2.0, 4.0]
    assert len(server.requests) == 4


def test_retry_after_is_capped(server, api_key, fake, tmp_path):
    server.rate_limit_next(1, retry_after="1000")
    with perspective(server, tmp_path / "cache.sqlite", fake) as scorer:
        assert scorer.score(["fine words"])[0].status == "ok"
    assert fake.sleeps == [MAX_WAIT_S]


def test_exhausted_retries_fail_uncached_and_a_rerun_retries(server, api_key, fake, tmp_path):
    cache = tmp_path / "cache.sqlite"
    server.rate_limit_next(3, retry_after="0")
    with perspective(server, cache, fake, max_retries=2) as scorer:
        [result] = scorer.score(["You stupid thing"])
    assert result.status == "failed" and result.score is None and not result.cached
    assert "HTTP 429" in result.reason and "Quota exceeded" in result.reason and "3 attempts" in result.reason
    assert len(server.requests) == 3  # the first attempt + max_retries 2
    assert cache_rows(cache) == 0  # a failure is not cached

    with perspective(server, cache, fake, max_retries=2) as scorer:
        [result] = scorer.score(["You stupid thing"])
    assert result == ToxicityScore(0.8, "ok", None, False)
    assert len(server.requests) == 4
    assert cache_rows(cache) == 1


def test_http_error_fails_at_once_with_the_server_message(server, api_key, fake, tmp_path):
    cache = tmp_path / "cache.sqlite"
    server.error_next(1, 500, "Internal error encountered.")
    with perspective(server, cache, fake) as scorer:
        [result] = scorer.score(["some text"])
    assert result.status == "failed"
    assert result.reason == "HTTP 500: INTERNAL: Internal error encountered."
    assert len(server.requests) == 1 and fake.sleeps == []  # no retry
    assert cache_rows(cache) == 0


def test_timeout_is_retried(server, api_key, fake, tmp_path):
    server.delay_next(1, 1.0)
    with perspective(server, tmp_path / "cache.sqlite", fake, timeout_s=0.2) as scorer:
        [result] = scorer.score(["slow words"])
    assert result == ToxicityScore(0.05, "ok", None, False)
    assert fake.sleeps == [1.0]  # backoff after the timeout
    assert len(server.requests) == 2


def test_request_spacing_follows_requests_per_second(server, api_key, fake, tmp_path):
    with perspective(server, tmp_path / "cache.sqlite", fake, requests_per_second=2.0) as scorer:
        scorer.score(["one", "two", "three"])
        # Requests take no (fake) time: the 2nd and 3rd each wait 1 / 2 s after the one before.
        assert fake.sleeps == [0.5, 0.5]
        fake.now += 0.2  # 0.2 s pass before the next call: only 0.3 s left to wait
        scorer.score(["four"])
        assert fake.sleeps == pytest.approx([0.5, 0.5, 0.3])
        fake.now += 10.0  # long after: no wait
        scorer.score(["five"])
        assert len(fake.sleeps) == 3
    assert server.texts() == ["one", "two", "three", "four", "five"]


# --------------------------------------------------------------------------------------------------------------
# Statuses without a score


def test_reply_without_a_score_is_unparsed_and_not_cached(server, api_key, fake, tmp_path):
    cache = tmp_path / "cache.sqlite"
    server.unscored_next(1)
    server.reply_next(1, analyze_body(1.5, "b", ["en"]))
    server.reply_next(1, b"<html>oops</html>")
    with perspective(server, cache, fake) as scorer:
        results = scorer.score(["text a", "text b", "text c"])
    assert [r.status for r in results] == ["unparsed"] * 3
    assert all(r.score is None for r in results)
    assert "attributeScores.TOXICITY.summaryScore.value" in results[0].reason
    assert "1.5" in results[1].reason and "[0, 1]" in results[1].reason
    assert "not JSON" in results[2].reason
    assert len(server.requests) == 3  # an unparsed reply is not retried within the run
    assert cache_rows(cache) == 0

    with perspective(server, cache, fake) as scorer:
        results = scorer.score(["text a", "text b", "text c"])
    assert [r.status for r in results] == ["ok"] * 3
    assert len(server.requests) == 6


def test_too_long_text_is_not_sent(server, api_key, fake, tmp_path):
    with perspective(server, tmp_path / "cache.sqlite", fake, max_text_bytes=10) as scorer:
        # "é" is 2 bytes in utf-8: 6 of them are 12 bytes (> 10) though only 6 characters; 5 are exactly 10.
        too_long, fits = scorer.score(["é" * 6, "é" * 5])
    assert too_long.status == "too_long" and too_long.score is None
    assert "12 bytes" in too_long.reason and "max_text_bytes 10" in too_long.reason
    assert fits.status == "ok"
    assert server.texts() == ["é" * 5]


def test_empty_text_scores_zero_without_a_request_or_key(server, fake, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with perspective(server, tmp_path / "cache.sqlite", fake) as scorer:
        results = scorer.score(["", "  \n\t"])
    assert results == [ToxicityScore(0.0, "ok", EMPTY_REASON, False)] * 2
    assert server.requests == []


# --------------------------------------------------------------------------------------------------------------
# Cache and key


def test_rerun_sends_zero_requests_and_needs_no_key(server, api_key, fake, tmp_path, monkeypatch):
    cache = tmp_path / "cache.sqlite"
    texts = ["You are an idiot.", "hello there", "You are an idiot.", "I hate this", "hello there"]
    with perspective(server, cache, fake) as scorer:
        first = scorer.score(texts)
        assert scorer.stats.requests_sent == 3 and scorer.stats.cache_hits == 0
    assert server.texts() == ["You are an idiot.", "hello there", "I hate this"]  # duplicates sent once
    assert cache_rows(cache) == 3

    monkeypatch.delenv(KEY_ENV)  # a fully cached run needs no key
    with perspective(server, cache, fake) as scorer:
        second = scorer.score(texts)
        assert scorer.stats.requests_sent == 0 and scorer.stats.cache_hits == 3
    assert len(server.requests) == 3  # nothing more was sent
    assert [r.score for r in second] == [r.score for r in first] == [0.9, 0.05, 0.9, 0.7, 0.05]
    assert all(r.cached and r.status == "ok" for r in second)


def test_cache_identity_is_url_languages_and_attribute(server, api_key, fake, tmp_path):
    cache = tmp_path / "cache.sqlite"
    with perspective(server, cache, fake) as scorer:
        scorer.score(["hello there"])
    with perspective(server, cache, fake, languages=["de"]) as scorer:
        assert not scorer.score(["hello there"])[0].cached  # other languages: another request
    with perspective(server, cache, fake) as scorer:
        assert scorer.score(["hello there"])[0].cached
    assert len(server.requests) == 2
    with sqlite3.connect(cache) as conn:
        requests = [json.loads(r) for (r,) in conn.execute("SELECT request FROM replies ORDER BY request")]
    assert {r["url"] for r in requests} == {server.url}
    assert sorted(r["languages"] for r in requests) == [["de"], ["en"]]
    assert {r["attribute"] for r in requests} == {"TOXICITY"}


def test_missing_key_raises_config_error_only_when_a_request_is_needed(server, fake, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with perspective(server, tmp_path / "cache.sqlite", fake) as scorer:
        assert scorer.score([" "])[0].score == 0.0  # no request needed: no error
        with pytest.raises(ConfigError, match=KEY_ENV):
            scorer.score(["needs a request"])
    assert server.requests == []


def test_rejected_key_aborts_with_config_error_and_keeps_earlier_results(server, api_key, fake, tmp_path):
    cache = tmp_path / "cache.sqlite"
    server.ok_next(1)
    server.error_next(1, 403, "API key {key} not valid.")
    with perspective(server, cache, fake) as scorer:
        with pytest.raises(ConfigError) as caught:
            scorer.score(["first text", "second text"])
    assert api_key not in str(caught.value) and "***" in str(caught.value)
    assert cache_rows(cache) == 1  # the first result was stored as it arrived
    with perspective(server, cache, fake) as scorer:
        [result] = scorer.score(["first text"])
    assert result.cached and len(server.requests) == 2


def test_stage_writes_scores_and_stats_and_never_the_key(server, api_key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    samples = tmp_path / "samples.parquet"
    responses = [
        "I hate this.",  # request 1: a reply without a score -> unparsed
        "You stupid {key}",  # request 2: HTTP 500 whose message echoes the key -> failed
        "You are an idiot.",  # request 3 -> 0.9
        "What a lovely day.",  # request 4 -> 0.05
        "You are an idiot.",  # duplicate: not sent again
        "   ",  # empty: 0.0, not sent
        "x" * 100,  # over max_text_bytes 50: too_long, not sent
    ]
    rows = [
        {"prompt_id": f"p{i // 2}", "prompt": "Say:", "response": r, "origin": "policy", "sample_index": i % 2}
        for i, r in enumerate(responses)
    ]
    write_rows(rows, samples, SAMPLES)
    server.unscored_next(1)
    server.error_next(1, 500, "Internal error for key {key}")
    config = {"backend": "perspective", "perspective_url": server.url, "api_key_env": KEY_ENV,
              "requests_per_second": 1000.0, "max_text_bytes": 50}
    cache, output, stats_path = tmp_path / "tox.sqlite", tmp_path / "scored.parquet", tmp_path / "stats.json"
    parser = argparse.ArgumentParser()
    toxicity.configure(parser)
    args = parser.parse_args(["--samples", str(samples), "--output", str(output), "--cache", str(cache),
                              "--scorer", json.dumps(config), "--stats", str(stats_path)])
    toxicity.main(args)

    table = read_table(output, SCORED_SAMPLES)
    assert pq.read_schema(output).names == SCORED_SAMPLES.names
    out = table.to_pylist()
    assert [r["status"] for r in out] == ["unparsed", "failed", "ok", "ok", "ok", "ok", "too_long"]
    assert [r["score"] for r in out] == [None, None, 0.9, 0.05, 0.9, 0.0, None]
    assert out[1]["reason"] == "HTTP 500: INTERNAL: Internal error for key ***"
    assert out[5]["reason"] == EMPTY_REASON
    assert {r["scorer"] for r in out} == {"perspective"}
    assert all(r["prompt_tokens"] is None and r["completion_tokens"] is None for r in out)
    assert [r["response"] for r in out] == responses and [r["prompt_id"] for r in out] == [r["prompt_id"] for r in rows]
    stats = read_json(stats_path)
    assert stats["ok"] == 4 and stats["unparsed"] == 1 and stats["failed"] == 1 and stats["too_long"] == 1
    assert stats["samples"] == 7 and stats["cache_hits"] == 0 and stats["requests_sent"] == 4
    assert len(server.requests) == 4

    # The key is nowhere: not in the cache files (the database and its WAL), the outputs or the log. The texts
    # themselves are in the cache bytes, so a key stored the same way would be seen.
    assert "HTTP Request" in caplog.text  # httpx logged the request URLs (masked)
    assert "key=***" in caplog.text
    cache_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("tox.sqlite*"))
    assert b"You are an idiot." in cache_bytes
    for blob in (cache_bytes, output.read_bytes(), stats_path.read_bytes(), caplog.text.encode()):
        assert api_key.encode() not in blob
    assert not any(api_key in str(value) for row in out for value in row.values())

    # A rerun sends only the two that were not ok (now answered), and counts the rest as cache hits.
    toxicity.main(args)
    stats = read_json(stats_path)
    assert stats["ok"] == 6 and stats["failed"] == 0 and stats["unparsed"] == 0 and stats["too_long"] == 1
    assert stats["cache_hits"] == 2 and stats["requests_sent"] == 2
    assert server.texts()[4:] == ["I hate this.", "You stupid {key}"]


# --------------------------------------------------------------------------------------------------------------
# profanity_check (offline)


def test_profanity_check_scores_and_caches(tmp_path):
    cache = tmp_path / "cache.sqlite"
    texts = ["You are a stupid idiot.", "The weather is nice today.", "You are a stupid idiot.", ""]
    with ProfanityCheckScorer(cache) as scorer:
        toxic, clean, again, empty = scorer.score(texts)
        assert scorer.stats.scored == 2 and scorer.stats.cache_hits == 0 and scorer.stats.requests_sent == 0
    assert toxic.status == clean.status == "ok" and not toxic.cached
    assert toxic.score > 0.5 > clean.score
    assert again == toxic
    assert empty == ToxicityScore(0.0, "ok", EMPTY_REASON, False)
    with ProfanityCheckScorer(cache) as scorer:
        second = scorer.score(texts[:2])
        assert scorer.stats.scored == 0 and scorer.stats.cache_hits == 2
    assert [r.score for r in second] == [toxic.score, clean.score] and all(r.cached for r in second)
    with sqlite3.connect(cache) as conn:
        requests = [json.loads(r) for (r,) in conn.execute("SELECT request FROM replies")]
    assert {(r["scorer"], r["version"]) for r in requests} == {("profanity_check", "1.9.1")}


def test_profanity_check_without_a_cache_file_caches_in_memory():
    scorer = make_toxicity_scorer(ToxicityConfig(), None)
    assert scorer.name == "profanity_check"
    first = scorer.score(["I hate you, idiot"])
    second = scorer.score(["I hate you, idiot"])
    scorer.close()
    assert not first[0].cached and second[0].cached and second[0].score == first[0].score


def test_profanity_stage_end_to_end(tmp_path):
    samples, output, stats_path = tmp_path / "s.parquet", tmp_path / "o.parquet", tmp_path / "stats.json"
    rows = [
        {"prompt_id": "a", "prompt": "p", "response": r, "origin": "gpt2", "sample_index": i}
        for i, r in enumerate(["You are a stupid idiot.", "The weather is nice today."])
    ]
    write_rows(rows, samples, SAMPLES)
    parser = argparse.ArgumentParser()
    toxicity.configure(parser)
    toxicity.main(parser.parse_args(["--samples", str(samples), "--output", str(output), "--cache",
                                     str(tmp_path / "c.sqlite"), "--stats", str(stats_path)]))
    out = read_table(output, SCORED_SAMPLES).to_pylist()
    assert [r["status"] for r in out] == ["ok", "ok"] and out[0]["score"] > 0.5 > out[1]["score"]
    assert {r["scorer"] for r in out} == {"profanity_check"}
    stats = read_json(stats_path)
    assert stats["ok"] == 2 and stats["requests_sent"] == 0 and stats["scored"] == 2


# --------------------------------------------------------------------------------------------------------------
# Config


def test_config_from_dict():
    assert ToxicityConfig.from_dict({}) == ToxicityConfig()
    config = ToxicityConfig.from_dict({"backend": "perspective", "requests_per_second": 10, "languages": ["en"]})
    assert config.requests_per_second == 10.0 and isinstance(config.requests_per_second, float)
    with pytest.raises(ConfigError, match="backnd"):
        ToxicityConfig.from_dict({"backnd": "perspective"})
    with pytest.raises(ConfigError, match="backend"):
        ToxicityConfig.from_dict({"backend": "detoxify"})
    with pytest.raises(ConfigError, match="perspective_url"):
        ToxicityConfig.from_dict({"perspective_url": "https://example.org/analyze?key=abc"})
    with pytest.raises(ConfigError, match="languages"):
        ToxicityConfig.from_dict({"languages": "en"})
    with pytest.raises(ConfigError, match="requests_per_second"):
        ToxicityConfig.from_dict({"requests_per_second": 0})
    with pytest.raises(ConfigError, match="max_retries"):
        ToxicityConfig.from_dict({"max_retries": 1.5})


def test_make_toxicity_scorer_picks_the_backend(tmp_path):
    scorer = make_toxicity_scorer(ToxicityConfig(backend="perspective"), tmp_path / "c.sqlite")
    assert isinstance(scorer, PerspectiveScorer) and scorer.name == "perspective"
    scorer.close()
    scorer = make_toxicity_scorer(ToxicityConfig(), tmp_path / "c.sqlite")
    assert isinstance(scorer, ProfanityCheckScorer) and scorer.name == "profanity_check"
    scorer.close()


# --- the quota is per key: shared by processes, concurrent up to it (issue 19) -----------------------------------

SCORE_IN_A_PROCESS = """
import sys
from feedbackflow.papers.fgrlhf.detox.toxicity import PerspectiveScorer, ToxicityConfig
config = ToxicityConfig.from_dict({"backend": "perspective", "perspective_url": sys.argv[1], "api_key_env": sys.argv[2],
                                   "requests_per_second": float(sys.argv[3])})
with PerspectiveScorer(config, sys.argv[4]) as scorer:
    results = scorer.score(sys.argv[5:])
assert all(r.status == "ok" for r in results), results
"""


def test_two_processes_share_one_request_rate(server, api_key, tmp_path):
    """Two real processes (as two PPO ranks) score 6 texts each into one cache directory at 5 requests/s: the stub
    sees 12 requests at least 0.2 s apart (each process alone at 5/s would send 10/s together)."""
    arguments = [server.url, KEY_ENV, "5", str(tmp_path / "cache.sqlite")]
    processes = [
        subprocess.Popen([sys.executable, "-c", SCORE_IN_A_PROCESS, *arguments,
                          *[f"rank {rank} text {i}" for i in range(6)]])
        for rank in range(2)
    ]  # fmt: skip
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    times = sorted(request.at for request in server.requests)
    assert len(times) == 12
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # slots 0.2 s apart; arrival times carry the scheduling jitter of a loaded machine, hence the margins (unshared,
    # the two processes' requests arrive in pairs, gaps near 0, over about 1 s)
    assert times[-1] - times[0] >= 11 * 0.2 - 0.05 and min(gaps) >= 0.1, gaps
    assert {text.split(" text")[0] for text in server.texts()} == {"rank 0", "rank 1"}


def test_requests_overlap_up_to_max_concurrency(server, api_key, tmp_path):
    """Replies take 0.5 s; at 10 requests/s with 5 in flight, 10 texts take about 0.9 + 0.5 s, not 10 x 0.5 s, and
    the starts stay 0.1 s apart."""
    server.delay_next(10, 0.5)
    config = perspective_config(server, requests_per_second=10.0, max_concurrency=5)
    start = time.monotonic()
    with PerspectiveScorer(config, tmp_path / "cache.sqlite") as scorer:
        results = scorer.score([f"text {i}" for i in range(10)])
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["ok"] * 10 and [r.score for r in results] == [0.05] * 10
    assert elapsed < 3.0, elapsed
    times = sorted(request.at for request in server.requests)
    assert times[-1] - times[0] >= 9 * 0.1 - 0.05 and min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.05
    assert cache_rows(tmp_path / "cache.sqlite") == 10
