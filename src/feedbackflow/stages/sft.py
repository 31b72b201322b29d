"""Supervised fine-tuning of the qa-feedback policy (Wu et al. 2023: SFT on 1K examples first), on accelerate.

Follows the paper's `sft/run_sft.py` (allenai/FineGrainedRLHF; a copy of transformers' run_summarization.py run by
`tasks/qa_feedback/training/train_sft.sh`: t5-large, 10 epochs, 2 GPUs x 2 = batch 4, bf16, evaluation and save every
epoch, greedy generation of at most 200 tokens, `load_best_model_at_end` with `metric_for_best_model rougeLsum`):

- Input: QA_PROMPTS Parquet. The policy input is `prompt`; the TARGET is the FIRST reference only (`answer[0]` in the
  paper's `preprocess_function`); the other references are not trained on.
- Seq2seq policy (T5): encoder ids = prompt ids + eos, RIGHT-truncated (the paper's T5 tokenizer with
  `truncation=True`, max_source_length 1024): the beginning ("question: ... context: <first passages>") is kept and
  the last passages are cut. Labels = reference ids + eos, right-truncated to `max_target_length` (200) tokens.
- Causal policy (not in the paper; kept for other tasks): bos + prompt ids (truncated the same way, `max_input_length`
  counting bos) followed by the ids of " " + reference (one leading space: a word boundary after the prompt) + eos;
  the loss is on the reference tokens and eos only.
- Loss: token-level NLL, the mean over every label token of the global batch (so micro-batch size and process count do
  not change a step; the paper's Trainer averaged per-device token means over its 2 devices). AdamW, linear schedule,
  lr 5e-5, no warm-up, no weight decay, gradient clipping 1.0: the transformers Trainer defaults the paper's script
  kept. Examples are shuffled per epoch from the seed; an incomplete last batch of an epoch is dropped.
- Evaluation: after every epoch (or every `eval_every` steps) and after the last step, greedy decoding (batched, KV
  cache, `max_new_tokens`) of the dev prompts, the generated ids up to the first eos decoded without special tokens and
  stripped, and the mean rougeLsum (`feedbackflow.text.metrics.rouge_lsum`: stemming, sentences on lines, F x 100).
  As in the paper's `compute_metrics`, the dev target is the first reference only (`eval_references="first"`);
  `"all"` takes the max over all references, as the paper's final evaluation (`fgrlhf/evaluators.py`) does.
  Every evaluation also records exact match (`text_metrics.exact_match`: the share x 100 of generations equal to a
  reference up to whitespace).
- Selection: the output is the model of the evaluation with the highest `selection_metric`, rougeLsum by default (the
  paper); a later evaluation must be strictly better (the Trainer's `greater_is_better` comparison), so ties keep the
  earlier one. `selection_metric: exact_match` selects a stand-in by the role it plays (the tiny ILF InstructRM and
  judge stand-ins on held-out questions, answered with one word), where rougeLsum would mostly score wording.
- Small differences from the paper's script, on purpose: generation is bounded by `max_new_tokens` (the paper's
  `generation_max_length 200` counted T5's decoder start token, so 199 new tokens); the dev reference is the raw text
  (the paper scored against the label ids decoded back, i.e. truncated to 200 tokens); the corpus figure is the exact
  mean over dev examples (the paper's `evaluate` rouge reported the median of bootstrap means, which is close to it);
  sentences are split by `feedbackflow.text.segmentation` (spaCy) instead of nltk punkt (see `text_metrics`).

Checkpoints go to `--work-dir` (`core.training`); a checkpoint is also saved after every evaluation, so that the best
model so far (`best-<step>/` in the work dir) always belongs to the run being resumed. SIGTERM saves a checkpoint and
exits 143. The output directory (written atomically) holds the best model (`save_pretrained` + tokenizer),
`training_log.parquet` (SFT_TRAINING_LOG: per step loss and learning rate, per evaluation rougeLsum, exact match and the
mean number of generated tokens, eos included) and `sft_training.json` (the selection metric, best step/epoch and its
scores, every evaluation).
Epochs are counted from 0. Bad input (empty prompt, no or empty reference) is a DataError naming file, record and field.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from feedbackflow.core.batches import length_sorted_batches
from feedbackflow.core.checkpoints import StopSignal
from feedbackflow.core.formats import QA_PROMPTS, SFT_TRAINING_LOG, atomic_directory, read_table, write_json, write_rows
from feedbackflow.core.optim import EpochTrainingConfig, prepare_adamw
from feedbackflow.core.stage_args import dataclass_from_args
from feedbackflow.core.training import (
    add_run_arguments,
    backward_micro_batch,
    checkpoint_after_step,
    open_checkpoints,
    run_as_module,
    set_threads,
    start_accelerator,
    steps_to_train,
)
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.text.metrics import SentenceSplitter, default_sentence_splitter, exact_match, rouge_lsum
from feedbackflow.text.tokens import decode_response, pad_id_of, pad_left, pad_right

log = logging.getLogger("feedbackflow.stages.sft")

META_FILE = "sft_training.json"
LOG_FILE = "training_log.parquet"
IGNORE_INDEX = -100
SELECTION_METRICS = ("rouge_lsum", "exact_match")


@dataclass
class SFTConfig(EpochTrainingConfig):
    """Hyperparameters of one SFT run (defaults: the paper's qa-feedback SFT, except precision; see the module doc).
    Seed, AdamW, schedule, clipping, precision and checkpoint fields: `core.optim.EpochTrainingConfig`."""

    num_epochs: int = 10
    batch_size: int = field(default=4, metadata={"help": "examples per optimiser step, all processes"})
    micro_batch_size: int = field(default=2, metadata={"help": "examples per forward pass on one process"})
    learning_rate: float = 5e-5
    warmup_ratio: float = field(default=0.0, metadata={"help": "warm-up steps: ceil(ratio x all steps)"})
    max_input_length: int = field(
        default=1024, metadata={"help": "input tokens (seq2seq: prompt + eos; causal: bos + prompt)"}
    )
    truncation_side: str = field(
        default="right", metadata={"help": "which end of a long prompt is cut: right (the paper) or left"}
    )
    max_target_length: int = field(default=200, metadata={"help": "target tokens with eos (right-truncated)"})
    max_new_tokens: int = field(default=200, metadata={"help": "greedy generation length on the dev set"})
    eval_every: int | None = field(
        default=None, metadata={"help": "evaluate every N steps; default: after every epoch (and the last step)"}
    )
    eval_batch_size: int = field(default=64, metadata={"help": "dev prompts per generate call on one process"})
    eval_references: str = field(
        default="first", metadata={"help": "first: rougeLsum vs the first reference (the paper's SFT); all: max"}
    )
    max_eval_examples: int | None = field(default=None, metadata={"help": "evaluate on the first N dev rows only"})
    selection_metric: str = field(
        default="rouge_lsum", metadata={"help": "dev score the output model is chosen by: rouge_lsum or exact_match"}
    )
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (the paper: bf16)"})
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if self.truncation_side not in ("left", "right"):
            raise ConfigError(f"truncation_side must be left or right, got {self.truncation_side!r}")
        if self.selection_metric not in SELECTION_METRICS:
            raise ConfigError(f"selection_metric must be one of {SELECTION_METRICS}, got {self.selection_metric!r}")
        if self.eval_references not in ("first", "all"):
            raise ConfigError(f"eval_references must be first or all, got {self.eval_references!r}")
        for name in ("max_input_length", "max_target_length"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{name} must be at least 2 (one token and eos or bos), got {getattr(self, name)}")
        for name in ("max_new_tokens", "eval_batch_size", "num_epochs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_every", "max_eval_examples", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 when set, got {value}")


@dataclass
class QAExamples:
    """Validated prompts and references, and where each came from (file, 0-based row) for error messages."""

    prompts: list[str]
    references: list[list[str]]
    origins: list[tuple[str, int]]


def load_qa_prompts(paths: list[str]) -> QAExamples:
    """Read QA_PROMPTS files; an empty prompt, no reference or an empty reference is a DataError."""
    data = QAExamples([], [], [])
    for path in paths:
        table = read_table(path, QA_PROMPTS)
        rows = zip(table.column("prompt").to_pylist(), table.column("references").to_pylist(), strict=True)
        for record, (prompt, references) in enumerate(rows):
            if prompt is None or not prompt.strip():
                raise DataError(path, record, "prompt", "is empty")
            if not references:
                raise DataError(path, record, "references", "no reference answer")
            for k, reference in enumerate(references):
                if reference is None or not reference.strip():
                    raise DataError(path, record, "references", f"reference {k} is empty")
            data.prompts.append(prompt)
            data.references.append(list(references))
            data.origins.append((str(path), record))
    return data


def truncate(ids: list[int], room: int, side: str) -> list[int]:
    """At most `room` ids: the first ones (side "right" cuts the end) or the last ones (side "left")."""
    if len(ids) <= room:
        return ids
    return ids[:room] if side == "right" else ids[len(ids) - room :]


def encode_inputs(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_length: int, side: str, is_seq2seq: bool
) -> tuple[list[list[int]], int]:
    """(input ids, number truncated): seq2seq prompt ids + eos (as T5's tokenizer), causal bos + prompt ids."""
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    inputs, truncated = [], 0
    for ids in encoded:
        if is_seq2seq:
            kept = truncate(ids, max_length - 1, side)
            inputs.append(kept + [eos])
        else:
            prefix = [bos] if bos is not None else []
            kept = truncate(ids, max_length - len(prefix), side)
            inputs.append(prefix + kept)
        truncated += len(kept) < len(ids)
    return inputs, truncated


def encode_targets(
    tokenizer: PreTrainedTokenizerBase, references: list[str], max_length: int, is_seq2seq: bool
) -> tuple[list[list[int]], int]:
    """(target ids ending with eos, right-truncated to `max_length`; number truncated). Causal targets start with a
    space (the word boundary after the prompt)."""
    texts = references if is_seq2seq else [" " + r.lstrip() for r in references]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    kept = [ids[: max_length - 1] for ids in encoded]
    truncated = sum(len(k) < len(ids) for k, ids in zip(kept, encoded, strict=True))
    return [k + [tokenizer.eos_token_id] for k in kept], truncated


@dataclass
class SFTPlan:
    """Tokenised training examples and the global batches of every step."""

    inputs: list[list[int]]  # seq2seq: encoder ids; causal: the context before the target
    targets: list[list[int]]  # the trained tokens, eos last
    steps_per_epoch: int
    truncated_inputs: int = 0
    truncated_targets: int = 0

    def batch_indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """The examples of optimiser step `step`: a seeded permutation per epoch, cut into whole batches."""
        epoch, position = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(self.inputs), generator=generator).tolist()
        return order[position * batch_size : (position + 1) * batch_size]

    def target_tokens(self, indices: list[int]) -> int:
        return sum(len(self.targets[i]) for i in indices)


def tokenize_sft(data: QAExamples, tokenizer: PreTrainedTokenizerBase, config: SFTConfig, is_seq2seq: bool) -> SFTPlan:
    """Inputs from the prompts and targets from the FIRST reference of every example (the paper's `answer[0]`)."""
    inputs, truncated_inputs = encode_inputs(
        tokenizer, data.prompts, config.max_input_length, config.truncation_side, is_seq2seq
    )
    targets, truncated_targets = encode_targets(
        tokenizer, [refs[0] for refs in data.references], config.max_target_length, is_seq2seq
    )
    for (path, record), ids in zip(data.origins, inputs, strict=True):
        if not ids:  # a causal tokenizer without bos and a prompt of no tokens
            raise DataError(path, record, "prompt", "encodes to no tokens and the tokenizer has no bos")
    return SFTPlan(inputs, targets, len(inputs) // config.batch_size, truncated_inputs, truncated_targets)


def model_batch(plan: SFTPlan, indices: list[int], is_seq2seq: bool, pad_id: int) -> dict[str, torch.Tensor]:
    """Padded tensors of a micro batch; `labels` is IGNORE_INDEX wherever no target token is predicted.

    Seq2seq: encoder input_ids/attention_mask, labels = targets (the model shifts them into decoder inputs).
    Causal: input_ids = context + target, labels aligned with input_ids (the caller shifts by one)."""
    if is_seq2seq:
        input_ids, attention_mask = pad_right([plan.inputs[i] for i in indices], pad_id)
        labels, _ = pad_right([plan.targets[i] for i in indices], IGNORE_INDEX)
    else:
        input_ids, attention_mask = pad_right([plan.inputs[i] + plan.targets[i] for i in indices], pad_id)
        label_rows = [[IGNORE_INDEX] * len(plan.inputs[i]) + plan.targets[i] for i in indices]
        labels, _ = pad_right(label_rows, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def target_nll_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], is_seq2seq: bool) -> torch.Tensor:
    """Sum over the micro batch's target tokens of -log p(token | context) (float32)."""
    labels = batch["labels"]
    if is_seq2seq:
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, use_cache=False
        ).logits
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logits, labels = logits[:, :-1], labels[:, 1:]  # the token at t+1 is predicted at t
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


