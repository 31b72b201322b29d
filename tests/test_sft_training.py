"""The SFT trainer (Wu et al. 2023, qa-feedback SFT) on a tiny T5 and a tiny causal LM built here.

The task: "question: what colour is the <animal>? context: ... the <animal> is <colour>." -> "the <animal> is
<colour>." (the first reference; a second reference "<colour>." is never trained on). Dev prompts are unseen
(animal, colour) pairs, so the model must learn to copy from the context. Training runs go through the CLI as
subprocesses, side by side (most of a run is start-up); the selection rule and the loss run in this process.
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
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    T5Config,
    T5ForConditionalGeneration,
)

import feedbackflow.stages.sft as sft
from feedbackflow.core.formats import QA_PROMPTS, write_rows
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.stages.sft import (
    IGNORE_INDEX,
    QAExamples,
    SFTConfig,
    SFTPlan,
    best_evaluation,
    dev_set,
    greedy_generate,
    is_eval_step,
    load_qa_prompts,
    model_batch,
    target_nll_sum,
    tokenize_sft,
)
from feedbackflow.text.metrics import default_sentence_splitter, mean_rouge_lsum
from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "pig", "hen"]
COLOURS = ["red", "blue", "green", "black", "white", "brown"]
HPARAMS = {
    "batch_size": 4,
    "micro_batch_size": 4,
    "learning_rate": 1e-2,
    "num_epochs": 10,
    "max_input_length": 64,
    "max_target_length": 16,
    "max_new_tokens": 16,
    "eval_batch_size": 8,
}
STEPS_PER_EPOCH = 8  # 32 training examples, batch 4
TOTAL_STEPS = 80
CAUSAL_EPOCHS = 4


def qa_rows(pairs: list[tuple[str, str]], tag: str) -> list[dict]:
    rows = []
    for k, (animal, colour) in enumerate(pairs):
        answer = f"the {animal} is {colour}."
        rows.append(
            {
                "prompt_id": f"{tag}{k}",
                "prompt": f"question: what colour is the {animal}? context: wikipage: {animal} text: {answer}",
                "question": f"what colour is the {animal}?",
                "references": [answer, f"{colour}."],
                "passages": [{"title": animal, "content": answer}],
                "source": "synthetic.json",
                "record": k,
            }
        )
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Train / dev Parquet files, a tiny T5 (d_model 32, 2 + 2 layers) and a tiny LLaMA, one BPE tokenizer."""
    root = tmp_path_factory.mktemp("sft")
    pairs = [(a, c) for a in ANIMALS for c in COLOURS]
    random.Random(0).shuffle(pairs)
    train, dev = qa_rows(pairs[:32], "t"), qa_rows(pairs[32:40], "d")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["prompt"] + " " + " ".join(r["references"]) for r in train + dev) + "\n")
    tokenizer = train_tokenizer([corpus], vocab_size=300, model_max_length=128)
    t5_config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,  # dropout would make micro-batch runs differ from full-batch ones
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(t5_config).save_pretrained(root / "t5")
    tokenizer.save_pretrained(root / "t5")
    causal_config = TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, max_position_embeddings=128)
    build_causal_lm(tokenizer, causal_config).save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    write_rows(train, root / "train.parquet", QA_PROMPTS)
    write_rows(dev, root / "dev.parquet", QA_PROMPTS)
    return {"root": root, "t5": root / "t5", "llama": root / "llama", "train": root / "train.parquet",
            "dev": root / "dev.parquet"}  # fmt: skip


def stage_command() -> list[str]:
    from feedbackflow.cli import STAGES

    if "train-sft" in STAGES:
        return [sys.executable, "-m", "feedbackflow", "train-sft"]
    return [sys.executable, "-m", "feedbackflow.stages.sft"]


def train_command(tiny, name: str, model: str = "t5", dev: Path | None = None, **overrides) -> list[str]:
    root = tiny["root"]
    return [
        *stage_command(),
        "--train", str(tiny["train"]), "--dev", str(dev or tiny["dev"]), "--model", str(tiny[model]),
        "--output", str(root / name), "--work-dir", str(root / f"{name}_work"), "--threads", "1",
        "--hparams", json.dumps({**HPARAMS, **overrides}),
    ]  # fmt: skip


