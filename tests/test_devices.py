"""Device placement on a CPU-only machine (issue 19, blocker 1): no tensor is made without the device it meets.

On a GPU, a tensor made without `device=` lands on the CPU and meets CUDA tensors: stacking them, indexing with them
or handing them to NCCL fails. Two CPU-side stand-ins catch the same mistakes here:

- `elsewhere()`: the inputs are real CPU tensors and the DEFAULT device is "meta", so every factory call that omits
  `device=` (torch.tensor, zeros, ones, full, arange, ...) makes a meta tensor. Mixing it with the CPU inputs raises
  (meta is stricter than CUDA: even a 0-dim tensor may not mix), and a value computed on it comes out on meta. The
  outputs must be the same numbers as without the context, on the CPU.
- inputs on the "meta" device themselves, for functions whose result is not read back (meta tensors hold no values).

Only functions that compute on the device of their inputs are tested with `elsewhere()`: helpers that build token
tensors on the CPU on purpose and move them with `.to(device)` (pad_right, pad_left, pad_scores, the micro-batch
builders) would be flagged wrongly; those are tested by passing device="meta".

What only a GPU can show, and these tests cannot: NCCL's own requirements of the all-reduced tensors beyond their
device, the models' device after `accelerator.prepare` / `.to(device)`, and whether a reward model loaded by a reward
function ends up on the GPU of its process (tests/test_ppo_training.py runs the engine on the CPU only).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from feedbackflow.losses import ppo, rrhf
from feedbackflow.losses import reward as rl
from feedbackflow.models.reward_model import pool_hidden_states
from feedbackflow.papers.fgrlhf.qa.reward_training import pair_loss_sum, token_loss_sum
from feedbackflow.papers.ilf.opt_rm import answer_token_loss
from feedbackflow.papers.rrhf.training import shared_prompt_attention_mask
from feedbackflow.rl.ppo import (
    PPOConfig,
    PPOEngine,
    causal_inputs,
    gathered_logprobs,
    response_mask_from_ids,
    shift_right,
)
from feedbackflow.rl.rewards import TargetTokenReward
from feedbackflow.tiny.models import train_tokenizer

CPU = torch.device("cpu")


def elsewhere():
    """Factory calls without `device=` make meta tensors inside this context (see the module doc)."""
    return torch.device("meta")


def same_on_cpu(plain, moved) -> None:
    """`moved` (computed under `elsewhere()`) equals `plain` and every tensor in it is on the CPU."""
    plain = plain if isinstance(plain, tuple) else (plain,)
    moved = moved if isinstance(moved, tuple) else (moved,)
    for a, b in zip(plain, moved, strict=True):
        if isinstance(a, torch.Tensor):
            assert b.device == CPU
            torch.testing.assert_close(b, a, equal_nan=True)
        else:
            assert b == pytest.approx(a)


def check_both(function, *args, **kwargs) -> None:
    plain = function(*args, **kwargs)
    with elsewhere():
        moved = function(*args, **kwargs)
    same_on_cpu(plain, moved)


def reduce_on(device: torch.device, other: list[float]):
    """A stand-in for the all-reduce (sum) over 2 processes: checks that the sums it is handed are on `device`
    (NCCL takes GPU tensors only) and adds the other process's sums."""

    def reduce(sums: torch.Tensor) -> torch.Tensor:
        assert sums.device == device, f"all-reduce of a tensor on {sums.device}, expected {device}"
        return sums + torch.tensor(other, dtype=sums.dtype, device=sums.device)

    return reduce


# right-padded rollout of 2 responses: 3 and 1 tokens
MASK = torch.tensor([[True, True, True], [True, False, False]])
VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), float("inf")]])


def test_mean_response_length_keeps_its_sums_on_the_mask_device():
    # 4 tokens over 2 samples = 2.0; with the other process's 6 tokens over 2 samples: 10 / 4 = 2.5.
    with elsewhere():
        assert ppo.mean_response_length(MASK) == 2.0
        assert ppo.mean_response_length(MASK, reduce_on(CPU, [6.0, 2.0])) == 2.5

    # a mask on the meta device (as on a GPU) hands the all-reduce its sums on that device; meta tensors hold no
    # values, so this stand-in returns the sums of a 2 x 3 all-ones mask: 6 tokens over 2 samples
    def all_reduce_on_meta(sums: torch.Tensor) -> torch.Tensor:
        assert sums.device.type == "meta"
        return torch.tensor([6.0, 2.0], dtype=torch.float64)

    assert ppo.mean_response_length(torch.ones(2, 3, device="meta"), all_reduce_on_meta) == 3.0


