"""The ILF language-model interface with real components: the official openai client against the scripted
OpenAI-compatible server on loopback (completions and chat), and a tiny local transformers LM for the hf backend.

The stub reads "case:NAME" in the prompt (or user message) and answers as `script` says; its tokens and their
log-probabilities are `stub_tokens` / `stub_logprob` (-0.1 per character), so echoed sums can be worked out by hand.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import secrets
from pathlib import Path

import pytest
import torch
from openai_stub_server import Action, StubOpenAIServer

from feedbackflow.errors import ConfigError
from feedbackflow.llm.config import ClientConfig
from feedbackflow.llm.judge import JudgeConfig
from feedbackflow.llm.language_model import (
    LanguageModel,
    LMConfig,
    SamplingCall,
    answer_probability,
    batch_seed,
    candidate_token_id,
    next_token_entries,
    sampling_calls,
)

KEY_ENV = "FF_TEST_LM_KEY"

# The next-token distribution the stub reports for "case:yes" (the chosen token is " Yes").
YES_ALTERNATIVES = {" Yes": math.log(0.6), " No": math.log(0.2), "Yes": math.log(0.1), " Maybe": math.log(0.05)}


def script(user: str, attempt: int) -> Action:
    match = re.search(r"case:([\w-]+)", user)
    case = match.group(1) if match else "default"
    if case == "default":
        return Action(text="5")
    if case == "lines":
        return Action(texts=["first line\nsecond line", "  padded \nmore", "single"])
    if case == "yes":
        return Action(top_logprobs=[YES_ALTERNATIVES])
    if case == "nologprobs":
        return Action(text=" Yes", logprobs=False)
    if case == "rate-limit-once":
        return Action(429, headers={"Retry-After": "0"}) if attempt == 0 else Action(top_logprobs=[YES_ALTERNATIVES])
    if case == "server-error-always":
        return Action(500)
    raise AssertionError(f"unknown case {case!r}")


@pytest.fixture
def server():
    with StubOpenAIServer(script, max_requests=100, max_delay_s=1.0) as stub:
        yield stub


@pytest.fixture
def api_key(monkeypatch) -> str:
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, key)
    return key


def openai_config(server: StubOpenAIServer, **overrides) -> LMConfig:
    values = dict(
        backend="openai",
        model="stub-lm",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        top_logprobs=3,
        max_retries=2,
        timeout_s=2.0,
        backoff_s=0.01,
        max_backoff_s=0.05,
        max_concurrency=3,
    )
    values.update(overrides)
    return LMConfig(**values)


def test_answer_probability_by_hand():
    # P(Yes) = .6, P(No) = .2 -> .6 / .8 = .75
    assert answer_probability({" Yes": math.log(0.6), " No": math.log(0.2)}, "Yes", "No") == pytest.approx(0.75)
    # variants are summed: P(Yes) = .5 + .1 + .1 = .7, P(No) = .1 + .2 = .3 -> .7
    variants = {" Yes": math.log(0.5), "Yes": math.log(0.1), "yes": math.log(0.1), " No": math.log(0.1),
                "NO ": math.log(0.2), " Maybe": math.log(0.3)}
    assert answer_probability(variants, "Yes", "No") == pytest.approx(0.7)
    # True/False templates: P(True) = .02, P(False) = .06 -> .25
    assert answer_probability({" True": math.log(0.02), " False": math.log(0.06)}, "True", "False") == (
        pytest.approx(0.25)
    )
    assert answer_probability({" Maybe": -0.1, " Perhaps": -2.0}, "Yes", "No") is None  # neither word
    assert answer_probability({" Yes": -3.0, " Maybe": -0.1}, "Yes", "No") == 1.0  # only Yes: P(No) counts as 0
    assert answer_probability({" No": -3.0}, "Yes", "No") == 0.0
    # log space: exp(-800) underflows, the ratio does not: e^-800 / (e^-800 + e^-801) = 1 / (1 + e^-1)
    assert answer_probability({" Yes": -800.0, " No": -801.0}, "Yes", "No") == pytest.approx(1 / (1 + math.exp(-1)))
    assert answer_probability({" Yes": -math.inf, " No": -math.inf}, "Yes", "No") is None


def test_config_errors():
    with pytest.raises(ConfigError, match="backend"):
        LMConfig(backend="anthropic", model="m")
    with pytest.raises(ConfigError, match="model"):
        LMConfig()
    with pytest.raises(ConfigError, match="api"):
        LMConfig(model="m", api="responses")
    with pytest.raises(ConfigError, match="top_logprobs"):
        LMConfig(model="m", top_logprobs=0)
    with pytest.raises(ConfigError, match="batch_size"):
        LMConfig(model="m", batch_size=0)
    with pytest.raises(ConfigError, match="max_prompt_tokens"):
        LMConfig(model="m", max_prompt_tokens=1)


SHARED_KEYS = {
    "backend": "openai", "model": None, "base_url": None, "api_key_env": "OPENAI_API_KEY", "max_concurrency": 4,
    "max_retries": 4, "timeout_s": 60.0, "backoff_s": 1.0, "max_backoff_s": 60.0, "batch_size": 8, "device": None,
    "dtype": None,
}  # fmt: skip


def test_config_keys_and_defaults_are_the_documented_ones():
    """The judge and the LM take the shared client keys from one definition; their YAML keys and defaults are those of
    config/README.md (`rrhf.judge.*`, LMConfig), as before the two shared it."""

    def defaults(cls) -> dict:
        return {field.name: field.default for field in dataclasses.fields(cls)}

    assert defaults(ClientConfig) == SHARED_KEYS
    assert defaults(LMConfig) == {
        **SHARED_KEYS, "api": "completions", "top_logprobs": 5, "max_sequences_per_generate": 256,
        "max_prompt_tokens": None,
    }  # fmt: skip
    judge_own = {"system_prompt", "prompt_template", "score_pattern", "score_min", "score_max", "temperature",
                 "max_tokens"}  # fmt: skip
    assert set(defaults(JudgeConfig)) == set(SHARED_KEYS) | judge_own
    assert {name: defaults(JudgeConfig)[name] for name in SHARED_KEYS} == SHARED_KEYS
    assert (JudgeConfig(model="m").score_min, JudgeConfig(model="m").max_tokens) == (1.0, 16)


def test_openai_completions_sample_logprobs_echo_and_rerun(tmp_path, server, api_key, caplog):
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "lm" / "cache.sqlite"
    prompt, continuation = "Q: x\n\nTL;DR:", " a big dog"
    with LanguageModel(openai_config(server), cache) as lm:
        (samples,) = lm.sample(["Summarize case:lines"], n=3, temperature=1.0, top_p=0.95, max_tokens=48,
                               stop=["\n"], seed=7)
        (nxt,) = lm.next_token_logprobs(["Answer case:yes"], candidates=(" Yes", " No"))
        echoed = lm.sequence_logprob([prompt, "Q: do"], [continuation, "gs run"])
        assert (lm.stats.items, lm.stats.requests_sent, lm.stats.replies, lm.stats.ok) == (4, 4, 4, 4)
    # texts cut at the first "\n" and stripped
    assert samples.ok and samples.value == ["first line", "padded", "single"]
    # the top 3 of the stub's alternatives (k = 3 was asked for)
    assert nxt.value == pytest.approx({" Yes": math.log(0.6), " No": math.log(0.2), "Yes": math.log(0.1)})
    assert answer_probability(nxt.value, "Yes", "No") == pytest.approx(0.7 / 0.9)
    # echo: tokens "Q:", " x", "\n\nTL;DR:" (the prompt, 12 characters), then " a" -0.2, " big" -0.4, " dog" -0.4
    assert echoed[0].value == (pytest.approx(-1.0), 3)
    # "Q: do" + "gs run": " dogs" starts inside the prompt, so only " run" (-0.4) counts
    assert echoed[1].value == (pytest.approx(-0.4), 1)

    bodies = server.bodies
    assert {k: bodies[0][k] for k in ("prompt", "n", "temperature", "top_p", "max_tokens", "stop", "seed")} == {
        "prompt": "Summarize case:lines", "n": 3, "temperature": 1.0, "top_p": 0.95, "max_tokens": 48,
        "stop": ["\n"], "seed": 7,
    }
    assert {k: bodies[1][k] for k in ("prompt", "max_tokens", "temperature", "logprobs")} == {
        "prompt": "Answer case:yes", "max_tokens": 1, "temperature": 0, "logprobs": 3,
    }
    # the two echo requests go out concurrently, so the server may record them in either order
    echo_bodies = sorted(bodies[2:4], key=lambda body: body["prompt"] != prompt + continuation)
    assert [{k: body[k] for k in ("prompt", "max_tokens", "echo", "logprobs")} for body in echo_bodies] == [
        {"prompt": prompt + continuation, "max_tokens": 0, "echo": True, "logprobs": 0},
        {"prompt": "Q: dogs run", "max_tokens": 0, "echo": True, "logprobs": 0},
    ]
    assert server.models == {"stub-lm"} and server.authorization == {f"Bearer {api_key}"}

    # A rerun with the same cache sends nothing and returns the same values, marked cached.
    sent = server.requests
    with LanguageModel(openai_config(server), cache) as lm:
        again = [
            *lm.sample(["Summarize case:lines"], n=3, temperature=1.0, top_p=0.95, max_tokens=48, stop=["\n"], seed=7),
            *lm.next_token_logprobs(["Answer case:yes"]),
            *lm.sequence_logprob([prompt, "Q: do"], [continuation, "gs run"]),
        ]
        assert (lm.stats.cache_hits, lm.stats.requests_sent, lm.stats.attempts) == (4, 0, 0)
    assert server.requests == sent
    assert [r.value for r in again] == [samples.value, nxt.value, echoed[0].value, echoed[1].value]
    assert all(r.cached for r in again)
    # A changed setting (the seed) is a different request.
    with LanguageModel(openai_config(server), cache) as lm:
        lm.sample(["Summarize case:lines"], n=3, temperature=1.0, top_p=0.95, max_tokens=48, stop=["\n"], seed=8)
    assert server.requests == sent + 1

    # The key went to the server only: not in the cache files, not in the log.
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("cache.sqlite") for p in files)
    for path in files:
        assert api_key.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    assert "sk-test-" not in caplog.text + "".join(str(r.args) for r in caplog.records)


def test_openai_chat_api(tmp_path, server, api_key):
    with LanguageModel(openai_config(server, api="chat"), tmp_path / "chat.sqlite") as lm:
        (samples,) = lm.sample(["Summarize case:lines"], n=3, stop=["\n"], max_tokens=20)
        (nxt,) = lm.next_token_logprobs(["Answer case:yes"])
        with pytest.raises(ConfigError, match="completions API"):
            lm.sequence_logprob(["Q:"], [" a"])
    assert samples.value == ["first line", "padded", "single"]
    assert nxt.value == pytest.approx({" Yes": math.log(0.6), " No": math.log(0.2), "Yes": math.log(0.1)})
    assert server.bodies[0]["messages"] == [{"role": "user", "content": "Summarize case:lines"}]
    assert server.bodies[0]["n"] == 3 and "seed" not in server.bodies[0]
    assert {k: server.bodies[1][k] for k in ("logprobs", "top_logprobs", "max_tokens", "temperature")} == {
        "logprobs": True, "top_logprobs": 3, "max_tokens": 1, "temperature": 0,
    }
    assert server.requests == 2


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_openai_retries_and_recorded_failures(tmp_path, server, api_key, api):
    cache = tmp_path / f"{api}.sqlite"
    prompts = ["p1 case:rate-limit-once", "p2 case:nologprobs", "p3 case:server-error-always", "p4 case:yes"]
    with LanguageModel(openai_config(server, api=api), cache) as lm:
        results = lm.next_token_logprobs(prompts)
        stats = lm.stats
    assert [r.status for r in results] == ["ok", "unparsed", "failed", "ok"]
    assert results[0].value == results[3].value
    assert results[1].value is None and results[1].error == "no log-probabilities in the reply"
    assert results[2].error.startswith("HTTP 500 server error") and results[2].error.endswith("after 3 attempts)")
    # 429 retried once; the reply without log-probabilities is not retried; the 500 three times
    attempts = {re.search(r"case:([\w-]+)", user).group(1): n for user, n in server.attempts.items()}
    assert attempts == {"rate-limit-once": 2, "nologprobs": 1, "server-error-always": 3, "yes": 1}
    assert (stats.ok, stats.unparsed, stats.failed, stats.attempts, stats.replies) == (2, 1, 1, 7, 2)
    # failures are not cached: a rerun sends only them again (1 + 3 attempts)
    before = server.requests
    with LanguageModel(openai_config(server, api=api), cache) as lm:
        again = lm.next_token_logprobs(prompts)
    assert server.requests - before == 4
    assert [r.status for r in again] == ["ok", "unparsed", "failed", "ok"] and again[0].cached


def test_missing_key_is_a_config_error_before_any_request(tmp_path, server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with LanguageModel(openai_config(server), tmp_path / "k.sqlite") as lm, pytest.raises(ConfigError, match=KEY_ENV):
        lm.sample(["hello"], n=2)
    assert server.requests == 0


# ------------------------------------------------------------------------------------------------------------
# hf backend on a tiny local model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

    root = tmp_path_factory.mktemp("lm_hf")
    corpus = root / "corpus.txt"
    words = "the a summary post feedback title text answer Yes No True False good short dog cat".split()
    corpus.write_text("\n".join(" ".join(words[(i * 5 + j) % len(words)] for j in range(12)) for i in range(80)))
    config = TinyModelConfig(
        seed=5, vocab_size=340, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=96,
    )
    tokenizer = train_tokenizer([corpus], config.vocab_size, config.max_position_embeddings)
    model = build_causal_lm(tokenizer, config)
    out = root / "tiny"
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def hf_config(model_dir: Path, **overrides) -> LMConfig:
    values = dict(backend="hf", model=str(model_dir), batch_size=2, device="cpu", top_logprobs=4)
    values.update(overrides)
    return LMConfig(**values)


def direct_logprobs(model, tokenizer, text: str) -> torch.Tensor:
    """log_softmax of the next-token logits after bos + the text's ids, one unpadded sequence."""
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)


