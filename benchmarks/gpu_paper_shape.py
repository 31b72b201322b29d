"""Every GPU stage of the paper configs at the papers' real model sizes and shapes, in one process, with measured
peak memory and time (issues 20 and 21). No model hub: each model is built with random weights from its
architecture config, written out in `ARCHITECTURES` below; real weights would change the text, not the shapes, the
memory or the time.

Models (`ARCHITECTURES`): t5-large (qa policy), t5-base (qa value), longformer-base-4096 (the four qa reward models),
gpt2-large (detox policy and value), gpt2-xl (detox perplexity), LLaMA-7B (RRHF policy, DSP reward model, the
InstructRM scorer's layout), GPT-J-6B as Dahoas/gptj-rm-static (RRHF scorer: GPT-J body + bias-free value head,
eos pooling, the layout `import_reward_model` writes), OPT-1.3B (ILF OPT-RM) and OPT-2.7B (ILF policy).
Tokenizers: one byte-level BPE (`tiny_models.train_tokenizer`, as the tiny world builds its own) trained in seconds
on the texts of `--data-dir` (../shared/data when there) plus a pseudo-word corpus, padded with unused added tokens to
each model's real vocabulary size (32,128 / 50,265 / 50,257 / 32,000 / 50,400 / 50,272), so embedding and softmax
cost what they cost at paper scale.

Stages (`GROUPS`: issue 20's and issue 21's): each one calls the project's own stage function in this process, the
`main` that `python -m feedbackflow <stage>` (and so the Snakemake rule) calls, with the paper config's hyperparameters
(config/experiments/*.yaml) at one process's share of the paper's shapes, on small Parquet inputs written here in
the project's formats (core.formats), a few steps each. `--tiny` shrinks every architecture to toy width and
depth (the same classes) and every shape to small values, so the whole script runs on the CPU in about a minute: that
is its CI test (tests/test_gpu_paper_shape.py). `--toy-models` keeps the paper shapes with toy architectures: a CPU
check of shapes and data before device time is spent.

Measured per stage: peak GPU memory (torch.cuda.max_memory_allocated after reset_peak_memory_stats; on the CPU
"n/a (cpu)" and the process's peak RSS so far), seconds per optimiser step for training stages (the median gap between
consecutive optimiser steps, read by a global optimiser-step hook, so loading and saving are not counted), else the
stage's wall seconds, and tokens or samples per second. For the PPO steps, the share of the step spent in generation,
the scoring passes (old log-probs, values, reference), the rewards and the PPO epochs: PPOEngine's methods are wrapped
with timers here (synchronising CUDA around each), nothing in src/ changes. rrhf_sampling / rrhf_greedy also time
transformers' own `generate` on the same model, prompts and batches (`generate_reference`) and give the ratio.

Memory of a full fine-tuning step of LLaMA-7B with Adam under bf16 mixed precision: 6.74e9 parameters x (4 bytes
fp32 weights + 4 grads + 8 Adam moments) = 108 GB (about 100 GiB) of states before activations and the bf16 autocast
copies; the H200 has about 139 GiB. The RRHF and DSP training rows try the full 7B first and, on CUDA out-of-memory,
fall back to `llama-5b` (LLaMA-7B's width at 24 layers: 5.2e9 parameters, 83 GB of states), the largest
LLaMA-architecture model kept here below it; the table's notes say which one ran.

Run (see benchmarks/README.md for the device machine):

    .venv/bin/python benchmarks/gpu_paper_shape.py --out DIR [--tiny | --toy-models] [--stages a,b] [--budget-s 420]
        [--scratch-dir /dev/shm] [--data-dir DIR] [--work-dir DIR]

Writes DIR/gpu_fgrlhf.md, DIR/gpu_rrhf_dsp_ilf.md, DIR/table.md and DIR/results.json; exits 1 when any stage
failed (its row carries the error; results.json its traceback), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

# --- architectures --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One model's architecture: the real numbers of its hub config (family as in tiny_models)."""

    family: str  # t5 | longformer | gpt2 | llama | gptj | opt
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    max_position_embeddings: int
    attention_window: int = 512  # longformer only
    rotary_dim: int = 64  # gptj only

    def parameters(self) -> float:
        """Approximate parameter count (embeddings + blocks), for the notes."""
        h, f, n, v = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        mlp = 3 * h * f if self.family == "llama" else 2 * h * f
        attention = {"t5": 12, "longformer": 7}.get(self.family, 4) * h * h  # t5: decoder + cross; longformer: global
        blocks = n * (attention + (2 if self.family == "t5" else 1) * mlp)
        heads = 1 if self.family in ("t5", "gpt2", "opt", "longformer") else 2  # tied or untied output embeddings
        positions = self.max_position_embeddings * h if self.family in ("gpt2", "opt", "longformer") else 0
        return blocks + heads * v * h + positions


ARCHITECTURES = {
    "t5-large": Architecture("t5", 1024, 4096, 24, 16, 32128, 2048),
    "t5-base": Architecture("t5", 768, 3072, 12, 12, 32128, 2048),
    "longformer-base-4096": Architecture("longformer", 768, 3072, 12, 12, 50265, 4096, attention_window=512),
    "gpt2-large": Architecture("gpt2", 1280, 5120, 36, 20, 50257, 1024),
    "gpt2-xl": Architecture("gpt2", 1600, 6400, 48, 25, 50257, 1024),
    "gpt2-medium": Architecture("gpt2", 1024, 4096, 24, 16, 50257, 1024),
    "llama-7b": Architecture("llama", 4096, 11008, 32, 32, 32000, 2048),
    "llama-5b": Architecture("llama", 4096, 11008, 24, 32, 32000, 2048),  # fallback for full fine-tuning
    "gptj-6b": Architecture("gptj", 4096, 16384, 28, 16, 50400, 2048, rotary_dim=64),
    "opt-1.3b": Architecture("opt", 2048, 8192, 24, 32, 50272, 2048),
    "opt-2.7b": Architecture("opt", 2560, 10240, 32, 32, 50272, 2048),
}


def tiny_architecture(arch: Architecture) -> Architecture:
    """The same family at toy width and depth (vocabulary: the tokenizer's own)."""
    return dataclasses.replace(
        arch, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=0,
        attention_window=16, rotary_dim=4,
    )  # fmt: skip


# --- shapes ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shapes:
    """One process's share of the paper configs' shapes (per GPU: the paper ran qa/detox PPO on 2 GPUs)."""

    steps: int = 3  # optimiser steps of each training stage (the first is warm-up)
    sft_batch: int = 4
    sft_micro: int = 2
    sft_input: int = 1024
    sft_target: int = 200
    rm_max_length: int = 2048
    rm_token_batch: int = 12  # 24 over 2 GPUs
    rm_sequence_micro: int = 6
    rm_pairs: int = 24
    ppo_prompts: int = 8
    ppo_samples: int = 4
    ppo_input: int = 1024
    ppo_new_tokens: int = 200
    ppo_epochs: int = 4
    eval_prompts: int = 16
    detox_prompts: int = 16
    detox_prompt_words: int = 20
    detox_new_tokens: int = 20
    detox_samples: int = 25
    rrhf_prompts: int = 16
    rrhf_prompt_tokens: int = 256
    rrhf_new_tokens: int = 128
    rrhf_beams: int = 4
    rrhf_responses: int = 6
    rrhf_max_length: int = 192
    rrhf_micro: int = 8
    dsp_max_length: int = 512
    dsp_micro: int = 8
    dsp_eval_texts: int = 2048
    ilf_posts: int = 8
    ilf_post_words: int = 400
    ilf_best_of: int = 64
    ilf_new_tokens: int = 48
    ilf_refinements: int = 5
    opt_rm_micro: int = 4
    ilf_sft_micro: int = 4
    ilf_target: int = 64


