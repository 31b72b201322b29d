"""What the qa-feedback reward models see in a finished tiny run: each greedy test answer's sentences by class, and
how R1 (relevance) and R2 (factuality) label each class (docs/claims.md, "Why Fine-Grained qa does not hold").

    .venv/bin/python benchmarks/qa_sentence_classes.py results/claims/seed-1

The argument is a project directory whose `results/` holds a finished qa-feedback run (the default run's, or a
`make claims` scratch copy). A sentence of a policy's answer is classed against its test record of the synthetic
world (`qa_synthetic`): `ideal` (a sentence of the first reference), `minor` (of the second reference only),
`passage` (another passage sentence: true but irrelevant), `truncated` (no final full stop), `wrong_value` (names the
work but no passage states it: a value copied from the wrong sentence) or `aside` (anything else: a remark on
another person). `net` is the mean R1 + R2 reward of the class under the paper's values (+-0.3, +-0.5).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

import pandas as pd
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from feedbackflow.core.formats import QA_PROMPTS, read_table  # noqa: E402
from feedbackflow.papers.fgrlhf.qa.data import grounded_prefix, relevance_prefix  # noqa: E402
from feedbackflow.papers.fgrlhf.qa.evaluation import FACTUALITY_REWARDS, RELEVANCE_REWARDS  # noqa: E402
from feedbackflow.papers.fgrlhf.qa.rewards import SegmentErrorReward, question_of_prompt  # noqa: E402
from feedbackflow.text.segmentation import sentence_spans, sub_sentence_spans  # noqa: E402

POLICIES = ("sft", "holistic", "fine_grained")


def sentences_of(text: str) -> set[str]:
    """The world's sentences: each ends in '. ' (they have no other full stops)."""
    return {s.strip() for s in re.split(r"(?<=\.) ", text) if s.strip()}


def sentence_class(sentence: str, record: dict) -> str:
    """The class of one answer sentence against its test record (see the module doc)."""
    ideal = sentences_of(record["answer"][0])
    minor = set().union(*(sentences_of(a) for a in record["answer"][1:])) - ideal
    passages = set().union(*(sentences_of(p["content"]) for p in record["passages"]))
    if sentence in ideal:
        return "ideal"
    if sentence in minor:
        return "minor"
    if sentence in passages:
        return "passage"
    if not sentence.endswith("."):
        return "truncated"
    work = record["passages"][0]["wikipage"].split(" (")[0]  # "Northern Bridge (1955 film)": the name
    return "wrong_value" if work.split()[-1] in sentence else "aside"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path, help="a directory whose results/ holds a finished qa-feedback run")
    parser.add_argument("--max-length", type=int, default=256, help="the reward models' max length (tiny: 256)")
    args = parser.parse_args()
    results = args.project / "results"
    records = json.loads((results / "tiny/raw/qa_feedback/test.json").read_text())
    table = read_table(results / "qa_feedback/data/test.prompts.parquet", QA_PROMPTS)
    prompts = [row["prompt"] for row in table.to_pylist()]
    models = results / "qa_feedback/models"
    tokenizer = AutoTokenizer.from_pretrained(models / "sft")
    def question_prefix(prompt: str) -> str:
        return relevance_prefix(question_of_prompt(prompt))

    r1 = SegmentErrorReward(
        "r1", str(models / "relevance"), tokenizer, sub_sentence_spans, question_prefix, *RELEVANCE_REWARDS,
        args.max_length, 64,
    )  # fmt: skip
    r2 = SegmentErrorReward(
        "r2", str(models / "factuality"), tokenizer, sentence_spans, grounded_prefix, *FACTUALITY_REWARDS,
        args.max_length, 64,
    )  # fmt: skip
    print("| policy | class | sentences | R1 errors | R2 errors | net reward |")
    print("|---|---|---:|---:|---:|---:|")
    for policy in POLICIES:
        answers = pd.read_parquet(results / f"qa_feedback/eval/{policy}.responses.parquet").response.tolist()
        batch = prompts[: len(answers)]
        _, relevance = r1.judge(batch, answers)
        _, factuality = r2.judge(batch, answers)
        stats = collections.defaultdict(lambda: [0, 0, 0, 0.0])
        for answer, record, rel, fact in zip(answers, records, relevance, factuality, strict=True):
            spans = sentence_spans(answer)
            if len(spans) != len(rel):  # a sentence of several sub-sentences: R1's labels do not line up
                continue
            for (start, end), r1_error, r2_error in zip(spans, rel, fact, strict=True):
                row = stats[sentence_class(answer[start:end], record)]
                row[0] += 1
                row[1] += bool(r1_error)
                row[2] += bool(r2_error)
                row[3] += RELEVANCE_REWARDS[bool(r1_error)] + FACTUALITY_REWARDS[bool(r2_error)]
        for name, (n, e1, e2, net) in sorted(stats.items()):
            print(f"| {policy} | {name} | {n} | {e1} | {e2} | {net / n:+.2f} |")


if __name__ == "__main__":
    main()
