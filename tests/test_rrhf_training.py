"""The RRHF trainer (Yuan et al. 2023), run through its CLI on tiny ranked data and a tiny causal LM built here.

Each training run is a subprocess, as under Snakemake: learning, determinism, exact gradient accumulation, resume
after a kill, and bad input. Independent runs go in parallel to keep the file quick on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from feedbackflow.core.formats import RANKED_RESPONSES, SCORED_SAMPLES, write_rows
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.rrhf.prompts import read_prompts
from feedbackflow.papers.rrhf.training import (
    RankedBatchPlan,
    RankedQueries,
    RRHFTrainingConfig,
    fit_query,
    length_bucketed,
    load_ranked_responses,
    micro_batch_loss,
    padded_token_logprobs,
    query_tokens,
    shared_prompt_attention_mask,
    shared_prompt_rows,
    shared_prompt_token_logprobs,
    supports_prompt_sharing,
    tokenize_ranked,
)
from feedbackflow.stages.sample_tables import rank_responses
from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, build_tiny_models

HPARAMS = {
    "batch_size": 4,
    "micro_batch_size": 4,
    "learning_rate": 3e-3,
    "num_epochs": 3,
    "max_length": 48,
    "warmup_ratio": 0.1,
    "checkpoint_every": 3,
}
N_QUERIES = 24  # 6 steps per epoch, 18 steps
TOTAL_STEPS = 18
TOPICS = ["apples", "rivers", "stars", "trains", "music", "gardens", "clocks", "bridges"]
# Real Anthropic HH records, read in place from ../shared/data (conftest's shared_data; never copied into the repo):
# 83 of its responses are over 140 words.
HH_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh" / "harmless-base-test.jsonl.gz"


def ranked_rows(n: int, seed: int = 0) -> list[dict]:
    """Queries with a good, a middling and a bad response (scores 1, 0.5, 0); every 6th prompt is long."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        query = f"Human: tell me about {topic}. Assistant:"
        if i % 6 == 0:
            query = "Human: " + " ".join(rng.choice(TOPICS) for _ in range(60)) + f" and {topic}? Assistant:"
        rows.append(
            {
                "prompt_id": f"q{i}",
                "query": query,
                "responses": [f" {topic} are lovely.", f" {topic} are fine.", " no."],
                "scores": [1.0, 0.5, 0.0],
            }
        )
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rrhf")
    rows = ranked_rows(N_QUERIES)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["query"] + response for r in rows for response in r["responses"]) + "\n")
    config = TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, max_position_embeddings=64)
    model = build_tiny_models([corpus], root / "model", config)
    train = root / "ranked.parquet"
    write_rows(rows, train, RANKED_RESPONSES)
    return {"train": train, "model": model, "root": root}


def stage_command() -> list[str]:
    """`python -m feedbackflow train-rrhf` once the stage is registered in cli.py, else the module itself."""
    from feedbackflow.cli import STAGES

    if "train-rrhf" in STAGES:
        return [sys.executable, "-m", "feedbackflow", "train-rrhf"]
    return [sys.executable, "-m", "feedbackflow.papers.rrhf.training"]


def train_command(tiny, output: Path, work: Path, train: Path | None = None, **overrides) -> list[str]:
    return [
        *stage_command(),
        "--train", str(train or tiny["train"]), "--model", str(tiny["model"]),
        "--output", str(output), "--work-dir", str(work), "--threads", "1",
        "--hparams", json.dumps({**HPARAMS, **overrides}),
    ]  # fmt: skip


def start(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as stderr:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=0.0 if atol == 0 else 1e-5, msg=name)


KILLED = {"killed_SIGKILL": signal.SIGKILL, "killed_SIGTERM": signal.SIGTERM}