TINY_SHAPES = Shapes(
    ppo_epochs=1, steps=2, sft_batch=2, sft_micro=1, sft_input=48, sft_target=8, rm_max_length=96, rm_token_batch=2,
    rm_sequence_micro=2, rm_pairs=4, ppo_prompts=2, ppo_samples=2, ppo_input=48, ppo_new_tokens=6, eval_prompts=2,
    detox_prompts=2, detox_prompt_words=6, detox_new_tokens=4, detox_samples=3, rrhf_prompts=2, rrhf_prompt_tokens=24,
    rrhf_new_tokens=4, rrhf_beams=2, rrhf_responses=3, rrhf_max_length=48, rrhf_micro=1, dsp_max_length=48,
    dsp_micro=2, dsp_eval_texts=8, ilf_posts=2, ilf_post_words=30, ilf_best_of=3, ilf_new_tokens=4,
    ilf_refinements=2, opt_rm_micro=2, ilf_sft_micro=1, ilf_target=8,
)  # fmt: skip


# --- measuring ------------------------------------------------------------------------------------------------------


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepClock:
    """Times of every optimiser step (a global post-step hook of torch.optim), to read seconds per step."""

    def __init__(self):
        self.times: list[float] = []
        self._handle = None

    def __enter__(self):
        def hook(optimizer, args, kwargs):
            synchronize()
            self.times.append(time.perf_counter())

        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def seconds_per_step(self) -> float | None:
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return statistics.median(gaps) if gaps else None


class MethodTimers:
    """Wall seconds inside chosen methods of a class (CUDA synchronised on entry and exit), restored on exit."""

    def __init__(self, cls: type, names: dict[str, str]):
        self.cls, self.names, self.seconds = cls, names, {label: 0.0 for label in names.values()}
        self._originals: dict[str, Callable] = {}
        self._depth = 0

    def __enter__(self):
        for method, label in self.names.items():
            original = getattr(self.cls, method)
            self._originals[method] = original

            def timed(*args, _original=original, _label=label, **kwargs):
                outer = self._depth == 0  # a timed method called from another timed one counts once, outside
                self._depth += 1
                synchronize()
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    synchronize()
                    self._depth -= 1
                    if outer:
                        self.seconds[_label] += time.perf_counter() - start

            setattr(self.cls, method, timed)
        return self

    def __exit__(self, *exc):
        for method, original in self._originals.items():
            setattr(self.cls, method, original)


def peak_memory() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return f"n/a (cpu; peak RSS {rss_kib / 2**20:.2f} GiB)"


def free_memory() -> None:
    """Between stages: collect, empty the CUDA cache, reset the peak, and forget accelerate's process-wide state (each
    stage builds its own Accelerator, e.g. with another mixed precision, as its own process would)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --- running a stage through its CLI function, in this process -------------------------------------------------------


def run_cli(stage: str, argv: list[str]) -> None:
    """`python -m feedbackflow <stage> argv...` without a new process: the stage module's configure + main."""
    from feedbackflow.cli import stage_entry

    _, configure, run = stage_entry(stage)
    parser = argparse.ArgumentParser(prog=stage)
    configure(parser)
    run(parser.parse_args([str(a) for a in argv]))


def hparams(values: dict) -> str:
    return json.dumps(values, sort_keys=True)


def paper_section(paper: str, *keys: str) -> dict:
    """A section of config/experiments/<paper>.yaml (the paper's hyperparameters)."""
    section = yaml.safe_load((REPO_ROOT / "config" / "experiments" / f"{paper}.yaml").read_text())
    for key in keys:
        section = section[key]
    return dict(section)


# --- data -------------------------------------------------------------------------------------------------------------

SYLLABLES_A, SYLLABLES_B = "bcdfghklmnprstvz", "aeiou"


def pseudo_words(rng: random.Random, n: int) -> str:
    words = ("".join(rng.choice(SYLLABLES_A) + rng.choice(SYLLABLES_B) for _ in range(rng.randint(1, 3)))
             for _ in range(n))  # fmt: skip
    return " ".join(words)


def corpus_file(root: Path, data_dir: Path | None, tiny: bool) -> Path:
    """Texts to train the tokenizer on: pseudo-word lines (the harness's inputs are made of them) plus up to a few MB
    of the real texts under `data_dir` (json/jsonl/txt files), when it exists."""
    rng = random.Random(0)
    lines = [pseudo_words(rng, rng.randint(5, 30)) for _ in range(500 if tiny else 20000)]
    # OPT-RM and InstructRM read P(" Yes") / P(" No"): each must be one token, as in the real vocabularies
    lines += [f"Answer: {answer}. Yes or No? {answer}" for answer in ("Yes", "No") for _ in range(1000)]
    budget = 200_000 if tiny else 4_000_000
    if data_dir is not None and data_dir.is_dir():
        for path in sorted(data_dir.rglob("*")):
            if budget <= 0:
                break
            if path.suffix in (".json", ".jsonl", ".txt", ".md") and path.is_file():
                with path.open(encoding="utf-8", errors="replace") as handle:
                    text = handle.read(budget)  # the head of each file: some are hundreds of MB
                budget -= len(text)
                lines.extend(line for line in text.splitlines() if line.strip())
    out = root / "corpus.txt"
    out.write_text("\n".join(lines) + "\n")
    return out


class World:
    """The tokenizer, the models (built once, on first use) and the input files of one run."""

    def __init__(
        self, root: Path, tiny: bool, data_dir: Path | None, toy_models: bool = False, scratch: Path | None = None
    ):
        from feedbackflow.tiny.models import train_tokenizer

        self.root, self.tiny = root, tiny or toy_models  # tiny: toy architectures (float32, own vocabulary)
        self.shapes = TINY_SHAPES if tiny else Shapes()
        self.tiny_shapes = tiny
        self.scratch = scratch or root  # the stages' outputs (out/, work/), deleted after each stage
        self.rng = random.Random(0)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        corpus = corpus_file(root, data_dir, tiny)
        self._base_tokenizer = train_tokenizer([corpus], vocab_size=400 if tiny else 30000, model_max_length=4096)
        self._models: dict[str, Path] = {}
        self.build_seconds = 0.0  # spent building models; run_stage takes it off the stage's wall time

    def text(self, n_words: int) -> str:
        return pseudo_words(self.rng, n_words)

    def tokenizer(self, arch: Architecture, architecture: str):
        """A copy of the trained tokenizer with the architecture's template, padded to the real vocabulary size."""
        import copy

        from feedbackflow.tiny.models import add_special_token_template

        tokenizer = add_special_token_template(copy.deepcopy(self._base_tokenizer), architecture)
        if not self.tiny and len(tokenizer) < arch.vocab_size:
            tokenizer.add_tokens([f"<unused_{i}>" for i in range(arch.vocab_size - len(tokenizer))])
        return tokenizer

    def model(self, name: str, kind: str = "lm") -> str:
        """The directory of model `name` (ARCHITECTURES) as `kind`: lm, value (t5 only: the same), token (Longformer
        token classifier, 2 labels), sequence (Longformer sequence classifier), rm_eos (GPT-J reward model, eos
        pooling), built on first use."""
        key = f"{name}.{kind}"
        if key not in self._models:
            out = self.root / "models" / key
            start = time.perf_counter()
            free_memory()
            self._build(name, kind, out)
            free_memory()  # also resets the peak: every stage builds its models before it runs
            self.build_seconds += time.perf_counter() - start
            self._models[key] = out
        return str(self._models[key])

    def build(self, name: str, kind: str):
        """(model, tokenizer) of `name` as `kind` on `self.device`, in bfloat16 (float32 at --tiny), unsaved."""
        from transformers import GPTJConfig, GPTJForCausalLM

        from feedbackflow.tiny import models as tm

        arch = ARCHITECTURES[name]
        if self.tiny:
            arch = tiny_architecture(arch)
        architecture = {"t5": "seq2seq", "longformer": "longformer"}.get(arch.family, "causal")
        tokenizer = self.tokenizer(ARCHITECTURES[name], architecture)
        config = tm.TinyModelConfig(
            vocab_size=max(len(tokenizer), 300), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
            num_hidden_layers=arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
            max_position_embeddings=arch.max_position_embeddings, attention_window=arch.attention_window,
        )  # fmt: skip
        # built on the GPU when there is one (random init of billions of parameters on 16 CPU cores is slow)
        with torch.device(self.device):
            if arch.family == "t5":
                model = tm.build_seq2seq_lm(tokenizer, config)
            elif arch.family == "longformer":
                model = (tm.build_token_classifier(tokenizer, config, 2) if kind == "token"
                         else tm.build_sequence_classifier(tokenizer, config, 1))  # fmt: skip
            elif arch.family == "gptj":  # built here: tiny_models' GPT-J derives rotary_dim from the width
                head_dim = arch.hidden_size // arch.num_attention_heads
                torch.manual_seed(config.seed)
                model = GPTJForCausalLM(GPTJConfig(
                    vocab_size=len(tokenizer), n_positions=arch.max_position_embeddings, n_embd=arch.hidden_size,
                    n_layer=arch.num_hidden_layers, n_head=arch.num_attention_heads,
                    rotary_dim=min(arch.rotary_dim, head_dim), n_inner=arch.intermediate_size,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                ))  # fmt: skip
            else:
                model = tm.CAUSAL_FAMILY_BUILDERS[arch.family](tokenizer, config)
        return (model.to(torch.bfloat16) if not self.tiny else model.float()), tokenizer

    def _build(self, name: str, kind: str, out: Path) -> None:
        model, tokenizer = self.build(name, kind)
        if kind == "rm_eos":  # Dahoas/gptj-rm-static's layout, as import_reward_model writes it
            from feedbackflow.models.reward_model import RewardModel, save_reward_model

            tokenizer.bos_token = None  # the original never adds bos (import_reward_model)
            reward_model = RewardModel(model, pooling="eos").to(model.dtype)
            save_reward_model(reward_model, tokenizer, out, extra_metadata={"harness": "gpu_paper_shape"})
        else:
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
        del model

    def path(self, name: str) -> Path:
        return self.root / "data" / name


