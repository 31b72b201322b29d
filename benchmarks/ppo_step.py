"""PPO update time, two settings, on 2 CPU threads:
- GPT-2: our `PPOEngine` against TRL 1.12's PPO trainer (`trl.experimental.ppo.PPOTrainer`), generation excluded,
  on the same tiny GPT-2 models and the same rollouts; the target is TRL / ours >= 1.5 on equal terms (TRL without
  the `gc.collect()` calls its loop makes every step, which are not PPO work);
- T5 (the Fine-Grained RLHF policy; TRL has no seq2seq PPO): this engine against itself as of `--baseline`
  (13ac016), the whole step with sampling, on the tiny qa-feedback run's T5 and settings.

Models and data, built in a temporary directory (no download): a byte-level BPE tokenizer
(`tiny.models.train_tokenizer`, `--vocab-size`) and GPT-2 models from one `GPT2Config` (`--hidden-size`, `--layers`,
`--heads`); the rollouts are sampled once from the policy with TRL's sampling settings, restricted to whole-word
tokens (so that our text-based reward sees about as many tokens as TRL's id-based one).

What one GPT-2 "PPO update" is, on both sides: given a batch of already generated rollouts (`--batch` queries of
`--prompt-length` tokens, bos included, no padding, each with one response of exactly `--response-length` tokens,
no eos, so no side can save work by trimming), the time for: the old log-probs from the generation logits (both
sides read them off what generate() returned), the no-grad scoring passes (reference log-probs, values, the sequence
reward model's score), KL-penalised per-token rewards, reward whitening, GAE and advantage whitening, then
`--epochs` PPO epochs; each takes the losses of minibatches of `--minibatch` samples, backpropagates the clipped
policy + value loss of each, accumulates the gradients and takes ONE optimiser step per epoch (TRL:
`num_mini_batches=1`, `per_device_train_batch_size=minibatch`, `gradient_accumulation_steps=batch/minibatch`, which
is the same schedule). Both sides use the same GPT-2 policy / reference (a copy of the policy), the same value
backbone (ours adds the paper's MLP head, TRL a Linear score head) and the same `GPT2ForSequenceClassification`
reward model; dropout is off in the config (TRL turns it off anyway), float32, no gradient checkpointing (TRL's
config turns it on by default) and no gradient clipping on either side; each side keeps its own optimiser
(ours: fused Adam as `rl.ppo.ppo_optimizer` builds it, eps as in the paper; TRL: its TrainingArguments default,
fused AdamW). Ours runs as `train_ppo` would with `forward_batch_size` = the batch: the minibatch losses and the
optimiser steps are the same, computed in one forward/backward pass per epoch (each token's loss weighted by its
minibatch's length weight / token count: the same gradients to float rounding), and GPT-2's tanh-GELU loaded as
PyTorch's fused kernel of the same formula (`rl.ppo.fused_activation_overrides`).

How each side is timed, generation excluded:
- ours: `PPOEngine.rollout` (with `generate_with_logprobs` replaced by a function returning the prepared responses
  and their log-probs under the raw generation logits, computed inside the timed update) then
  `PPOEngine.ppo_epochs`: exactly the trainer's step minus sampling. Our reward comes from the `preference` reward
  function of `rl.rewards`' registry (`papers.fgrlhf.qa.rewards.SequenceReward`: decode, re-tokenize
  "<prompt> answer: <response>", a few tokens longer than TRL's query + response ids, score with the sequence RM,
  reward on the last token), as in a real run.
- TRL: `PPOTrainer.train()` itself, with the module's `batch_generation` replaced by a function returning the same
  prepared responses and their generation logits (what `generate(..., output_scores=True)` returned when the
  rollouts were made); one step = the time between consecutive `on_step_end` callbacks, i.e. everything TRL's loop
  does per step (data loading, scoring, rewards, GAE, epochs, metrics, and the two `gc.collect()` calls it makes
  per step). Those full collections cost about 0.2 s each in a process that has imported TRL, whatever the model
  size, so at this tiny scale they are about half of TRL's step: the time spent in them is measured and taken off
  for the ratio on equal terms; TRL as shipped is printed too. The number of optimiser steps per update is
  printed for both sides as a check that they do the same schedule.

T5: each engine (this checkout's src/, and `git archive <baseline> src`) runs in a worker subprocess with the same
tiny T5 (policy, reference, value body), the same prompts (`--t5-prompts` x `--t5-samples`, `--t5-prompt-length`
words, up to `--t5-new-tokens` new tokens, top-k 20, minibatches of `--t5-minibatch`) and a sequence reward model;
one step = `rollout` (sampling included) + `ppo_epochs`, each seeded alike (the response tokens per step are printed
for both as a check that they did the same work). This checkout runs as the tiny qa config does (one training pass
per epoch); the baseline as it was.

TRL runs in its own virtual environment (TRL must never be installed into .venv), in a worker subprocess started
with `--trl-python` that this script drives over a pipe, so the two sides can be timed alternately: after a warm-up,
`--repeats` rounds each time `--steps` updates of ours and of TRL, in alternating order; the fastest update of each
side counts (as timeit does, this rejects the slowdowns caused by other processes on the machine; while other
processes keep both cores busy, two-thread updates can get many times slower and a run much longer than its usual
minute). Printed: the setting, each side's fastest and median seconds per update, and the ratio TRL / ours, as
shipped and on equal terms (target >= 1.5); then the T5 setting, timed the same way, and its speed-up.

Set-up of the TRL environment (once; torch from the same CPU wheel as the Makefile installs, no CUDA wheels):

    python3 -m venv /work/trl_bench_venv
    /work/trl_bench_venv/bin/pip install --upgrade pip
    /work/trl_bench_venv/bin/pip install torch==2.13.0
    /work/trl_bench_venv/bin/pip install trl==1.12.0 transformers==5.23.0

Run (from the repository root):

    .venv/bin/python benchmarks/ppo_step.py --trl-python /work/trl_bench_venv/bin/python \
        [--setting both|gpt2|t5] [--batch 16] [--minibatch 4] [--response-length 48] [--repeats 5] [--steps 3]
        [--baseline 13ac016] [--t5-prompts 16] [--t5-samples 4] [--t5-minibatch 16] [--t5-new-tokens 64]

(`--trl-python` defaults to $TRL_PYTHON, else this interpreter; it fails with a clear message when TRL's PPO trainer
cannot be imported there.)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import torch
import transformers
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

TARGET_RATIO = 1.5
READY = "PPO_STEP_READY"  # worker -> driver line prefixes (anything else the worker prints is ignored)
TIMES = "PPO_STEP_SECONDS"
TRL_MODULE = "trl.experimental.ppo"


# --- set-up (driver, project venv) --------------------------------------------------------------------------------


def pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(1, 3)))


def prompt_texts(tokenizer, n: int, n_tokens: int, seed: int = 0) -> list[str]:
    """`n` distinct prompts of exactly `n_tokens` tokens each (bos not counted): whole-word vocabulary tokens."""
    rng, prompts = random.Random(seed), []
    words = sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith("\u0120") and t[1:].isalpha())
    while len(prompts) < n:
        text = " ".join(rng.choice(words) for _ in range(n_tokens))
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == n_tokens and text not in prompts:
            prompts.append(text)
    return prompts


def build_setup(root: Path, args: argparse.Namespace) -> dict:
    """Tokenizer, policy, value and reward models saved under `root`, and the rollouts (queries, responses and the
    generation logits TRL reads its old log-probs from) in root / rollout.pt. Returns a description for printing."""
    from feedbackflow.text.tokens import encode_prompts
    from feedbackflow.tiny.models import train_tokenizer

    rng = random.Random(0)
    corpus = root / "corpus.txt"
    vocabulary = [pseudo_word(rng) for _ in range(3000)]  # enough distinct words for `--vocab-size` BPE tokens
    lines = (" ".join(rng.choice(vocabulary) for _ in range(rng.randint(8, 40))) + "." for _ in range(4000))
    corpus.write_text("\n".join(lines) + "\n")
    tokenizer = train_tokenizer([corpus], vocab_size=args.vocab_size, model_max_length=256)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=args.prompt_length + args.response_length + 64,
        n_embd=args.hidden_size,
        n_layer=args.layers,
        n_head=args.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    for seed, name, model_class in ((1, "policy", GPT2LMHeadModel), (2, "value", GPT2ForSequenceClassification),
                                    (3, "reward", GPT2ForSequenceClassification)):  # fmt: skip
        torch.manual_seed(seed)
        model = model_class(config).float()
        if name == "policy":
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            policy = model.eval()
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)

    prompts = prompt_texts(tokenizer, args.batch, args.prompt_length - 1)
    queries = torch.tensor(encode_prompts(tokenizer, prompts, args.prompt_length))  # bos + prompt, (B, P)
    assert queries.shape == (args.batch, args.prompt_length)
    # TRL's sampling settings (temperature, no top-k), restricted to whole-word tokens: every response has exactly
    # `response_length` real tokens (no eos, no pad), and its text re-tokenizes to about as many tokens for our
    # text-based reward model as TRL's reward model reads as ids (random byte tokens would decode to replacement
    # characters that re-tokenize into several tokens each)
    suppressed = sorted(i for t, i in tokenizer.get_vocab().items() if not (t.startswith("\u0120") and t[1:].isalpha()))
    torch.manual_seed(4)
    with torch.no_grad():
        output = policy.generate(
            input_ids=queries,
            attention_mask=torch.ones_like(queries),
            do_sample=True,
            temperature=args.temperature + 1e-7,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.response_length,
            min_new_tokens=args.response_length,
            suppress_tokens=suppressed,
            return_dict_in_generate=True,
            output_scores=True,
            output_logits=True,
        )
    responses = output.sequences[:, args.prompt_length :]
    assert responses.shape == (args.batch, args.response_length)
    assert not torch.isin(responses, torch.tensor(suppressed)).any()
    torch.save({"prompts": prompts, "queries": queries, "responses": responses, "logits": torch.stack(output.scores, 1),
                "raw_logits": torch.stack(output.logits, 1)}, root / "rollout.pt")  # fmt: skip
    n_params = sum(p.numel() for p in policy.parameters())
    return {"vocabulary": len(tokenizer), "parameters": n_params}


# --- ours (driver, project venv) ----------------------------------------------------------------------------------


class OursRunner:
    """Our engine as `train_ppo` builds it, with generation replaced by the prepared responses."""

    def __init__(self, root: Path, args: argparse.Namespace):
        from transformers import AutoTokenizer, get_scheduler

        from feedbackflow.core.training import build_accelerator
        from feedbackflow.rl.ppo import (
            PolicyAndValue,
            PPOConfig,
            PPOEngine,
            encode_policy_prompts,
            gathered_logprobs,
            load_policy_model,
            load_value_model,
            ppo_optimizer,
        )
        from feedbackflow.rl.rewards import build_reward_functions

        data = torch.load(root / "rollout.pt")
        self.config = PPOConfig(
            prompts_per_step=args.batch,
            samples_per_prompt=1,
            minibatch_size=args.minibatch,
            forward_batch_size=args.batch,  # the same minibatch losses and steps, in one pass per epoch
            ppo_epochs=args.epochs,
            max_new_tokens=args.response_length,
            max_input_length=args.prompt_length,
            temperature=args.temperature,
            kl_coef=args.kl_coef,
            whiten_rewards=True,
            learning_rate=args.learning_rate,
            warmup_steps=0,
        )
        self.config.validate()
        policy_dir, value_dir = str(root / "policy"), str(root / "value")
        tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        spec = [{"type": "preference", "model": str(root / "reward"), "mean": 0.0, "std": 1.0, "device": "cpu",
                 "batch_size": args.batch, "max_length": 256}]  # fmt: skip
        reward_functions = build_reward_functions(spec, tokenizer)
        policy = load_policy_model(policy_dir, encoder_decoder=False)
        reference = load_policy_model(policy_dir, encoder_decoder=False).eval().requires_grad_(False)
        value_backbone, value_head = load_value_model(value_dir, seed=self.config.seed)
        model = PolicyAndValue(policy, value_backbone, value_head, encoder_decoder=False)
        accelerator = build_accelerator(mixed_precision="no")
        optimizer = ppo_optimizer(model, self.config)  # as train_ppo builds it
        model, optimizer = accelerator.prepare(model, optimizer)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10**6)
        self.engine = PPOEngine(accelerator, model, reference, tokenizer, reward_functions, self.config,
                                encoder_decoder=False, optimizer=optimizer, scheduler=scheduler)  # fmt: skip
        self.prompts = data["prompts"]
        self.prompt_token_ids = encode_policy_prompts(tokenizer, self.prompts, False, args.prompt_length)
        queries, responses = data["queries"], data["responses"]
        if self.prompt_token_ids != queries.tolist():
            raise RuntimeError("our prompt encoding differs from the prepared queries")

        raw_logits = data["raw_logits"]

        def prepared_responses(prompt_ids, prompt_mask, sample, n, logprobs):
            """What generate_with_logprobs returns for the prepared rollouts: the responses and, when the engine
            takes its old log-probs from generation, their log-probs under generate()'s raw logits (computed here,
            inside the timed update, as the engine computes them from `output_logits`)."""
            assert n == 1 and torch.equal(prompt_ids, queries) and bool(prompt_mask.all())
            mask = torch.ones_like(responses, dtype=torch.bool)
            return responses, mask, gathered_logprobs(raw_logits, responses) if logprobs else None

        self.engine.generate_with_logprobs = prepared_responses
        fused = bool(optimizer.optimizer.defaults.get("fused"))
        self.optimizer_name = type(optimizer.optimizer).__name__ + (" (fused)" if fused else "")
        self.optimizer_steps, self.optimizer_steps_per_update = 0, 0.0
        optimizer.optimizer.register_step_post_hook(self.count_optimizer_step)  # inside accelerate's wrapper

    def count_optimizer_step(self, *_) -> None:
        self.optimizer_steps += 1

    def step(self) -> float:
        """Seconds of one update: rollout scoring, rewards, advantages, then the PPO epochs."""
        start = time.perf_counter()
        rollout, _ = self.engine.rollout(self.prompt_token_ids, self.prompts, self.config.kl_coef)
        self.engine.ppo_epochs(rollout)
        return time.perf_counter() - start

    def run(self, steps: int) -> list[float]:
        self.optimizer_steps = 0
        seconds = [self.step() for _ in range(steps)]
        self.optimizer_steps_per_update = self.optimizer_steps / steps
        return seconds


# --- TRL (worker subprocess, TRL's venv; imports nothing from feedbackflow) ---------------------------------------


def trl_worker(root: Path, args: argparse.Namespace) -> None:
    """Build TRL's trainer on the saved models, report ready, then answer every stdin line N with the seconds of
    N updates (N + 1 steps run; the intervals between consecutive step ends)."""
    try:
        import trl
        from trl.experimental.ppo import PPOConfig, PPOTrainer
        from trl.experimental.ppo import ppo_trainer as trl_ppo
    except ImportError as error:
        sys.exit(f"error: {TRL_MODULE} is not importable in {sys.executable}: {error}")
    import datasets
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        PrinterCallback,
        ProgressCallback,
        TrainerCallback,
    )

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    data = torch.load(root / "rollout.pt")
    queries, responses, logits = data["queries"], data["responses"], data["logits"]
    row_of = {tuple(q): i for i, q in enumerate(queries.tolist())}

    def prepared_generation(model, batch_queries, local_rollout_forward_batch_size, pad_token_id, generation_config):
        """What `batch_generation` returned for these queries when the rollouts were made."""
        rows = torch.tensor([row_of[tuple(q)] for q in batch_queries.tolist()])
        return torch.cat((batch_queries, responses[rows]), 1), logits[rows]

    trl_ppo.batch_generation = prepared_generation

    class TimedGC:
        """The `gc` module as TRL's trainer module sees it, with the seconds spent in its `gc.collect()` counted."""

        seconds = 0.0

        def collect(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return gc.collect(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

    timed_gc = TimedGC()
    trl_ppo.gc = timed_gc

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, float]] = []  # (time, seconds in TRL's gc.collect so far) at each step end

        def on_step_end(self, *_, **__):
            self.marks.append((time.perf_counter(), timed_gc.seconds))

    policy_dir = str(root / "policy")
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    config = PPOConfig(
        output_dir=str(root / "trl_output"),
        per_device_train_batch_size=args.minibatch,
        gradient_accumulation_steps=args.batch // args.minibatch,
        num_mini_batches=1,
        num_ppo_epochs=args.epochs,
        response_length=args.response_length,
        temperature=args.temperature,
        kl_coef=args.kl_coef,
        whiten_rewards=True,
        learning_rate=args.learning_rate,
        local_rollout_forward_batch_size=args.batch,
        total_episodes=10**6,
        num_sample_generations=0,
        stop_token=None,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    # Many copies of the queries: accelerate syncs (steps the optimiser after) every micro-batch while its prepared
    # dataloader is at its end, which a dataset of one batch always is; TRL's real runs are mid-epoch nearly always.
    dataset = datasets.Dataset.from_dict({"input_ids": queries.tolist() * 1000})
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32),
        ref_model=AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32),
        reward_model=AutoModelForSequenceClassification.from_pretrained(str(root / "reward"), num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(str(root / "value"), num_labels=1),
        train_dataset=dataset,
        eval_dataset=dataset,
    )
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    clock = StepClock()
    trainer.add_callback(clock)
    optimizer = trainer.optimizer.optimizer  # inside accelerate's wrapper
    optimizer_steps = [0]
    optimizer.register_step_post_hook(lambda *_: optimizer_steps.__setitem__(0, optimizer_steps[0] + 1))
    versions = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "optimizer": type(optimizer).__name__,
                "fused": bool(optimizer.defaults.get("fused"))}  # fmt: skip
    print(f"{READY} {json.dumps(versions)}", flush=True)
    for line in sys.stdin:
        clock.marks.clear()
        optimizer_steps[0] = 0
        trainer.args.num_total_batches = int(line) + 1
        trainer.train()
        answer = {
            "seconds": [b - a for (a, _), (b, _) in pairwise(clock.marks)],
            "gc_seconds": [b - a for (_, a), (_, b) in pairwise(clock.marks)],
            "optimizer_steps_per_update": optimizer_steps[0] / (int(line) + 1),
        }
        print(f"{TIMES} {json.dumps(answer)}", flush=True)