def hh_ranked(output: Path, n_long: int = 3, n_other: int = 5, source: Path = HH_TEST) -> Path:
    """RANKED_RESPONSES of real HH queries through the data path (convert-prompts' reader, then rank-responses on
    chosen = 1, rejected = 0): the `n_long` queries with the longest responses (380+ words) and the first
    `n_other` others."""
    _, samples = read_prompts(source, "hh", empty_responses="skip")
    longest: dict[str, int] = {}
    for row in samples:
        longest[row["prompt_id"]] = max(longest.get(row["prompt_id"], 0), len(row["response"].split()))
    by_length = sorted(longest, key=lambda pid: -longest[pid])
    chosen = set(by_length[:n_long]) | set([pid for pid in longest if pid not in by_length[:n_long]][:n_other])
    assert min(longest[pid] for pid in by_length[:n_long]) > 380
    scored = [
        {**row, "score": 1.0 if row["origin"] == "chosen" else 0.0, "status": "ok", "reason": None,
         "scorer": "label", "prompt_tokens": None, "completion_tokens": None}
        for row in samples if row["prompt_id"] in chosen
    ]  # fmt: skip
    write_rows(scored, output.with_suffix(".scored.parquet"), SCORED_SAMPLES)
    rank_responses([output.with_suffix(".scored.parquet")], output)
    return output


@pytest.fixture(scope="module")
def runs(tiny) -> dict:
    """Every CLI run of this file, side by side (most of a run is start-up): the reference run, a rerun with the
    same seed, micro batches of 1 query, a run on bad input, one step on real HH queries with long responses, and
    two runs killed (SIGKILL, SIGTERM) once their first checkpoint is written and then rerun."""
    root = tiny["root"]
    hh = hh_ranked(root / "hh.parquet") if HH_TEST.is_file() else None  # its test asks shared_data: skip or fail
    rows = ranked_rows(8)
    rows[5] = {**rows[5], "scores": [1.0, 0.0]}
    bad = root / "bad.parquet"
    write_rows(rows, bad, RANKED_RESPONSES)
    variants = {name: {} for name in KILLED}
    variants.update({"reference": {}, "again": {}, "micro": {"micro_batch_size": 1}, "bad": {"train": bad}})
    if hh is not None:
        variants["hh"] = {"train": hh, "max_length": 64, "max_steps": 1}  # the tiny model has 64 positions
    jobs = {
        name: start(train_command(tiny, root / name, root / f"{name}_work", **hp), root / f"{name}.first.log")
        for name, hp in variants.items()
    }
    waiting = dict(KILLED)
    deadline = time.monotonic() + 240
    while waiting:
        for name, signum in list(waiting.items()):
            if (root / f"{name}_work" / "checkpoint-00000003" / "trainer_state.json").exists():
                os.killpg(jobs[name].pid, signum)
                del waiting[name]
            else:
                assert jobs[name].poll() is None, f"{name} ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    first = {name: jobs[name].wait(timeout=120) for name in KILLED}
    left_output = {name: (root / name).exists() for name in KILLED}
    for name in KILLED:
        jobs[name] = start(train_command(tiny, root / name, root / f"{name}_work"), root / f"{name}.log")
    for process in jobs.values():
        process.wait(timeout=300)
    logs = {name: (root / f"{name}.log" if name in KILLED else root / f"{name}.first.log") for name in jobs}
    for name, process in jobs.items():
        if name != "bad":
            assert process.returncode == 0, logs[name].read_text()[-3000:]
    return {
        "dirs": {name: root / name for name in jobs},
        "logs": {name: path.read_text() for name, path in logs.items()},
        "first_logs": {name: (root / f"{name}.first.log").read_text() for name in KILLED},
        "first_returncodes": first,
        "left_output": left_output,
        "bad": (bad, jobs["bad"].returncode),
        "hh": hh,
    }


class FixedLogits(torch.nn.Module):
    """A stand-in causal LM over a vocabulary of 2 with logits [0, ln 3] everywhere: p(0) = 1/4, p(1) = 3/4."""

    def forward(self, input_ids, attention_mask, use_cache=False, position_ids=None):
        logits = torch.tensor([0.0, math.log(3.0)]).expand(*input_ids.shape, 2)

        class Output:
            pass

        output = Output()
        output.logits = logits
        return output


# query 0: context [1, 0] (bos + prompt), response a = [0, 1, 1] (score 1), response b = [1] (score 0)
# query 1: context [1], response c = [1, 1] (score 0.5), response d = [0] (score 0.5): a tie
LITERAL_PLAN = RankedBatchPlan(
    token_ids=[[[1, 0, 0, 1, 1], [1, 0, 1]], [[1, 1, 1], [1, 0]]],
    scores=[[1.0, 0.0], [0.5, 0.5]],
    steps_per_epoch=1,
    prompt_lengths=[2, 1],
)


