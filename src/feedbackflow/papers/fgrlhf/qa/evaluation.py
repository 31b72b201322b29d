"""qa-feedback evaluation of a policy (Wu et al. 2023, "Evaluation"), and the table over policies.

`evaluate-qa`: greedy responses to the test prompts (batched, KV cache), decoded as the original decodes policy
samples (special tokens skipped, spaces before punctuation removed: `text.tokens.decode_tokens`), then per response
- rougeLsum (F x 100, stemming, the best over the references; `text_metrics.rouge_lsum`),
- the R1 judgement of every sub-sentence (relevance) and the R2 judgement of every sentence (factuality),
- R3's normalised completeness score (score - mean) / std (unscaled, as the paper's eval_metrics),
- the fine-grained reward the response earns (`fine_grained_total`: R1 + R2 + R3 as PPO pays them),
- optionally the holistic preference RM's normalised score (the holistic PPO's reward), so that both PPO variants
  are compared on each other's reward,
- the response length in policy tokens (eos included).
Written: a per-response Parquet (QA_EVAL_RESPONSES) and a one-row summary JSON. The relevance and factuality ratios
are pooled over segments (sum of segments judged without error / sum of segments), as the paper's
`aggregate_metrics` weights them; the other figures are means over responses.

`qa-metrics`: the summaries of several policies (sft, holistic and fine-grained PPO) -> metrics.parquet / .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math

import pyarrow as pa
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from feedbackflow.core.formats import QA_PROMPTS, read_table, write_json, write_rows
from feedbackflow.core.inference import INFERENCE_DTYPES, load_for_inference
from feedbackflow.errors import ConfigError
from feedbackflow.papers.fgrlhf.qa.data import grounded_prefix, relevance_prefix
from feedbackflow.papers.fgrlhf.qa.reward_models import read_mean_std
from feedbackflow.papers.fgrlhf.qa.rewards import SegmentErrorReward, SequenceReward, question_of_prompt
from feedbackflow.stages.sft import encode_inputs, greedy_generate
from feedbackflow.text.metrics import rouge_lsum
from feedbackflow.text.segmentation import sentence_spans, sub_sentence_spans

log = logging.getLogger("feedbackflow.papers.fgrlhf.qa.evaluation")

QA_EVAL_RESPONSES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("rouge_lsum", pa.float64(), nullable=False),
        pa.field("n_sub_sentences", pa.int64(), nullable=False),
        pa.field("n_relevant", pa.int64(), nullable=False),
        pa.field("n_sentences", pa.int64(), nullable=False),
        pa.field("n_factual", pa.int64(), nullable=False),
        pa.field("completeness", pa.float64(), nullable=False),
        pa.field("fine_grained_reward", pa.float64(), nullable=False),
        pa.field("preference", pa.float64()),
        pa.field("length", pa.int64(), nullable=False),
    ]
)

# Wu et al. 2023, "Reward assignment during PPO": R1 +-0.3 per sub-sentence, R2 +-0.5 per sentence, R3 0.3 x z.
RELEVANCE_REWARDS, FACTUALITY_REWARDS, COMPLETENESS_SCALE = (0.3, -0.3), (0.5, -0.5), 0.3


def fine_grained_total(n_sub_sentences: int, n_relevant: int, n_sentences: int, n_factual: int, z: float) -> float:
    """The sum over a response's tokens of the fine-grained reward (Wu et al. 2023): +0.3 / -0.3 per sub-sentence
    judged relevant / not, +0.5 / -0.5 per sentence judged factual / not, and 0.3 x R3's normalised score."""
    positive, negative = RELEVANCE_REWARDS
    relevance = positive * n_relevant + negative * (n_sub_sentences - n_relevant)
    positive, negative = FACTUALITY_REWARDS
    factuality = positive * n_factual + negative * (n_sentences - n_factual)
    return relevance + factuality + COMPLETENESS_SCALE * z