def start(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as stderr:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)


@pytest.fixture(scope="module")
def runs(tiny) -> dict:
    """The CLI runs, side by side: the reference, 2 epochs in micro batches of 1, a causal LM, and a run stopped by
    SIGTERM once its first checkpoint (after the first epoch's evaluation) exists, then rerun."""
    root = tiny["root"]
    commands = {
        "reference": train_command(tiny, "reference"),
        "micro": train_command(tiny, "micro", micro_batch_size=1, max_steps=2 * STEPS_PER_EPOCH),
        "causal": train_command(tiny, "causal", model="llama", num_epochs=CAUSAL_EPOCHS),
        "killed": train_command(tiny, "killed"),
    }
    jobs = {name: start(command, root / f"{name}.first.log") for name, command in commands.items()}
    marker = root / "killed_work" / f"checkpoint-{STEPS_PER_EPOCH:08d}" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert jobs["killed"].poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    os.killpg(jobs["killed"].pid, signal.SIGTERM)
    first_returncode = jobs["killed"].wait(timeout=120)
    left_output = (root / "killed").exists()
    jobs["killed"] = start(commands["killed"], root / "killed.log")
    for process in jobs.values():
        process.wait(timeout=300)
    logs = {name: (root / f"{name}.log" if name == "killed" else root / f"{name}.first.log") for name in jobs}
    for name, process in jobs.items():
        assert process.returncode == 0, logs[name].read_text()[-3000:]
    return {
        "dirs": {name: root / name for name in jobs},
        "logs": {name: path.read_text() for name, path in logs.items()},
        "killed_first_log": (root / "killed.first.log").read_text(),
        "killed_first_returncode": first_returncode,
        "killed_left_output": left_output,
    }


def state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForSeq2SeqLM.from_pretrained(path).state_dict()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0.0 if atol == 0 else 1e-5, msg=name)


# --- in-process pieces ----------------------------------------------------------------------------


class FixedLogits(torch.nn.Module):
    """A stand-in LM over a vocabulary of 2 with logits [0, ln 3] everywhere: p(0) = 1/4, p(1) = 3/4.
    Seq2seq (labels given): one position per label; causal: one per input token."""

    def forward(self, input_ids, attention_mask, labels=None, use_cache=False):
        shape = labels.shape if labels is not None else input_ids.shape
        return type("Output", (), {"logits": torch.tensor([0.0, math.log(3.0)]).expand(*shape, 2)})()


def test_causal_loss_is_on_target_tokens_only():
    # example 0: context [1, 0], target [0, 1] (1 = eos); example 1: context [1], target [1]; pad id 0
    plan = SFTPlan(inputs=[[1, 0], [1]], targets=[[0, 1], [1]], steps_per_epoch=1)
    batch = model_batch(plan, [0, 1], is_seq2seq=False, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 0, 0, 1], [1, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 0, 1], [IGNORE_INDEX, 1, IGNORE_INDEX] + [-100]]
    # targets: 0 (-ln 1/4), 1 (-ln 3/4) in example 0; 1 (-ln 3/4) in example 1; context and padding excluded
    # sum = ln 4 + 2 ln 4/3 = ln(64/9) = 1.9617
    torch.testing.assert_close(target_nll_sum(FixedLogits(), batch, False), torch.tensor(math.log(64 / 9)))


def test_seq2seq_loss_is_on_every_label_token():
    plan = SFTPlan(inputs=[[0, 1], [1]], targets=[[0, 0, 1], [1]], steps_per_epoch=1)
    batch = model_batch(plan, [0, 1], is_seq2seq=True, pad_id=0)
    assert batch["input_ids"].tolist() == [[0, 1], [1, 0]]
    assert batch["labels"].tolist() == [[0, 0, 1], [1, IGNORE_INDEX, IGNORE_INDEX]]
    # labels 0, 0, 1 and 1: 2 (-ln 1/4) + 2 (-ln 3/4) = ln 16 + ln 16/9 = ln(256/9) = 3.3479
    torch.testing.assert_close(target_nll_sum(FixedLogits(), batch, True), torch.tensor(math.log(256 / 9)))