@pytest.mark.parametrize("share_prompt", [False, True], ids=["padded", "shared-prompt"])
def test_micro_batch_loss_masks_the_prompt_and_takes_sft_on_the_best_response(share_prompt):
    config = RRHFTrainingConfig(length_penalty=1.0)
    rank_sum, sft_sum = micro_batch_loss(
        FixedLogits(), LITERAL_PLAN, [0, 1], config, pad_id=0, device=torch.device("cpu"), share_prompt=share_prompt
    )
    # p_a = (ln 1/4 + 2 ln 3/4) / 3 = ln(9/64) / 3 = -0.65368; p_b = ln(3/4) / 1 = -0.28768 (prompt tokens excluded)
    # query 0: r_b < r_a, max(0, p_b - p_a) = ln(3/4) - ln(9/64) / 3 = 0.36600; query 1: a tie, no pair
    torch.testing.assert_close(rank_sum, torch.tensor(math.log(3 / 4) - math.log(9 / 64) / 3))
    # SFT: query 0 on a (best): -ln(9/64) / 3 = 0.65368; query 1 on c (first of the tied best): -2 ln(3/4) / 2
    torch.testing.assert_close(sft_sum, torch.tensor(-math.log(9 / 64) / 3 - math.log(3 / 4)))


def test_shared_prompt_rows_hold_each_context_once_and_continue_its_positions():
    rows = shared_prompt_rows(LITERAL_PLAN, [0, 1], pad_id=9)
    # row 0: context [1, 0], a = [0, 1, 1] at positions 2-4, b = [1] at position 2 again (it follows the context)
    # row 1: context [1], c = [1, 1] at positions 1-2, d = [0] at position 1, then 2 pads (9) to width 6
    assert rows.input_ids.tolist() == [[1, 0, 0, 1, 1, 1], [1, 1, 1, 0, 9, 9]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 2], [0, 1, 2, 1, 0, 0]]
    assert rows.segments.tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 1, 2, -1, -1]]
    assert rows.row_lengths() == [6, 4]
    # response tokens in order a0 a1 a2 b0 | c0 c1 d0; a response's first token is predicted from the context's
    # last position (row 0: 1; row 1: 0), the others from the position before them
    assert rows.token_row.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert rows.token_position.tolist() == [2, 3, 4, 5, 1, 2, 3]
    assert rows.token_source.tolist() == [1, 2, 3, 1, 0, 1, 0]
    assert rows.token_sequence.tolist() == [0, 0, 0, 1, 2, 2, 3]  # a, b, c, d: the flattened sequences
    assert rows.token_column.tolist() == [1, 2, 3, 1, 1, 2, 1]
    assert (rows.sequences, rows.columns) == (4, 4)  # 1 + the longest response (a: 3 tokens)
    wrong = RankedBatchPlan([[[1, 0, 5, 1], [1, 4, 6, 1]]], [[1.0, 0.0]], 1, prompt_lengths=[2])
    with pytest.raises(ValueError, match="response 1 does not start with the query's context"):
        shared_prompt_rows(wrong, [0], pad_id=9)  # contexts [1, 0] and [1, 4] differ: nothing to share


def test_shared_prompt_attention_mask_lets_a_response_see_the_context_and_itself_only():
    mask = shared_prompt_attention_mask(torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 2, -1, -1]]))
    assert mask.shape == (2, 1, 6, 6)
    # key j visible from query i when j <= i and j is context (segment 0) or in i's segment
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],  # context
        [1, 1, 0, 0, 0, 0],  # context
        [1, 1, 1, 0, 0, 0],  # a0
        [1, 1, 1, 1, 0, 0],  # a1
        [1, 1, 1, 1, 1, 0],  # a2
        [1, 1, 0, 0, 0, 1],  # b0: the context and itself, not a
    ]
    assert mask[1, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],  # context
        [1, 1, 0, 0, 0, 0],  # c0
        [1, 1, 1, 0, 0, 0],  # c1
        [1, 0, 0, 1, 0, 0],  # d0: the context and itself, not c
        [1, 0, 0, 0, 1, 0],  # padding: the context and padding, never an empty row
        [1, 0, 0, 0, 1, 1],
    ]


