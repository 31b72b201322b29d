"""RRHF training throughput: our batched trainer against one query per step (the original code).

Batched: `--queries-per-step` queries per optimiser step in one forward pass, as `rrhf_training.micro_batch_loss`
runs them in the trainer: prompt sharing (one row per query, its context once, then each response with a 4D
attention mask and restarted position ids; the rows right-padded to the longest). One query per step: the original
RRHF code's layout, one forward over the query's responses, every response a full bos + prompt + response + eos
sequence, right-padded to the longest of the query (`micro_batch_loss(..., share_prompt=False)`). Both modes compute
the same loss (the ranking loss on length-normalised log-probabilities and SFT on the best response), then backward,
gradient clipping and an AdamW step, on the same causal LM (LLaMA architecture, built in a temporary directory) and
the same ranked data (6 responses per query, as in Yuan et al. 2023 on HH), on 2 CPU threads.

Each mode processes the same queries: after warm-up, every chunk of `--queries-per-step` queries is trained on by
both modes in alternating order, several times, and the fastest time of each chunk counts (so that load from other
processes on the machine is rejected). Printed per configuration: the positions per query each layout fills, each
mode's throughput in queries per second and the ratio. Configurations: `small` (hidden 128, 2 layers: the one the
target >= 2 is about) and `wide` (hidden 512, intermediate 1024, 4 layers, fewer queries timed: where the
compute per token dominates; printed for comparison only).

    .venv/bin/python benchmarks/rrhf_step.py [--queries-per-step 8] [--repeats 3] [--configs small wide]
"""

from __future__ import annotations

import argparse
import copy
import random
import tempfile
import time
from pathlib import Path

import torch

from feedbackflow.papers.rrhf.training import (
    RankedQueries,
    RRHFTrainingConfig,
    micro_batch_loss,
    query_tokens,
    supports_prompt_sharing,
    tokenize_ranked,
)
from feedbackflow.text.tokens import pad_id_of
from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

TARGET_RATIO = 2.0
WORDS = "the a river star train music garden clock bridge apple is was very quite rather blue green old new".split()
CONFIGS = {  # name: (model sizes, queries timed per mode)
    "small": (TinyModelConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2), 64),
    "wide": (TinyModelConfig(vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=4), 16),
}


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def ranked_data(n_queries: int, responses: int, seed: int = 0) -> RankedQueries:
    rng = random.Random(seed)
    queries = [f"\n\nHuman: {sentence(rng, rng.randint(20, 40))}?\n\nAssistant:" for _ in range(n_queries)]
    texts = [[" " + sentence(rng, rng.randint(8, 30)) + "." for _ in range(responses)] for _ in queries]
    scores = [[rng.gauss(0.0, 1.0) for _ in range(responses)] for _ in queries]
    origins = [("benchmark", i) for i in range(n_queries)]
    return RankedQueries(queries, texts, scores, origins)


def run_steps(model, optimizer, plan, order: list[int], per_step: int, config, pad_id: int) -> float:
    """Seconds to train on `order` in steps of `per_step` queries (forward, backward, clip, AdamW step); one query
    per step uses the original code's padded full sequences, several the trainer's prompt sharing."""
    start = time.perf_counter()
    for i in range(0, len(order), per_step):
        queries = order[i : i + per_step]
        rank_sum, sft_sum = micro_batch_loss(
            model, plan, queries, config, pad_id, torch.device("cpu"), share_prompt=per_step > 1
        )
        loss = (config.rrhf_weight * rank_sum + sft_sum) / len(queries)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def measure(name: str, sizes: TinyModelConfig, n_queries: int, per_step: int, repeats: int) -> float:
    """Print one configuration's throughputs; return the ratio batched / one query per step."""
    data = ranked_data(max(n_queries, 64) * 2, responses=6)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        texts = [q + r for q, rs in zip(data.queries, data.responses, strict=True) for r in rs]
        corpus.write_text("\n".join(texts) + "\n")
        tokenizer = train_tokenizer([corpus], vocab_size=sizes.vocab_size, model_max_length=256)
    base = build_causal_lm(tokenizer, sizes)
    assert supports_prompt_sharing(base)
    config = RRHFTrainingConfig(max_length=128)
    plan = tokenize_ranked(data, tokenizer, config.max_length)
    pad_id = pad_id_of(tokenizer)
    n_params = sum(p.numel() for p in base.parameters())
    queries = range(len(plan.token_ids))
    tokens = sum(len(ids) for q in queries for ids in plan.token_ids[q]) / len(plan.token_ids)
    padded = sum(query_tokens(plan, q, share_prompt=False) for q in queries) / len(plan.token_ids)
    shared = sum(query_tokens(plan, q, share_prompt=True) for q in queries) / len(plan.token_ids)
    print(
        f"[{name}] model: {n_params / 1e6:.2f} M parameters (hidden {sizes.hidden_size}, intermediate "
        f"{sizes.intermediate_size}, {sizes.num_hidden_layers} layers, vocabulary {len(tokenizer)}); "
        f"{len(plan.token_ids)} queries x 6 responses, {tokens:.0f} tokens per query as full sequences; positions "
        f"per query: {padded:.0f} padded full sequences, {shared:.0f} prompt sharing (before row padding); "
        f"{torch.get_num_threads()} threads"
    )

    modes = {"batched": per_step, "one query per step": 1}
    states = {}
    for mode in modes:
        model = copy.deepcopy(base).train()
        states[mode] = (model, torch.optim.AdamW(model.parameters(), lr=1e-5))
    rng = random.Random(1)
    warmup = list(range(per_step * 2))
    for mode, mode_per_step in modes.items():
        run_steps(*states[mode], plan, warmup, mode_per_step, config, pad_id)
    # Interleaved at the grain of one batched step: each chunk of queries is trained on by both modes, in
    # alternating order, `repeats` times; a chunk's time in a mode is its fastest repeat (as timeit does), which
    # rejects the slowdowns caused by other processes on the machine. Throughput = queries / sum of chunk times.
    timed = max(n_queries - n_queries % per_step, per_step)
    order = rng.sample(range(per_step * 2, len(plan.token_ids)), timed)
    best = {mode: [] for mode in modes}
    for c, i in enumerate(range(0, len(order), per_step)):
        times = {mode: [] for mode in modes}
        for r in range(repeats):
            for mode in list(modes) if (r + c) % 2 == 0 else list(reversed(modes)):
                times[mode].append(run_steps(*states[mode], plan, order[i : i + per_step], modes[mode], config, pad_id))
        for mode in modes:
            best[mode].append(min(times[mode]))
    throughput = {mode: len(order) / sum(best[mode]) for mode in modes}
    for mode, mode_per_step in modes.items():
        print(f"[{name}] {mode} ({mode_per_step} per step): {throughput[mode]:.1f} queries/s")
    ratio = throughput["batched"] / throughput["one query per step"]
    target = f" (target >= {TARGET_RATIO:.0f})" if name == "small" else " (comparison only)"
    print(f"[{name}] ratio batched / one per step: {ratio:.2f}{target}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries-per-step", type=int, default=8)
    parser.add_argument("--queries", type=int, default=None, help="queries timed per mode (default: per config)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each chunk per mode (the fastest counts)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.configs:
        torch.manual_seed(0)
        sizes, n_queries = CONFIGS[name]
        measure(name, sizes, args.queries or n_queries, args.queries_per_step, args.repeats)


if __name__ == "__main__":
    main()