# --- evaluation -----------------------------------------------------------------------------------


def eos_ids_of(model, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    found.add(tokenizer.eos_token_id)
    return found


@torch.no_grad()
def greedy_generate(
    model,
    tokenizer: PreTrainedTokenizerBase,
    inputs: list[list[int]],
    is_seq2seq: bool,
    max_new_tokens: int,
    batch_size: int,
    synced_gpus: bool = False,
    clean_up_spaces: bool = False,
) -> tuple[list[str], list[int]]:
    """(texts, generated token counts with eos) of greedy decoding with the KV cache, in batches of similar length.

    Seq2seq inputs are right-padded (the encoder masks them), causal ones left-padded. A text is the ids up to the
    first eos, decoded without special tokens and stripped (the paper's `batch_decode(skip_special_tokens=True)`);
    with `clean_up_spaces`, the spaces before punctuation are removed (`text.tokens.decode_tokens`)."""
    device = next(model.parameters()).device
    pad_id = pad_id_of(tokenizer)
    eos_ids = eos_ids_of(model, tokenizer)
    texts: list[str] = [""] * len(inputs)
    counts: list[int] = [0] * len(inputs)
    for chunk in length_sorted_batches(inputs, batch_size):
        pad = pad_right if is_seq2seq else pad_left
        input_ids, attention_mask = pad([inputs[i] for i in chunk], pad_id)
        sequences = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids),
            temperature=None,
            top_k=None,
            top_p=None,
            synced_gpus=synced_gpus,
        )
        # seq2seq output starts with the decoder start token; causal output starts with the (padded) input
        new = sequences[:, 1:] if is_seq2seq else sequences[:, input_ids.shape[1] :]
        for i, ids in zip(chunk, new.tolist(), strict=True):
            texts[i] = decode_response(tokenizer, ids, eos_ids, (), clean_up_spaces)
            ends = [position for position, token in enumerate(ids) if token in eos_ids]
            counts[i] = ends[0] + 1 if ends else len(ids)
    return texts, counts