# Three queries with contexts of 3, 1 and 5 tokens and responses of different lengths (eos = 1 last).
VARIED_PLAN = RankedBatchPlan(
    token_ids=[
        [[0, 7, 8, 12, 13, 14, 1], [0, 7, 8, 20, 1], [0, 7, 8, 30, 31, 32, 33, 34, 1]],
        [[0, 5, 1], [0, 6, 6, 6, 1], [0, 9, 10, 1]],
        [[0, 21, 22, 23, 24, 15, 16, 1], [0, 21, 22, 23, 24, 17, 1], [0, 21, 22, 23, 24, 25, 26, 27, 28, 29, 1]],
    ],
    scores=[[0.2, 0.9, -1.0], [0.5, 0.1, 0.3], [1.0, -0.5, 0.0]],
    steps_per_epoch=1,
    prompt_lengths=[3, 1, 5],
)


def tiny_llama(attention: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, attn_implementation=attention,
    )  # fmt: skip
    return LlamaForCausalLM(config).float().train()


def gradients(model: torch.nn.Module, losses: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    model.zero_grad()
    sum(rank + sft for rank, sft in losses).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_log_probs_and_gradients_equal_the_full_sequence_forward(attention):
    model, device, indices = tiny_llama(attention), torch.device("cpu"), [0, 1, 2]
    assert supports_prompt_sharing(model) and not supports_prompt_sharing(FixedLogits())  # no config: padded
    full_logp, full_mask = padded_token_logprobs(model, VARIED_PLAN, indices, pad_id=2, device=device)
    shared_logp, shared_mask = shared_prompt_token_logprobs(model, shared_prompt_rows(VARIED_PLAN, indices, 2), device)
    lengths = [len(ids) - VARIED_PLAN.prompt_lengths[q] for q in indices for ids in VARIED_PLAN.token_ids[q]]
    assert shared_mask.sum(dim=1).tolist() == full_mask.sum(dim=1).tolist() == lengths
    for s, n in enumerate(lengths):  # the same response tokens, in order: columns 1..n against the masked positions
        torch.testing.assert_close(shared_logp[s, 1 : n + 1], full_logp[s][full_mask[s]], atol=1e-5, rtol=0)
    config = RRHFTrainingConfig()
    full = micro_batch_loss(model, VARIED_PLAN, indices, config, 2, device, share_prompt=False)
    shared = micro_batch_loss(model, VARIED_PLAN, indices, config, 2, device, share_prompt=True)
    assert full[0].item() > 0  # some pair is out of order in the random model: the ranking term has a gradient
    torch.testing.assert_close(torch.stack(shared), torch.stack(full), atol=1e-5, rtol=0)
    for got, expected in zip(gradients(model, [shared]), gradients(model, [full]), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_query_tokens_count_the_positions_of_either_layout():
    # query 0: context 2 + responses 3 and 1 = 6 shared; 2 sequences padded to the longest (5) = 10
    # query 1: context 1 + responses 2 and 1 = 4 shared; 2 x 3 = 6 padded
    assert [query_tokens(LITERAL_PLAN, q, share_prompt=True) for q in (0, 1)] == [6, 4]
    assert [query_tokens(LITERAL_PLAN, q, share_prompt=False) for q in (0, 1)] == [10, 6]


def test_length_bucketing_groups_similar_lengths_and_keeps_the_loss_and_gradient():
    # stable sort by length: 3 (10), 1 (10), 5 (20), 7 (30), 9 (40); cut into 2s
    assert length_bucketed([7, 3, 5, 1, 9], [30, 10, 20, 10, 40], 2) == [[3, 1], [5, 7], [9]]
    model, config, device = tiny_llama("sdpa"), RRHFTrainingConfig(), torch.device("cpu")
    indices = [2, 0, 1]
    lengths = [query_tokens(VARIED_PLAN, q, share_prompt=True) for q in indices]
    # context + response tokens (eos included): query 2: 5 + 3 + 2 + 6 = 16; query 0: 3 + 4 + 2 + 6 = 15;
    # query 1: 1 + 2 + 4 + 3 = 10; sorted 1, 0, 2 and cut into 2s
    assert lengths == [16, 15, 10]
    buckets = length_bucketed(indices, lengths, 2)
    assert buckets == [[1, 0], [2]]
    whole = [micro_batch_loss(model, VARIED_PLAN, indices, config, 2, device)]
    bucketed = [micro_batch_loss(model, VARIED_PLAN, micro, config, 2, device) for micro in buckets]
    for part in (0, 1):  # ranking and SFT sums
        torch.testing.assert_close(sum(b[part] for b in bucketed), whole[0][part], atol=1e-6, rtol=0)
    for got, expected in zip(gradients(model, bucketed), gradients(model, whole), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"scores": [1.0, 0.5]}, "scores", "2 scores for 3 responses"),
        ({"responses": [" a.", "  ", " b."]}, "responses", "response 1 is empty"),
        ({"responses": [" a."], "scores": [1.0]}, "responses", "at least 2"),
        ({"scores": [1.0, float("nan"), 0.0]}, "scores", "score 1"),
    ],
    ids=["length-mismatch", "empty-response", "one-response", "nan-score"],
)
def test_bad_rows_name_file_record_and_field(tmp_path, change, field, message):
    rows = ranked_rows(5)
    rows[3] = {**rows[3], **change}
    path = tmp_path / "bad.parquet"
    write_rows(rows, path, RANKED_RESPONSES)
    with pytest.raises(DataError, match=message) as error:
        load_ranked_responses([str(path)])
    assert (error.value.path, error.value.record, error.value.field) == (str(path), 3, field)