def test_hf_next_token_logprobs_equal_the_logits(tmp_path, tiny_model_dir, tiny):
    model, tokenizer = tiny
    prompts = ["title dog", "post feedback summary good short text answer:", "the cat Answer:"]
    candidates = (" Yes", "Yes", " No", " True", " short dog cat")
    single = [c for c in candidates if len(tokenizer(c, add_special_tokens=False)["input_ids"]) == 1]
    assert " Yes" in single and " No" in single and " short dog cat" not in single  # both kinds are exercised
    with LanguageModel(hf_config(tiny_model_dir), tmp_path / "hf.sqlite") as lm:
        results = lm.next_token_logprobs(prompts, candidates=candidates)  # batches of 2: left padding
        assert lm.stats.requests_sent == 3
    for prompt, result in zip(prompts, results, strict=True):
        expected = direct_logprobs(model, tokenizer, prompt)
        values, ids = expected.topk(4)
        top: dict[str, float] = {}
        for value, token_id in zip(values.tolist(), ids.tolist(), strict=True):
            top.setdefault(tokenizer.decode([token_id]), value)  # ids with the same text: the likelier one
        for token, value in top.items():
            assert result.value[token] == pytest.approx(value, abs=1e-5)
        for candidate in single:
            (token_id,) = tokenizer(candidate, add_special_tokens=False)["input_ids"]
            assert result.value[candidate] == pytest.approx(float(expected[token_id]), abs=1e-5)
        assert " short dog cat" not in result.value
        assert set(result.value) == set(top) | set(single)

    with LanguageModel(hf_config(tiny_model_dir), tmp_path / "hf.sqlite") as lm:
        again = lm.next_token_logprobs(prompts, candidates=candidates)
        assert (lm.stats.cache_hits, lm.stats.attempts) == (3, 0)
        assert [r.value for r in again] == [r.value for r in results]
        lm.next_token_logprobs(prompts[:1], candidates=(" False",))  # other candidates: another request
        assert lm.stats.requests_sent == 1