def check_trl(trl_python: str) -> None:
    """Exit with a clear message unless TRL's PPO trainer imports with `trl_python`."""
    check = subprocess.run([trl_python, "-c", f"import {TRL_MODULE}"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(
            f"error: {TRL_MODULE} is not importable with {trl_python} (pass --trl-python, the python of a "
            f"virtual environment with trl==1.12.0; see the module docstring):\n{check.stderr.strip()[-2000:]}"
        )


class TRLRunner:
    """Drives the TRL worker over its stdin / stdout."""

    def __init__(self, root: Path, args: argparse.Namespace, trl_python: str):
        self.log_path = root / "trl_worker.log"
        self.log = self.log_path.open("w")
        forwarded = ["--batch", "--minibatch", "--epochs", "--response-length", "--temperature", "--kl-coef",
                     "--learning-rate", "--threads"]  # fmt: skip
        command = [trl_python, str(Path(__file__).resolve()), "--trl-worker", str(root)]
        for flag in forwarded:
            command += [flag, str(getattr(args, flag[2:].replace("-", "_")))]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True)  # fmt: skip
        self.info = json.loads(self.expect(READY))
        self.gc_seconds: list[float] = []  # per timed update, the part spent in TRL's own gc.collect() calls

    def expect(self, prefix: str) -> str:
        for line in self.process.stdout:
            if line.startswith(prefix + " "):
                return line[len(prefix) + 1 :]
        self.log.flush()
        sys.exit(f"error: the TRL worker stopped (exit {self.process.wait()}):\n{self.log_path.read_text()[-4000:]}")

    def run(self, steps: int) -> list[float]:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        answer = json.loads(self.expect(TIMES))
        self.optimizer_steps_per_update = answer["optimizer_steps_per_update"]
        self.gc_seconds += answer["gc_seconds"]
        return answer["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        self.log.close()


# --- T5: this engine against itself as of a baseline commit (TRL has no seq2seq PPO) ------------------------------


def build_t5_setup(root: Path, args: argparse.Namespace) -> dict:
    """A tiny T5 policy (the tiny qa-feedback run's sizes and dropout) with its tokenizer under root / "t5", and
    `--t5-prompts` prompts of about `--t5-prompt-length` tokens in root / "t5_prompts.json". The reward is the GPT-2
    setting's sequence RM architecture (root / "t5_reward", 1,024 positions), read from the decoded text as the holistic
    qa reward reads it."""
    from feedbackflow.tiny.models import TinyModelConfig, build_tiny_models

    rng = random.Random(1)
    words = [pseudo_word(rng) for _ in range(3000)]
    corpus = root / "t5_corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(8, 60))) for _ in range(4000)))
    config = TinyModelConfig(vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=512)  # fmt: skip
    build_tiny_models([corpus], root / "t5", config, architecture="seq2seq")
    prompts = [" ".join(rng.choice(words) for _ in range(args.t5_prompt_length)) for _ in range(args.t5_prompts)]
    (root / "t5_prompts.json").write_text(json.dumps(prompts))
    # the sequence RM: the GPT-2 setting's architecture and tokenizer, with room for prompt + response text
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "reward")
    reward_config = transformers.AutoConfig.from_pretrained(root / "reward")
    reward_config.n_positions = 1024
    torch.manual_seed(5)
    GPT2ForSequenceClassification(reward_config).save_pretrained(root / "t5_reward")
    tokenizer.save_pretrained(root / "t5_reward")
    return {
        "parameters": sum(
            p.numel() for p in transformers.AutoModelForSeq2SeqLM.from_pretrained(root / "t5").parameters()
        )
    }


def import_first(*names: str):
    """The first importable module of `names` (the package's layout moved between commits)."""
    import importlib

    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"none of {names}")