def test_training_learns_and_writes_a_model_directory(tiny, runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = runs["dirs"]["reference"]
    log = pd.read_parquet(out / "training_log.parquet")
    assert log["step"].tolist() == list(range(1, TOTAL_STEPS + 1))
    assert log["epoch"].tolist() == [s // 6 for s in range(TOTAL_STEPS)]
    assert log["loss"].iloc[-3:].mean() < 0.85 * log["loss"].iloc[:3].mean()
    torch.testing.assert_close(
        torch.tensor(log["loss"].to_numpy()), torch.tensor((log["ranking_loss"] + log["lm_loss"]).to_numpy())
    )
    assert log["learning_rate"].iloc[0] == 0.0  # warm-up: ceil(0.1 x 18) = 2 steps
    meta = json.loads((out / "rrhf_training.json").read_text())
    assert meta["training"]["learning_rate"] == HPARAMS["learning_rate"]
    assert meta["queries"] == N_QUERIES and meta["truncated_prompts"] == 4  # every 6th prompt is long
    # query 0: a 108-token prompt and two 15-token responses; 48 - bos - 16 leaves 31 < min_prompt_tokens 32 for the
    # prompt, which keeps 32, and both responses lose their eos
    assert meta["responses"] == 3 * N_QUERIES and meta["truncated_responses"] == 2
    assert "4 of 24 prompts left-truncated and 2 of 72 responses right-truncated" in runs["logs"]["reference"]
    assert not (tiny["root"] / "reference_work").exists()  # checkpoints removed once the model is saved
    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)


def test_same_seed_gives_identical_weights(runs):
    reference, again = runs["dirs"]["reference"], runs["dirs"]["again"]
    assert_same_weights(reference, again)
    pd.testing.assert_frame_equal(
        pd.read_parquet(reference / "training_log.parquet"), pd.read_parquet(again / "training_log.parquet")
    )


def test_micro_batches_accumulate_to_the_same_step(runs):
    """4 queries in micro batches of 1 give the step of one forward over 4 (the mean over the global batch)."""
    reference = pd.read_parquet(runs["dirs"]["reference"] / "training_log.parquet")
    accumulated = pd.read_parquet(runs["dirs"]["micro"] / "training_log.parquet")
    assert accumulated["loss"].tolist() == pytest.approx(reference["loss"].tolist(), rel=1e-4, abs=1e-5)
    assert_same_weights(runs["dirs"]["reference"], runs["dirs"]["micro"], atol=1e-4)


@pytest.mark.parametrize("name", list(KILLED))
def test_killed_run_resumes_and_ends_with_the_uninterrupted_weights(runs, name):
    """SIGKILL: resume from the last periodic checkpoint. SIGTERM (SLURM preemption): the run saves a checkpoint
    at the step it was in, exits 143, and the rerun resumes at exactly that step."""
    assert not runs["left_output"][name]
    log = runs["logs"][name]
    lines = [line for line in log.splitlines() if "resuming from" in line]
    assert lines, log[-2000:]
    step = int(lines[0].split(" at step ")[1].split()[0])
    assert 3 <= step < TOTAL_STEPS
    if KILLED[name] == signal.SIGTERM:
        assert runs["first_returncodes"][name] == 143
        saved = [line for line in runs["first_logs"][name].splitlines() if "SIGTERM: checkpoint saved at step" in line]
        assert saved and f"at step {step} of" in saved[0]
    else:
        assert runs["first_returncodes"][name] == -signal.SIGKILL
    assert_same_weights(runs["dirs"]["reference"], runs["dirs"][name])
    steps = pd.read_parquet(runs["dirs"][name] / "training_log.parquet")["step"].tolist()
    assert steps == list(range(1, TOTAL_STEPS + 1))


def test_bad_input_fails_naming_file_record_and_field_and_writes_nothing(runs):
    bad, returncode = runs["bad"]
    assert returncode != 0
    assert f"{bad}: record 5: field 'scores': 2 scores for 3 responses" in runs["logs"]["bad"]
    out = runs["dirs"]["bad"]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".bad.")]