def test_prompt_truncation_side_and_first_reference_target(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny["t5"])
    data = QAExamples(["what colour is the owl", "owl"], [["the owl is red.", "red."], ["the cat"]], [])
    data.origins = [("f.parquet", 0), ("f.parquet", 1)]

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    prompt = ids(data.prompts[0])
    assert len(prompt) > 3
    config = SFTConfig(max_input_length=4, max_target_length=16, batch_size=1)
    plan = tokenize_sft(data, tokenizer, config, is_seq2seq=True)
    assert plan.inputs[0] == prompt[:3] + [eos]  # right truncation keeps the start (the question), then eos
    assert plan.inputs[1] == ids("owl") + [eos]
    assert plan.targets[0] == ids("the owl is red.") + [eos]  # the first reference only
    assert (plan.truncated_inputs, plan.truncated_targets, plan.steps_per_epoch) == (1, 0, 2)
    left = tokenize_sft(data, tokenizer, SFTConfig(max_input_length=4, truncation_side="left"), is_seq2seq=True)
    assert left.inputs[0] == prompt[-3:] + [eos]
    causal = tokenize_sft(data, tokenizer, SFTConfig(max_input_length=4, max_target_length=2), is_seq2seq=False)
    assert causal.inputs[0] == [bos, *prompt[:3]]
    assert causal.targets[0] == ids(" the owl is red.")[:1] + [eos]  # right-truncated to 2 tokens with eos
    assert causal.truncated_targets == 2


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"prompt": "   "}, "prompt", "is empty"),
        ({"references": []}, "references", "no reference answer"),
        ({"references": ["red.", ""]}, "references", "reference 1 is empty"),
    ],
    ids=["empty-prompt", "no-reference", "empty-reference"],
)
def test_bad_rows_name_file_record_and_field(tmp_path, change, field, message):
    rows = qa_rows([("cat", "red"), ("dog", "blue"), ("fox", "green")], "x")
    rows[2] = {**rows[2], **change}
    path = tmp_path / "bad.parquet"
    write_rows(rows, path, QA_PROMPTS)
    with pytest.raises(DataError, match=message) as error:
        load_qa_prompts([str(path)])
    assert (error.value.path, error.value.record, error.value.field) == (str(path), 2, field)


def test_evaluation_schedule_and_selection_rule():
    assert [s for s in range(1, 21) if is_eval_step(s, 8, 20, None)] == [8, 16, 20]  # every epoch and the end
    assert [s for s in range(1, 21) if is_eval_step(s, 8, 20, 6)] == [6, 12, 18, 20]
    history = [{"step": 1, "rouge_lsum": None}, {"step": 2, "rouge_lsum": 30.0}, {"step": 3, "rouge_lsum": 40.0},
               {"step": 4, "rouge_lsum": 40.0}, {"step": 5, "rouge_lsum": 20.0}]  # fmt: skip
    assert best_evaluation(history)["step"] == 3  # the earliest of equal scores
    assert best_evaluation(history[:1]) is None
    for row, score in zip(history, (None, 90.0, 50.0, 95.0, 95.0), strict=True):
        row["exact_match"] = score
    assert best_evaluation(history, "exact_match")["step"] == 4  # another metric, another step
    with pytest.raises(ConfigError, match="selection_metric"):
        SFTConfig(selection_metric="loss").validate()


@pytest.fixture
def in_process_training():
    """Restore what a trainer run in this process changes: the SIGTERM handler (its StopSignal) and, set here to 1
    as in the CLI runs (--threads 1), torch's thread count (2 threads on 2 busy cores are slower, not faster)."""
    previous, threads = signal.getsignal(signal.SIGTERM), torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    signal.signal(signal.SIGTERM, previous)
    torch.set_num_threads(threads)