@dataclass
class DevSet:
    inputs: list[list[int]]
    references: list[list[str]]  # what each prediction is scored against


def dev_set(data: QAExamples, tokenizer, config: SFTConfig, is_seq2seq: bool) -> DevSet:
    n = len(data.prompts) if config.max_eval_examples is None else min(config.max_eval_examples, len(data.prompts))
    inputs, _ = encode_inputs(tokenizer, data.prompts[:n], config.max_input_length, config.truncation_side, is_seq2seq)
    references = [refs[:1] if config.eval_references == "first" else refs for refs in data.references[:n]]
    return DevSet(inputs, references)


def evaluate_dev(
    accelerator: Accelerator,
    model,
    tokenizer: PreTrainedTokenizerBase,
    dev: DevSet,
    config: SFTConfig,
    is_seq2seq: bool,
    split_sentences: SentenceSplitter,
) -> dict[str, float]:
    """{rouge_lsum, exact_match: means x 100; generated_tokens: the mean} of greedy generations on the dev set, split
    over processes.

    Every process gets the same number of prompts (the last ones padded with a repeat whose result is dropped), so
    the processes make the same number of `generate` calls, as ZeRO-3's synced generation needs."""
    world, rank = accelerator.num_processes, accelerator.process_index
    per_process = math.ceil(len(dev.inputs) / world)
    mine = list(range(rank * per_process, min((rank + 1) * per_process, len(dev.inputs))))
    padded = mine + [0] * (per_process - len(mine))
    plugin = accelerator.state.deepspeed_plugin
    synced = plugin is not None and plugin.zero_stage == 3
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    with accelerator.autocast():
        texts, counts = greedy_generate(
            unwrapped,
            tokenizer,
            [dev.inputs[i] for i in padded],
            is_seq2seq,
            config.max_new_tokens,
            config.eval_batch_size,
            synced_gpus=synced,
        )
    unwrapped.train(was_training)
    results = [
        (i, rouge_lsum(text, dev.references[i], split_sentences), exact_match(text, dev.references[i]), count)
        for i, text, count in zip(mine, texts, counts, strict=False)
    ]
    gathered = sorted(gather_object(results))
    columns = zip(*(r[1:] for r in gathered), strict=True)
    return {
        name: math.fsum(values) / len(gathered)
        for name, values in zip(("rouge_lsum", "exact_match", "generated_tokens"), columns, strict=True)
    }