def load_policy(path: str, dtype: str | None = None):
    """(model, tokenizer, is_seq2seq) of a seq2seq or causal policy directory / hub id, on the job's device in eval
    mode (`inference.load_for_inference`; `dtype` applies on a GPU)."""
    config = AutoConfig.from_pretrained(path)
    is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    cls = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
    model = load_for_inference(cls, path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not is_seq2seq:
        tokenizer.padding_side = "left"
    return model, tokenizer, is_seq2seq


def summarise(rows: list[dict]) -> dict:
    """Pooled relevance / factuality ratios and mean rougeLsum, completeness and length (see the module doc)."""
    n = len(rows)
    sub, sent = sum(r["n_sub_sentences"] for r in rows), sum(r["n_sentences"] for r in rows)
    return {
        "rouge_lsum": math.fsum(r["rouge_lsum"] for r in rows) / n,
        "relevance_ratio": sum(r["n_relevant"] for r in rows) / sub if sub else None,
        "factuality_ratio": sum(r["n_factual"] for r in rows) / sent if sent else None,
        "completeness": math.fsum(r["completeness"] for r in rows) / n,
        "fine_grained_reward": math.fsum(r["fine_grained_reward"] for r in rows) / n,
        "preference": None if rows[0].get("preference") is None else math.fsum(r["preference"] for r in rows) / n,
        "mean_length": sum(r["length"] for r in rows) / n,
        "n_responses": n,
    }


@torch.inference_mode()
def evaluate_qa(
    prompts_path: str,
    policy_path: str,
    relevance_model: str,
    factuality_model: str,
    completeness_model: str,
    completeness_mean_std: str,
    max_input_length: int,
    max_new_tokens: int,
    batch_size: int,
    rm_max_length: int,
    max_examples: int | None = None,
    preference_model: str | None = None,
    preference_mean_std: str | None = None,
    dtype: str | None = None,
) -> tuple[list[dict], dict]:
    """Per-response rows and the summary of one policy on the test prompts (every model on the job's device, in
    `dtype` on a GPU, under inference mode)."""
    table = read_table(prompts_path, QA_PROMPTS).to_pylist()[:max_examples]
    model, tokenizer, is_seq2seq = load_policy(policy_path, dtype)
    inputs, _ = encode_inputs(tokenizer, [r["prompt"] for r in table], max_input_length, "right", is_seq2seq)
    responses, lengths = greedy_generate(
        model, tokenizer, inputs, is_seq2seq, max_new_tokens, batch_size, clean_up_spaces=True
    )
    prompts = [r["prompt"] for r in table]

    r1 = SegmentErrorReward(
        "r1",
        relevance_model,
        tokenizer,
        sub_sentence_spans,
        lambda p: relevance_prefix(question_of_prompt(p)),
        *RELEVANCE_REWARDS,
        rm_max_length,
        batch_size,
        dtype=dtype,
    )
    _, relevance = r1.judge(prompts, responses)
    r2 = SegmentErrorReward(
        "r2",
        factuality_model,
        tokenizer,
        sentence_spans,
        grounded_prefix,
        *FACTUALITY_REWARDS,
        rm_max_length,
        batch_size,
        dtype=dtype,
    )
    _, factuality = r2.judge(prompts, responses)
    mean, std = read_mean_std(completeness_mean_std)
    r3 = SequenceReward(
        "r3", completeness_model, mean, std, COMPLETENESS_SCALE, 0.0, rm_max_length, batch_size, dtype=dtype
    )
    _, completeness = r3.normalised(prompts, responses)
    preference = [None] * len(responses)
    if preference_model:
        mean, std = read_mean_std(preference_mean_std)
        holistic = SequenceReward(
            "preference", preference_model, mean, std, 1.0, 0.0, rm_max_length, batch_size, dtype=dtype
        )
        _, preference = holistic.normalised(prompts, responses)

    rows = [
        {
            "prompt_id": row["prompt_id"],
            "response": response,
            "rouge_lsum": rouge_lsum(response, row["references"]),
            "n_sub_sentences": len(rel),
            "n_relevant": sum(1 for label in rel if not label),
            "n_sentences": len(fact),
            "n_factual": sum(1 for label in fact if not label),
            "completeness": comp,
            "fine_grained_reward": fine_grained_total(
                len(rel), sum(1 for x in rel if not x), len(fact), sum(1 for x in fact if not x), comp
            ),
            "preference": pref,
            "length": length,
        }
        for row, response, rel, fact, comp, pref, length in zip(
            table, responses, relevance, factuality, completeness, preference, lengths, strict=True
        )
    ]
    return rows, summarise(rows)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, help="QA_PROMPTS Parquet (test)")
    parser.add_argument("--policy", required=True, help="policy directory (seq2seq or causal)")
    parser.add_argument("--relevance-model", required=True, help="R1 token-classifier directory")
    parser.add_argument("--factuality-model", required=True, help="R2 token-classifier directory")
    parser.add_argument("--completeness-model", required=True, help="R3 sequence-RM directory")
    parser.add_argument("--completeness-mean-std", required=True, help="R3's reward-mean-std JSON")
    parser.add_argument("--preference-model", default=None, help="holistic preference RM directory (optional)")
    parser.add_argument("--preference-mean-std", default=None, help="its reward-mean-std JSON (with the model)")
    parser.add_argument("--responses", required=True, help="per-response Parquet to write")
    parser.add_argument("--summary", required=True, help="summary JSON to write")
    parser.add_argument("--name", required=True, help="the policy's name in the summary (sft, holistic, ...)")
    parser.add_argument("--max-input-length", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rm-max-length", type=int, default=2048)
    parser.add_argument("--max-examples", type=int, default=None, help="evaluate the first N prompts only")
    parser.add_argument(
        "--dtype", choices=INFERENCE_DTYPES, default=None, help="model dtype on a GPU (config inference_dtype)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def main(args: argparse.Namespace) -> None:
    if bool(args.preference_model) != bool(args.preference_mean_std):
        raise ConfigError("--preference-model and --preference-mean-std go together")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, summary = evaluate_qa(
        args.prompts,
        args.policy,
        args.relevance_model,
        args.factuality_model,
        args.completeness_model,
        args.completeness_mean_std,
        args.max_input_length,
        args.max_new_tokens,
        args.batch_size,
        args.rm_max_length,
        args.max_examples,
        args.preference_model,
        args.preference_mean_std,
        args.dtype,
    )
    write_rows(rows, args.responses, QA_EVAL_RESPONSES)
    write_json({"policy": args.name, "model": args.policy, **summary}, args.summary)
    log.info("%s: %s", args.name, json.dumps(summary))