def test_fit_query_cuts_the_prompt_on_the_left_to_its_floor_then_responses_on_the_right():
    """Literal ids: bos 1, eos 2, a 6-token prompt, responses of 8 and 2 ids (9 and 3 with eos), min_prompt_tokens 3."""
    bos, prompt, responses = [1], [10, 11, 12, 13, 14, 15], [[20, 21, 22, 23, 24, 25, 26, 27], [30, 31]]
    # 20 tokens: everything fits (1 + 6 + 9 = 16)
    fitted = fit_query(bos, prompt, responses, 2, 20, 3)
    assert fitted.context == [1, *prompt] and fitted.responses == [[*responses[0], 2], [30, 31, 2]]
    assert (fitted.prompt_truncated, fitted.responses_truncated) == (False, 0)
    # 14: budget 13 - longest 9 = 4 >= the floor 3: the prompt keeps its last 4 tokens, no response is cut
    fitted = fit_query(bos, prompt, responses, 2, 14, 3)
    assert fitted.context == [1, 12, 13, 14, 15] and fitted.responses == [[*responses[0], 2], [30, 31, 2]]
    assert (fitted.prompt_truncated, fitted.responses_truncated) == (True, 0)
    # 10: budget 9 - 9 = 0 < 3: the prompt keeps its floor (3 tokens); the long response keeps its first 6 ids
    # (eos lost), so bos + 3 + 6 = 10 tokens; the short response is whole
    fitted = fit_query(bos, prompt, responses, 2, 10, 3)
    assert fitted.context == [1, 13, 14, 15] and fitted.responses == [[20, 21, 22, 23, 24, 25], [30, 31, 2]]
    assert (fitted.prompt_truncated, fitted.responses_truncated) == (True, 1)
    # 12: room 8 = the long response's ids without eos: only its eos goes, and that counts as a cut
    fitted = fit_query(bos, prompt, responses, 2, 12, 3)
    assert fitted.responses[0] == responses[0] and fitted.responses_truncated == 1
    # a prompt shorter than the floor is kept whole; both responses cut to the room left (10 - 1 - 2 = 7)
    fitted = fit_query(bos, [10, 11], [responses[0], responses[0]], 2, 10, 3)
    assert fitted.context == [1, 10, 11] and fitted.responses == [responses[0][:7]] * 2
    assert (fitted.prompt_truncated, fitted.responses_truncated) == (False, 2)
    # no bos: the prompt keeps at least one token even with min_prompt_tokens 0
    fitted = fit_query([], prompt, responses, 2, 5, 0)
    assert fitted.context == [15] and fitted.responses == [[20, 21, 22, 23], [30, 31, 2]]
    with pytest.raises(ConfigError, match="min_prompt_tokens 9 must be from 0 to max_length - 2 = 8"):
        RRHFTrainingConfig(max_length=10, min_prompt_tokens=9)


