"""The PPO engine and `train-ppo` stage (Wu et al. 2023; docs/methods/fine_grained_rlhf.md) on a tiny causal LM and a
tiny T5 built here.

The toy task: reward 1 on every generated " dog", " cat" and " the" (three `target_token` reward functions).
In-process runs check learning, the outputs, the optimiser-step count and resume after SIGTERM; engine-level tests
check the rollout's log-probs against generate(), the minibatch length weighting and the gradient accumulation;
one run goes through the CLI with 2 processes (DDP over gloo).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LongformerConfig,
    LongformerForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

from feedbackflow.core.formats import PPO_LOG, PROMPTS, write_rows
from feedbackflow.core.training import build_accelerator
from feedbackflow.errors import ConfigError
from feedbackflow.losses.ppo import clipped_policy_loss, clipped_value_loss
from feedbackflow.rl.ppo import (
    META_FILE,
    VALUE_HEAD_FILE,
    PolicyAndValue,
    PPOConfig,
    PPOEngine,
    encode_policy_prompts,
    fused_activation_overrides,
    is_encoder_decoder,
    length_grouped_passes,
    load_frozen_models,
    load_policy_model,
    load_value_model,
    ppo_optimizer,
    response_mask_from_ids,
    train_ppo,
)
from feedbackflow.rl.rewards import (
    REWARD_TYPES,
    RewardResult,
    build_reward_functions,
    check_reward_result,
    register_reward_type,
)
from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

WORDS = "the cat sat on a mat and a dog ran to the park where birds sing".split()
REWARD_SPEC = [
    {"type": "target_token", "token": "Ġdog", "name": "dog"},
    {"type": "target_token", "token": "Ġcat", "name": "cat"},
    {"type": "target_token", "token": "Ġthe", "name": "the"},
]
TOY = {
    "total_episodes": 960,  # 30 steps of 8 prompts x 4 samples
    "prompts_per_step": 8,
    "samples_per_prompt": 4,
    "max_new_tokens": 8,
    "max_input_length": 32,
    "top_k": 0,
    "temperature": 1.0,
    "warmup_steps": 0,
    "kl_coef": 0.3,
    "eval_every": 15,
    "save_every": 100,
}
FAMILIES = {
    "causal": {"learning_rate": 5e-3, "minibatch_size": 16},  # 2 minibatches per epoch
    "t5": {"learning_rate": 2e-3, "minibatch_size": 32},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, above all on a machine shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A BPE tokenizer (pad, eos), a tiny LLaMA and a tiny T5 (dropout 0.1) on it, and 32 prompts."""
    root = tmp_path_factory.mktemp("ppo")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)) + "\n")
    tokenizer = train_tokenizer([corpus], vocab_size=300, model_max_length=64)
    assert all(entry["token"] in tokenizer.get_vocab() for entry in REWARD_SPEC)
    causal = build_causal_lm(
        tokenizer, TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, max_position_embeddings=64)
    )
    causal.save_pretrained(root / "causal")
    tokenizer.save_pretrained(root / "causal")
    t5_config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    T5ForConditionalGeneration(t5_config).save_pretrained(root / "t5")
    tokenizer.save_pretrained(root / "t5")
    rows = [
        {"prompt_id": f"p{i}", "prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))),
         "source": "synthetic", "record": i}
        for i in range(32)
    ]  # fmt: skip
    write_rows(rows, root / "prompts.parquet", PROMPTS)
    return {"root": root, "causal": root / "causal", "t5": root / "t5", "prompts": root / "prompts.parquet"}


