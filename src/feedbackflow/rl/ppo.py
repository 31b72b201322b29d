"""PPO on accelerate for seq2seq (T5) and causal (GPT-2, LLaMA) policies (Wu et al. 2023; PPO as in the paper's
code), with per-token rewards from a list of reward functions (`feedbackflow.rl.rewards`).

Models. The policy is trained from its init directory; the reference is a frozen copy of that same initial policy;
the value model is a separate model of the same family loaded from its own directory (t5-base at paper scale; the
policy's directory at tiny scale) as a backbone without LM head, plus the head Linear(d, d) -> GELU -> Linear(d, 1)
(the paper's fgrlhf/value.py MLP). For a seq2seq policy the values are read off the decoder's last hidden state at each
response position; for a causal policy off the last hidden state of the position that PREDICTS each response token
(the state before the token is chosen). Policy, value backbone and head form one module (`PolicyAndValue`), so there
is one DDP wrapper and one Adam (eps 1e-5) over all trained parameters, as in the paper.

One PPO step (the paper's fgrlhf/ppo.py `train`):
1. rollout: `prompts_per_step` prompts (global; each process takes its share) x `samples_per_prompt` samples, one
   batched `generate` per process with the KV cache (top_k, temperature, max_new_tokens). Causal prompts are bos +
   prompt, left-truncated to `max_input_length` and left-padded; seq2seq prompts are encoded as the tokenizer does
   (T5 appends eos), right-truncated as the paper's collate does, and right-padded. A response runs up to and
   including its first eos, which is a response token.
2. ONE no-grad forward each of the value model (old values) and the reference over the generate() output
   (`rollout_forward_batch_size` may split it into chunks for memory). Log-probs are those of the untempered logits,
   as in the paper's `forward_pass`; sampling uses the temperature. The policy's old log-probs are read off
   generate()'s raw logits (`output_logits`: the same untempered distribution), which saves the policy's forward;
   on CPU float32 they agree with a teacher-forced forward to 1.5e-6 (T5) and 5e-7 (causal, left-padded prompts:
   generate() numbers positions as `causal_inputs` does), not bit for bit. Seq2seq: every encoder (policy in
   generate(), value, reference) runs once per prompt, not per sample, and its output is repeated to the prompt's
   samples (`encoder_hidden_once`; bit-identical on the tiny T5).
3. rewards: every reward function is called once with (prompts, decoded responses, token ids); the responses are
   decoded without special tokens and, with `clean_up_tokenization_spaces` (default, the original's policy.py), with
   the spaces before punctuation removed (`text.tokens.decode_tokens`); the per-token rewards are summed; then
   r_t - kl_coef * (log pi - log pi_ref) on each sampled token (`losses.ppo.kl_penalised_rewards`).
4. rewards whitened without shifting the mean when `whiten_rewards` (statistics over every process), GAE(gamma, lam)
   with V = 0 past the end, advantages whitened (mean shifted), all in `losses.ppo`.
5. `ppo_epochs` epochs; each walks the rollout in minibatches of `minibatch_size` samples in order (the paper does
   not shuffle; with one optimiser step per epoch the order does not matter), backpropagates
   weight * (pg_coef * clipped policy loss + vf_coef * clipped value loss) of every minibatch, where weight = the
   minibatch's mean response length / the whole rollout's (all processes), and accumulates the gradients
   (summed over minibatches, averaged over processes by DDP, exactly the paper's `accelerator.backward` per
   minibatch); then ONE optimiser step and one scheduler step per epoch. Policy and value are in train mode during
   the epochs (dropout on, as in the paper) and in eval mode for the rollout. Seq2seq: a minibatch's encoder pass
   is shared by the samples of one prompt (gradients summed over them) only when the encoder draws no dropout;
   with dropout (t5's 0.1) each sample keeps its own pass and its own dropout mask, as in the paper's code.
   The forward/backward passes need not be the minibatches: the epoch's loss is a sum of per-token terms, each
   weighted by its minibatch's length weight / token count (`losses.ppo.minibatch_token_weights`), so passes of
   `forward_batch_size` samples (default: one minibatch each, the original's memory), grouped by length to pad
   little, give the same gradients (to float rounding) in fewer, larger passes.
6. the step's KL is the mean over the minibatches of step 5 (every process's) of their mean per-response KL, as the
   original logs it and stops on (`losses.ppo.mean_of_minibatch_means`; the mean over samples when the minibatches
   are all the same size). It is logged as `kl`, updates the KL controller, and training stops early once it has
   exceeded `kl_threshold` on `kl_patience` steps (the paper's count, not reset in between; `losses.ppo.KLEarlyStop`).

Schedule: total steps = ceil(total_episodes / (prompts_per_step * samples_per_prompt)); linear schedule with
`warmup_steps` PPO steps of warm-up, i.e. warmup_steps * ppo_epochs optimiser steps, decaying to 0 at the last
optimiser step. (The paper passes 100 * epochs * processes warm-up and total * epochs * processes steps to a scheduler
that accelerate steps `processes` times per optimiser step: the same schedule.) Gradient clipping, off in the paper
(clip_grad False), clips the norm of the policy's and the value model's gradients together when `max_grad_norm` > 0.

Checkpoints go to `--work-dir` every `save_every` steps (`feedbackflow.core.checkpoints`): models, optimiser, scheduler
and every process's RNG states, so a rerun resumes and matches an uninterrupted run; the KL coefficient and the
early-stop count are rebuilt from the saved history. SIGTERM saves at the current step and exits 143. With
`--eval-prompts`, greedy responses to those prompts are scored by the same reward functions every `eval_every` steps
and at the end (logged as eval_reward / eval_rewards).

Differences from the paper's code, on purpose: whitening divides by the standard deviation and ends each response at
its eos (see `losses.ppo.masked_whiten` for the paper's two slips); the early stop is decided on the global KL on
every process (the paper's flag is set on the main process only, when wandb logging is on); the run has
`total_steps` steps (the paper's loop runs one more); the value clamp and losses are otherwise the paper's. Every
difference, with the reason: docs/methods/fine_grained_rlhf.md, "Differences from the original code".

Precision (`mixed_precision`, as every trainer's: "no", "fp16" or "bf16"; the paper's train_*.sh: bf16). The
trained policy and value keep float32 master weights and compute under accelerate's autocast (the training forward,
generate() and the rollout forwards). Under bf16 the frozen models are bf16 too, on every device (the CPU
included): the reference and every reward function's models (`frozen_models()`, `load_frozen_models`); otherwise the
reference is float32 (so the KL is 0 before any update) and the reward models as their spec's `dtype` asks (the
config's `inference_dtype` on a GPU). `gradient_checkpointing` recomputes the policy's and the value body's
activations in the backward pass (the same numbers, less memory).

Outputs (atomic): the value model directory first, then the policy directory (`save_pretrained` + tokenizer) holding
`training_log.parquet` (formats.PPO_LOG, one row per PPO step) and `ppo_training.json` (the summary).
Runs on one process or under DDP (`accelerate launch`, config/accelerate/ddp.yaml); DeepSpeed is refused: the loop
backpropagates several minibatches per optimiser step through `accelerator.backward` + `no_sync` (a DeepSpeed engine
steps its own optimiser on its own accumulation count), and generate() under ZeRO-3 needs every rank in every decode
step (synced_gpus) while the responses end at different lengths; neither is handled. It does not matter at paper
scale, where everything fits DDP on one A100 per process (weights + gradients + Adam: 16 bytes per trained
parameter): qa trains t5-large + a t5-base value body (~0.96e9 parameters: ~15 GB), detox gpt2-large + a gpt2-large
value body (~1.55e9: ~25 GB), plus the bf16 reference (~1.5 GB) and reward models (3 Longformer-base: ~0.9 GB), and
activations of one minibatch of 4 samples (1,024 + 200 tokens each for qa; the original fits them with every frozen
model in float32).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import pyarrow.parquet as pq
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import BaseModelOutput

from feedbackflow.core.checkpoints import StopSignal
from feedbackflow.core.formats import PPO_LOG, atomic_directory, write_json, write_rows
from feedbackflow.core.inference import load_for_inference
from feedbackflow.core.optim import OptimiserConfig, prepare_with_schedule
from feedbackflow.core.stage_args import dataclass_from_args
from feedbackflow.core.training import (
    add_run_arguments,
    build_accelerator,
    checkpoint_after_step,
    open_checkpoints,
    run_as_module,
    set_threads,
    world_size_from_env,
)
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    KLEarlyStop,
    gae_advantages,
    kl_penalised_rewards,
    masked_whiten,
    mean_of_minibatch_means,
    mean_response_length,
    minibatch_token_weights,
    sequence_sums,
    weighted_ppo_losses,
)
from feedbackflow.rl.rewards import (
    RewardFunction,
    build_reward_functions,
    check_reward_result,
    load_reward_spec,
)
from feedbackflow.text.tokens import decode_tokens, encode_prompts, pad_id_of, pad_left, pad_right

log = logging.getLogger("feedbackflow.rl.ppo")

META_FILE = "ppo_training.json"
LOG_FILE = "training_log.parquet"
VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_META_FILE = "value_model.json"


@dataclass
class PPOConfig(OptimiserConfig):
    """Hyperparameters of one PPO run. Defaults: the paper's scale (Wu et al. 2023, fine-grained config). Seed,
    learning rate, clipping, step cap and precision fields: `core.optim.OptimiserConfig`; Adam and a linear schedule
    whose warm-up is counted in PPO steps (see the module doc)."""

    total_episodes: int = field(
        default=80_000,
        metadata={"help": "sampled responses in all; steps = ceil(this / (prompts_per_step x samples_per_prompt))"},
    )
    prompts_per_step: int = field(default=16, metadata={"help": "prompts per PPO step, all processes (paper: 8/GPU)"})
    samples_per_prompt: int = 4
    minibatch_size: int = field(
        default=4, metadata={"help": "samples per minibatch on one process (original: training_batch_size_per_card 4)"}
    )
    ppo_epochs: int = 4
    rollout_forward_batch_size: int | None = field(
        default=None, metadata={"help": "samples per no-grad rollout forward (None: the whole rollout at once)"}
    )
    forward_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "samples per training forward/backward pass (None: minibatch_size, the original's memory); "
            "larger passes give the same gradients in fewer passes (losses.ppo.minibatch_token_weights)"
        },
    )
    # generation
    top_k: int = 20
    top_p: float = 1.0
    temperature: float = 0.7
    max_new_tokens: int = 200
    max_input_length: int = 1024
    # rewards and advantages
    clean_up_tokenization_spaces: bool = field(
        default=True,
        metadata={"help": "decode responses for the reward functions with the space clean-up before punctuation "
                          "(text.tokens.decode_tokens; the original's fgrlhf/policy.py); false: the tokenizer's own"},
    )  # fmt: skip
    kl_coef: float = 0.3
    kl_controller: str = field(default="fixed", metadata={"help": "fixed (the paper) or adaptive (Ziegler 2019)"})
    kl_target: float = field(default=6.0, metadata={"help": "adaptive KL: target mean per-response KL"})
    kl_horizon: float = field(default=10_000.0, metadata={"help": "adaptive KL: horizon in episodes"})
    whiten_rewards: bool = True
    gamma: float = 1.0
    lam: float = 0.95
    # losses and optimisation
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    pg_coef: float = 1.0
    vf_coef: float = 1.0
    adam_eps: float = 1e-5
    warmup_steps: int = field(default=100, metadata={"help": "PPO steps of linear warm-up (x ppo_epochs opt. steps)"})
    max_grad_norm: float = field(default=0.0, metadata={"help": "0 = no clipping (paper: clip_grad False)"})
    # early stop, evaluation, checkpoints
    kl_threshold: float = 10.0
    kl_patience: int = field(default=5, metadata={"help": "stop once KL > kl_threshold on this many steps"})
    kl_patience_consecutive: bool = field(
        default=False, metadata={"help": "count only consecutive steps (the paper counts all)"}
    )
    eval_every: int = 50
    eval_batch_size: int = field(default=16, metadata={"help": "eval prompts per greedy generate, per process"})
    save_every: int = field(default=50, metadata={"help": "checkpoint to --work-dir every this many steps"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps (schedule unchanged)"})
    gradient_checkpointing: bool = False

    def validate(self, world: int = 1) -> None:
        positive = ["total_episodes", "prompts_per_step", "samples_per_prompt", "minibatch_size", "ppo_epochs",
                    "max_new_tokens", "max_input_length", "eval_every", "eval_batch_size", "save_every",
                    "kl_patience"]  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.prompts_per_step % world:
            raise ConfigError(f"prompts_per_step {self.prompts_per_step} is not divisible by {world} processes")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("temperature must be > 0, top_p in (0, 1] and top_k >= 0")
        if self.kl_controller not in ("fixed", "adaptive"):
            raise ConfigError(f"kl_controller must be fixed or adaptive, got {self.kl_controller!r}")
        if self.kl_controller == "adaptive" and (self.kl_target <= 0 or self.kl_horizon <= 0):
            raise ConfigError("adaptive KL needs kl_target > 0 and kl_horizon > 0")
        for name in ("rollout_forward_batch_size", "forward_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (or null)")
        if self.warmup_steps < 0 or self.max_grad_norm < 0 or self.learning_rate <= 0:
            raise ConfigError("warmup_steps and max_grad_norm must be >= 0, learning_rate > 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {self.max_steps}")

    @property
    def episodes_per_step(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt

    @property
    def total_steps(self) -> int:
        return math.ceil(self.total_episodes / self.episodes_per_step)


# --- models -----------------------------------------------------------------------------------------------------


class ValueHead(nn.Module):
    """Linear(d, d) -> GELU -> Linear(d, 1): the paper's value MLP (fgrlhf/value.py)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model(hidden).squeeze(-1)