def write(rows: list[dict], path: Path, schema) -> str:
    from feedbackflow.core.formats import write_rows

    path.parent.mkdir(parents=True, exist_ok=True)
    write_rows(rows, path, schema)
    return str(path)


def qa_prompt_rows(world: World, n: int, passage_words: int) -> list[dict]:
    """QA_PROMPTS rows whose prompt reaches the paper's input length (`passage_words` pseudo-words of passage)."""
    rows = []
    for i in range(n):
        question, title, content = world.text(10), world.text(3), world.text(passage_words)
        rows.append({
            "prompt_id": f"qa{i}", "prompt": f"question: {question} context: wikipage: {title} text: {content}",
            "question": question, "references": [world.text(max(4, world.shapes.sft_target))],
            "passages": [{"title": title, "content": content}], "source": "gpu_paper_shape", "record": i,
        })  # fmt: skip
    return rows


def stage_seconds(clock: StepClock) -> float | None:
    return clock.seconds_per_step()


@dataclasses.dataclass
class StageResult:
    seconds_per_step: float | None = None  # None: the stage's wall time counts
    items: float = 0.0  # samples (or prompts, texts) per step, or in the whole stage when not a training stage
    item_unit: str = "samples"
    tokens: float = 0.0  # tokens per step (or in the whole stage)
    shares: dict[str, float] | None = None
    notes: str = ""
    per: str = "step"  # what seconds_per_step is the time of
    extra: dict = dataclasses.field(default_factory=dict)  # further numbers for results.json


# --- Fine-Grained RLHF (issue 20) -------------------------------------------------------------------------------------


def qa_sft(world: World) -> StageResult:
    """train-sft of t5-large: batch 4 (micro 2), input 1,024, target 200, bf16 (finegrained_qa.yaml qa_feedback.sft)."""
    from feedbackflow.core.formats import QA_PROMPTS

    s = world.shapes
    train = write(qa_prompt_rows(world, s.sft_batch * (s.steps + 1), s.sft_input), world.path("qa/sft_train.parquet"),
                  QA_PROMPTS)  # fmt: skip
    dev = write(qa_prompt_rows(world, 1, s.sft_input), world.path("qa/sft_dev.parquet"), QA_PROMPTS)
    values = {**paper_section("finegrained_qa", "qa_feedback", "sft"), "num_epochs": 1, "max_steps": s.steps,
              "checkpoint_every": 10_000, "max_eval_examples": 1, "eval_batch_size": 1, "batch_size": s.sft_batch,
              "micro_batch_size": s.sft_micro, "max_input_length": s.sft_input, "max_target_length": s.sft_target,
              "max_new_tokens": s.sft_target}  # fmt: skip
    model = world.model("t5-large")
    with StepClock() as clock:
        run_cli(
            "train-sft",
            [
                "--train",
                train,
                "--dev",
                dev,
                "--model",
                model,
                "--output",
                world.scratch / "out/qa_sft",
                "--work-dir",
                world.scratch / "work/qa_sft",
                "--hparams",
                hparams(values),
            ],
        )
    return StageResult(clock.seconds_per_step(), s.sft_batch, "samples", s.sft_batch * (s.sft_input + s.sft_target),
                       notes=f"{s.steps} steps; eval of 1 dev prompt at the end not timed")  # fmt: skip