def engine_worker(root: Path, args: argparse.Namespace) -> None:
    """Build the PPO engine of the feedbackflow source in `--engine-src` (this checkout's, or a baseline commit's)
    on the T5 setting, report ready, then answer every stdin line N with the seconds of N updates (sampling with
    generate(), scoring, rewards, advantages and the PPO epochs: a whole `train_ppo` step), each seeded alike."""
    sys.path.insert(0, str(args.engine_src))
    for name in [m for m in sys.modules if m == "feedbackflow" or m.startswith("feedbackflow.")]:
        del sys.modules[name]
    ppo = import_first("feedbackflow.rl.ppo", "feedbackflow.ppo_training")
    rewards = import_first("feedbackflow.rl.rewards", "feedbackflow.ppo_rewards")
    training = import_first("feedbackflow.core.training", "feedbackflow.launch")
    from transformers import AutoTokenizer, get_scheduler

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    # this checkout's tiny qa config takes the whole rollout in one training pass (forward_batch_size); the
    # baseline has no such key (one pass per minibatch)
    rollout_size = args.t5_prompts * args.t5_samples
    passes = {"forward_batch_size": rollout_size} if hasattr(ppo.PPOConfig(), "forward_batch_size") else {}
    config = ppo.PPOConfig(
        **passes,
        prompts_per_step=args.t5_prompts, samples_per_prompt=args.t5_samples, minibatch_size=args.t5_minibatch,
        ppo_epochs=args.epochs, max_new_tokens=args.t5_new_tokens, max_input_length=args.t5_prompt_length + 8,
        top_k=20, temperature=0.7, kl_coef=0.3, whiten_rewards=True, learning_rate=args.learning_rate,
        warmup_steps=0,
    )  # fmt: skip
    policy_dir = str(root / "t5")
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    spec = [{"type": "preference", "model": str(root / "t5_reward"), "mean": 0.0, "std": 1.0, "device": "cpu",
             "batch_size": 64, "max_length": 1024}]  # fmt: skip
    reward_functions = rewards.build_reward_functions(spec, tokenizer)
    policy = ppo.load_policy_model(policy_dir, encoder_decoder=True)
    reference = ppo.load_policy_model(policy_dir, encoder_decoder=True).eval().requires_grad_(False)
    value_backbone, value_head = ppo.load_value_model(policy_dir, seed=config.seed)
    model = ppo.PolicyAndValue(policy, value_backbone, value_head, encoder_decoder=True)
    accelerator = training.build_accelerator(mixed_precision="no")
    if hasattr(ppo, "ppo_optimizer"):
        optimizer = ppo.ppo_optimizer(model, config)
    else:  # the baseline's train_ppo: Adam over every parameter
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=config.adam_eps)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10**6)
    engine = ppo.PPOEngine(accelerator, model, reference, tokenizer, reward_functions, config, encoder_decoder=True,
                           optimizer=optimizer, scheduler=scheduler)  # fmt: skip
    prompts = json.loads((root / "t5_prompts.json").read_text())
    prompt_token_ids = ppo.encode_policy_prompts(tokenizer, prompts, True, config.max_input_length)
    updates = [0]

    def update() -> tuple[float, int]:
        torch.manual_seed(1000 + updates[0])
        updates[0] += 1
        start = time.perf_counter()
        rollout, _ = engine.rollout(prompt_token_ids, prompts, config.kl_coef)
        engine.ppo_epochs(rollout)
        return time.perf_counter() - start, int(rollout.response_mask.sum())

    print(f"{READY} {json.dumps({'prompt_tokens': sum(map(len, prompt_token_ids))})}", flush=True)
    for line in sys.stdin:
        results = [update() for _ in range(int(line))]
        answer = {"seconds": [s for s, _ in results], "response_tokens": [n for _, n in results]}
        print(f"{TIMES} {json.dumps(answer)}", flush=True)