def causal_inputs(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) of left-padded prompt + right-padded response; positions count
    real tokens only, as `generate` numbers them, so a forward reproduces the sampling distribution."""
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def shift_right(response_ids: torch.Tensor, start_id: int) -> torch.Tensor:
    """Decoder inputs of a seq2seq model: start token, then the response without its last token."""
    start = torch.full_like(response_ids[:, :1], start_id)
    return torch.cat([start, response_ids[:, :-1]], dim=1)


def forward_inputs(
    model: nn.Module,
    encoder_decoder: bool,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    encoder_hidden: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | bool | BaseModelOutput]:
    """Keyword arguments of one teacher-forced forward over prompt + response (no KV cache): the prompt to the
    encoder and the shifted response to the decoder (seq2seq), or the concatenation (causal, `causal_inputs`).
    Seq2seq with `encoder_hidden` (B, P, d): the decoder reads that encoder output (`encoder_hidden_once`) and the
    encoder does not run."""
    if encoder_decoder:
        decoder_ids = shift_right(response_ids, model.config.decoder_start_token_id)
        prompt = {"input_ids": prompt_ids} if encoder_hidden is None else {
            "encoder_outputs": BaseModelOutput(last_hidden_state=encoder_hidden)}  # fmt: skip
        return {**prompt, "attention_mask": prompt_mask, "decoder_input_ids": decoder_ids, "use_cache": False}
    input_ids, attention_mask, position_ids = causal_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}


def gathered_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] without materialising the log-softmax: logit[id] - logsumexp(logits), in float32."""
    logits = logits.float()
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def policy_response_logprobs(
    policy: nn.Module,
    encoder_decoder: bool,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    encoder_hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, R) log pi(response token | prompt, earlier response tokens); used for policy and reference alike."""
    length = response_ids.shape[1]
    inputs = forward_inputs(policy, encoder_decoder, prompt_ids, prompt_mask, response_ids, response_mask,
                            encoder_hidden)  # fmt: skip
    if encoder_decoder:
        logits = policy(**inputs).logits
    else:
        logits = policy(**inputs, logits_to_keep=length + 1).logits[:, :length]
    return gathered_logprobs(logits, response_ids)


def response_values(
    backbone: nn.Module,
    head: ValueHead,
    encoder_decoder: bool,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    encoder_hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, R) values: the head on the decoder's last hidden state (seq2seq), or on the last hidden state of the
    position that predicts each response token (causal)."""
    length = response_ids.shape[1]
    inputs = forward_inputs(backbone, encoder_decoder, prompt_ids, prompt_mask, response_ids, response_mask,
                            encoder_hidden)  # fmt: skip
    hidden = backbone(**inputs).last_hidden_state
    if not encoder_decoder:
        start = prompt_ids.shape[1] - 1
        hidden = hidden[:, start : start + length]
    return head(hidden).float()