def token_rm_rows(world: World, n: int) -> list[dict]:
    s = world.shapes
    n_segments = 8
    rows = []
    for i in range(n):
        segments = [world.text(max(3, s.rm_max_length // (4 * n_segments))) for _ in range(n_segments)]
        rows.append({"prefix": world.text(s.rm_max_length), "segments": segments,
                     "labels": [i % 2 if j % 3 else -100 for j in range(n_segments)],
                     "source": "gpu_paper_shape", "record": i})  # fmt: skip
    return rows


def pair_rows(world: World, n: int, words: int) -> list[dict]:
    return [{"text": [world.text(words), world.text(words)], "score": [1.0, 0.0], "source": "gpu_paper_shape",
             "record": i} for i in range(n)]  # fmt: skip


def fg_reward_model(world: World, name: str) -> StageResult:
    """train-fg-reward-model of longformer-base-4096 at 2,048 tokens: R1 (token kind; R2 has the same shape) or R3
    (sequence kind; the holistic preference RM has the same shape), one GPU's share of the paper's batch of 24."""
    from feedbackflow.core.formats import PREFERENCE_LISTS, SEGMENT_LABELS

    s = world.shapes
    section = paper_section("finegrained_qa", "qa_feedback", "reward_models", name)
    if section["kind"] == "token":
        batch = micro = s.rm_token_batch
        train = write(token_rm_rows(world, batch * s.steps), world.path(f"qa/{name}.parquet"), SEGMENT_LABELS)
    else:
        batch, micro = s.rm_token_batch, s.rm_sequence_micro
        train = write(pair_rows(world, batch * s.steps, s.rm_max_length), world.path(f"qa/{name}.parquet"),
                      PREFERENCE_LISTS)  # fmt: skip
    values = {**section, "num_epochs": 1, "max_steps": s.steps, "checkpoint_every": 10_000, "batch_size": batch,
              "micro_batch_size": micro, "max_length": s.rm_max_length}  # fmt: skip
    model = world.model("longformer-base-4096", section["kind"])
    with StepClock() as clock:
        run_cli(
            "train-fg-reward-model",
            [
                "--train",
                train,
                "--model",
                model,
                "--output",
                world.scratch / f"out/{name}",
                "--work-dir",
                world.scratch / f"work/{name}",
                "--hparams",
                hparams(values),
            ],
        )
    sequences = batch * (1 if section["kind"] == "token" else 2)
    return StageResult(clock.seconds_per_step(), batch, "examples", sequences * s.rm_max_length,
                       notes=f"{section['kind']} kind, micro batch {micro}; mixed precision: "
                             f"{values.get('mixed_precision', 'none (the config sets none)')}")  # fmt: skip


def qa_rm_token(world: World) -> StageResult:
    return fg_reward_model(world, "relevance")


def qa_rm_sequence(world: World) -> StageResult:
    return fg_reward_model(world, "completeness")


def qa_rm_mean_std(world: World) -> StageResult:
    """reward-mean-std of the sequence RM over its training pairs at 2,048 tokens, bf16 (inference_dtype)."""
    s = world.shapes
    model = world.model("longformer-base-4096", "sequence")  # the same shape as the trained one (deleted by now)
    pairs = str(world.path("qa/completeness.parquet"))
    if not Path(pairs).is_file():
        from feedbackflow.core.formats import PREFERENCE_LISTS

        pairs = write(pair_rows(world, s.rm_token_batch * s.steps, s.rm_max_length), Path(pairs), PREFERENCE_LISTS)
    n_texts = 2 * s.rm_token_batch * s.steps
    run_cli("reward-mean-std", ["--model", model, "--pairs", pairs, "--output", world.scratch / "out/mean_std.json",
                                "--max-length", s.rm_max_length, "--dtype", "bfloat16"])  # fmt: skip
    return StageResult(None, n_texts, "texts", n_texts * s.rm_max_length, notes="batch 32")


PPO_PARTS = {"generate_with_logprobs": "generation", "score_rollout": "scoring passes", "rewards_of": "rewards",
             "ppo_epochs": "optimisation"}  # fmt: skip


def run_ppo(world: World, name: str, prompts: str, policy: str, value: str, spec: list[dict], values: dict,
            tokens_per_sample: int) -> StageResult:  # fmt: skip
    """One PPO step of train-ppo (rollout + PPO epochs), its time split by PPOEngine method."""
    from feedbackflow.rl.ppo import PPOEngine

    with MethodTimers(PPOEngine, {"rollout": "step", "ppo_epochs": "step"}) as step:
        with MethodTimers(PPOEngine, PPO_PARTS) as parts:
            run_cli("train-ppo", ["--prompts", prompts, "--policy", policy, "--value-model", value, "--reward-spec",
                                  json.dumps(spec), "--output", world.scratch / f"out/{name}", "--value-output",
                                  world.scratch / f"out/{name}.value", "--work-dir", world.scratch / f"work/{name}",
                                  "--hparams", hparams(values)])  # fmt: skip
    total = step.seconds["step"]
    shares = {label: seconds / total for label, seconds in parts.seconds.items()} if total else None
    samples = values["prompts_per_step"] * values["samples_per_prompt"]
    return StageResult(total, samples, "samples", samples * tokens_per_sample, shares,
                       notes=f"{values['prompts_per_step']} prompts x {values['samples_per_prompt']} samples, "
                             f"{values['max_new_tokens']} new tokens, {values['ppo_epochs']} epochs")  # fmt: skip


def qa_ppo(world: World, variant: str) -> StageResult:
    """One qa PPO step of finegrained_qa.yaml at one GPU's share: 8 prompts x 4 samples, input 1,024, 200 new tokens,
    top-k 20, 4 PPO epochs; t5-large policy, t5-base value; R1+R2+R3 (fine_grained) or the preference RM (holistic),
    Longformer at 2,048 tokens, bf16 frozen models (inference_dtype)."""
    from feedbackflow.core.formats import QA_PROMPTS

    s = world.shapes
    prompts = write(qa_prompt_rows(world, s.ppo_prompts, s.ppo_input), world.path("qa/ppo.parquet"), QA_PROMPTS)
    qa = paper_section("finegrained_qa", "qa_feedback")
    values = {**qa["ppo"]["common"], **qa["ppo"][variant], "prompts_per_step": s.ppo_prompts,
              "samples_per_prompt": s.ppo_samples, "max_input_length": s.ppo_input, "max_new_tokens": s.ppo_new_tokens,
              "ppo_epochs": s.ppo_epochs, "max_steps": 1, "eval_every": 10_000, "save_every": 10_000}  # fmt: skip
    common = {"max_length": s.rm_max_length, "dtype": "bfloat16"}
    if variant == "holistic":
        spec = [{"type": "preference", "model": world.model("longformer-base-4096", "sequence"), "mean": 0.0,
                 "std": 1.0, **qa["rewards"]["preference"], **common}]  # fmt: skip
    else:
        token_rm = world.model("longformer-base-4096", "token")
        spec = [{"type": "qa_relevance", "name": "relevance", "model": token_rm, **qa["rewards"]["relevance"],
                 **common},
                {"type": "qa_factuality", "name": "factuality", "model": token_rm, **qa["rewards"]["factuality"],
                 **common},
                {"type": "qa_completeness", "name": "completeness", "model": world.model("longformer-base-4096",
                 "sequence"), "mean": 0.0, "std": 1.0, **qa["rewards"]["completeness"], **common}]  # fmt: skip
    return run_ppo(world, f"qa_ppo_{variant}", prompts, world.model("t5-large"), world.model("t5-base"), spec, values,
                   s.ppo_input + s.ppo_new_tokens)  # fmt: skip


def qa_ppo_fine_grained(world: World) -> StageResult:
    return qa_ppo(world, "fine_grained")


def qa_ppo_holistic(world: World) -> StageResult:
    return qa_ppo(world, "holistic")


def qa_eval_greedy(world: World) -> StageResult:
    """evaluate-qa: greedy generation (batch 16, input 1,024, 200 new tokens) and the four RMs' scores, bf16."""
    from feedbackflow.core.formats import QA_PROMPTS

    s = world.shapes
    prompts = write(qa_prompt_rows(world, s.eval_prompts, s.ppo_input), world.path("qa/test.parquet"), QA_PROMPTS)
    mean_std = world.root / "data/qa/mean_std.json"
    mean_std.write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    token_rm, sequence_rm = world.model("longformer-base-4096", "token"), world.model("longformer-base-4096",
                                                                                         "sequence")  # fmt: skip
    run_cli("evaluate-qa", [
        "--prompts", prompts, "--policy", world.model("t5-large"), "--relevance-model", token_rm,
        "--factuality-model", token_rm, "--completeness-model", sequence_rm, "--completeness-mean-std", mean_std,
        "--preference-model", sequence_rm, "--preference-mean-std", mean_std, "--responses",
        world.scratch / "out/qa_eval.parquet", "--summary", world.scratch / "out/qa_eval.json", "--name", "bench",
        "--max-input-length", s.ppo_input, "--max-new-tokens", s.ppo_new_tokens, "--batch-size", s.eval_prompts,
        "--rm-max-length", s.rm_max_length, "--dtype", "bfloat16",
    ])  # fmt: skip
    return StageResult(None, s.eval_prompts, "prompts", s.eval_prompts * (s.ppo_input + s.ppo_new_tokens),
                       notes="generation + 4 reward models")  # fmt: skip


def detox_prompt_rows(world: World) -> list[dict]:
    s = world.shapes
    return [{"prompt_id": f"rtp{i}", "prompt": world.text(s.detox_prompt_words), "prompt_toxicity": 0.6,
             "challenging": True, "continuation": None, "source": "gpu_paper_shape", "record": i}
            for i in range(max(s.detox_prompts, s.ppo_prompts))]  # fmt: skip


def detox_ppo(world: World) -> StageResult:
    """One detox PPO step of finegrained_detox.yaml on gpt2-large (policy and value): 8 prompts x 4 samples, 20 new
    tokens, top-p 0.9, 4 epochs, bf16. Toxicity from the offline profanity_check scorer (the paper's Perspective API
    is remote; its latency is not a GPU cost)."""
    from feedbackflow.core.formats import DETOX_PROMPTS

    s = world.shapes
    prompts = write(detox_prompt_rows(world), world.path("detox/prompts.parquet"), DETOX_PROMPTS)
    detox = paper_section("finegrained_detox", "detox")
    values = {**detox["ppo"]["common"], **detox["ppo"]["holistic"], "prompts_per_step": s.ppo_prompts,
              "samples_per_prompt": s.ppo_samples, "max_new_tokens": s.detox_new_tokens, "max_steps": 1,
              "ppo_epochs": s.ppo_epochs,
              "eval_every": 10_000, "save_every": 10_000}  # fmt: skip
    spec = [{"type": "toxicity", "variant": "holistic", "scorer": {"backend": "profanity_check"},
             "cache": str(world.scratch / "work/toxicity.sqlite")}]  # fmt: skip
    policy = world.model("gpt2-large")
    return run_ppo(world, "detox_ppo", prompts, policy, policy, spec, values,
                   s.detox_prompt_words + s.detox_new_tokens)  # fmt: skip


def detox_sampling(world: World) -> StageResult:
    """sample-responses of gpt2-large: 25 samples per prompt, 20 new tokens, top-p 0.9, batch 16, bf16."""
    from feedbackflow.core.formats import PROMPTS

    s = world.shapes
    rows = [{k: row[k] for k in ("prompt_id", "prompt", "source", "record")} for row in detox_prompt_rows(world)]
    prompts = write(rows[: s.detox_prompts], world.path("detox/sampling_prompts.parquet"), PROMPTS)
    values = {**paper_section("finegrained_detox", "detox", "sampling"), "num_return_sequences": s.detox_samples,
              "max_new_tokens": s.detox_new_tokens}  # fmt: skip
    run_cli(
        "sample-responses",
        [
            "--prompts",
            prompts,
            "--model",
            world.model("gpt2-large"),
            "--output",
            world.scratch / "out/detox_samples.parquet",
            "--hparams",
            hparams(values),
        ],
    )
    n = s.detox_prompts * s.detox_samples
    return StageResult(None, n, "samples", n * s.detox_new_tokens,
                       notes=f"{s.detox_prompts} prompts x {s.detox_samples}; tokens = new tokens")  # fmt: skip


def detox_perplexity(world: World) -> StageResult:
    """evaluate-detox: gpt2-xl perplexity of 25 samples per prompt (batch 16, max length 1,024, bf16)."""
    from feedbackflow.core.formats import SCORED_SAMPLES

    s = world.shapes
    rows = [{"prompt_id": f"rtp{p}", "prompt": world.text(s.detox_prompt_words), "response": world.text(
             s.detox_new_tokens), "origin": "bench", "sample_index": i, "score": 0.1 * (i % 10), "status": "ok",
             "reason": None, "scorer": "bench", "prompt_tokens": None, "completion_tokens": None}
            for p in range(s.detox_prompts) for i in range(s.detox_samples)]  # fmt: skip
    scored = write(rows, world.path("detox/scored.parquet"), SCORED_SAMPLES)
    values = {**paper_section("finegrained_detox", "detox", "evaluation"), "dtype": "bfloat16"}
    run_cli(
        "evaluate-detox",
        [
            "--scored",
            scored,
            "--perplexity-model",
            world.model("gpt2-xl"),
            "--name",
            "bench",
            "--summary",
            world.scratch / "out/detox_eval.json",
            "--hparams",
            hparams(values),
        ],
    )
    return StageResult(None, len(rows), "samples", len(rows) * (s.detox_prompt_words + s.detox_new_tokens))


# --- RRHF, DSP, ILF (issue 21) ---------------------------------------------------------------------------------------


def hh_prompt(world: World, words: int) -> str:
    return f"\n\nHuman: {world.text(words)}\n\nAssistant:"


def prompt_rows(world: World, n: int, words: int, prefix: str = "p") -> list[dict]:
    return [{"prompt_id": f"{prefix}{i}", "prompt": hh_prompt(world, words), "source": "gpu_paper_shape", "record": i}
            for i in range(n)]  # fmt: skip


def sample_rows(world: World, prompts: list[dict], n: int, words: int) -> list[dict]:
    return [{"prompt_id": p["prompt_id"], "prompt": p["prompt"], "response": world.text(words), "origin": "bench",
             "sample_index": i} for p in prompts for i in range(n)]  # fmt: skip


def generate_reference(model_dir: str, prompts: list[str], values: dict) -> float:
    """Seconds of plain `transformers` `model.generate` on the same model, prompts and batches as sample-responses
    (its length-sorted plan, left-truncated and left-padded the same way), generation alone. For a diverse beam
    search, the reference is generate's beam search with as many beams and returned sequences and no groups:
    group beam search is no longer in transformers' own generate (v5 moved it to a hub custom_generate), and the
    project runs its own (sampling.diverse_beam_search)."""
    from feedbackflow.core.batches import length_sorted_batches
    from feedbackflow.stages.sampling import SamplingConfig, load_policy
    from feedbackflow.text.tokens import encode_prompts, pad_id_of, pad_left

    config = SamplingConfig(**values)
    model, tokenizer = load_policy(model_dir, config.dtype)
    device = next(model.parameters()).device
    encoded = encode_prompts(tokenizer, prompts, config.max_prompt_tokens)
    pad_id = pad_id_of(tokenizer)
    kwargs = {"max_new_tokens": config.max_new_tokens, "min_new_tokens": config.max_new_tokens, "do_sample": False,
              "num_beams": config.num_beams, "num_return_sequences": config.num_return_sequences,
              "pad_token_id": pad_id, "temperature": None, "top_k": None, "top_p": None}  # fmt: skip
    seconds = 0.0
    with torch.inference_mode():
        for chunk in length_sorted_batches(encoded, config.batch_size):
            input_ids, attention_mask = pad_left([encoded[i] for i in chunk], pad_id)
            synchronize()
            start = time.perf_counter()
            model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs)
            synchronize()
            seconds += time.perf_counter() - start
    del model
    return seconds


def rrhf_sampling(world: World, greedy: bool = False) -> StageResult:
    """sample-responses of LLaMA-7B as rrhf_hh.yaml: diverse beam search, 4 beams in 4 groups, diversity penalty 1.0,
    128 new tokens, prompts left-truncated to 256 tokens, batch 8, bf16 (greedy: the evaluation sampling, batch 16);
    then `generate_reference` on the same prompts, for the ratio of generation times."""
    from feedbackflow.core.formats import PROMPTS
    from feedbackflow.stages import sampling

    s = world.shapes
    rows = prompt_rows(world, s.rrhf_prompts, 2 * s.rrhf_prompt_tokens)
    prompts = write(rows, world.path("rrhf/prompts.parquet"), PROMPTS)
    rrhf = paper_section("rrhf_hh", "rrhf")
    values = {**(rrhf["evaluation"]["sampling"] if greedy else rrhf["sampling"]),
              "max_new_tokens": s.rrhf_new_tokens, "max_prompt_tokens": s.rrhf_prompt_tokens}  # fmt: skip
    if not greedy:
        values.update(num_beams=s.rrhf_beams, num_beam_groups=s.rrhf_beams, num_return_sequences=s.rrhf_beams)
    name = "rrhf_greedy" if greedy else "rrhf_sampling"
    model = world.model("llama-7b")
    with MethodTimers(sampling, {"diverse_beam_search": "ours", "_generate": "ours"}) as ours:
        run_cli("sample-responses", ["--prompts", prompts, "--model", model, "--output",
                                     world.scratch / f"out/{name}.parquet", "--hparams", hparams(values)])  # fmt: skip
    free_memory()
    reference = generate_reference(model, [row["prompt"] for row in rows], values)
    beams = 1 if greedy else s.rrhf_beams
    search = "greedy" if greedy else f"diverse beam search ({beams} groups)"
    against = "greedy" if greedy else f"beam search, {beams} beams, no groups"
    return StageResult(ours.seconds["ours"], s.rrhf_prompts, "prompts", s.rrhf_prompts * beams * s.rrhf_new_tokens,
                       per="generation (all batches)",
                       extra={"generate_seconds": round(reference, 6), "ours_seconds": round(ours.seconds["ours"], 6),
                              "ratio_generate_over_ours": round(reference / max(ours.seconds["ours"], 1e-9), 3)},
                       notes=f"batch {values['batch_size']}, {search}; generation {ours.seconds['ours']:.3f} s, "
                             f"transformers generate ({against}) on the same batches {reference:.3f} s: "
                             f"ratio generate / ours {reference / max(ours.seconds['ours'], 1e-9):.2f}; tokens = "
                             "new tokens of every beam")  # fmt: skip


def rrhf_greedy(world: World) -> StageResult:
    return rrhf_sampling(world, greedy=True)


def rrhf_reward_scoring(world: World) -> StageResult:
    """score-samples with the GPT-J-6B reward model (Dahoas/gptj-rm-static's layout: GPT-J body + bias-free value
    head, eos pooling), max length 1,024, batch 16, bf16."""
    from feedbackflow.core.formats import SAMPLES

    s = world.shapes
    prompts = prompt_rows(world, s.rrhf_prompts, s.rrhf_prompt_tokens)
    rows = sample_rows(world, prompts, s.rrhf_beams, s.rrhf_new_tokens)
    samples = write(rows, world.path("rrhf/samples.parquet"), SAMPLES)
    values = {**paper_section("rrhf_hh", "rrhf", "reward_scoring"), "dtype": "bfloat16"}
    run_cli("score-samples", ["--samples", samples, "--model", world.model("gptj-6b", "rm_eos"), "--output",
                              world.scratch / "out/rrhf_scored.parquet", "--hparams", hparams(values)])  # fmt: skip
    return StageResult(
        None,
        len(rows),
        "samples",
        len(rows) * (s.rrhf_prompt_tokens + s.rrhf_new_tokens),
        notes=f"batch {values['batch_size']}, max length {values['max_length']}",
    )


def with_fallback(world: World, names: list[str], run: Callable[[str], StageResult]) -> StageResult:
    """`run(model)` with the first of `names`; on CUDA out-of-memory, the next one (the note says which ran)."""
    for index, name in enumerate(names):
        out_of_memory = False
        try:
            result = run(world.model(name))
        except torch.OutOfMemoryError:
            if index == len(names) - 1:
                raise
            out_of_memory = True
        if out_of_memory:  # outside the except block: its traceback holds the stage's frames (and the model)
            free_memory()
            continue
        ran = f"{name} ({'toy width' if world.tiny else f'{ARCHITECTURES[name].parameters() / 1e9:.1f}e9 parameters'})"
        skipped = f"; {', '.join(names[:index])} ran out of memory" if index else ""
        result.notes = f"{ran}{skipped}; {result.notes}"
        return result
    raise AssertionError("unreachable")


FULL_FINE_TUNING = ["llama-7b", "llama-5b"]


def rrhf_training(world: World) -> StageResult:
    """train-rrhf steps as rrhf_hh.yaml at one GPU's share (64 queries over 8 GPUs: 8 per step), 6 responses per query,
    max length 192, bf16, gradient checkpointing, Adam; the full 7B, else the largest LLaMA that fits."""
    from feedbackflow.core.formats import RANKED_RESPONSES

    s = world.shapes
    queries = s.rrhf_micro * s.steps
    rows = [{"prompt_id": f"q{i}", "query": hh_prompt(world, s.rrhf_max_length // 2),
             "responses": [world.text(s.rrhf_max_length // 2) for _ in range(s.rrhf_responses)],
             "scores": [float(j) for j in range(s.rrhf_responses)]} for i in range(queries)]  # fmt: skip
    train = write(rows, world.path("rrhf/ranked.parquet"), RANKED_RESPONSES)
    values = {**paper_section("rrhf_hh", "rrhf", "training"), "num_epochs": 1, "max_steps": s.steps,
              "batch_size": s.rrhf_micro, "micro_batch_size": s.rrhf_micro, "max_length": s.rrhf_max_length,
              "checkpoint_every": 10_000}  # fmt: skip

    def run(model: str) -> StageResult:
        with StepClock() as clock:
            run_cli(
                "train-rrhf",
                [
                    "--train",
                    train,
                    "--model",
                    model,
                    "--output",
                    world.scratch / "out/rrhf",
                    "--work-dir",
                    world.scratch / "work/rrhf",
                    "--hparams",
                    hparams(values),
                ],
            )
        sequences = s.rrhf_micro * s.rrhf_responses
        return StageResult(clock.seconds_per_step(), s.rrhf_micro, "queries", sequences * s.rrhf_max_length,
                           notes=f"{s.rrhf_micro} queries x {s.rrhf_responses} responses per step")  # fmt: skip

    return with_fallback(world, FULL_FINE_TUNING, run)


def rrhf_perplexity(world: World) -> StageResult:
    """evaluate-responses: reward (the scores given) and gpt2-medium perplexity of the responses, max length 512,
    batch 16, bf16."""
    from feedbackflow.core.formats import SCORED_SAMPLES

    s = world.shapes
    prompts = prompt_rows(world, s.rrhf_prompts * 4, s.rrhf_prompt_tokens)
    rows = [{**row, "score": 0.5, "status": "ok", "reason": None, "scorer": "bench", "prompt_tokens": None,
             "completion_tokens": None} for row in sample_rows(world, prompts, 1, s.rrhf_new_tokens)]  # fmt: skip
    scored = write(rows, world.path("rrhf/eval_scored.parquet"), SCORED_SAMPLES)
    evaluation = paper_section("rrhf_hh", "rrhf", "evaluation")
    values = {"max_length": evaluation["max_length"] if not world.tiny_shapes else s.dsp_max_length,
              "batch_size": evaluation["batch_size"], "dtype": "bfloat16"}  # fmt: skip
    run_cli(
        "evaluate-responses",
        [
            "--scored",
            scored,
            "--reference-model",
            world.model("gpt2-medium"),
            "--output",
            world.scratch / "out/rrhf_eval.parquet",
            "--markdown",
            world.scratch / "out/rrhf_eval.md",
            "--hparams",
            hparams(values),
        ],
    )
    return StageResult(None, len(rows), "responses", len(rows) * (s.rrhf_prompt_tokens + s.rrhf_new_tokens))


def dsp_pairs(world: World, n: int) -> list[dict]:
    words = world.shapes.dsp_max_length  # at least max_length tokens: truncation runs, every text is full length
    return [{"text": [hh_prompt(world, words // 2) + " " + world.text(words // 2), hh_prompt(world, words // 2)
             + " " + world.text(words // 2)], "score": [1.0, 0.0], "source": "gpu_paper_shape", "record": i}
            for i in range(n)]  # fmt: skip


def dsp_reward_training(world: World) -> StageResult:
    """train-reward-model (GRFT) of LLaMA-7B as dsp.yaml: last pooling, max length 512, one GPU's share (64 pairs over
    8 GPUs: 8 per step), bf16, gradient checkpointing, Adam; the full 7B, else the largest LLaMA that fits."""
    from feedbackflow.core.formats import PREFERENCE_LISTS

    s = world.shapes
    train = write(dsp_pairs(world, s.dsp_micro * s.steps), world.path("dsp/train.parquet"), PREFERENCE_LISTS)
    dsp = paper_section("dsp", "dsp")
    values = {"seed": 42, **dsp["reward_model"], **dsp["grft"], "num_epochs": 1, "max_steps": s.steps,
              "batch_size": s.dsp_micro, "micro_batch_size": s.dsp_micro, "max_length": s.dsp_max_length,
              "checkpoint_every": 10_000, "warmup_steps": 0}  # fmt: skip

    def run(model: str) -> StageResult:
        with StepClock() as clock:
            run_cli(
                "train-reward-model",
                [
                    "--train",
                    train,
                    "--model",
                    model,
                    "--output",
                    world.scratch / "out/dsp_rm",
                    "--work-dir",
                    world.scratch / "work/dsp_rm",
                    "--hparams",
                    hparams(values),
                ],
            )
        return StageResult(clock.seconds_per_step(), s.dsp_micro, "pairs", 2 * s.dsp_micro * s.dsp_max_length,
                           notes=f"{s.dsp_micro} pairs per step, last pooling")  # fmt: skip

    return with_fallback(world, FULL_FINE_TUNING, run)


def dsp_reward_evaluation(world: World) -> StageResult:
    """evaluate-reward-model of a LLaMA-7B reward model (last pooling, max length 512, batch 16, bf16) over a few
    thousand texts."""
    from feedbackflow.core.formats import PREFERENCE_LISTS

    s = world.shapes
    pairs = dsp_pairs(world, s.dsp_eval_texts // 2)
    eval_set = write(pairs, world.path("dsp/test.parquet"), PREFERENCE_LISTS)
    values = {"pooling": "last", "max_length": s.dsp_max_length,
              **paper_section("dsp", "dsp", "evaluation"), "dtype": "bfloat16"}  # fmt: skip
    run_cli("evaluate-reward-model", ["--model", world.model("llama-7b"), "--model-name", "bench", "--eval-set",
                                      f"bench={eval_set}", "--metrics", world.scratch / "out/dsp_metrics.parquet",
                                      "--rewards", world.scratch / "out/dsp_rewards.parquet",
                                      "--hparams", hparams(values)])  # fmt: skip
    return StageResult(
        None,
        2 * len(pairs),
        "texts",
        2 * len(pairs) * s.dsp_max_length,
        notes=f"batch {values['batch_size']}; the LM's head is drawn fresh (a base LM directory)",
    )


def slf5k_post(world: World) -> tuple[str, str]:
    return world.text(8), world.text(world.shapes.ilf_post_words)


def ilf_opt_rm_training(world: World) -> StageResult:
    """train-opt-rm of OPT-1.3B as ilf_slf5k.yaml (batch 32 over 2 GPUs: 16 per step, micro 4), input up to 1,024
    tokens, bf16."""
    from feedbackflow.core.formats import SLF5K_COMPARISONS

    s = world.shapes
    ilf = paper_section("ilf_slf5k", "ilf")
    batch = 4 * s.opt_rm_micro
    rows = []
    for i in range(batch * s.steps):
        title, post = slf5k_post(world)
        rows.append({"post_id": f"c{i}", "title": title, "post": post, "summary_a": world.text(s.ilf_new_tokens),
                     "summary_b": world.text(s.ilf_new_tokens), "preferred": "AB"[i % 2],
                     "source": "gpu_paper_shape", "record": i})  # fmt: skip
    train = write(rows, world.path("ilf/comparisons.parquet"), SLF5K_COMPARISONS)
    values = {k: v for k, v in ilf["opt_rm"].items() if k != "base_model"}
    values.update(num_epochs=1, max_steps=s.steps, batch_size=batch, micro_batch_size=s.opt_rm_micro,
                  checkpoint_every=10_000, seed=42)  # fmt: skip
    if world.tiny_shapes:
        values["max_input_length"] = s.sft_input
    with StepClock() as clock:
        run_cli("train-opt-rm", ["--train", train, "--model", world.model("opt-1.3b"), "--output",
                                 world.scratch / "out/opt_rm", "--work-dir", world.scratch / "work/opt_rm",
                                 "--hparams", hparams(values)])  # fmt: skip
    return StageResult(
        clock.seconds_per_step(),
        batch,
        "comparisons",
        2 * batch * values["max_input_length"],
        notes=f"batch {batch}, micro {s.opt_rm_micro}; tokens nominal (2 texts x max input length)",
    )


def ilf_prompt_rows(world: World) -> list[dict]:
    from feedbackflow.papers.ilf.prompts import summary_prompt

    return [{"prompt_id": f"post{i}", "prompt": summary_prompt(*slf5k_post(world)), "source": "gpu_paper_shape",
             "record": i} for i in range(world.shapes.ilf_posts)]  # fmt: skip


def ilf_best_of_n(world: World) -> StageResult:
    """generate-texts with the hf backend on OPT-2.7B: 64 samples per post (best-of-64), 48 tokens, top-p 0.95,
    batch 32, 32 sequences per generate, bf16."""
    from feedbackflow.core.formats import PROMPTS

    s = world.shapes
    prompts = write(ilf_prompt_rows(world), world.path("ilf/prompts.parquet"), PROMPTS)
    ilf = paper_section("ilf_slf5k", "ilf")
    lm = {"backend": "hf", "model": world.model("opt-2.7b"), **ilf["policy_lm"]}
    values = {**ilf["initial_summaries"], "n": s.ilf_best_of, "max_tokens": s.ilf_new_tokens, "stop": []}
    run_cli("generate-texts", ["--prompts", prompts, "--output", world.scratch / "out/best_of_n.parquet", "--cache",
                               world.scratch / "work/best_of_n.sqlite", "--lm", json.dumps(lm),
                               "--hparams", hparams(values)])  # fmt: skip
    n = s.ilf_posts * s.ilf_best_of
    return StageResult(
        None,
        n,
        "samples",
        n * s.ilf_new_tokens,
        notes=f"{s.ilf_posts} posts x {s.ilf_best_of}; no stop string, so every sample runs 48 tokens",
    )


def ilf_instructrm(world: World) -> StageResult:
    """select-refinements --scorer instructrm with the hf backend on a LLaMA-7B-layout LM: 5 refinements per post,
    each scored with InstructRM's 5 templates (P(yes)), bf16."""
    from feedbackflow.core.formats import SAMPLES, SLF5K_FEEDBACK

    s = world.shapes
    feedback, refinements = [], []
    for i in range(s.ilf_posts):
        title, post = slf5k_post(world)
        feedback.append({"post_id": f"post{i}", "title": title, "post": post, "summary": world.text(30),
                         "feedback": world.text(20), "ideal_summary": None, "source": "gpu_paper_shape",
                         "record": i})  # fmt: skip
        refinements += [{"prompt_id": f"post{i}", "prompt": "", "response": world.text(30), "origin": "refiner",
                         "sample_index": j} for j in range(s.ilf_refinements)]  # fmt: skip
    feedback_path = write(feedback, world.path("ilf/feedback.parquet"), SLF5K_FEEDBACK)
    refinements_path = write(refinements, world.path("ilf/refinements.parquet"), SAMPLES)
    ilf = paper_section("ilf_slf5k", "ilf")
    lm = {"backend": "hf", "model": world.model("llama-7b"), "dtype": "bfloat16",
          "batch_size": ilf["refinement"]["lm"]["batch_size"]}  # fmt: skip
    run_cli(
        "select-refinements",
        [
            "--feedback",
            feedback_path,
            "--refinements",
            refinements_path,
            "--scorer",
            "instructrm",
            "--lm",
            json.dumps(lm),
            "--cache",
            world.scratch / "work/irm.sqlite",
            "--scores",
            world.scratch / "out/irm_scores.parquet",
            "--output",
            world.scratch / "out/irm_chosen.parquet",
            "--report",
            world.scratch / "out/irm.json",
        ],
    )
    import pandas as pd

    n = len(refinements)
    scored = int((pd.read_parquet(world.scratch / "out/irm_scores.parquet")["status"] == "ok").sum())
    return StageResult(None, n, "refinements", 0.0, notes=f"{s.ilf_posts} posts x {s.ilf_refinements} refinements "
                       f"x 5 templates, {scored} of {n} scored; tokens not counted")  # fmt: skip


def ilf_fine_tuning(world: World) -> StageResult:
    """train-sft of OPT-2.7B on ILF's fine-tuning rows (ilf_slf5k.yaml fine_tuning: batch 32 over 2 GPUs = 16 per
    step, micro 4, input up to 1,024, target 64, bf16)."""
    from feedbackflow.core.formats import QA_PROMPTS

    s = world.shapes
    rows = [{"prompt_id": row["prompt_id"], "prompt": row["prompt"], "question": "", "references":
             [world.text(s.ilf_target)], "passages": [], "source": "gpu_paper_shape", "record": row["record"]}
            for row in ilf_prompt_rows(world)]  # fmt: skip
    batch = 4 * s.ilf_sft_micro
    train = write((rows * (batch * s.steps // len(rows) + 1))[: batch * s.steps], world.path("ilf/sft.parquet"),
                  QA_PROMPTS)  # fmt: skip
    train_rows = [dict(r, prompt_id=f"t{i}") for i, r in enumerate((rows * (batch * s.steps))[: batch * s.steps])]
    train = write(train_rows, world.path("ilf/sft.parquet"), QA_PROMPTS)
    dev = write(rows[:1], world.path("ilf/sft_dev.parquet"), QA_PROMPTS)
    values = {**paper_section("ilf_slf5k", "ilf", "fine_tuning"), "num_epochs": 1, "max_steps": s.steps,
              "batch_size": batch, "micro_batch_size": s.ilf_sft_micro, "checkpoint_every": 10_000,
              "max_eval_examples": 1, "eval_batch_size": 1, "max_target_length": s.ilf_target,
              "max_new_tokens": s.ilf_new_tokens}  # fmt: skip
    if world.tiny_shapes:
        values["max_input_length"] = s.sft_input
    with StepClock() as clock:
        run_cli("train-sft", ["--train", train, "--dev", dev, "--model", world.model("opt-2.7b"), "--output",
                              world.scratch / "out/ilf_sft", "--work-dir", world.scratch / "work/ilf_sft",
                              "--hparams", hparams(values)])  # fmt: skip
    return StageResult(clock.seconds_per_step(), batch, "samples", batch * (values["max_input_length"] + s.ilf_target),
                       notes=f"batch {batch}, micro {s.ilf_sft_micro}; tokens nominal")  # fmt: skip


# --- the run --------------------------------------------------------------------------------------------------------

FINEGRAINED = {
    "qa_sft": qa_sft,
    "qa_rm_token": qa_rm_token,
    "qa_rm_sequence": qa_rm_sequence,
    "qa_rm_mean_std": qa_rm_mean_std,
    "qa_ppo_fine_grained": qa_ppo_fine_grained,
    "qa_ppo_holistic": qa_ppo_holistic,
    "qa_eval_greedy": qa_eval_greedy,
    "detox_ppo": detox_ppo,
    "detox_sampling": detox_sampling,
    "detox_perplexity": detox_perplexity,
}
RRHF_DSP_ILF = {
    "rrhf_sampling": rrhf_sampling,
    "rrhf_greedy": rrhf_greedy,
    "rrhf_reward_scoring": rrhf_reward_scoring,
    "rrhf_training": rrhf_training,
    "rrhf_perplexity": rrhf_perplexity,
    "dsp_reward_training": dsp_reward_training,
    "dsp_reward_evaluation": dsp_reward_evaluation,
    "ilf_opt_rm_training": ilf_opt_rm_training,
    "ilf_best_of_n": ilf_best_of_n,
    "ilf_instructrm": ilf_instructrm,
    "ilf_fine_tuning": ilf_fine_tuning,
}
GROUPS = {"gpu_fgrlhf": FINEGRAINED, "gpu_rrhf_dsp_ilf": RRHF_DSP_ILF}


def all_stages() -> dict[str, Callable[[World], StageResult]]:
    return {name: fn for group in GROUPS.values() for name, fn in group.items()}


def run_stage(world: World, name: str, fn: Callable[[World], StageResult]) -> dict:
    """Run one stage; its row (status ok, or the error's last line and the traceback in `traceback`)."""
    free_memory()
    synchronize()
    start, built_before = time.perf_counter(), world.build_seconds
    row: dict = {"stage": name}
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = fn(world)
        synchronize()
        wall = time.perf_counter() - start - (world.build_seconds - built_before)
        seconds = result.seconds_per_step if result.seconds_per_step is not None else wall
        row.update(status="ok", peak_memory=peak_memory(), wall_s=round(wall, 3),
                   seconds=round(seconds, 6), per=result.per if result.seconds_per_step is not None else "stage",
                   items_per_s=round(result.items / seconds, 3) if seconds else None, item_unit=result.item_unit,
                   tokens_per_s=round(result.tokens / seconds, 1) if seconds else None,
                   shares={k: round(v, 3) for k, v in result.shares.items()} if result.shares else None,
                   notes=result.notes, **result.extra)  # fmt: skip
    except Exception as error:  # noqa: BLE001 - a failing stage gets its row and the run goes on
        row.update(status="failed", error=f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[-1]}",
                   traceback=traceback.format_exc(), peak_memory=peak_memory(),
                   wall_s=round(time.perf_counter() - start, 3))  # fmt: skip
        print(row["traceback"], file=sys.stderr)
    finally:  # the stages' outputs (a 7B checkpoint is 27 GB in float32) would fill the device's 64 GiB disk
        for scratch in ("out", "work"):
            for path in (world.scratch / scratch).glob("*"):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
    return row


def markdown_table(rows: list[dict]) -> str:
    lines = ["| stage | status | peak memory | seconds | throughput | tokens/s | PPO step shares | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for row in rows:
        if row["status"] != "ok":
            error = row.get("error", row["status"]).replace("|", "/")
            lines.append(f"| {row['stage']} | {row['status']} | {row.get('peak_memory', '')} | | | | | {error} |")
            continue
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in row["shares"].items()) if row["shares"] else ""
        lines.append(f"| {row['stage']} | ok | {row['peak_memory']} | {row['seconds']:.3f} per {row['per']} | "
                     f"{row['items_per_s']} {row['item_unit']}/s | {row['tokens_per_s']} | {shares} | "
                     f"{row['notes'].replace('|', '/')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def environment() -> dict:
    import accelerate
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or 'cpu'})"
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device, "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version()}  # fmt: skip


def size_of(args: argparse.Namespace) -> str:
    if args.tiny:
        return "tiny (toy widths, small shapes: a CI check, not a measurement)"
    return "paper shapes, toy widths (a check of the shapes, not a measurement)" if args.toy_models else "paper"


def report(rows: list[dict], args: argparse.Namespace, env: dict, title: str) -> str:
    header = [f"# {title}", "",
              f"- date: {env['date']}", f"- device: {env['device']}",
              f"- versions: torch {env['torch']}, transformers {env['transformers']}, accelerate {env['accelerate']}, "
              f"python {env['python']}",
              f"- command: `{' '.join(['python', 'benchmarks/gpu_paper_shape.py', *args.argv])}`",
              f"- size: {size_of(args)}",
              "- seconds: per optimiser step for training stages (median gap between steps), else the stage's wall "
              "time (model loading included); tokens/s counts the nominal shape (max lengths)", ""]  # fmt: skip
    return "\n".join(header) + markdown_table(rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for table.md, results.json and the group tables")
    parser.add_argument("--tiny", action="store_true", help="toy widths and shapes: runs on the CPU in seconds")
    parser.add_argument("--stages", default=None, help=f"comma-separated subset of: {', '.join(all_stages())}")
    parser.add_argument("--toy-models", action="store_true", help="paper shapes, toy architectures: a CPU check")
    parser.add_argument("--budget-s", type=float, default=None, help="skip the stages left after this many seconds")
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="texts for the tokenizer (used when it exists)")  # fmt: skip
    parser.add_argument("--work-dir", default=None, help="models and data (default: a temporary directory)")
    parser.add_argument(
        "--scratch-dir",
        default=None,
        help="where the stages write their outputs, e.g. /dev/shm: a training stage saves its model "
        "at the end (27 GB for a 7B in float32), outside its measured steps (default: work dir)",
    )
    args = parser.parse_args(argv)
    args.argv = argv
    known = all_stages()
    args.stage_names = list(known) if not args.stages else [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stage_names if s not in known]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; known: {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    import logging

    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_paper_shape."))
    work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    env = environment()
    rows: list[dict] = []
    world = None
    try:
        scratch = Path(tempfile.mkdtemp(prefix="gpu_paper_shape.", dir=args.scratch_dir)) if args.scratch_dir else None
        world = World(work, args.tiny, Path(args.data_dir), toy_models=args.toy_models, scratch=scratch)
        stages = all_stages()
        for name in args.stage_names:
            if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                rows.append({"stage": name, "status": "skipped (budget)"})
                continue
            rows.append(run_stage(world, name, stages[name]))
            print(f"{name}: {rows[-1]['status']} {rows[-1].get('seconds', '')} {rows[-1].get('error', '')}",
                  file=sys.stderr, flush=True)  # fmt: skip
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
        if args.scratch_dir and world is not None:
            shutil.rmtree(world.scratch, ignore_errors=True)
    (out / "results.json").write_text(json.dumps({"environment": env, "argv": args.argv, "tiny": args.tiny,
                                                  "rows": rows}, indent=2) + "\n")  # fmt: skip
    by_name = {row["stage"]: row for row in rows}
    parts = []
    for group, members in GROUPS.items():
        group_rows = [by_name[name] for name in members if name in by_name]
        if group_rows:
            text = report(group_rows, args, env, f"GPU paper-shape stages: {group}")
            (out / f"{group}.md").write_text(text)
            parts.append(text)
    (out / "table.md").write_text("\n".join(parts))
    print("\n".join(parts))
    print(f"total {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 1 if any(row["status"] == "failed" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