@pytest.fixture
def sigterm_restored():
    """train_ppo installs a SIGTERM handler (StopSignal); put pytest's back afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


class OptimizerSteps:
    """Counts Adam steps (the torch optimiser inside accelerate's wrapper) while active."""

    def __init__(self):
        self.count = 0

    def __enter__(self):
        def hook(optimizer, args, kwargs):
            if isinstance(optimizer, torch.optim.Adam):
                self.count += 1

        self.handle = register_optimizer_step_post_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def run_toy(tiny, family: str, name: str, **overrides) -> tuple[list[dict], dict[str, Path]]:
    root = tiny["root"] / name
    paths = {"output": root / "policy", "value": root / "value", "work": root / "work"}
    config = PPOConfig(**{**TOY, **FAMILIES[family], **overrides})
    history = train_ppo(
        str(tiny["prompts"]), str(tiny[family]), str(tiny[family]), REWARD_SPEC, str(paths["output"]),
        str(paths["value"]), str(paths["work"]), config, eval_prompts_path=str(tiny["prompts"]),
    )  # fmt: skip
    return history, paths


# --- reward functions -------------------------------------------------------------------------------------------


def test_target_token_reward_and_the_registry(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny["causal"])
    dog = tokenizer.convert_tokens_to_ids("Ġdog")
    functions = build_reward_functions([{"type": "target_token", "token": "Ġdog", "value": 0.5}], tokenizer)
    assert [f.name for f in functions] == ["target_token"]  # the name defaults to the type
    rewards, stats = functions[0](["p", "q"], ["", ""], [[dog, 7, dog], [7]])
    assert rewards == [[0.5, 0.0, 0.5], [0.0]]  # 0.5 on each occurrence, one value per token
    assert stats == {"count": [2.0, 0.0]}
    # text that encodes to one token works too (" dog" -> Ġdog)
    assert build_reward_functions([{"type": "target_token", "token": " dog"}], tokenizer)[0].token_id == dog
    for bad, message in [
        ([{"type": "nope"}], "unknown reward type 'nope'"),
        ([{"type": "target_token", "token": " dog cat sat"}], "not one token"),
        ([{"type": "target_token"}], r"missing key\(s\) \['token'\]"),
        ([{"type": "target_token", "token": "Ġdog", "colour": 1}], "unknown key"),
        ([{"type": "target_token", "token": "Ġdog"}, {"type": "target_token", "token": "Ġcat"}], "used twice"),
        ([], "non-empty"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_reward_functions(bad, tokenizer)
    # a type registered by "module:attribute" is imported on first use
    register_reward_type("lazy_target", "feedbackflow.rl.rewards:build_target_token_reward")
    try:
        lazy = build_reward_functions([{"type": "lazy_target", "token": "Ġcat", "name": "c"}], tokenizer)[0]
        assert lazy.name == "c" and lazy.token_id == tokenizer.convert_tokens_to_ids("Ġcat")
    finally:
        del REWARD_TYPES["lazy_target"]


def test_reward_results_are_checked_against_the_tokens():
    with pytest.raises(ValueError, match="sample 1 has 1 tokens but 2 rewards"):
        check_reward_result(RewardResult([[0.0], [0.0, 1.0]], {}), [[5], [6]], "r")
    with pytest.raises(ValueError, match="1 reward lists for 2 samples"):
        check_reward_result(RewardResult([[0.0]], {}), [[5], [6]], "r")
    with pytest.raises(ValueError, match="statistic 'n'"):
        check_reward_result(RewardResult([[0.0], [1.0]], {"n": [1.0]}), [[5], [6]], "r")


def test_response_mask_runs_to_the_first_eos_inclusive():
    ids = torch.tensor([[5, 1, 2, 1], [5, 6, 7, 8], [9, 2, 2, 2], [1, 1, 1, 1]])
    # eos ids 1 and 9: row 0 ends at its first 1; row 1 has none; row 2 ends at once (9); row 3: its first token
    mask = response_mask_from_ids(ids, torch.tensor([1, 9]))
    expected = [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0]]
    assert mask.int().tolist() == expected


# --- the engine -------------------------------------------------------------------------------------------------


def build_engine(path: Path, **overrides) -> tuple[PPOEngine, object, list[str]]:
    """An engine on one process over the model at `path`, where ~10% of the vocabulary ends a response (so that
    responses have different lengths)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = PPOConfig(**{**TOY, "learning_rate": 1e-3, **overrides})
    encoder_decoder = is_encoder_decoder(str(path))
    policy = load_policy_model(str(path), encoder_decoder)
    policy.generation_config.eos_token_id = [tokenizer.eos_token_id, *range(100, 130)]
    reference = load_policy_model(str(path), encoder_decoder).eval()
    backbone, head = load_value_model(str(path))
    accelerator = build_accelerator()
    model = PolicyAndValue(policy, backbone, head, encoder_decoder)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=config.adam_eps)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 1.0 / (n + 1))
    functions = build_reward_functions(REWARD_SPEC, tokenizer)
    engine = PPOEngine(accelerator, model, reference, tokenizer, functions, config, encoder_decoder, optimizer,
                       scheduler)  # fmt: skip
    prompts = ["the cat", "a dog ran to the park where", "sing", "birds sing on a mat"]
    return engine, encode_policy_prompts(tokenizer, prompts, encoder_decoder, 32), prompts


@pytest.mark.parametrize("family", ["causal", "t5"])
def test_rollout_logprobs_are_those_of_the_sampling_distribution(tiny, family):
    engine, token_ids, _ = build_engine(tiny[family])
    prompt_ids, prompt_mask = engine.pad_prompts(token_ids)
    if family == "causal":  # prompts of different lengths, left-padded
        assert prompt_mask[:, 0].tolist() == [0, 1, 0, 0]
    torch.manual_seed(3)
    response_ids, response_mask = engine.generate(prompt_ids, prompt_mask, sample=True, n=2)
    torch.manual_seed(3)  # the same draw, straight from generate(), with its raw (untempered) logits
    policy = engine.unwrapped.policy
    out = policy.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
        max_new_tokens=8, num_return_sequences=2, pad_token_id=engine.pad_id, eos_token_id=engine.eos_ids.tolist(),
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    width = response_ids.shape[1]
    generated = out.sequences[:, 1:] if family == "t5" else out.sequences[:, prompt_ids.shape[1] :]
    lengths = response_mask.sum(dim=1)
    assert len(set(lengths.tolist())) > 1  # responses of different lengths
    assert torch.equal(torch.where(response_mask, generated[:, :width], response_ids), response_ids)
    assert (response_ids[~response_mask] == engine.pad_id).all()
    expected = torch.log_softmax(torch.stack(out.logits, dim=1)[:, :width].float(), dim=-1)
    expected = expected.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    prompt_ids, prompt_mask = prompt_ids.repeat_interleave(2, 0), prompt_mask.repeat_interleave(2, 0)
    old_logprobs, old_values, ref_logprobs = engine.score_rollout(prompt_ids, prompt_mask, response_ids, response_mask)
    torch.testing.assert_close(old_logprobs, torch.where(response_mask, expected, 0.0), atol=1e-5, rtol=0)
    assert torch.equal(ref_logprobs, old_logprobs)  # the reference is the initial policy
    assert (old_values[~response_mask] == 0).all() and (old_values[response_mask] != 0).all()


def batch_rows(rollout, batch) -> list[int]:
    """The rollout rows of a training pass (matched on response ids and old values, unique per sample here)."""
    rows = []
    for ids, values in zip(batch.response_ids, batch.old_values, strict=True):
        width = len(ids)
        match = [i for i in range(len(rollout)) if torch.equal(rollout.response_ids[i, :width], ids)
                 and torch.equal(rollout.old_values[i, :width], values)]  # fmt: skip
        rows.append(match[0])
    return rows


def test_minibatches_are_weighted_by_length_and_accumulate_into_one_step_per_epoch(tiny):
    engine, token_ids, prompts = build_engine(tiny["causal"], samples_per_prompt=2, minibatch_size=2, ppo_epochs=3)
    torch.manual_seed(0)
    rollout, _ = engine.rollout(token_ids, prompts, kl_coef=0.3)
    lengths = rollout.response_mask.sum(dim=1).tolist()
    minibatches = [rollout.select(start, start + 2, trim=True, left_padded_prompts=True) for start in range(0, 8, 2)]
    # weight of minibatch k = mean length of its 2 responses / mean length of all 8
    global_mean = sum(lengths) / len(lengths)
    expected = [(lengths[i] + lengths[i + 1]) / 2 / global_mean for i in range(0, 8, 2)]
    passes = engine.training_passes(rollout)
    weights = {int(row): float(w) for batch in passes for row, w in zip(batch_rows(rollout, batch), batch.length_weight,
                                                                           strict=True)}  # fmt: skip
    assert [weights[i] for i in range(0, 8, 2)] == pytest.approx(expected)
    assert max(expected) - min(expected) > 0.2  # the weights really differ
    assert all(batch.response_ids.shape[1] == int(batch.response_mask.sum(dim=1).max()) for batch in passes)

    # accumulated gradient = gradient of sum_k w_k * (policy loss_k + value loss_k), each loss a token mean in k,
    # whatever the passes: one per minibatch (the default), or the whole rollout in one pass
    model, params = engine.model, list(engine.model.parameters())
    model.train()
    accumulated, logged = {}, {}
    for size in (None, 8):
        engine.config.forward_batch_size = size
        engine.optimizer.zero_grad()
        logged[size] = engine.accumulate_epoch_gradients(engine.training_passes(rollout))
        accumulated[size] = [p.grad.clone() for p in params]
    engine.config.forward_batch_size = None
    assert len(engine.training_passes(rollout)) == 4
    grads_of, sums = {}, {}
    for weighted in (True, False):
        engine.optimizer.zero_grad()
        total, sums = 0.0, {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0}
        for batch, weight in zip(minibatches, expected, strict=True):
            logprobs, values = engine.unwrapped(batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                                batch.response_mask)  # fmt: skip
            pg, clipped = clipped_policy_loss(logprobs, batch.old_logprobs, batch.advantages, batch.response_mask, 0.2)
            vf = clipped_value_loss(values, batch.old_values, batch.returns, batch.response_mask, 0.2)
            total = total + (weight if weighted else 1.0) * (pg + vf)
            for name, value in (("policy_loss", weight * pg), ("value_loss", weight * vf), ("clip_fraction", clipped)):
                sums[name] += float(value.detach())
        total.backward()
        grads_of[weighted] = [p.grad.clone() for p in params]
        if weighted:
            expected_sums = dict(sums)
    for size in (None, 8):
        for got, want in zip(accumulated[size], grads_of[True], strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
        assert logged[size] == pytest.approx(expected_sums, rel=1e-5, abs=1e-6)
    assert any(not torch.allclose(got, plain, atol=1e-6, rtol=1e-4)
               for got, plain in zip(accumulated[None], grads_of[False], strict=True))  # fmt: skip

    # ppo_epochs: 4 minibatches per epoch, ONE optimiser step (and one scheduler step) per epoch
    before = [p.detach().clone() for p in params]
    with OptimizerSteps() as steps:
        losses = engine.ppo_epochs(rollout)
    assert steps.count == 3
    assert engine.scheduler.last_epoch == 3
    assert set(losses) == {"policy_loss", "value_loss", "clip_fraction"}
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_reward_functions_read_the_responses_decoded_as_the_original(tmp_path):
    """The literal T5 sample "_He _said _, _yes _. </s>" reaches the reward functions as "He said, yes." (the original's
    fgrlhf/policy.py decodes with clean_up_tokenization_spaces), or as the tokenizer decodes it with the key off."""
    pieces = ["▁He", "▁said", "▁,", "▁yes", "▁."]  # ids 3-7 after <pad> 0, </s> 1, <unk> 2
    t5 = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0) for p in pieces], extra_ids=0)
    seen = []

    def recorder(prompts, responses, token_ids):
        seen.append(responses)
        return RewardResult([[0.0] * len(ids) for ids in token_ids], {})

    recorder.name = "recorder"
    ids = torch.tensor([[3, 4, 5, 6, 7, 1, 0]])
    mask = torch.tensor([[True] * 6 + [False]])
    assert PPOConfig().clean_up_tokenization_spaces  # the default: the original's decoding
    for clean_up, expected in ((True, "He said, yes."), (False, "He said , yes .")):
        engine = SimpleNamespace(tokenizer=t5, config=PPOConfig(clean_up_tokenization_spaces=clean_up),
                                 reward_functions=[recorder])  # fmt: skip
        PPOEngine.rewards_of(engine, ["question: ?"], ids, mask)
        assert seen[-1] == [expected]


def test_the_step_kl_is_the_mean_of_the_minibatch_means(tiny):
    """8 samples in minibatches of 3, 3 and 2: the logged KL, which the early stop and the KL controller read, is
    (mean(kl[0:3]) + mean(kl[3:6]) + mean(kl[6:8])) / 3 (the original's), not the mean over the 8 samples."""
    engine, token_ids, prompts = build_engine(tiny["causal"], samples_per_prompt=2, minibatch_size=3)
    torch.manual_seed(1)
    with torch.no_grad():  # move the policy away from the reference so that the KL is not 0
        for parameter in engine.unwrapped.policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.manual_seed(0)
    rollout, means = engine.rollout(token_ids, prompts, kl_coef=0.3)
    kl = torch.where(rollout.response_mask, rollout.old_logprobs - rollout.ref_logprobs, 0.0).sum(dim=1).double()
    expected = (kl[0:3].mean() + kl[3:6].mean() + kl[6:8].mean()).item() / 3
    assert means["kl"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert abs(means["kl"] - kl.mean().item()) > 1e-3  # the mean over samples differs here


def test_gradient_clipping_takes_the_norm_of_policy_and_value_together(tiny):
    """The original's current fgrlhf/ppo.py clips one norm over policy and value: gradients 3 (policy) and 4 (value
    head), all others 0, have the norm sqrt(9 + 16) = 5; with max_grad_norm 1 both are scaled by 1 / 5 (torch:
    1 / (5 + 1e-6)) to 0.6 and 0.8. (Clipped separately they would be 1.0 and 1.0.)"""
    engine, _, _ = build_engine(tiny["causal"], max_grad_norm=1.0)
    model = engine.unwrapped
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    policy_weight, value_bias = next(model.policy.parameters()), model.value_head.model[2].bias
    policy_weight.grad.view(-1)[0], value_bias.grad.view(-1)[0] = 3.0, 4.0
    engine.clip_gradients()
    assert policy_weight.grad.view(-1)[0].item() == pytest.approx(0.6, rel=1e-5)
    assert value_bias.grad.view(-1)[0].item() == pytest.approx(0.8, rel=1e-5)


# --- toy runs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["causal", "t5"])
def test_toy_run_raises_the_reward_with_bounded_kl(tiny, family, sigterm_restored):
    with OptimizerSteps() as steps:
        history, paths = run_toy(tiny, family, f"learn_{family}")
    rewards = [row["reward"] for row in history]
    kls = [row["kl"] for row in history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"{family}: reward first 5 steps {first:.3f}, last 5 {last:.3f}; max KL {max(kls):.3f}; "
          f"eval rewards {[row['eval_reward'] for row in history if row['eval_reward'] is not None]}")  # fmt: skip
    assert len(history) == 30
    assert last > first + 0.25 and last > 3 * first
    assert max(kls) < 5.0  # far from the early-stop threshold 10
    assert steps.count == 30 * 4  # one optimiser step per PPO epoch

    # the log: one row per step, per-function rewards in spec order adding up to the total
    table = pq.read_table(paths["output"] / "training_log.parquet")
    assert table.schema.equals(PPO_LOG)
    log = table.to_pandas()
    assert log["step"].tolist() == list(range(1, 31))
    assert log["episodes"].tolist() == [32 * s for s in range(1, 31)]
    for row in history:
        assert [r["name"] for r in row["rewards"]] == ["dog", "cat", "the"]
        assert sum(r["value"] for r in row["rewards"]) == pytest.approx(row["reward"])
        assert {s["name"] for s in row["statistics"]} == {"dog/count", "cat/count", "the/count"}
    assert log["kl_coef"].eq(0.3).all()
    assert log["eval_reward"].notna().tolist() == [(s % 15 == 0) for s in range(1, 31)]
    # linear schedule, no warm-up, 120 optimiser steps: step s starts at lr * (1 - 4 (s - 1) / 120)
    lr = FAMILIES[family]["learning_rate"]
    assert log["learning_rate"].tolist() == pytest.approx([lr * (1 - 4 * s / 120) for s in range(30)])

    # the outputs: a trained policy that loads, a value model with its head, the summary
    model_class = AutoModelForCausalLM if family == "causal" else AutoModelForSeq2SeqLM
    trained = model_class.from_pretrained(paths["output"])
    initial = model_class.from_pretrained(tiny[family])
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), initial.parameters(), strict=True))
    assert AutoTokenizer.from_pretrained(paths["output"]).pad_token == "<pad>"
    backbone, head = load_value_model(str(paths["value"]))
    saved_head = load_file(paths["value"] / VALUE_HEAD_FILE)
    assert torch.equal(head.model[0].weight, saved_head["model.0.weight"])
    assert backbone.config.hidden_size == 32
    summary = json.loads((paths["output"] / META_FILE).read_text())
    assert summary["steps"] == 30 and summary["stopped_early"] is False
    assert summary["family"] == {"causal": "causal", "t5": "seq2seq"}[family]
    assert not paths["work"].exists()  # checkpoints removed once the outputs are written


def test_resume_after_sigterm_equals_an_uninterrupted_run(tiny, sigterm_restored):
    """T5 (dropout on during the PPO epochs): SIGTERM after step 3 saves a checkpoint and exits 143; the rerun
    resumes there and ends with the same weights and log as a run that was never interrupted."""
    six_steps = {"total_episodes": 6 * 32, "save_every": 2, "eval_every": 100}
    reference, reference_paths = run_toy(tiny, "t5", "uninterrupted", **six_steps)

    def interrupt(row):
        if row["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    root = tiny["root"] / "interrupted"
    config = PPOConfig(**{**TOY, **FAMILIES["t5"], **six_steps})
    args = (str(tiny["prompts"]), str(tiny["t5"]), str(tiny["t5"]), REWARD_SPEC, str(root / "policy"),
            str(root / "value"), str(root / "work"), config)  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        train_ppo(*args, eval_prompts_path=str(tiny["prompts"]), on_step=interrupt)
    assert exit_info.value.code == 143
    assert (root / "work" / "checkpoint-00000003" / "trainer_state.json").is_file()
    assert not (root / "policy").exists()
    steps_run = []
    resumed = train_ppo(*args, eval_prompts_path=str(tiny["prompts"]), on_step=lambda r: steps_run.append(r["step"]))
    assert steps_run == [4, 5, 6]  # it resumed (a fresh start would also end equal: same seed)
    assert resumed == reference
    for directory, name in (("policy", "model.safetensors"), ("value", "model.safetensors"),
                            ("value", VALUE_HEAD_FILE)):  # fmt: skip
        want = load_file(reference_paths["output" if directory == "policy" else "value"] / name)
        got = load_file(root / directory / name)
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(want[key], got[key]), (directory, key)


def test_two_processes_through_the_cli(tiny, repo_root):
    """`launch --processes 2 -- train-ppo` (DDP over gloo, statistics across processes), reward spec from a file."""
    root = tiny["root"] / "two_processes"
    root.mkdir()
    spec = root / "rewards.json"
    spec.write_text(json.dumps(REWARD_SPEC))
    hparams = {**TOY, **FAMILIES["causal"], "total_episodes": 64, "minibatch_size": 4}
    command = [
        sys.executable, "-m", "feedbackflow", "launch", "--processes", "2", "--", "train-ppo",
        "--prompts", str(tiny["prompts"]), "--policy", str(tiny["causal"]), "--reward-spec", str(spec),
        "--output", str(root / "policy"), "--value-output", str(root / "value"), "--work-dir", str(root / "work"),
        "--threads", "2", "--hparams", json.dumps(hparams),
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = pd.read_parquet(root / "policy" / "training_log.parquet")
    assert log["step"].tolist() == [1, 2] and log["episodes"].tolist() == [32, 64]
    assert json.loads((root / "policy" / META_FILE).read_text())["processes"] == 2
    assert log["response_length"].between(1, 8).all() and log["kl"].notna().all()


# --- T5: one encoder pass per prompt, old log-probs from generation; bf16 frozen models (issue 19) ---------------


class EncoderRows:
    """Records the rows of every forward of some real encoders (forward hooks), by name, while active."""

    def __init__(self, encoders: dict[str, torch.nn.Module]):
        self.encoders = encoders
        self.seen = {name: [] for name in encoders}

    def __enter__(self):
        def hook(name):
            return lambda module, args, kwargs, output: self.seen[name].append(kwargs["input_ids"].shape[0])

        self.handles = [e.register_forward_hook(hook(n), with_kwargs=True) for n, e in self.encoders.items()]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def encoders_of(engine: PPOEngine) -> dict[str, torch.nn.Module]:
    model = engine.unwrapped
    return {"policy": model.policy.get_encoder(), "value": model.value_backbone.get_encoder(),
            "reference": engine.reference.get_encoder()}  # fmt: skip


def test_t5_rollout_encodes_each_prompt_once_with_the_numbers_of_one_pass_per_sample(tiny):
    """4 prompts x 4 samples: each encoder runs once per rollout on the 4 prompts (before: the value and reference
    encoders on all 16 samples, and the policy's again for the old log-probs), and the scores equal those of one
    encoder pass per sample (score_rollout without a prompt index: the old path)."""
    engine, token_ids, prompts = build_engine(tiny["t5"], samples_per_prompt=4, rollout_forward_batch_size=6)
    with EncoderRows(encoders_of(engine)) as rows:
        torch.manual_seed(0)
        rollout, _ = engine.rollout(token_ids, prompts, kl_coef=0.3)
    assert rows.seen == {"policy": [4], "value": [4], "reference": [4]}  # the policy's: generate() only
    assert rollout.prompt_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]

    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)
    with EncoderRows(encoders_of(engine)) as rows:
        per_sample = engine.score_rollout(*args)
    assert rows.seen == {"policy": [6, 6, 4], "value": [6, 6, 4], "reference": [6, 6, 4]}  # chunks of 6 samples
    with EncoderRows(encoders_of(engine)) as rows:
        shared = engine.score_rollout(*args, rollout.prompt_index)
    assert rows.seen == {"policy": [4], "value": [4], "reference": [4]}
    for got, want in zip(shared, per_sample, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(shared[1], rollout.old_values, atol=1e-6, rtol=0)
    torch.testing.assert_close(shared[2], rollout.ref_logprobs, atol=1e-6, rtol=0)


def test_t5_training_pass_shares_the_encoder_only_where_no_dropout_is_drawn(tiny):
    """A minibatch of 6 samples of 2 prompts: without dropout, each encoder (policy, value) runs on the 2 prompts
    and log-probs, values and every gradient (the encoders' included) equal those of one pass per sample; with the
    model's dropout (0.1, train mode) every sample keeps its own encoder pass and dropout mask."""
    engine, token_ids, prompts = build_engine(tiny["t5"], samples_per_prompt=4, minibatch_size=6)
    torch.manual_seed(0)
    rollout, _ = engine.rollout(token_ids, prompts, kl_coef=0.3)
    batch = rollout.select(6, 12, trim=True, left_padded_prompts=False)  # 2 samples of prompt 1, 4 of prompt 2
    assert batch.prompt_index.tolist() == [1, 1, 2, 2, 2, 2]
    model = engine.unwrapped
    model.train()
    trained_encoders = {k: v for k, v in encoders_of(engine).items() if k != "reference"}

    def forward_backward(prompt_index):
        model.zero_grad()
        with EncoderRows(trained_encoders) as rows:
            logprobs, values = model(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask,
                                     prompt_index)  # fmt: skip
        (logprobs.sum() + values.sum()).backward()
        return logprobs, values, {n: p.grad.clone() for n, p in model.named_parameters()}, rows.seen

    assert forward_backward(batch.prompt_index)[3] == {"policy": [6], "value": [6]}  # dropout 0.1: per sample
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    assert forward_backward(batch.prompt_index)[3] == {"policy": [6], "value": [6]}  # T5Attention's own dropout
    for module in model.modules():
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    *shared, seen = forward_backward(batch.prompt_index)
    assert seen == {"policy": [2], "value": [2]}
    *per_sample, seen = forward_backward(None)
    assert seen == {"policy": [6], "value": [6]}
    torch.testing.assert_close(shared[0], per_sample[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(shared[1], per_sample[1], atol=1e-6, rtol=0)
    encoder_grads = [name for name in per_sample[2] if ".encoder." in name]
    assert len(encoder_grads) > 10 and all(per_sample[2][name].abs().sum() > 0 for name in encoder_grads)
    for name, want in per_sample[2].items():
        torch.testing.assert_close(shared[2][name], want, atol=1e-5, rtol=1e-5, msg=name)  # grads up to ~7


@pytest.mark.parametrize("family", ["t5", "causal"])
def test_old_logprobs_come_from_generation_and_equal_the_forward(tiny, family):
    """The old log-probs are read off generate()'s raw logits (the untempered distribution, as the forward pass gives
    them); on CPU float32 they agree with the teacher-forced forward (left-padded prompts of several lengths for the
    causal policy) to 1.5e-6 (T5) and 5e-7 (causal)."""
    engine, token_ids, _ = build_engine(tiny[family], temperature=0.7, top_k=5)
    assert engine.logprobs_from_generation
    assert len({len(ids) for ids in token_ids}) > 1  # causal prompts are left-padded to the longest
    prompt_ids, prompt_mask = engine.pad_prompts(token_ids)
    torch.manual_seed(3)
    response_ids, response_mask, generated = engine.generate_with_logprobs(prompt_ids, prompt_mask, True, 3, True)
    assert len(set(response_mask.sum(dim=1).tolist())) > 1
    forward = engine.score_rollout(prompt_ids.repeat_interleave(3, 0), prompt_mask.repeat_interleave(3, 0),
                                   response_ids, response_mask)[0]  # fmt: skip
    torch.testing.assert_close(generated, forward, atol=1e-5, rtol=0)
    assert (generated[~response_mask] == 0).all() and (generated[response_mask] < 0).all()
    # top-k 5 at temperature 0.7 would give log-probs >= log(1/5) to most tokens: these are the raw ones
    assert (generated[response_mask] < -2.0).float().mean() > 0.5


def tiny_sequence_rm(path: Path, tokenizer) -> str:
    """A tiny Longformer sequence RM on the PPO tokenizer (random weights)."""
    config = LongformerConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        attention_window=8, max_position_embeddings=100, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    LongformerForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change once set: clear it around a test
    that asks for another precision than the other tests of this process (accelerate's own tests do the same)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_puts_the_frozen_models_in_bf16_and_a_step_runs(tiny, tmp_path, sigterm_restored,
                                                             fresh_accelerator_state):  # fmt: skip
    """mixed_precision bf16 on the CPU: the reference and the reward models are bf16 (the CPU included), and PPO
    steps run under autocast with finite losses; with "no" every frozen model stays float32, as before."""
    tokenizer = AutoTokenizer.from_pretrained(tiny["t5"])
    rm_spec = {"type": "preference", "name": "rm", "model": tiny_sequence_rm(tmp_path / "rm", tokenizer),
               "mean": 0.0, "std": 1.0, "max_length": 60, "device": "cpu"}  # fmt: skip
    for precision, dtype in (("bf16", torch.bfloat16), ("no", torch.float32)):
        functions = build_reward_functions([rm_spec], tokenizer)
        reference = load_frozen_models(str(tiny["t5"]), True, functions, torch.device("cpu"), precision)
        assert {p.dtype for p in reference.parameters()} == {dtype}
        assert {p.dtype for p in functions[0].model.parameters()} == {dtype}
        assert not reference.training and not any(p.requires_grad for p in reference.parameters())

    seen = []  # the reward model's dtype at each call inside train_ppo

    class Probe:
        """The real sequence-RM reward, recording its model's dtype at each call."""

        def __init__(self, spec, policy_tokenizer):
            self.inner = build_reward_functions([{**rm_spec, "name": spec["name"]}], policy_tokenizer)[0]
            self.name = spec["name"]

        def frozen_models(self):
            return self.inner.frozen_models()

        def __call__(self, *args):
            seen.append({p.dtype for p in self.inner.model.parameters()})
            return self.inner(*args)

    register_reward_type("rm_probe", Probe)
    try:
        for precision, dtype in (("bf16", torch.bfloat16), ("no", torch.float32)):
            seen.clear()
            AcceleratorState._reset_state(reset_partial_state=True)
            root = tmp_path / precision
            config = PPOConfig(**{**TOY, **FAMILIES["t5"], "max_steps": 2, "mixed_precision": precision,
                                  "gradient_checkpointing": precision == "bf16"})  # fmt: skip
            history = train_ppo(
                str(tiny["prompts"]), str(tiny["t5"]), str(tiny["t5"]), [*REWARD_SPEC, {"type": "rm_probe"}],
                str(root / "policy"), str(root / "value"), str(root / "work"), config,
            )  # fmt: skip
            assert len(history) == 2 and seen == [{dtype}, {dtype}]
            for row in history:
                assert all(math.isfinite(row[k]) for k in ("policy_loss", "value_loss", "kl", "reward")), row
            assert json.loads((root / "policy" / META_FILE).read_text())["training"]["mixed_precision"] == precision
    finally:
        del REWARD_TYPES["rm_probe"]


def test_length_grouped_passes_by_hand():
    # prompts 0, 1, 2 with two samples each; longest response per prompt 5, 2, 7 -> prompt 2, 0, 1; passes of 4 rows
    groups, lengths = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([3, 5, 2, 2, 7, 1])
    assert [p.tolist() for p in length_grouped_passes(groups, lengths, 4)] == [[4, 5, 0, 1], [2, 3]]
    # a prompt with more samples than a pass: cut into pieces of the pass size
    assert [p.tolist() for p in length_grouped_passes(torch.zeros(3), torch.tensor([1, 1, 1]), 2)] == [[0, 1], [2]]
    # one sample per group, equal lengths: rollout order
    assert [p.tolist() for p in length_grouped_passes(torch.arange(4), torch.ones(4), 2)] == [[0, 1], [2, 3]]


def test_gpt2_loads_with_the_fused_tanh_gelu_and_computes_the_same(tmp_path):
    """GPT-2's "gelu_new" (transformers' Python tanh-GELU) is loaded as "gelu_pytorch_tanh", the fused kernel of the
    same formula: the logits agree to float rounding. A LLaMA (silu) has no override."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)).save_pretrained(tmp_path)
    assert fused_activation_overrides(str(tmp_path)) == {"activation_function": "gelu_pytorch_tanh"}
    fused = load_policy_model(str(tmp_path), encoder_decoder=False).eval()
    plain = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert fused.config.activation_function == "gelu_pytorch_tanh" and plain.config.activation_function == "gelu_new"
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, plain(ids).logits, atol=1e-5, rtol=0)
    backbone, _ = load_value_model(str(tmp_path))
    assert backbone.config.activation_function == "gelu_pytorch_tanh"


def test_ppo_optimizer_is_fused_adam_with_the_papers_eps(tiny):
    engine, _, _ = build_engine(tiny["causal"])
    optimizer = ppo_optimizer(engine.unwrapped, engine.config)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"]
    assert optimizer.defaults["eps"] == 1e-5 and len(optimizer.param_groups[0]["params"]) == len(
        list(engine.unwrapped.parameters())
    )