class PolicyAndValue(nn.Module):
    """Every trained parameter in one module: one DDP wrapper, one optimiser, one checkpoint."""

    def __init__(self, policy: nn.Module, value_backbone: nn.Module, value_head: ValueHead, encoder_decoder: bool):
        super().__init__()
        self.policy = policy
        self.value_backbone = value_backbone
        self.value_head = value_head
        self.encoder_decoder = encoder_decoder

    def logprobs(self, prompt_ids, prompt_mask, response_ids, response_mask, encoder_hidden=None) -> torch.Tensor:
        return policy_response_logprobs(
            self.policy, self.encoder_decoder, prompt_ids, prompt_mask, response_ids, response_mask, encoder_hidden
        )

    def values(self, prompt_ids, prompt_mask, response_ids, response_mask, encoder_hidden=None) -> torch.Tensor:
        return response_values(
            self.value_backbone,
            self.value_head,
            self.encoder_decoder,
            prompt_ids,
            prompt_mask,
            response_ids,
            response_mask,
            encoder_hidden,
        )

    def forward(
        self, prompt_ids, prompt_mask, response_ids, response_mask, prompt_index=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs, values) of the response tokens. Seq2seq with `prompt_index`: each encoder runs once per
        distinct prompt of the batch where that gives the same numbers (`encoder_hidden_once`)."""
        args = (prompt_ids, prompt_mask, response_ids, response_mask)
        policy_hidden = value_hidden = None
        if self.encoder_decoder and prompt_index is not None:
            policy_hidden = encoder_hidden_once(self.policy, prompt_ids, prompt_mask, prompt_index)
            value_hidden = encoder_hidden_once(self.value_backbone, prompt_ids, prompt_mask, prompt_index)
        return self.logprobs(*args, policy_hidden), self.values(*args, value_hidden)


def dropout_active(module: nn.Module) -> bool:
    """True when a forward of `module` draws dropout masks: train mode, and an `nn.Dropout` with p > 0 or a float
    `*dropout*` attribute > 0 (the probability that attention layers such as T5's pass to functional dropout)."""

    def draws(m: nn.Module) -> bool:
        if isinstance(m, nn.Dropout):
            return m.p > 0
        return any("dropout" in k and isinstance(v, float) and v > 0 for k, v in vars(m).items())

    return module.training and any(draws(m) for m in module.modules())


def prompt_groups(prompt_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each run of equal consecutive `prompt_index` values, each row's run number)."""
    _, inverse, counts = torch.unique_consecutive(prompt_index, return_inverse=True, return_counts=True)
    return counts.cumsum(0) - counts, inverse


def encoder_hidden_once(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor | None:
    """(B, P, d) encoder output of a seq2seq `model` for every row, the encoder run once per prompt: the samples of
    one prompt are consecutive rows with the same `prompt_index`, and the output of the prompt's first row is
    repeated to the others (index_select: in a training pass the encoder's gradient sums over those rows, as it
    would over one pass per sample). `chunk` bounds the prompts per encoder call.

    None (encode each row in its own decoder forward, as before) when the encoder draws dropout masks: one pass per
    sample gives each sample a mask of its own, as in the paper's code, and a shared pass would share one mask
    among a prompt's samples. So it applies to every no-grad pass of the rollout (eval mode), and to the training
    passes only with dropout 0."""
    encoder = model.get_encoder()
    if dropout_active(encoder):
        return None
    first, inverse = prompt_groups(prompt_index)
    size = chunk or len(first)
    hidden = torch.cat([
        encoder(input_ids=prompt_ids[rows], attention_mask=prompt_mask[rows]).last_hidden_state
        for rows in first.split(size)
    ])  # fmt: skip
    return hidden.index_select(0, inverse)


def is_encoder_decoder(name_or_path: str) -> bool:
    return bool(getattr(AutoConfig.from_pretrained(name_or_path), "is_encoder_decoder", False))


# transformers' Python tanh-GELU (GPT-2's and T5 v1.1's "gelu_new") -> PyTorch's fused kernel of the same formula,
# 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))); transformers names it "gelu_pytorch_tanh" ("a faster gelu_new")
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def fused_activation_overrides(name_or_path: str) -> dict[str, str]:
    """Config overrides that load a model with the fused kernel of its activation (GPT-2's `activation_function`,
    T5's `dense_act_fn`): the same function (agreement to about 1e-7 in float32), a few element-wise ops fewer in
    every forward and backward; {} when the model's activation has no fused twin."""
    config = AutoConfig.from_pretrained(name_or_path)
    return {key: FUSED_ACTIVATIONS[value] for key in ("activation_function", "dense_act_fn")
            if (value := getattr(config, key, None)) in FUSED_ACTIVATIONS}  # fmt: skip


def load_policy_model(name_or_path: str, encoder_decoder: bool) -> nn.Module:
    model_class = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    return model_class.from_pretrained(name_or_path, dtype=torch.float32, **fused_activation_overrides(name_or_path))


def load_value_model(name_or_path: str, seed: int = 42) -> tuple[nn.Module, ValueHead]:
    """(backbone, head) from a value-model directory this stage wrote, or a fresh head (seeded) on any model."""
    backbone = AutoModel.from_pretrained(name_or_path, dtype=torch.float32, **fused_activation_overrides(name_or_path))
    hidden_size = backbone.config.get_text_config().hidden_size
    with torch.random.fork_rng(devices=[]):  # a seeded head that leaves the global RNG alone
        torch.manual_seed(seed)
        head = ValueHead(hidden_size)
    head_file = Path(name_or_path) / VALUE_HEAD_FILE
    if head_file.is_file():
        head.load_state_dict(load_file(head_file))
    return backbone, head


def response_mask_from_ids(ids: torch.Tensor, eos_ids: torch.Tensor) -> torch.Tensor:
    """(B, R) True on each generated token up to and including the first eos (all of them when there is none)."""
    is_eos = torch.isin(ids, eos_ids).long()
    return (is_eos.cumsum(dim=1) - is_eos) == 0


# --- prompts ----------------------------------------------------------------------------------------------------


def load_prompts(path: str | Path) -> tuple[list[str], list[str]]:
    """(prompt_id, prompt) columns of a prompts Parquet file; DataError on a missing or empty prompt."""
    table = pq.read_table(path)
    missing = [name for name in ("prompt_id", "prompt") if name not in table.column_names]
    if missing:
        raise DataError(str(path), None, missing[0], "column is missing (expected a PROMPTS or QA_PROMPTS table)")
    ids = table.column("prompt_id").to_pylist()
    prompts = table.column("prompt").to_pylist()
    for record, prompt in enumerate(prompts):
        if prompt is None or not prompt.strip():
            raise DataError(str(path), record, "prompt", "is empty")
    if not prompts:
        raise DataError(str(path), None, None, "no prompts")
    return [str(i) for i in ids], prompts


def encode_policy_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], encoder_decoder: bool, max_input_length: int
) -> list[list[int]]:
    """Causal: bos + prompt, left-truncated (its end, next to the response, is kept). Seq2seq: the tokenizer's own
    special tokens (T5: + eos), right-truncated as the paper's collate_fn does."""
    if not prompts:
        return []
    if not encoder_decoder:
        return encode_prompts(tokenizer, prompts, max_input_length)
    encoded = tokenizer(prompts, truncation=True, max_length=max_input_length)["input_ids"]
    return [list(ids) for ids in encoded]


def step_prompt_indices(step: int, n_prompts: int, prompts_per_step: int, seed: int) -> list[int]:
    """The global prompts of PPO step `step`: a seeded permutation per pass over the prompts, cut into whole steps."""
    steps_per_pass = n_prompts // prompts_per_step
    epoch, position = divmod(step, steps_per_pass)
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n_prompts, generator=generator).tolist()
    return order[position * prompts_per_step : (position + 1) * prompts_per_step]


