"""RRHF training throughput: batched queries per optimiser step against one query per step (the original code).

Both modes run the trainer's own loss (`rrhf_training.micro_batch_loss`: one forward over every response of the
step's queries, the ranking loss on length-normalised log-probabilities and SFT on the best response), backward,
gradient clipping and an AdamW step, on the same small causal LM (LLaMA architecture, hidden 128, 2 layers, built
in a temporary directory) and the same ranked data (6 responses per query, as in SPEC section 2), on 2 CPU threads.
Each mode processes the same queries: after warm-up, every chunk of `--queries-per-step` queries is trained on by
both modes in alternating order, several times, and the fastest time of each chunk counts (so that load from other
processes on the machine is rejected). Printed: each mode's throughput in queries per second and the ratio
(target >= 2).

    .venv/bin/python benchmarks/rrhf_step.py [--queries-per-step 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import random
import tempfile
import time
from pathlib import Path

import torch

from feedbackflow.reward_model import pad_id_of
from feedbackflow.rrhf_training import RankedQueries, RRHFTrainingConfig, micro_batch_loss, tokenize_ranked
from feedbackflow.tiny_models import TinyModelConfig, build_causal_lm, train_tokenizer

TARGET_RATIO = 2.0
WORDS = "the a river star train music garden clock bridge apple is was very quite rather blue green old new".split()


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
    """Seconds to train on `order` in steps of `per_step` queries (forward, backward, clip, AdamW step)."""
    start = time.perf_counter()
    for i in range(0, len(order), per_step):
        queries = order[i : i + per_step]
        rank_sum, sft_sum = micro_batch_loss(model, plan, queries, config, pad_id, torch.device("cpu"))
        loss = (config.rrhf_weight * rank_sum + sft_sum) / len(queries)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries-per-step", type=int, default=8)
    parser.add_argument("--queries", type=int, default=64, help="queries timed per mode")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each chunk per mode (the fastest counts)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = ranked_data(args.queries * 2, responses=6)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        texts = [q + r for q, rs in zip(data.queries, data.responses, strict=True) for r in rs]
        corpus.write_text("\n".join(texts) + "\n")
        tokenizer = train_tokenizer([corpus], vocab_size=1000, model_max_length=256)
    sizes = TinyModelConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2)
    base = build_causal_lm(tokenizer, sizes)
    config = RRHFTrainingConfig(max_length=128)
    plan = tokenize_ranked(data, tokenizer, config.max_length)
    pad_id = pad_id_of(tokenizer)
    n_params = sum(p.numel() for p in base.parameters())
    tokens = sum(len(ids) for q in plan.token_ids for ids in q) / len(plan.token_ids)
    print(
        f"model: {n_params / 1e6:.2f} M parameters (hidden 128, 2 layers, vocabulary {len(tokenizer)}); "
        f"{len(plan.token_ids)} queries x 6 responses, {tokens:.0f} tokens per query; "
        f"{torch.get_num_threads()} threads"
    )

    modes = {"batched": args.queries_per_step, "one query per step": 1}
    states = {}
    for name in modes:
        model = copy.deepcopy(base).train()
        states[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-5))
    rng = random.Random(1)
    chunk = args.queries_per_step
    warmup = list(range(chunk * 2))
    for name, per_step in modes.items():
        run_steps(*states[name], plan, warmup, per_step, config, pad_id)
    # Interleaved at the grain of one batched step: each chunk of queries is trained on by both modes, in
    # alternating order, `--repeats` times; a chunk's time in a mode is its fastest repeat (as timeit does), which
    # rejects the slowdowns caused by other processes on the machine. Throughput = queries / sum of chunk times.
    order = rng.sample(range(len(plan.token_ids)), args.queries - args.queries % chunk)
    best = {name: [] for name in modes}
    for c, i in enumerate(range(0, len(order), chunk)):
        times = {name: [] for name in modes}
        for r in range(args.repeats):
            for name in list(modes) if (r + c) % 2 == 0 else list(reversed(modes)):
                times[name].append(run_steps(*states[name], plan, order[i : i + chunk], modes[name], config, pad_id))
        for name in modes:
            best[name].append(min(times[name]))
    throughput = {name: len(order) / sum(best[name]) for name in modes}
    for name, per_step in modes.items():
        print(f"{name} ({per_step} per step): {throughput[name]:.1f} queries/s")
    ratio = throughput["batched"] / throughput["one query per step"]
    print(f"ratio batched / one per step: {ratio:.2f} (target >= {TARGET_RATIO:.0f})")


if __name__ == "__main__":
    main()
