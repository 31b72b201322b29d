"""PPO update time: our `PPOEngine` against TRL 1.12's PPO trainer (`trl.experimental.ppo.PPOTrainer`), generation
excluded, on the same tiny GPT-2 models and the same rollouts, on 2 CPU threads.

Models and data, built in a temporary directory (no download): a byte-level BPE tokenizer
(`tiny_models.train_tokenizer`, `--vocab-size`) and GPT-2 models from one `GPT2Config` (`--hidden-size`, `--layers`,
`--heads`); the rollouts are sampled once from the policy with TRL's sampling settings, restricted to whole-word
tokens (so that our text-based reward sees about as many tokens as TRL's id-based one).

What one "PPO update" is, on both sides: given a batch of already generated rollouts (`--batch` queries of
`--prompt-length` tokens, bos included, no padding, each with one response of exactly `--response-length` tokens,
no eos, so no side can save work by trimming), the time for: the no-grad scoring passes (reference log-probs, values,
the sequence reward model's score; ours also runs the policy for the old log-probs, which TRL reads off the
generation scores), KL-penalised per-token rewards, reward whitening, GAE and advantage whitening, then
`--epochs` PPO epochs; each walks the batch in minibatches of `--minibatch` samples, backpropagates the clipped
policy + value loss of each, accumulates the gradients and takes ONE optimiser step per epoch (TRL:
`num_mini_batches=1`, `per_device_train_batch_size=minibatch`, `gradient_accumulation_steps=batch/minibatch`, which
is the same schedule). Both sides use the same GPT-2 policy / reference (a copy of the policy), the same value
backbone (ours adds the paper's MLP head, TRL a Linear score head) and the same `GPT2ForSequenceClassification`
reward model; dropout is off in the config (TRL turns it off anyway), float32, no gradient checkpointing (TRL's
config turns it on by default) and no gradient clipping on either side; each side keeps its own optimiser
(ours: Adam as in the paper; TRL: its TrainingArguments default, fused AdamW).

How each side is timed, generation excluded:
- ours: `PPOEngine.rollout` (with `generate` replaced by a function returning the prepared responses) then
  `PPOEngine.ppo_epochs`: exactly the trainer's step minus sampling. Our reward comes from the `preference` reward
  function of `ppo_rewards`' registry (`fine_grained_rewards.SequenceReward`: decode, re-tokenize
  "<prompt> answer: <response>", a few tokens longer than TRL's query + response ids, score with the sequence RM,
  reward on the last token), as in a real run.
- TRL: `PPOTrainer.train()` itself, with the module's `batch_generation` replaced by a function returning the same
  prepared responses and their generation logits (what `generate(..., output_scores=True)` returned when the
  rollouts were made); one step = the time between consecutive `on_step_end` callbacks, i.e. everything TRL's loop
  does per step (data loading, scoring, rewards, GAE, epochs, metrics, and the two `gc.collect()` calls it makes
  per step). Those full collections cost about 0.2 s each in a process that has imported TRL, whatever the model
  size, so at this tiny scale they are about half of TRL's step: the time spent in them is measured too and TRL's
  time without them is printed, with its ratio, for information. The number of optimiser steps per update is
  printed for both sides as a check that they do the same schedule.

TRL runs in its own virtual environment (TRL must never be installed into .venv), in a worker subprocess started
with `--trl-python` that this script drives over a pipe, so the two sides can be timed alternately: after a warm-up,
`--repeats` rounds each time `--steps` updates of ours and of TRL, in alternating order; the fastest update of each
side counts (as timeit does, this rejects the slowdowns caused by other processes on the machine; while other
processes keep both cores busy, two-thread updates can get many times slower and a run much longer than its usual
minute). Printed: the setting, each side's fastest and median seconds per update, and the ratio TRL / ours
(target >= 1.5).

Set-up of the TRL environment (once; torch from the same CPU wheel as the Makefile installs, no CUDA wheels):

    python3 -m venv /work/trl_bench_venv
    /work/trl_bench_venv/bin/pip install --upgrade pip
    /work/trl_bench_venv/bin/pip install torch==2.13.0
    /work/trl_bench_venv/bin/pip install trl==1.12.0 transformers==5.23.0

Run (from the repository root):

    .venv/bin/python benchmarks/ppo_step.py --trl-python /work/trl_bench_venv/bin/python \
        [--batch 16] [--minibatch 4] [--response-length 48] [--repeats 5] [--steps 3]

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
        )
    responses = output.sequences[:, args.prompt_length :]
    assert responses.shape == (args.batch, args.response_length)
    assert not torch.isin(responses, torch.tensor(suppressed)).any()
    torch.save({"prompts": prompts, "queries": queries, "responses": responses,
                "logits": torch.stack(output.scores, 1)}, root / "rollout.pt")  # fmt: skip
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
            load_policy_model,
            load_value_model,
        )
        from feedbackflow.rl.rewards import build_reward_functions

        data = torch.load(root / "rollout.pt")
        self.config = PPOConfig(
            prompts_per_step=args.batch,
            samples_per_prompt=1,
            minibatch_size=args.minibatch,
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
        optimizer = torch.optim.Adam(model.parameters(), lr=self.config.learning_rate, eps=self.config.adam_eps)
        model, optimizer = accelerator.prepare(model, optimizer)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10**6)
        self.engine = PPOEngine(accelerator, model, reference, tokenizer, reward_functions, self.config,
                                encoder_decoder=False, optimizer=optimizer, scheduler=scheduler)  # fmt: skip
        self.prompts = data["prompts"]
        self.prompt_token_ids = encode_policy_prompts(tokenizer, self.prompts, False, args.prompt_length)
        queries, responses = data["queries"], data["responses"]
        if self.prompt_token_ids != queries.tolist():
            raise RuntimeError("our prompt encoding differs from the prepared queries")

        def prepared_responses(prompt_ids, prompt_mask, sample, n):
            assert n == 1 and torch.equal(prompt_ids, queries) and bool(prompt_mask.all())
            return responses, torch.ones_like(responses, dtype=torch.bool)

        self.engine.generate = prepared_responses
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


# --- driver -------------------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> float:
    """Print the setting, both sides' seconds per update and the ratio TRL / ours; return the ratio."""
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    trl_python = args.trl_python or os.environ.get("TRL_PYTHON") or sys.executable
    check_trl(trl_python)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        described = build_setup(root, args)
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
                f"{torch.get_num_threads()} threads (TRL worker: {info['threads']}); optimisers: ours Adam, "
                f"TRL {info['optimizer']}{' (fused)' if info['fused'] else ''}"
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
    ratio = min(times[trl_name]) / min(times[ours_name])
    print(f"ratio TRL / ours (fastest update): {ratio:.2f}x (target >= {TARGET_RATIO}x)")
    print(f"for information, TRL without its gc.collect() calls / ours: "
          f"{min(times[trl_without_gc]) / min(times[ours_name]):.2f}x")  # fmt: skip
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
    parser.add_argument("--trl-worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.batch % args.minibatch or args.batch < 8:
        parser.error("--minibatch must divide --batch, and --batch must be at least 8 (TRL's reward whitening)")
    if args.trl_worker is not None:
        trl_worker(args.trl_worker, args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