class EngineRunner:
    """Drives one engine worker (a feedbackflow source tree) over its stdin / stdout."""

    def __init__(self, root: Path, args: argparse.Namespace, source: Path, name: str):
        self.log_path = root / f"engine_worker_{name}.log"
        self.log = self.log_path.open("w")
        forwarded = ["--epochs", "--learning-rate", "--threads", "--t5-prompts", "--t5-samples", "--t5-minibatch",
                     "--t5-new-tokens", "--t5-prompt-length"]  # fmt: skip
        command = [sys.executable, str(Path(__file__).resolve()), "--engine-worker", str(root), "--engine-src",
                   str(source)]  # fmt: skip
        for flag in forwarded:
            command += [flag, str(getattr(args, flag[2:].replace("-", "_")))]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, env=env)  # fmt: skip
        self.info = json.loads(self.expect(READY))
        self.response_tokens: list[int] = []

    expect = TRLRunner.expect
    close = TRLRunner.close

    def run(self, steps: int) -> list[float]:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        answer = json.loads(self.expect(TIMES))
        self.response_tokens += answer["response_tokens"]
        return answer["seconds"]


def baseline_source(root: Path, commit: str) -> Path:
    """The feedbackflow package of `commit` (git archive of src/), extracted under root."""
    repo = Path(__file__).resolve().parents[1]
    target = root / f"baseline-{commit}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "src"