def is_eval_step(done: int, steps_per_epoch: int, total_steps: int, eval_every: int | None) -> bool:
    """Evaluate after every epoch (the paper's `evaluation_strategy epoch`) or every `eval_every` steps, and always
    after the last step."""
    if done == total_steps:
        return True
    return done % (eval_every or steps_per_epoch) == 0


def best_evaluation(history: list[dict], metric: str = "rouge_lsum") -> dict | None:
    """The logged evaluation with the highest `metric`; of equal ones the earliest (later ones must be strictly
    better, as the Trainer's `load_best_model_at_end` with `greater_is_better`)."""
    best = None
    for row in history:
        score = row.get(metric)
        if score is not None and (best is None or score > best[metric]):
            best = row
    return best


def best_dir(work_dir: str | Path, step: int) -> Path:
    return Path(work_dir) / f"best-{step:08d}"


def save_best(accelerator: Accelerator, model, tokenizer, work_dir: str, step: int) -> None:
    """The model after `step` into the work dir (atomic), where the final output is copied from."""
    state_dict = accelerator.get_state_dict(model)  # collective under ZeRO-3
    if accelerator.is_main_process:
        with atomic_directory(best_dir(work_dir, step)) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def prune_best_dirs(accelerator: Accelerator, work_dir: str, keep_step: int | None) -> None:
    """Delete saved best models other than `keep_step`'s (superseded ones, or ones of steps a resume undid)."""
    if accelerator.is_main_process:
        for path in Path(work_dir).glob("best-*"):
            if keep_step is None or path != best_dir(work_dir, keep_step):
                shutil.rmtree(path)
    accelerator.wait_for_everyone()