# --- rollout ----------------------------------------------------------------------------------------------------


def length_grouped_passes(groups: torch.Tensor, lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Row indices of the training passes: runs of equal consecutive `groups` values (a prompt's samples) stay
    together, longest run first (by its longest `lengths`; ties in rollout order), packed into passes of at most
    `size` rows; a run longer than `size` is cut into pieces of `size`. Passes of similar lengths pad little."""
    counts = torch.unique_consecutive(groups, return_counts=True)[1].tolist()
    runs = [piece for run in torch.arange(len(groups)).split(counts) for piece in run.split(size)]
    runs.sort(key=lambda run: -int(lengths[run].max()))
    passes, current, rows = [], [], 0
    for run in runs:
        if current and rows + len(run) > size:
            passes.append(torch.cat(current))
            current, rows = [], 0
        current.append(run)
        rows += len(run)
    if current:
        passes.append(torch.cat(current))
    return passes


@dataclass
class Rollout:
    """One process's samples of a PPO step; every (B, R) tensor is 0 past each response's end."""

    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, R)
    response_mask: torch.Tensor  # (B, R) bool
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    ref_logprobs: torch.Tensor
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    prompt_index: torch.Tensor | None = None  # (B,) the prompt of each sample (its samples are consecutive rows)
    length_weight: torch.Tensor | None = None  # (B,) its minibatch's length weight (`minibatch_token_weights`)
    token_share: torch.Tensor | None = None  # (B,) 1 / its minibatch's token count

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, start: int, stop: int, trim: bool, left_padded_prompts: bool) -> Rollout:
        """Rows start:stop; with `trim`, the padding columns that no selected row needs are cut off."""
        return self.take(torch.arange(start, min(stop, len(self))), trim, left_padded_prompts)

    def take(self, indices: torch.Tensor, trim: bool, left_padded_prompts: bool) -> Rollout:
        """The rows `indices` in that order; with `trim`, the padding columns that no selected row needs are cut
        off."""
        rows = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        indices = indices.to(self.response_ids.device)
        rows = {k: (v.index_select(0, indices) if v is not None else None) for k, v in rows.items()}
        if trim:
            length = int(rows["response_mask"].sum(dim=1).max())
            for name in ("response_ids", "response_mask", "old_logprobs", "old_values", "ref_logprobs",
                         "advantages", "returns"):  # fmt: skip
                if rows[name] is not None:
                    rows[name] = rows[name][:, :length]
            width = int(rows["prompt_mask"].sum(dim=1).max())
            columns = slice(-width, None) if left_padded_prompts else slice(0, width)
            rows["prompt_ids"], rows["prompt_mask"] = rows["prompt_ids"][:, columns], rows["prompt_mask"][:, columns]
        return Rollout(**rows)


class PPOEngine:
    """The models, tokenizer and rules of one PPO run: `rollout` samples and scores one step's prompts,
    `ppo_epochs` optimises on it, `evaluate` scores greedy responses."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: nn.Module,  # the prepared PolicyAndValue
        reference: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        reward_functions: list[RewardFunction],
        config: PPOConfig,
        encoder_decoder: bool,
        optimizer=None,
        scheduler=None,
    ):
        self.accelerator = accelerator
        self.model = model
        self.reference = reference
        self.tokenizer = tokenizer
        self.reward_functions = reward_functions
        self.config = config
        self.encoder_decoder = encoder_decoder
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.pad_id = pad_id_of(tokenizer)
        policy = self.unwrapped.policy
        eos = policy.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        if not eos:
            raise ConfigError(f"neither the policy nor tokenizer {tokenizer.name_or_path!r} defines an eos token")
        self.eos_ids = torch.tensor(sorted(eos), device=accelerator.device)
        # old log-probs from generate()'s logits instead of a policy forward (see the module doc)
        self.logprobs_from_generation = True

    @property
    def unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes (identity in a single process)."""
        if self.accelerator.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor, reduction="sum")

    # rollout ----------------------------------------------------------------------------------------------------

    def pad_prompts(self, token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = pad_right if self.encoder_decoder else pad_left
        ids, mask = pad(token_ids, self.pad_id)
        return ids.to(self.accelerator.device), mask.to(self.accelerator.device)

    @torch.no_grad()
    def generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sample: bool, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(response_ids, response_mask) of n responses per prompt (consecutive rows), padding columns trimmed."""
        response_ids, response_mask, _ = self.generate_with_logprobs(prompt_ids, prompt_mask, sample, n, False)
        return response_ids, response_mask

    @torch.no_grad()
    def generate_with_logprobs(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sample: bool, n: int, logprobs: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`generate`, and with `logprobs` the (B, R) log-probs of the response tokens under the policy, read off
        generate()'s raw logits (`output_logits`: before temperature and top-k/top-p, the same definition as the
        teacher-forced forward's); 0 past each response's end."""
        config = self.config
        kwargs = {
            "max_new_tokens": config.max_new_tokens,
            "num_return_sequences": n,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_ids.tolist(),
            "use_cache": True,
            "return_dict_in_generate": True,
            "output_logits": logprobs,
        }
        if sample:
            kwargs.update(do_sample=True, top_k=config.top_k, top_p=config.top_p, temperature=config.temperature)
        else:
            kwargs.update(do_sample=False, num_beams=1, top_k=None, top_p=None, temperature=None)
        policy = self.unwrapped.policy
        policy.eval()
        with self.accelerator.autocast():
            out = policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kwargs)
        sequences = out.sequences
        generated = sequences[:, 1:] if self.encoder_decoder else sequences[:, prompt_ids.shape[1] :]
        mask = response_mask_from_ids(generated, self.eos_ids)
        length = max(int(mask.sum(dim=1).max()), 1)
        response_ids = torch.where(mask, generated, torch.full_like(generated, self.pad_id))[:, :length]
        response_ids, mask = response_ids.contiguous(), mask[:, :length].contiguous()
        if not logprobs:
            return response_ids, mask, None
        steps = [gathered_logprobs(logits, response_ids[:, t]) for t, logits in enumerate(out.logits[:length])]
        return response_ids, mask, torch.where(mask, torch.stack(steps, dim=1), 0.0)

    @torch.no_grad()
    def score_rollout(
        self, prompt_ids, prompt_mask, response_ids, response_mask, prompt_index=None, old_logprobs=None
    ) -> tuple[torch.Tensor, ...]:
        """(old log-probs, old values, reference log-probs): one batched no-grad forward of each model; none of the
        policy when `old_logprobs` (from generation) are given. Seq2seq with `prompt_index`: each model's encoder
        runs once per prompt (`encoder_hidden_once`), its decoder once per sample."""
        unwrapped = self.unwrapped
        unwrapped.eval()
        chunk = self.config.rollout_forward_batch_size or len(response_ids)
        models = {"value": unwrapped.value_backbone, "reference": self.reference}
        if old_logprobs is None:
            models["policy"] = unwrapped.policy
        parts = []
        with self.accelerator.autocast():
            hidden = {}
            if self.encoder_decoder and prompt_index is not None:
                hidden = {name: encoder_hidden_once(model, prompt_ids, prompt_mask, prompt_index, chunk)
                          for name, model in models.items()}  # fmt: skip
            for start in range(0, len(response_ids), chunk):
                rows = slice(start, start + chunk)
                args = tuple(t[rows] for t in (prompt_ids, prompt_mask, response_ids, response_mask))
                encoded = {name: h[rows] for name, h in hidden.items() if h is not None}
                parts.append(
                    (
                        old_logprobs[rows] if old_logprobs is not None
                        else unwrapped.logprobs(*args, encoded.get("policy")),
                        unwrapped.values(*args, encoded.get("value")),
                        policy_response_logprobs(self.reference, self.encoder_decoder, *args, encoded.get("reference")),
                    )
                )  # fmt: skip
        joined = [torch.cat(tensors) for tensors in zip(*parts, strict=True)]
        return tuple(torch.where(response_mask, t, torch.zeros_like(t)) for t in joined)

    def rewards_of(
        self, prompts: list[str], response_ids: torch.Tensor, response_mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """((B, R) summed per-token rewards, per-function (B,) reward sums, per-statistic (B,) values)."""
        lengths = response_mask.sum(dim=1).tolist()
        token_ids = [row[:n] for row, n in zip(response_ids.tolist(), lengths, strict=True)]
        clean_up = self.config.clean_up_tokenization_spaces
        responses = [decode_tokens(self.tokenizer, ids, clean_up) for ids in token_ids]
        total = torch.zeros(response_ids.shape, dtype=torch.float32, device=response_ids.device)
        per_function, statistics = {}, {}
        for function in self.reward_functions:
            rewards, stats = check_reward_result(function(prompts, responses, token_ids), token_ids, function.name)
            flat = torch.tensor(list(chain.from_iterable(rewards)), dtype=torch.float32, device=total.device)
            if not torch.isfinite(flat).all():
                raise ValueError(f"reward {function.name!r} returned a non-finite reward")
            dense = torch.zeros_like(total)
            dense[response_mask] = flat  # rows are prefixes, so row-major order matches the concatenation
            total += dense
            per_function[function.name] = dense.sum(dim=1)
            for key, values in stats.items():
                statistics[f"{function.name}/{key}"] = torch.tensor(values, dtype=torch.float64, device=total.device)
        return total, per_function, statistics

    def rollout(self, prompt_token_ids: list[list[int]], prompts: list[str], kl_coef: float) -> tuple[Rollout, dict]:
        """Sample, score and compute advantages for this process's prompts; returns the rollout and global stats."""
        config = self.config
        n = config.samples_per_prompt
        prompt_ids, prompt_mask = self.pad_prompts(prompt_token_ids)
        response_ids, response_mask, generated_logprobs = self.generate_with_logprobs(
            prompt_ids, prompt_mask, sample=True, n=n, logprobs=self.logprobs_from_generation
        )
        prompt_index = torch.arange(len(prompt_token_ids), device=prompt_ids.device).repeat_interleave(n)
        prompt_ids = prompt_ids.repeat_interleave(n, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0)
        old_logprobs, old_values, ref_logprobs = self.score_rollout(
            prompt_ids, prompt_mask, response_ids, response_mask, prompt_index, generated_logprobs
        )
        sample_prompts = [p for p in prompts for _ in range(n)]
        raw, per_function, statistics = self.rewards_of(sample_prompts, response_ids, response_mask)
        penalised, kl = kl_penalised_rewards(raw, old_logprobs, ref_logprobs, response_mask, kl_coef)
        reduce = self.reduce_sum
        rewards = penalised
        if config.whiten_rewards:
            rewards = masked_whiten(penalised, response_mask, shift_mean=False, reduce=reduce)
        advantages, returns = gae_advantages(rewards, old_values, response_mask, config.gamma, config.lam)
        advantages = masked_whiten(advantages, response_mask, shift_mean=True, reduce=reduce)
        rollout = Rollout(prompt_ids, prompt_mask, response_ids, response_mask, old_logprobs, old_values,
                          ref_logprobs, advantages, returns, prompt_index)  # fmt: skip
        # global means over samples of per-response sums (the paper's logged rewards/raw); the KL is averaged as the
        # original averages it for its log and its early stop: the mean of the minibatches' means
        lengths = response_mask.sum(dim=1)
        columns = {
            "reward": sequence_sums(raw, response_mask),
            "penalised_reward": sequence_sums(penalised, response_mask),
            "kl": sequence_sums(kl, response_mask),
            "response_length": lengths,
            **{f"reward:{k}": v for k, v in per_function.items()},
            **{f"stat:{k}": v for k, v in statistics.items()},
        }
        means = self.global_means(columns)
        means["kl"] = mean_of_minibatch_means(columns["kl"], config.minibatch_size, reduce)
        return rollout, means

    def global_means(self, columns: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean over every process's samples of each (B,) column, with one all-reduce (same order everywhere)."""
        names = list(columns)
        count = torch.tensor(float(next(iter(columns.values())).shape[0]), dtype=torch.float64)
        sums = torch.stack([columns[name].double().sum().cpu() for name in names] + [count])
        totals = self.reduce_sum(sums.to(self.accelerator.device)).tolist()
        return {name: total / totals[-1] for name, total in zip(names, totals[:-1], strict=True)}

    # optimisation -----------------------------------------------------------------------------------------------

    def training_passes(self, rollout: Rollout) -> list[Rollout]:
        """The rollout as the epochs' forward/backward passes (padding trimmed; the same every epoch): each sample
        carries its minibatch's weights (`minibatch_token_weights`: minibatches of `minibatch_size` rows in order,
        length weight = mean response length / the mean over the whole rollout of every process), and the passes
        hold up to `forward_batch_size` samples, whole prompts grouped by response length (`length_grouped_passes`)."""
        global_mean_length = mean_response_length(rollout.response_mask, self.reduce_sum)
        weight, share = minibatch_token_weights(rollout.response_mask, self.config.minibatch_size, global_mean_length)
        rollout = dataclasses.replace(rollout, length_weight=weight, token_share=share)
        size = self.config.forward_batch_size or self.config.minibatch_size
        lengths = rollout.response_mask.sum(dim=1)
        groups = rollout.prompt_index if rollout.prompt_index is not None else torch.arange(len(rollout))
        return [
            rollout.take(rows, trim=True, left_padded_prompts=not self.encoder_decoder)
            for rows in length_grouped_passes(groups.cpu(), lengths.cpu(), size)
        ]

    def accumulate_epoch_gradients(self, passes: list[Rollout]) -> dict[str, float]:
        """Backward of every pass's share of the epoch's weighted PPO loss (`losses.ppo.weighted_ppo_losses`);
        gradients add up to those of one backward per minibatch (DDP syncs on the last pass only).

        Returns the sums over minibatches of the weighted policy and value losses and of the clip fraction.
        """
        config = self.config
        totals = torch.zeros(3, dtype=torch.float64, device=self.accelerator.device)
        for index, batch in enumerate(passes):
            last = index == len(passes) - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync:
                mask = batch.response_mask
                logprobs, values = self.model(
                    batch.prompt_ids, batch.prompt_mask, batch.response_ids, mask, batch.prompt_index
                )
                loss, policy_part, value_part, clip_part = weighted_ppo_losses(
                    logprobs, values, batch.old_logprobs, batch.old_values, batch.advantages, batch.returns, mask,
                    batch.length_weight, batch.token_share, config.cliprange, config.cliprange_value,
                    config.pg_coef, config.vf_coef,
                )  # fmt: skip
                self.accelerator.backward(loss)
            totals += torch.stack([policy_part.detach(), value_part.detach(), clip_part.detach()]).double()
        return dict(zip(("policy_loss", "value_loss", "clip_fraction"), totals.tolist(), strict=True))

    def clip_gradients(self) -> None:
        """With `max_grad_norm` > 0, clip the norm of the gradient of every trained parameter, policy and value
        together, as the original's current fgrlhf/ppo.py does (its first release clipped the two separately)."""
        if self.config.max_grad_norm > 0:
            self.accelerator.unscale_gradients()
            torch.nn.utils.clip_grad_norm_(list(self.unwrapped.parameters()), self.config.max_grad_norm)

    def optimisation_step(self) -> None:
        """`clip_gradients`, one optimiser step, one scheduler step."""
        self.clip_gradients()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def ppo_epochs(self, rollout: Rollout) -> dict[str, float]:
        """`ppo_epochs` passes over the rollout, one optimiser step each; losses of the last epoch (global means)."""
        passes = self.training_passes(rollout)
        n_minibatches = math.ceil(len(rollout) / self.config.minibatch_size)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals = {}
        for _ in range(self.config.ppo_epochs):
            totals = self.accumulate_epoch_gradients(passes)
            self.optimisation_step()
        names = sorted(totals)
        sums = torch.tensor([totals[k] for k in names] + [float(n_minibatches)], dtype=torch.float64)
        reduced = self.reduce_sum(sums.to(self.accelerator.device)).tolist()
        return {name: value / reduced[-1] for name, value in zip(names, reduced[:-1], strict=True)}

    # evaluation -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, prompt_token_ids: list[list[int]], prompts: list[str]) -> dict[str, float]:
        """Mean reward (total and per function) of greedy responses to this process's share of the eval prompts."""
        columns: dict[str, list[torch.Tensor]] = {}
        size = self.config.eval_batch_size
        for start in range(0, len(prompts), size):
            prompt_ids, prompt_mask = self.pad_prompts(prompt_token_ids[start : start + size])
            response_ids, response_mask = self.generate(prompt_ids, prompt_mask, sample=False, n=1)
            total, per_function, _ = self.rewards_of(prompts[start : start + size], response_ids, response_mask)
            for name, value in {"reward": total.sum(dim=1), **per_function}.items():
                columns.setdefault(name, []).append(value)
        names = ["reward", *[f.name for f in self.reward_functions]]
        local = {name: torch.cat(columns[name]) if name in columns else torch.zeros(0) for name in names}
        sums = [local[name].double().sum().item() for name in names] + [float(len(prompts))]
        totals = self.reduce_sum(torch.tensor(sums, dtype=torch.float64, device=self.accelerator.device)).tolist()
        return {name: value / max(totals[-1], 1.0) for name, value in zip(names, totals[:-1], strict=True)}


# --- the stage --------------------------------------------------------------------------------------------------


def kl_controller_of(config: PPOConfig):
    if config.kl_controller == "adaptive":
        return AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    return FixedKLController(config.kl_coef)


def named_values(values: dict[str, float]) -> list[dict]:
    return [{"name": name, "value": value} for name, value in values.items()]


def log_row(step: int, config: PPOConfig, means: dict, losses: dict, kl_coef: float, learning_rate: float) -> dict:
    """One PPO_LOG row: global means over the step's samples (the KL: over its minibatches, see the module doc);
    losses are the last epoch's minibatch means."""
    return {
        "step": step,
        "episodes": step * config.episodes_per_step,
        "reward": means["reward"],
        "rewards": named_values({k[len("reward:") :]: v for k, v in means.items() if k.startswith("reward:")}),
        "statistics": named_values({k[len("stat:") :]: v for k, v in means.items() if k.startswith("stat:")}),
        "penalised_reward": means["penalised_reward"],
        "kl": means["kl"],
        "kl_coef": kl_coef,
        "policy_loss": losses["policy_loss"],
        "value_loss": losses["value_loss"],
        "clip_fraction": losses["clip_fraction"],
        "response_length": means["response_length"],
        "learning_rate": learning_rate,
        "eval_reward": None,
        "eval_rewards": None,
    }


def save_value_model(
    model: PolicyAndValue, state_dict: dict, tokenizer: PreTrainedTokenizerBase, output_dir: Path, meta: dict
) -> None:
    backbone_state = {k[len("value_backbone.") :]: v for k, v in state_dict.items() if k.startswith("value_backbone.")}
    model.value_backbone.save_pretrained(output_dir, state_dict=backbone_state)
    head_state = {k[len("value_head.") :]: v.detach().contiguous().cpu() for k, v in state_dict.items()
                  if k.startswith("value_head.")}  # fmt: skip
    save_file(head_state, output_dir / VALUE_HEAD_FILE)
    tokenizer.save_pretrained(output_dir)
    write_json({"head": "Linear(d, d) -> GELU -> Linear(d, 1)", **meta}, output_dir / VALUE_META_FILE)


def frozen_dtype(mixed_precision: str) -> torch.dtype | None:
    """bfloat16 under bf16 mixed precision, where the trained models compute in bf16 (autocast over float32 master
    weights): PPO's frozen models (reference, reward models) are then kept in bf16 on every device. None otherwise:
    the reference in float32 (the policy's dtype, so the KL is 0 before any update), the reward models as their
    spec's `dtype` asks (fp16 is not applied to frozen models: T5 overflows in float16 weights)."""
    return torch.bfloat16 if mixed_precision == "bf16" else None


def frozen_models_of(function: RewardFunction) -> list[nn.Module]:
    """The torch models a reward function scores with (its `frozen_models()`; none for e.g. a toxicity API)."""
    method = getattr(function, "frozen_models", None)
    return list(method()) if method is not None else []


def load_frozen_models(
    policy_path: str,
    encoder_decoder: bool,
    reward_functions: list[RewardFunction],
    device: torch.device,
    mixed_precision: str,
) -> nn.Module:
    """The frozen reference (the initial policy) on `device`; under bf16 mixed precision it and the reward
    functions' models are put in bf16 on every device, the CPU included (`inference.load_for_inference` keeps the
    CPU in float32, while bf16 mixed precision computes the trained models in bf16 there as well)."""
    frozen = frozen_dtype(mixed_precision)
    reference = load_for_inference(
        AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM,
        policy_path,
        device=device,
        dtype=frozen or torch.float32,
    )
    if frozen is not None:
        for model in [reference, *chain.from_iterable(frozen_models_of(f) for f in reward_functions)]:
            model.to(frozen)
    return reference


def ppo_optimizer(model: nn.Module, config: PPOConfig) -> torch.optim.Optimizer:
    """Adam (eps `adam_eps`, the paper's) over every trained parameter of policy, value body and value head; PyTorch's
    fused implementation (one kernel over all parameters: the same update rule) where it applies, i.e. float32
    parameters on the CPU or a CUDA device (the master weights under any `mixed_precision`)."""
    parameters = list(model.parameters())
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in parameters)
    return torch.optim.Adam(parameters, lr=config.learning_rate, eps=config.adam_eps, fused=fused)


def train_ppo(
    prompts_path: str,
    policy_path: str,
    value_path: str,
    reward_spec: list[dict],
    output_dir: str,
    value_output_dir: str,
    work_dir: str,
    config: PPOConfig,
    eval_prompts_path: str | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train the policy with PPO and write the outputs (see the module doc); returns the training log rows.

    `on_step(row)` is called on every process after each step's row is complete, before its checkpoint (tests use
    it to interrupt a run).
    """
    world = world_size_from_env()
    config.validate(world)
    _, prompts = load_prompts(prompts_path)  # fails early on bad input
    if len(prompts) < config.prompts_per_step:
        raise ConfigError(f"prompts_per_step {config.prompts_per_step} exceeds the {len(prompts)} prompts")
    eval_prompts = load_prompts(eval_prompts_path)[1] if eval_prompts_path else []
    accelerator = build_accelerator(mixed_precision=config.mixed_precision)
    if accelerator.state.deepspeed_plugin is not None:
        raise ConfigError("train-ppo runs on one process or DDP (config/accelerate/ddp.yaml), not DeepSpeed")
    set_seed(config.seed)  # the same initial weights on every process

    encoder_decoder = is_encoder_decoder(policy_path)
    if is_encoder_decoder(value_path) != encoder_decoder:
        raise ConfigError(f"value model {value_path!r} is not of the policy's family (seq2seq vs causal)")
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    reward_functions = build_reward_functions(reward_spec, tokenizer)
    policy = load_policy_model(policy_path, encoder_decoder)
    reference = load_frozen_models(policy_path, encoder_decoder, reward_functions, accelerator.device,
                                   config.mixed_precision)  # fmt: skip
    value_backbone, value_head = load_value_model(value_path, seed=config.seed)
    if value_backbone.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ConfigError(f"value model {value_path!r} has a smaller vocabulary than the policy's tokenizer")
    model = PolicyAndValue(policy, value_backbone, value_head, encoder_decoder)
    if config.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        value_backbone.gradient_checkpointing_enable()
    train_tokens = encode_policy_prompts(tokenizer, prompts, encoder_decoder, config.max_input_length)
    eval_tokens = encode_policy_prompts(tokenizer, eval_prompts, encoder_decoder, config.max_input_length)

    optimizer = ppo_optimizer(model, config)
    total_steps = config.total_steps
    model, optimizer, scheduler = prepare_with_schedule(
        accelerator, model, optimizer, "linear", config.warmup_steps * config.ppo_epochs,
        total_steps * config.ppo_epochs,
    )  # fmt: skip
    last_step = min(total_steps, config.max_steps) if config.max_steps is not None else total_steps

    paths = [prompts_path, policy_path, value_path] + ([eval_prompts_path] if eval_prompts_path else [])
    set_seed(config.seed + 1, device_specific=True)  # sampling: a different stream on every process ...
    store, start_step, history = open_checkpoints(  # ... restored with the rest on resume
        work_dir, accelerator, last_step, config, paths,
        stage="ppo", rewards=reward_spec, world=world, policy=policy_path, value=value_path, eval=eval_prompts_path,
    )  # fmt: skip

    controller = kl_controller_of(config)
    early_stop = KLEarlyStop(config.kl_threshold, config.kl_patience, config.kl_patience_consecutive)
    for row in history:  # rebuild the controller and the early-stop count from the log
        controller.value = row["kl_coef"]
        controller.update(row["kl"], config.episodes_per_step)
        early_stop.update(row["kl"])
    engine = PPOEngine(accelerator, model, reference, tokenizer, reward_functions, config, encoder_decoder,
                       optimizer, scheduler)  # fmt: skip
    rank, per_process = accelerator.process_index, config.prompts_per_step // world
    eval_share = slice(rank, None, world)
    stop = StopSignal()
    stopped_early = False
    if start_step == 0:
        log.info("PPO from %s: %d prompts, %d steps of %d episodes", policy_path, len(prompts), last_step,
                 config.episodes_per_step)  # fmt: skip
    for step in range(start_step, last_step):
        indices = step_prompt_indices(step, len(prompts), config.prompts_per_step, config.seed)
        mine = indices[rank * per_process : (rank + 1) * per_process]
        kl_coef = controller.value
        rollout, means = engine.rollout([train_tokens[i] for i in mine], [prompts[i] for i in mine], kl_coef)
        learning_rate = scheduler.get_last_lr()[0]
        losses = engine.ppo_epochs(rollout)
        done = step + 1
        row = log_row(done, config, means, losses, kl_coef, learning_rate)
        controller.update(means["kl"], config.episodes_per_step)
        stopped_early = early_stop.update(means["kl"])
        if eval_prompts and (done % config.eval_every == 0 or done == last_step or stopped_early):
            scores = engine.evaluate(eval_tokens[eval_share], eval_prompts[eval_share])
            row["eval_reward"] = scores.pop("reward")
            row["eval_rewards"] = named_values(scores)
        history.append(row)
        if done % 10 == 0 or done == last_step or done == 1:
            log.info("step %d/%d reward %.4f kl %.4f policy loss %.4f value loss %.4f", done, last_step,
                     row["reward"], row["kl"], row["policy_loss"], row["value_loss"])  # fmt: skip
        if on_step is not None:
            on_step(row)
        if stopped_early:
            log.warning("KL %.3f > %.3f on %d steps: stopping early at step %d", row["kl"], config.kl_threshold,
                        early_stop.count, done)  # fmt: skip
            break
        checkpoint_after_step(store, accelerator, stop, done, last_step, config.save_every, history)

    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        meta = {
            "policy_init": policy_path,
            "value_init": value_path,
            "family": "seq2seq" if encoder_decoder else "causal",
            "training": dataclasses.asdict(config),
            "rewards": reward_spec,
            "steps": len(history),
            "total_steps": total_steps,
            "episodes": len(history) * config.episodes_per_step,
            "stopped_early": stopped_early,
            "first": {k: history[0][k] for k in ("reward", "kl", "kl_coef", "response_length")},
            "final": {k: history[-1][k] for k in ("reward", "kl", "kl_coef", "response_length")},
            "processes": world,
        }
        with atomic_directory(value_output_dir) as tmp:
            save_value_model(unwrapped, state_dict, tokenizer, tmp, {k: meta[k] for k in ("value_init", "family")})
        with atomic_directory(output_dir) as tmp:
            policy_state = {k[len("policy.") :]: v for k, v in state_dict.items() if k.startswith("policy.")}
            unwrapped.policy.save_pretrained(tmp, state_dict=policy_state)
            tokenizer.save_pretrained(tmp)
            write_rows(history, tmp / LOG_FILE, PPO_LOG)
            write_json(meta, tmp / META_FILE)
        log.info("saved %s and %s after %d steps", output_dir, value_output_dir, len(history))
    store.remove(accelerator)
    return history


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, help="prompts Parquet (PROMPTS or QA_PROMPTS)")
    parser.add_argument("--policy", required=True, help="policy directory or hub id (seq2seq or causal LM)")
    parser.add_argument("--value-model", default=None, help="value-model init (same family; default: the policy)")
    parser.add_argument("--reward-spec", required=True, help="reward spec: a JSON file, or the JSON list itself")
    parser.add_argument("--eval-prompts", default=None, help="prompts Parquet for greedy evaluation (optional)")
    parser.add_argument("--output", required=True, help="policy directory to write (with the log and summary)")
    parser.add_argument("--value-output", required=True, help="value-model directory to write")
    add_run_arguments(parser, PPOConfig)


def reward_spec_of(text: str) -> list[dict]:
    """A reward spec from a JSON file path, or from the JSON list given inline."""
    if text.lstrip().startswith("["):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--reward-spec: {error}") from error
        if not isinstance(spec, list):
            raise ConfigError("--reward-spec must be a JSON list")
        return spec
    return load_reward_spec(text)


def main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    config = dataclass_from_args(PPOConfig, args)
    train_ppo(
        args.prompts,
        args.policy,
        args.value_model or args.policy,
        reward_spec_of(args.reward_spec),
        args.output,
        args.value_output,
        args.work_dir,
        config,
        eval_prompts_path=args.eval_prompts,
    )


if __name__ == "__main__":  # `python -m feedbackflow.rl.ppo ...`, the stage without the cli.py registry
    run_as_module("python -m feedbackflow.rl.ppo", "PPO training", configure, main, log)