def measure_t5(args: argparse.Namespace, root: Path) -> float:
    """Print the T5 setting and this engine's speed-up over the baseline commit's; return it."""
    described = build_t5_setup(root, args)
    current = Path(__file__).resolve().parents[1] / "src"
    runners = {"this checkout": EngineRunner(root, args, current, "current"),
               f"engine as of {args.baseline}": EngineRunner(root, args, baseline_source(root, args.baseline),
                                                             "baseline")}  # fmt: skip
    try:
        print(
            f"\nT5 policy, reference and value body: {described['parameters'] / 1e6:.2f} M parameters each (the tiny "
            f"qa-feedback T5, dropout 0.1); {args.t5_prompts} prompts of {args.t5_prompt_length} words x "
            f"{args.t5_samples} samples, top-k 20, up to {args.t5_new_tokens} new tokens, {args.epochs} epochs of "
            f"minibatches of {args.t5_minibatch}; the whole step, sampling included; {args.threads} threads"
        )
        for runner in runners.values():  # warm-up
            runner.run(1)
        for runner in runners.values():
            runner.response_tokens.clear()
        times: dict[str, list[float]] = {name: [] for name in runners}
        for r in range(args.repeats):
            for name in list(runners) if r % 2 == 0 else list(reversed(runners)):
                times[name] += runners[name].run(args.steps)
    finally:
        for runner in runners.values():
            runner.close()
    width = max(len(name) for name in times)
    print(f"{'':<{width}}  fastest s/step  median s/step  steps timed  response tokens/step (mean)")
    for name, seconds in times.items():
        tokens = statistics.mean(runners[name].response_tokens)
        print(f"{name:<{width}}  {min(seconds):>14.3f}  {statistics.median(seconds):>13.3f}  {len(seconds):>11}  "
              f"{tokens:>27.1f}")  # fmt: skip
    current_name, baseline_name = list(times)
    speed_up = min(times[baseline_name]) / min(times[current_name])
    print(f"speed-up of this engine over {args.baseline} on T5 (fastest step): {speed_up:.2f}x")
    return speed_up