def test_prompts_are_left_truncated_before_responses_are_cut(tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    data = RankedQueries(
        queries=["one two three four five six", "hi"],
        responses=[[" a b", " c"], [" d", " e"]],
        scores=[[1.0, 0.0], [0.0, 1.0]],
        origins=[("f.parquet", 0), ("f.parquet", 1)],
    )

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prompt, longest = ids(data.queries[0]), ids(" a b") + [eos]
    assert len(prompt) > 3 and len(longest) > 2
    max_length = 1 + 3 + len(longest)  # room for bos, 3 prompt tokens and the longest response with eos
    plan = tokenize_ranked(data, tokenizer, max_length, min_prompt_tokens=2)
    assert (plan.truncated_prompts, plan.truncated_responses) == (1, 0)
    assert plan.prompt_lengths[0] == 4
    assert plan.token_ids[0] == [[bos, *prompt[-3:], *longest], [bos, *prompt[-3:], *ids(" c"), eos]]
    assert plan.token_ids[1][0] == [bos, *ids("hi"), *ids(" d"), eos]
    # with a floor of 3 prompt tokens and one token less, the longest response loses its last token (its eos)
    plan = tokenize_ranked(data, tokenizer, max_length - 1, min_prompt_tokens=3)
    assert (plan.truncated_prompts, plan.truncated_responses) == (1, 1)
    assert plan.token_ids[0][0] == [bos, *prompt[-3:], *longest[:-1]]


def test_real_hh_responses_longer_than_max_length_are_truncated_and_counted(tmp_path, tiny, shared_data):
    """Real HH queries whose responses run to 380+ words, at the paper's max_length 192: before truncation, the
    first of them stopped the run with a DataError."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])  # byte-level BPE of 300 ids: ~2-3 characters a token
    source = shared_data / "hh" / "harmless-base-test.jsonl.gz"
    data = load_ranked_responses([str(hh_ranked(tmp_path / "hh.parquet", source=source))])
    config = RRHFTrainingConfig(max_length=192)
    plan = tokenize_ranked(data, tokenizer, config.max_length, min_prompt_tokens=config.min_prompt_tokens)
    bos, eos = [tokenizer.bos_token_id], tokenizer.eos_token_id
    cut = 0
    for q, query in enumerate(data.queries):
        prompt = tokenizer(query, add_special_tokens=False)["input_ids"]
        context = plan.token_ids[q][0][: plan.prompt_lengths[q]]
        assert context[:1] == bos and prompt[len(prompt) - len(context) + 1 :] == context[1:]  # the prompt's end
        assert len(context) - 1 >= min(len(prompt), config.min_prompt_tokens)
        for k, response in enumerate(data.responses[q]):
            full = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
            kept = plan.token_ids[q][k][plan.prompt_lengths[q] :]
            assert len(plan.token_ids[q][k]) <= config.max_length
            assert kept == full[: len(kept)]  # the response's beginning
            cut += kept != full
    assert plan.truncated_responses == cut >= 3  # at least the three 380+ word responses
    assert len(data.queries) == 8

    sizes = TinyModelConfig(hidden_size=16, intermediate_size=32, max_position_embeddings=192)
    model = build_causal_lm(tokenizer, sizes)
    rank_sum, sft_sum = micro_batch_loss(model, plan, list(range(8)), config, pad_id=2, device=torch.device("cpu"))
    assert math.isfinite(rank_sum.item()) and math.isfinite(sft_sum.item())


def test_the_stage_trains_on_real_hh_and_reports_the_truncation_counts(shared_data, tiny, runs):
    """One step of the CLI on real HH queries (max_length 64): it runs, and rrhf_training.json and the log give
    the counts that tokenize_ranked gives on the same file."""
    from transformers import AutoTokenizer

    meta = json.loads((runs["dirs"]["hh"] / "rrhf_training.json").read_text())
    plan = tokenize_ranked(
        load_ranked_responses([str(runs["hh"])]), AutoTokenizer.from_pretrained(tiny["model"]), 64, min_prompt_tokens=32
    )
    assert meta["truncated_responses"] == plan.truncated_responses > 0
    assert meta["truncated_prompts"] == plan.truncated_prompts
    assert meta["responses"] == 16 and meta["steps"] == 1
    assert (
        f"{plan.truncated_prompts} of 8 prompts left-truncated and {plan.truncated_responses} of 16 responses "
        "right-truncated to fit max_length 64 (min_prompt_tokens 32)"
    ) in runs["logs"]["hh"]