def test_output_is_the_model_of_the_best_evaluation(tiny, tmp_path, monkeypatch, in_process_training):
    """Scripted dev scores 10, 30, 30, 20 after steps 1, 2, 3, 4: the output holds the weights after step 2 (the
    first of the two best), not those after step 3 or at the end."""
    scripted = iter([10.0, 30.0, 30.0, 20.0])
    snapshots = {}

    def fake_evaluate(accelerator, model, *args):
        step = len(snapshots) + 1
        snapshots[step] = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        return {"rouge_lsum": next(scripted), "exact_match": 0.0, "generated_tokens": 5.0}

    monkeypatch.setattr(sft, "evaluate_dev", fake_evaluate)
    config = SFTConfig(**{**HPARAMS, "max_steps": 4, "eval_every": 1})
    summary = sft.train_sft(
        [str(tiny["train"])], [str(tiny["dev"])], str(tiny["t5"]), str(tmp_path / "out"), str(tmp_path / "work"), config
    )
    assert (summary["best_step"], summary["best_epoch"], summary["best_rouge_lsum"]) == (2, 0, 30.0)
    log = pd.read_parquet(tmp_path / "out" / "training_log.parquet")
    assert log["rouge_lsum"].tolist() == [10.0, 30.0, 30.0, 20.0]
    assert log["generated_tokens"].tolist() == [5.0] * 4 and log["exact_match"].tolist() == [0.0] * 4
    output = state_dict_of(tmp_path / "out")
    assert_same_weights(output, snapshots[2])
    assert not torch.equal(output["lm_head.weight"], snapshots[3]["lm_head.weight"])
    assert not torch.equal(output["lm_head.weight"], snapshots[4]["lm_head.weight"])
    assert not (tmp_path / "work").exists()


# --- CLI runs -------------------------------------------------------------------------------------