# --- training -------------------------------------------------------------------------------------


def load_policy(name_or_path: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, bool]:
    """(model in float32, tokenizer, is_seq2seq): AutoModelForSeq2SeqLM for encoder-decoder configs, else causal."""
    is_seq2seq = bool(getattr(AutoConfig.from_pretrained(name_or_path), "is_encoder_decoder", False))
    model_class = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer {name_or_path!r} has no eos token")
    model = model_class.from_pretrained(name_or_path, dtype=torch.float32)
    return model, tokenizer, is_seq2seq


def splitter_name(split_sentences: SentenceSplitter) -> str:
    return f"{getattr(split_sentences, '__module__', '?')}.{getattr(split_sentences, '__qualname__', '?')}"


def train_sft(
    train_paths: list[str],
    dev_paths: list[str],
    model_name_or_path: str,
    output_dir: str,
    work_dir: str,
    config: SFTConfig,
    split_sentences: SentenceSplitter | None = None,
) -> dict:
    """Fine-tune the policy on the first reference of every training prompt; write the best model by the dev score
    `config.selection_metric` to `output_dir`. Returns the summary written to `sft_training.json`."""
    config.validate()
    train_data = load_qa_prompts(train_paths)  # fails early, before any model is loaded
    dev_data = load_qa_prompts(dev_paths)
    if not dev_data.prompts:
        raise ConfigError(f"no dev examples in {dev_paths}")
    split_sentences = split_sentences or default_sentence_splitter()
    micro = config.micro_batch_size
    accelerator, accumulation = start_accelerator(config)
    world = accelerator.num_processes

    model, tokenizer, is_seq2seq = load_policy(model_name_or_path)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    plan = tokenize_sft(train_data, tokenizer, config, is_seq2seq)
    dev = dev_set(dev_data, tokenizer, config, is_seq2seq)
    if plan.truncated_inputs or plan.truncated_targets:
        log.warning(
            "%d of %d prompts %s-truncated to %d tokens, %d targets right-truncated to %d tokens",
            plan.truncated_inputs, len(plan.inputs), config.truncation_side, config.max_input_length,
            plan.truncated_targets, config.max_target_length,
        )  # fmt: skip
    if plan.steps_per_epoch == 0:
        raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(plan.inputs)} training examples")
    steps_per_epoch = plan.steps_per_epoch
    total_steps = steps_to_train(steps_per_epoch, config.num_epochs, config.max_steps)

    # the schedule spans every epoch; max_steps only stops the run early
    model, optimizer, scheduler = prepare_adamw(accelerator, model, config, steps_per_epoch * config.num_epochs)
    store, start_step, history = open_checkpoints(
        work_dir, accelerator, total_steps, config, [*train_paths, *dev_paths, model_name_or_path],
        stage="sft", model=model_name_or_path, world=world, splitter=splitter_name(split_sentences),
    )  # fmt: skip
    metric = config.selection_metric
    previous_best = best_evaluation(history, metric)
    prune_best_dirs(accelerator, work_dir, previous_best["step"] if previous_best else None)
    if start_step == 0:
        log.info(
            "SFT of %s (%s): %d examples, %d dev, %d steps",
            model_name_or_path, "seq2seq" if is_seq2seq else "causal", len(plan.inputs), len(dev.inputs), total_steps,
        )  # fmt: skip

    pad_id = pad_id_of(tokenizer)
    stop = StopSignal()
    model.train()
    for step in range(start_step, total_steps):
        indices = plan.batch_indices(step, config.batch_size, config.seed)
        global_tokens = plan.target_tokens(indices)
        mine = indices[accelerator.process_index :: world]
        loss_total = torch.zeros((), device=accelerator.device)
        for chunk in [mine[i : i + micro] for i in range(0, len(mine), micro)]:
            with accelerator.accumulate(model):
                batch = {k: v.to(accelerator.device) for k, v in model_batch(plan, chunk, is_seq2seq, pad_id).items()}
                loss = target_nll_sum(model, batch, is_seq2seq) / global_tokens  # the global batch's token mean
                backward_micro_batch(accelerator, model, optimizer, loss, accumulation, config.max_grad_norm)
            loss_total += loss.detach()
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        done = step + 1
        row = {
            "step": done,
            "epoch": step // steps_per_epoch,
            "loss": accelerator.reduce(loss_total, reduction="sum").item(),
            "learning_rate": learning_rate,
            "rouge_lsum": None,
            "exact_match": None,
            "generated_tokens": None,
        }
        history.append(row)
        evaluated = is_eval_step(done, steps_per_epoch, total_steps, config.eval_every)
        if evaluated:
            row.update(evaluate_dev(accelerator, model, tokenizer, dev, config, is_seq2seq, split_sentences))
            best = best_evaluation(history, metric)
            if best["step"] == done:
                save_best(accelerator, model, tokenizer, work_dir, done)
            log.info(
                "step %d/%d loss %.4f dev rougeLsum %.2f exact match %.2f (best %s %.2f at step %d)",
                done, total_steps, row["loss"], row["rouge_lsum"], row["exact_match"], metric, best[metric],
                best["step"],
            )  # fmt: skip
        elif done % 10 == 0:
            log.info("step %d/%d loss %.4f", done, total_steps, row["loss"])
        # After an evaluation a checkpoint is always saved, so the saved best model belongs to a checkpointed run.
        checkpoint_after_step(
            store, accelerator, stop, done, total_steps, 1 if evaluated else config.checkpoint_every, history
        )
        if evaluated and done < total_steps:
            prune_best_dirs(accelerator, work_dir, best_evaluation(history, metric)["step"])

    best = best_evaluation(history, metric)
    summary = {
        "base_model": model_name_or_path,
        "policy_type": "seq2seq" if is_seq2seq else "causal",
        "training": dataclasses.asdict(config),
        "train_examples": len(plan.inputs),
        "dev_examples": len(dev.inputs),
        "truncated_inputs": plan.truncated_inputs,
        "truncated_targets": plan.truncated_targets,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "sentence_splitter": splitter_name(split_sentences),
        "selection_metric": metric,
        "best_step": best["step"],
        "best_epoch": best["epoch"],
        "best_rouge_lsum": best["rouge_lsum"],
        "best_exact_match": best["exact_match"],
        "evaluations": [
            {k: row[k] for k in ("step", "epoch", "rouge_lsum", "exact_match", "generated_tokens")}
            for row in history
            if row["rouge_lsum"] is not None
        ],
    }
    if accelerator.is_main_process:
        with atomic_directory(output_dir) as tmp:
            shutil.copytree(best_dir(work_dir, best["step"]), tmp, dirs_exist_ok=True)
            write_rows(history, tmp / LOG_FILE, SFT_TRAINING_LOG)
            write_json(summary, tmp / META_FILE)
        log.info("saved %s: the model of step %d (dev %s %.2f)", output_dir, best["step"], metric, best[metric])
    store.remove(accelerator)
    return summary


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", nargs="+", required=True, help="qa-prompts Parquet files (the SFT split)")
    parser.add_argument("--dev", nargs="+", required=True, help="qa-prompts Parquet files for model selection")
    parser.add_argument("--model", required=True, help="seq2seq or causal LM directory or hub id")
    parser.add_argument("--output", required=True, help="model directory to write (the best checkpoint)")
    add_run_arguments(parser, SFTConfig)


def main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    config = dataclass_from_args(SFTConfig, args)
    train_sft(args.train, args.dev, args.model, args.output, args.work_dir, config)


if __name__ == "__main__":  # `python -m feedbackflow.stages.sft ...`, the stage without the cli.py registry
    run_as_module("python -m feedbackflow.stages.sft", "supervised fine-tuning", configure, main, log)