def test_ppo_statistics_and_losses_stay_on_the_input_device():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, 0.0, 0.0]])
    old = torch.tensor([[-1.2, -1.5, -0.5], [-0.1, 0.0, 0.0]])
    advantages = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]])
    check_both(ppo.masked_sum, VALUES, MASK)
    check_both(ppo.masked_moments, VALUES, MASK)
    check_both(ppo.masked_moments, VALUES, MASK, reduce=reduce_on(CPU, [3.0, 5.0, 2.0]))
    check_both(ppo.masked_whiten, VALUES, MASK, shift_mean=False, reduce=reduce_on(CPU, [3.0, 5.0, 2.0]))
    check_both(ppo.masked_whiten, VALUES, MASK)
    check_both(ppo.kl_penalised_rewards, VALUES, logprobs, old, MASK, 0.2)
    check_both(ppo.sequence_sums, VALUES, MASK)
    check_both(ppo.gae_advantages, VALUES, advantages, MASK, 1.0, 0.95)
    check_both(ppo.clipped_policy_loss, logprobs, old, advantages, MASK, 0.2)
    check_both(ppo.clipped_value_loss, advantages, old, logprobs, MASK, 0.2)
    check_both(ppo.minibatch_length_weight, MASK, 2.5)
    check_both(ppo.ppo_loss, torch.tensor(0.5), torch.tensor(2.0), 0.8)


def test_ppo_engine_tensors_stay_on_the_input_device():
    prompt_ids, prompt_mask = torch.tensor([[0, 5, 6], [0, 0, 7]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    response_ids = torch.tensor([[8, 1, 2], [9, 9, 1]])
    check_both(causal_inputs, prompt_ids, prompt_mask, response_ids, MASK)
    check_both(shift_right, response_ids, 0)
    check_both(response_mask_from_ids, response_ids, torch.tensor([1]))
    check_both(gathered_logprobs, torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0)), response_ids)


def test_rewards_are_placed_on_the_rollout_device(tmp_path):
    """PPOEngine.rewards_of with a namespace standing in for the engine (it reads only the tokenizer, the reward
    functions and the config; a whole engine needs models and an accelerator): the reward tensors are made on the
    rollout's device, the per-token rewards where they belong."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the river is near the old bridge", "a green apple was far"] * 20))
    tokenizer = train_tokenizer([corpus], vocab_size=300)
    the = tokenizer.convert_tokens_to_ids("the")
    engine = SimpleNamespace(tokenizer=tokenizer, reward_functions=[TargetTokenReward("the", the, 0.5)],
                             config=PPOConfig())  # fmt: skip
    response_ids = torch.tensor([[the, 7, the], [the, 2, 2]])
    with elsewhere():
        total, per_function, stats = PPOEngine.rewards_of(engine, ["p", "p"], response_ids, MASK)
    assert total.device == CPU and per_function["the"].device == CPU and stats["the/count"].device == CPU
    torch.testing.assert_close(total, torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.0, 0.0]]))
    torch.testing.assert_close(per_function["the"], torch.tensor([1.0, 0.5]))


def test_rrhf_and_ranking_losses_stay_on_the_input_device():
    logits = torch.randn(2, 4, 9, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[0, 3, 4, 5], [0, 6, 7, 2]])
    response = torch.tensor([[False, True, True, True], [False, True, True, False]])
    token_logp = rrhf.token_logprobs(logits, ids)
    check_both(rrhf.token_logprobs, logits, ids)
    check_both(rrhf.response_logprobs, logits, ids, response)
    check_both(rrhf.length_normalised_scores, torch.tensor([-3.0, -2.0]), torch.tensor([3, 2]), 1.0)
    rewards = torch.tensor([[1.0, 3.0, 2.0], [0.5, 0.1, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    p = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.1, float("nan")]])
    check_both(rrhf.rrhf_rank_loss, p, rewards, mask)
    check_both(rrhf.best_response_index, rewards, mask)
    check_both(rrhf.rrhf_sft_loss, -token_logp, response)
    check_both(rl.ranking_loss_terms, p.nan_to_num(), rewards, mask)
    check_both(rl.lm_target_mask, rewards, mask, 0.85)
    check_both(rl.lm_loss_terms, logits, ids, torch.ones_like(ids), torch.tensor([True, False]))
    check_both(shared_prompt_attention_mask, torch.tensor([[0, 0, 1, 1, 2, -1]]))
    hidden = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2))
    for pooling in ("eos", "last", "average", "max"):
        check_both(pool_hidden_states, hidden, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), pooling)


class MetaLogits(torch.nn.Module):
    """Stands in for a model on another device: returns fixed logits on the meta device (no real model runs there)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, input_ids, attention_mask):
        assert input_ids.device.type == "meta" and attention_mask.device.type == "meta"
        return SimpleNamespace(logits=torch.zeros(self.shape, device="meta"))


def test_reward_model_losses_send_inputs_and_labels_to_the_model_device():
    # R1/R2: 2 sequences of 3 tokens; labels are built on the CPU and must follow the model.
    loss = token_loss_sum(MetaLogits((2, 3, 2)), [([1, 2, 3], [(1, 1)]), ([1, 2], [(0, 0)])], 0, "meta")
    assert loss.device.type == "meta"
    loss = pair_loss_sum(MetaLogits((4, 1)), [([1], [2, 3]), ([4, 5], [6])], 0, "meta")
    assert loss.device.type == "meta"
    # OPT-RM: CPU targets, logits on the model's device
    loss = answer_token_loss(torch.zeros(2, 7, device="meta"), torch.tensor([1, 0]), 3, 4)
    assert loss.device.type == "meta"
    assert answer_token_loss(torch.zeros(2, 7), torch.tensor([1, 0]), 3, 4).item() == pytest.approx(math.log(7))