def test_training_learns_and_keeps_the_best_model(tiny, runs, in_process_training):
    out = runs["dirs"]["reference"]
    log = pd.read_parquet(out / "training_log.parquet")
    assert log["step"].tolist() == list(range(1, TOTAL_STEPS + 1))
    assert log["epoch"].tolist() == [s // STEPS_PER_EPOCH for s in range(TOTAL_STEPS)]
    assert log["loss"].iloc[-8:].mean() < 0.5 * log["loss"].iloc[:8].mean()
    assert log["learning_rate"].iloc[0] == HPARAMS["learning_rate"]  # linear decay, no warm-up (the paper)
    evals = log.dropna(subset=["rouge_lsum"])
    assert evals["step"].tolist() == list(range(STEPS_PER_EPOCH, TOTAL_STEPS + 1, STEPS_PER_EPOCH))
    assert evals["rouge_lsum"].max() > evals["rouge_lsum"].iloc[0] + 20  # dev rougeLsum rises
    summary = json.loads((out / "sft_training.json").read_text())
    first_best = evals[evals["rouge_lsum"] == evals["rouge_lsum"].max()].iloc[0]
    assert summary["best_step"] == first_best["step"] and summary["best_rouge_lsum"] == first_best["rouge_lsum"]
    assert summary["best_epoch"] == first_best["epoch"]
    assert [e["rouge_lsum"] for e in summary["evaluations"]] == evals["rouge_lsum"].tolist()
    assert (summary["train_examples"], summary["dev_examples"], summary["policy_type"]) == (32, 8, "seq2seq")
    assert not (tiny["root"] / "reference_work").exists()

    # Greedy generation with the saved model reproduces the logged best score: the output is that checkpoint.
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    config = SFTConfig(**HPARAMS)
    dev = dev_set(load_qa_prompts([str(tiny["dev"])]), tokenizer, config, is_seq2seq=True)
    # 1 thread, as the run (--threads 1): the same float reductions, the same greedy choices
    texts, _ = greedy_generate(model, tokenizer, dev.inputs, True, config.max_new_tokens, config.eval_batch_size)
    rouge = mean_rouge_lsum(texts, dev.references, default_sentence_splitter())
    assert rouge == pytest.approx(summary["best_rouge_lsum"], abs=1e-9)
    matches = [text == refs[0].strip() for text, refs in zip(texts, dev.references, strict=True)]
    assert summary["best_exact_match"] == pytest.approx(100 * sum(matches) / len(matches))
    assert summary["selection_metric"] == "rouge_lsum"
    assert dev.references[0] == [pd.read_parquet(tiny["dev"])["references"][0][0]]  # scored vs the first reference


def test_micro_batches_accumulate_to_the_same_steps(runs):
    """4 examples in micro batches of 1 give the step of one forward over 4 (the global batch's token mean): the same
    losses over 2 epochs (each depends on every earlier step's weights) and the same dev scores."""
    n = 2 * STEPS_PER_EPOCH
    reference = pd.read_parquet(runs["dirs"]["reference"] / "training_log.parquet").iloc[:n]
    accumulated = pd.read_parquet(runs["dirs"]["micro"] / "training_log.parquet")
    assert accumulated["step"].tolist() == list(range(1, n + 1))
    assert accumulated["loss"].tolist() == pytest.approx(reference["loss"].tolist(), rel=1e-5)
    assert accumulated["learning_rate"].tolist() == pytest.approx(reference["learning_rate"].tolist(), rel=1e-12)
    assert accumulated["rouge_lsum"].dropna().tolist() == reference["rouge_lsum"].dropna().tolist()


def test_stopped_run_resumes_and_ends_like_the_uninterrupted_one(runs):
    """SIGTERM (SLURM preemption) after the first epoch: checkpoint at the current step, exit 143, rerun resumes."""
    assert runs["killed_first_returncode"] == 143
    assert not runs["killed_left_output"]
    saved = [line for line in runs["killed_first_log"].splitlines() if "SIGTERM: checkpoint saved at step" in line]
    assert saved, runs["killed_first_log"][-2000:]
    step = int(saved[0].split(" at step ")[1].split()[0])
    assert STEPS_PER_EPOCH <= step < TOTAL_STEPS
    assert "resuming from" in runs["logs"]["killed"] and f"at step {step} of" in runs["logs"]["killed"]
    assert_same_weights(state_dict_of(runs["dirs"]["reference"]), state_dict_of(runs["dirs"]["killed"]))
    pd.testing.assert_frame_equal(
        pd.read_parquet(runs["dirs"]["reference"] / "training_log.parquet"),
        pd.read_parquet(runs["dirs"]["killed"] / "training_log.parquet"),
    )
    reference = json.loads((runs["dirs"]["reference"] / "sft_training.json").read_text())
    resumed = json.loads((runs["dirs"]["killed"] / "sft_training.json").read_text())
    assert resumed == reference | {"base_model": resumed["base_model"]}


def test_causal_policy_trains(tiny, runs):
    out = runs["dirs"]["causal"]
    log = pd.read_parquet(out / "training_log.parquet")
    assert log["loss"].iloc[-8:].mean() < 0.8 * log["loss"].iloc[:8].mean()
    evals = log["rouge_lsum"].dropna()
    assert len(evals) == CAUSAL_EPOCHS and evals.max() > evals.iloc[0]
    summary = json.loads((out / "sft_training.json").read_text())
    assert summary["policy_type"] == "causal" and summary["best_rouge_lsum"] == evals.max()
    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)


def test_bad_input_fails_before_training_and_writes_nothing(tiny, tmp_path, in_process_training):
    rows = pd.read_parquet(tiny["dev"]).to_dict("records")
    rows[3]["references"] = ["the cat is red.", "  "]
    bad = tmp_path / "bad_dev.parquet"
    write_rows(rows, bad, QA_PROMPTS)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="reference 1 is empty") as error:
        sft.train_sft([str(tiny["train"])], [str(bad)], str(tiny["t5"]), str(out), str(tmp_path / "work"), SFTConfig())
    assert str(error.value).startswith(f"{bad}: record 3: field 'references'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_dev.parquet"]