# --- driver -------------------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> None:
    """Both settings in one temporary directory: GPT-2 against TRL, then T5 against the baseline commit."""
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        described = build_setup(root, args)  # the T5 setting reads the GPT-2 setting's reward model too
        if args.setting in ("gpt2", "both"):
            measure_gpt2(args, root, described)
        if args.setting in ("t5", "both"):
            measure_t5(args, root)


def measure_gpt2(args: argparse.Namespace, root: Path, described: dict) -> float:
    """Print the setting, both sides' seconds per update and the ratio TRL / ours; return the ratio."""
    trl_python = args.trl_python or os.environ.get("TRL_PYTHON") or sys.executable
    check_trl(trl_python)
    trl_runner = TRLRunner(root, args, trl_python)
    try:
        ours = OursRunner(root, args)
        info = trl_runner.info
        print(
            f"GPT-2 policy / reference / value backbone / reward model: {described['parameters'] / 1e6:.2f} M "
            f"parameters each (hidden {args.hidden_size}, {args.layers} layers, {args.heads} heads, vocabulary "
            f"{described['vocabulary']}); {args.batch} rollouts of {args.prompt_length} prompt + "
            f"{args.response_length} response tokens, {args.epochs} epochs of minibatches of {args.minibatch}; "
            f"torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}; "
            f"{torch.get_num_threads()} threads (TRL worker: {info['threads']}); optimisers: ours "
            f"{ours.optimizer_name}, TRL {info['optimizer']}{' (fused)' if info['fused'] else ''}"
        )
        ours_name, trl_name = "ours (PPOEngine)", f"TRL {info['trl']} PPOTrainer"
        runners = {ours_name: ours, trl_name: trl_runner}
        for runner in runners.values():  # warm-up
            runner.run(2)
        trl_runner.gc_seconds.clear()
        times: dict[str, list[float]] = {name: [] for name in runners}
        for r in range(args.repeats):
            for name in list(runners) if r % 2 == 0 else list(reversed(runners)):
                times[name] += runners[name].run(args.steps)
    finally:
        trl_runner.close()
    # for information: TRL's updates less the two gc.collect() calls its loop makes per step (the part of its time
    # that grows with the Python objects in the process, not with the models)
    trl_without_gc = "  of which not gc.collect()"
    times[trl_without_gc] = [t - g for t, g in zip(times[trl_name], trl_runner.gc_seconds, strict=True)]
    steps = {name: f"{runner.optimizer_steps_per_update:g}" for name, runner in runners.items()}
    width = max(len(name) for name in times)
    print(f"{'':<{width}}  fastest s/update  median s/update  updates timed  optimiser steps/update")
    for name, seconds in times.items():
        print(f"{name:<{width}}  {min(seconds):>16.3f}  {statistics.median(seconds):>15.3f}  {len(seconds):>13}  "
              f"{steps.get(name, ''):>22}")  # fmt: skip
    as_shipped = min(times[trl_name]) / min(times[ours_name])
    ratio = min(times[trl_without_gc]) / min(times[ours_name])
    print(f"ratio TRL as shipped / ours (fastest update): {as_shipped:.2f}x")
    print(f"ratio TRL without its gc.collect() calls / ours, on equal terms: {ratio:.2f}x (target >= {TARGET_RATIO}x)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl-python", default=None, help="python with trl==1.12.0 (default: $TRL_PYTHON, else this)")
    parser.add_argument("--batch", type=int, default=16, help="rollouts per update")
    parser.add_argument("--minibatch", type=int, default=4, help="samples per forward/backward (divides --batch)")
    parser.add_argument("--epochs", type=int, default=4, help="PPO epochs per update")
    parser.add_argument("--prompt-length", type=int, default=16, help="prompt tokens, bos included")
    parser.add_argument("--response-length", type=int, default=48)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=3e-6)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of alternating timing")
    parser.add_argument("--steps", type=int, default=3, help="updates per side per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--setting",
        choices=("gpt2", "t5", "both"),
        default="both",
        help="GPT-2 against TRL, T5 against this engine as of --baseline, or both (default)",
    )
    parser.add_argument("--baseline", default="13ac016", help="the commit whose engine the T5 setting compares with")
    parser.add_argument("--t5-prompts", type=int, default=16, help="T5: prompts per step (the tiny qa run's 16)")
    parser.add_argument("--t5-samples", type=int, default=4, help="T5: samples per prompt")
    parser.add_argument("--t5-minibatch", type=int, default=16, help="T5: samples per minibatch")
    parser.add_argument("--t5-new-tokens", type=int, default=64, help="T5: max new tokens")
    parser.add_argument("--t5-prompt-length", type=int, default=120, help="T5: words per prompt")
    parser.add_argument("--trl-worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal
    parser.add_argument("--engine-worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal
    parser.add_argument("--engine-src", type=Path, default=None, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.batch % args.minibatch or args.batch < 8:
        parser.error("--minibatch must divide --batch, and --batch must be at least 8 (TRL's reward whitening)")
    if args.trl_worker is not None:
        trl_worker(args.trl_worker, args)
    elif args.engine_worker is not None:
        engine_worker(args.engine_worker, args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