def sentencepiece_style_tokenizer():
    """A tokenizer that, like LLaMA-2's SentencePiece one, prefixes the text with "\u2581" and writes each space as
    "\u2581", so " Yes" alone is two pieces ("\u2581", "\u2581Yes") but after "Answer:" the one piece "\u2581Yes"."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"])
    backend.train_from_iterator(["Is it? Answer: Yes", "Is it? Answer: No"] * 50, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_candidate_token_is_read_in_the_prompts_context():
    tokenizer = sentencepiece_style_tokenizer()

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    (yes,) = ids("Yes")  # "\u2581Yes"
    assert len(ids(" Yes")) == 2  # alone: "\u2581" + "\u2581Yes"
    assert ids("Is it? Answer: Yes")[-1] == yes
    assert candidate_token_id(tokenizer, " Yes", "Is it? Answer:") == yes  # one token after the prompt
    assert candidate_token_id(tokenizer, " Yes") is None  # no prompt: two tokens
    assert candidate_token_id(tokenizer, " Yes No", "Is it? Answer:") is None  # two tokens either way
    # literal log-probabilities: id -> -id / 100; the entry " Yes" is the log-probability of the id "\u2581Yes"
    logprobs = -torch.arange(len(tokenizer), dtype=torch.float32) / 100
    entries = next_token_entries(tokenizer, logprobs, 1, [" Yes"], "Is it? Answer:")
    assert entries[" Yes"] == pytest.approx(-yes / 100)
    assert set(entries) == {tokenizer.decode([0]), " Yes"}  # the top-1 (id 0) and the candidate


def test_hf_sequence_logprob_is_the_token_by_token_sum(tmp_path, tiny_model_dir, tiny):
    model, tokenizer = tiny
    pairs = [("the post title", " good short summary"), ("answer", " Yes"), ("text", "")]
    with LanguageModel(hf_config(tiny_model_dir), tmp_path / "seq.sqlite") as lm:
        results = lm.sequence_logprob([p for p, _ in pairs], [c for _, c in pairs])
    for (prompt, continuation), result in zip(pairs, results, strict=True):
        context = prompt
        expected = 0.0
        ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        prefix = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        for token_id in ids:  # log p(token | bos + prompt ids + the continuation's earlier ids), one at a time
            with torch.no_grad():
                logits = model(torch.tensor([prefix])).logits[0, -1]
            expected += float(torch.log_softmax(logits.float(), dim=-1)[token_id])
            prefix.append(token_id)
        assert result.value[1] == len(ids), context
        assert result.value[0] == pytest.approx(expected, abs=1e-4)
    assert results[2].value == (0.0, 0)


def test_hf_sample_is_seeded_cut_and_cached(tmp_path, tiny_model_dir):
    prompts = ["title dog", "the summary of the post", "feedback"]

    def draw(cache: Path, seed: int, batch_size: int = 2, which=prompts):
        with LanguageModel(hf_config(tiny_model_dir, batch_size=batch_size), cache) as lm:
            results = lm.sample(which, n=3, temperature=1.0, top_p=0.95, max_tokens=8, stop=["\n"], seed=seed)
            return [r.value for r in results], lm.stats

    first, stats = draw(tmp_path / "a.sqlite", seed=11)
    assert stats.requests_sent == 3 and stats.attempts == 3
    assert all(len(texts) == 3 for texts in first)
    assert all("\n" not in t and t == t.strip() for texts in first for t in texts)
    assert draw(tmp_path / "b.sqlite", seed=11)[0] == first  # same seed, fresh cache: the same texts
    assert draw(tmp_path / "c.sqlite", seed=12)[0] != first
    again, stats = draw(tmp_path / "a.sqlite", seed=11)
    assert again == first and (stats.cache_hits, stats.attempts) == (3, 0)
    # batch_size 1: a prompt's samples depend only on (prompt, seed), not on the other prompts asked with it
    alone, _ = draw(tmp_path / "d.sqlite", seed=11, batch_size=1, which=prompts[1:2])
    together, _ = draw(tmp_path / "e.sqlite", seed=11, batch_size=1)
    assert together[1] == alone[0]
    with LanguageModel(hf_config(tiny_model_dir), tmp_path / "f.sqlite") as lm, pytest.raises(ConfigError, match="n:"):
        lm.sample(prompts, n=2, temperature=0.0)


def test_sampling_calls_cap_the_sequences_of_each_call():
    assert sampling_calls([0, 1, 2, 3, 4], n=3, batch_size=8, max_sequences=7) == [
        SamplingCall([0, 1], 3), SamplingCall([2, 3], 3), SamplingCall([4], 3)
    ]  # fmt: skip
    assert sampling_calls([0, 1, 2], n=2, batch_size=2, max_sequences=64) == [
        SamplingCall([0, 1], 2), SamplingCall([2], 2)
    ]  # fmt: skip
    assert sampling_calls([5, 6], n=10, batch_size=8, max_sequences=4) == [
        SamplingCall([5], 4, 0), SamplingCall([5], 4, 1), SamplingCall([5], 2, 2),
        SamplingCall([6], 4, 0), SamplingCall([6], 4, 1), SamplingCall([6], 2, 2),
    ]  # fmt: skip
    assert batch_seed(1, ["p"]) != batch_seed(1, ["p"], 0) != batch_seed(1, ["p"], 1)


def test_hf_sample_batches_by_sequences_complete_and_deterministic(tmp_path, tiny_model_dir):
    """No generate call holds more than max_sequences_per_generate sequences (prompts x n); a prompt whose n is
    larger is split over calls with distinct seeds, and its n samples come back whole and reproducible."""
    prompts = ["title dog", "the summary of the post", "feedback", "good short text"]

    def draw(cache: Path, n: int, which=prompts, **overrides):
        calls: list[int] = []
        with LanguageModel(hf_config(tiny_model_dir, **overrides), cache) as lm:
            model, _ = lm.backend.load()
            real_generate = model.generate

            def counting_generate(*args, **kwargs):  # a spy: it only counts sequences, the real generate runs
                calls.append(kwargs["input_ids"].shape[0] * kwargs["num_return_sequences"])
                return real_generate(*args, **kwargs)

            model.generate = counting_generate
            results = lm.sample(which, n=n, temperature=1.0, top_p=0.95, max_tokens=6, stop=["\n"], seed=3)
            assert lm.stats.attempts == len(which) and lm.stats.ok == len(which)
        return [r.value for r in results], calls

    # 4 prompts x 3 samples, at most 7 sequences a call: 2 prompts a call although batch_size is 8
    texts, calls = draw(tmp_path / "a.sqlite", n=3, batch_size=8, max_sequences_per_generate=7)
    assert calls == [6, 6] and [len(t) for t in texts] == [3] * 4
    # n = 10 over a limit of 4: each prompt alone in calls of 4, 4 and 2 samples
    texts, calls = draw(tmp_path / "b.sqlite", n=10, batch_size=2, max_sequences_per_generate=4)
    assert calls == [4, 4, 2] * 4 and [len(t) for t in texts] == [10] * 4
    assert all(t[0:4] != t[4:8] for t in texts)  # the parts draw from distinct seeds
    again, _ = draw(tmp_path / "c.sqlite", n=10, batch_size=2, max_sequences_per_generate=4)
    assert again == texts  # fresh cache, same texts
    alone, _ = draw(tmp_path / "d.sqlite", n=10, which=prompts[1:2], batch_size=2, max_sequences_per_generate=4)
    assert alone == [texts[1]]  # a split prompt's samples depend only on (prompt, seed, limit)
    # the default limit (256) leaves batch_size x n calls as they were
    _, calls = draw(tmp_path / "e.sqlite", n=3, batch_size=2)
    assert calls == [6, 6]
    with pytest.raises(ConfigError, match="max_sequences_per_generate"):
        hf_config(tiny_model_dir, max_sequences_per_generate=0)


def test_hf_prompt_too_long_is_a_recorded_failure(tmp_path, tiny_model_dir):
    long_prompt = " ".join(["summary"] * 200)
    with LanguageModel(hf_config(tiny_model_dir), tmp_path / "long.sqlite") as lm:
        failed, ok = lm.next_token_logprobs([long_prompt, "title"])
        assert lm.stats.failed == 1
    assert failed.status == "failed" and failed.error.startswith("prompt too long:") and ok.ok
    with LanguageModel(hf_config(tiny_model_dir, max_prompt_tokens=40), tmp_path / "long.sqlite") as lm:
        (truncated,) = lm.next_token_logprobs([long_prompt])
    assert truncated.ok
