"""Diverse (group) beam search: time per decode step of the vectorised step against the per-prompt loop it replaced.

Both implementations (`feedbackflow.stages.sampling.diverse_beam_search` and the code of commit 1a9b829 kept in
tests/diverse_beam_reference.py) decode the same left-padded prompts with the RRHF paper's settings (Yuan et al.
2023: 4 beams in 4 groups, diversity penalty 1.0, 8 prompts per batch) on the same causal LM (LLaMA architecture,
random weights, built in a temporary directory). Time per decode step = (time for `--steps` new tokens - time for
1 new token) / (`--steps` - 1), so the prompt's prefill is left out. Runs alternate between the two, `--repeats`
times, and the fastest counts (load from other processes is rejected). The outputs are checked to be equal.
Printed per configuration: the model forward alone per step (the floor both share), each implementation's time
per step, and old / new; then, per step, the aten ops each runs (model included: about the kernels a GPU would
launch) and the host syncs it would make on a GPU (values read into Python), counted on the same run's shape.

    .venv/bin/python benchmarks/group_beam_step.py [--steps 32] [--repeats 3] [--batch-size 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from diverse_beam_reference import reference_diverse_beam_search  # noqa: E402

from feedbackflow.stages.sampling import diverse_beam_search
from feedbackflow.text.tokens import encode_prompts, pad_left
from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer  # noqa: E402

WORDS = "the a river star train music garden clock bridge apple is was very quite rather blue green old new".split()
CONFIGS = {  # name: model sizes ("toy": the search's own cost dominates the step)
    "toy": TinyModelConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1),
    "small": TinyModelConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2),
    "wide": TinyModelConfig(vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=4),
}


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        "\n\nHuman: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40))) + "?\n\nAssistant:"
        for _ in range(n)
    ]


def timed(search, model, input_ids, mask, steps: int, eos: int, pad: int) -> tuple[float, list]:
    start = time.perf_counter()
    result = search(
        model,
        input_ids,
        mask,
        num_beams=4,
        num_beam_groups=4,
        diversity_penalty=1.0,
        max_new_tokens=steps,
        eos_token_ids={eos},
        pad_token_id=pad,
        num_return_sequences=4,
    )
    if input_ids.device.type == "cuda" or next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


class CountOps(TorchDispatchMode):
    """Counts the aten ops run (about the kernels a GPU would launch) and the host syncs a GPU would make: reads of
    tensor values into Python (`item`, `bool`, `tolist`; the last is not an aten op, so it is counted by wrapping
    `Tensor.tolist` while the mode is on)."""

    def __init__(self):
        super().__init__()
        self.ops = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.syncs += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        counter = self

        def tolist(tensor):
            counter.syncs += 1
            return counter._tolist(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def ops_per_step(search, model, input_ids, mask, steps: int, eos: int, pad: int) -> tuple[float, float]:
    """(aten ops, host syncs) per decode step: the counts of `steps` new tokens less those of 1, / (steps - 1);
    the model's own ops are included (the same for both implementations)."""
    counts = []
    for n in (steps, 1):
        with CountOps() as counter:
            timed(search, model, input_ids, mask, n, eos, pad)
        counts.append((counter.ops, counter.syncs))
    (ops, syncs), (ops1, syncs1) = counts
    return (ops - ops1) / (steps - 1), (syncs - syncs1) / (steps - 1)


@torch.no_grad()
def forward_only(model, input_ids, mask, steps: int) -> float:
    """Seconds for the model's `steps` - 1 cached one-token forwards alone (the floor of every decode step)."""
    device = next(model.parameters()).device
    ids, mask = input_ids.to(device).repeat_interleave(4, 0), mask.to(device).repeat_interleave(4, 0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
    start = time.perf_counter()
    for _ in range(steps - 1):
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        positions = positions[:, -1:] + 1
        model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions, past_key_values=cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = prompts(args.batch_size)
    print(f"diverse beam search, 4 beams / 4 groups, {args.batch_size} prompts, {args.steps} steps, {args.device}")
    print(
        f"{'config':8} {'forward ms/step':>16} {'old ms/step':>12} {'new ms/step':>12} {'old/new':>8}"
        f" {'old ops/step':>13} {'new ops/step':>13} {'old syncs/step':>15} {'new syncs/step':>15}"
    )
    for name in args.configs:
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "corpus.txt"
            corpus.write_text("\n".join(prompts(200, seed=1)) + "\n")
            tokenizer = train_tokenizer([corpus], CONFIGS[name].vocab_size, CONFIGS[name].max_position_embeddings)
        model = build_causal_lm(tokenizer, CONFIGS[name]).eval().to(args.device)
        input_ids, mask = pad_left(encode_prompts(tokenizer, texts, 96), tokenizer.pad_token_id)
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        best = {"old": [], "new": []}
        searches = {"old": reference_diverse_beam_search, "new": diverse_beam_search}
        outputs = {}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for key in ("old", "new") if repeat % 2 else ("new", "old"):
                long, outputs[key] = timed(searches[key], model, input_ids, mask, args.steps, eos, pad)
                short, _ = timed(searches[key], model, input_ids, mask, 1, eos, pad)
                if repeat:
                    best[key].append((long - short) / (args.steps - 1))
        if outputs["old"] != outputs["new"]:
            raise SystemExit(f"{name}: the two implementations gave different outputs")
        floor = min(forward_only(model, input_ids, mask, args.steps) for _ in range(args.repeats)) / (args.steps - 1)
        old, new = min(best["old"]), min(best["new"])
        (old_ops, old_syncs), (new_ops, new_syncs) = (
            ops_per_step(searches[key], model, input_ids, mask, args.steps, eos, pad) for key in ("old", "new")
        )
        print(
            f"{name:8} {1000 * floor:16.2f} {1000 * old:12.2f} {1000 * new:12.2f} {old / new:8.2f}"
            f" {old_ops:13.1f} {new_ops:13.1f} {old_syncs:15.1f} {new_syncs:15.1f}"
        )


if __name__ == "__main__":
    main()
