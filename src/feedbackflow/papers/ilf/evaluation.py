"""ILF evaluation (Scheurer et al. 2023): win rates against the human reference summary, refinement quality, the table.

The paper's win rate is the share of test posts whose model summary human raters preferred over the human-written
TL;DR. Here three judges give it, each stated as such in the table:
- `judge`: an LM asked `ilf_prompts.pairwise_prompt` (which summary is better, A or B) in BOTH orders. In each order
  its verdict is read from the next-token probabilities: P(policy's letter) / (P(A) + P(B)) above 1/2 is a win (1),
  below a loss (0), exactly 1/2 a tie (1/2). A post's win is the mean of its two verdicts, so a judge that always
  answers "A" gives every post 1/2: position bias cancels. A post whose question got no A/B probability in either
  order is "unparsed" (or "failed": no reply) and left out of the rate, counted.
- `opt_rm`: OPT-RM's P(Yes | summary): a win when the policy's summary scores higher than the reference (ties 1/2).
- `oracle` (tiny scale only): the synthetic world's `summary_quality` of both summaries (ties 1/2).

Refinement quality (per selection scorer, `refinement_quality`): on the training feedback, how many posts got a
chosen refinement and (tiny) how often it fixes the flaw the feedback names, beside the rate over all refinements
(what random choice gets on average) and over the summaries the feedback was written on.
"""

from __future__ import annotations

import argparse
import logging
import math
import os

import pyarrow as pa

from feedbackflow.core.formats import (
    QA_PROMPTS,
    SAMPLES,
    SCORED_SAMPLES,
    SLF5K_FEEDBACK,
    SLF5K_POSTS,
    read_json,
    read_table,
    write_json,
    write_rows,
    write_table,
)
from feedbackflow.core.report import write_text
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.ilf.oracle import fixes_flaw, load_oracle, summary_quality
from feedbackflow.papers.ilf.prompts import answer_variants, pairwise_prompt

log = logging.getLogger(__name__)

# The judge's verdicts on one policy's test summaries, one row per post: the probability that the policy's summary
# is the better one when shown first (as A) and second (as B), each order's verdict (1 win, 0.5 tie, 0 loss) and
# their mean `win`; `status` "ok", "unparsed" (no A/B probability in either order) or "failed" (no reply).
PAIRWISE_JUDGEMENTS = pa.schema(
    [
        pa.field("post_id", pa.string(), nullable=False),
        pa.field("policy", pa.string(), nullable=False),
        pa.field("policy_summary", pa.string(), nullable=False),
        pa.field("reference_summary", pa.string(), nullable=False),
        pa.field("p_policy_first", pa.float64()),
        pa.field("p_policy_second", pa.float64()),
        pa.field("win", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
    ]
)


# --- pure rules -------------------------------------------------------------------------------------------------


def verdict(p_policy: float | None) -> float | None:
    """One order's verdict from P(policy's letter) / (P(A) + P(B)): 1 above 1/2, 0 below, 1/2 at 1/2; None: none."""
    if p_policy is None:
        return None
    if p_policy > 0.5:
        return 1.0
    if p_policy < 0.5:
        return 0.0
    return 0.5


def pairwise_win(p_policy_first: float | None, p_policy_second: float | None) -> float | None:
    """A post's win: the mean of the verdicts of the orders that gave one (None when neither did)."""
    verdicts = [v for v in (verdict(p_policy_first), verdict(p_policy_second)) if v is not None]
    return sum(verdicts) / len(verdicts) if verdicts else None


def score_win(policy_score: float, reference_score: float) -> float:
    """A win by a scalar judge (OPT-RM's P(Yes), the oracle's quality): 1 higher, 0 lower, 1/2 equal."""
    if policy_score > reference_score:
        return 1.0
    if policy_score < reference_score:
        return 0.0
    return 0.5


def win_rate(wins: list[float | None]) -> tuple[float | None, int]:
    """(mean of the wins that are set, how many are set); None when none is."""
    present = [w for w in wins if w is not None]
    return (sum(present) / len(present) if present else None), len(present)


# --- inputs -----------------------------------------------------------------------------------------------------


def policy_summaries(samples_path: str | os.PathLike) -> dict[str, str]:
    """post_id -> the policy's test summary (sample_index 0); two such rows for a post is a DataError."""
    summaries: dict[str, str] = {}
    for record, row in enumerate(read_table(samples_path, SAMPLES).to_pylist()):
        if row["sample_index"] != 0:
            continue
        if row["prompt_id"] in summaries:
            raise DataError(samples_path, record, "prompt_id", f"{row['prompt_id']!r} has two samples with index 0")
        summaries[row["prompt_id"]] = row["response"]
    return summaries


def reference_posts(posts_path: str | os.PathLike) -> dict[str, dict]:
    """post_id -> the post (title, post, reference_summary) for the posts with a non-empty reference summary."""
    return {
        row["post_id"]: row
        for row in read_table(posts_path, SLF5K_POSTS).to_pylist()
        if row["reference_summary"] and row["reference_summary"].strip()
    }


def opt_rm_scores(scored_path: str | os.PathLike) -> dict[str, float]:
    """post_id -> OPT-RM's P(Yes) of sample 0 in a SCORED_SAMPLES table (rows without a score are left out)."""
    scores: dict[str, float] = {}
    seen: set[str] = set()
    for record, row in enumerate(read_table(scored_path, SCORED_SAMPLES).to_pylist()):
        if row["sample_index"] != 0:
            continue
        if row["prompt_id"] in seen:
            raise DataError(scored_path, record, "prompt_id", f"{row['prompt_id']!r} has two samples with index 0")
        seen.add(row["prompt_id"])
        if row["status"] == "ok" and row["score"] is not None:
            scores[row["prompt_id"]] = float(row["score"])
    return scores


# --- the judge --------------------------------------------------------------------------------------------------


def judge_pairs(
    policy: str,
    summaries: dict[str, str],
    posts: dict[str, dict],
    lm,
) -> list[dict]:
    """PAIRWISE_JUDGEMENTS rows of one policy against the reference, both orders, through `lm` (a LanguageModel)."""
    from feedbackflow.llm.language_model import answer_probability

    post_ids = [post_id for post_id in summaries if post_id in posts]
    prompts = []
    for post_id in post_ids:
        post, summary = posts[post_id], summaries[post_id]
        prompts.append(pairwise_prompt(post["title"], post["post"], summary, post["reference_summary"]))
        prompts.append(pairwise_prompt(post["title"], post["post"], post["reference_summary"], summary))
    candidates = (*answer_variants("A"), *answer_variants("B"))
    results = lm.next_token_logprobs(prompts, candidates=candidates)
    rows = []
    for k, post_id in enumerate(post_ids):
        first, second = results[2 * k], results[2 * k + 1]
        p_first = answer_probability(first.value, "A", "B") if first.ok else None
        p_second = answer_probability(second.value, "B", "A") if second.ok else None
        win = pairwise_win(p_first, p_second)
        if win is not None:
            status, reason = "ok", None
        else:
            status = "failed" if first.status == "failed" and second.status == "failed" else "unparsed"
            reason = "; ".join(
                f"{order}: {result.error if not result.ok else 'no A/B token among the next-token log-probabilities'}"
                for order, result in (("policy first", first), ("policy second", second))
            )
        rows.append(
            {
                "post_id": post_id,
                "policy": policy,
                "policy_summary": summaries[post_id],
                "reference_summary": posts[post_id]["reference_summary"],
                "p_policy_first": p_first,
                "p_policy_second": p_second,
                "win": win,
                "status": status,
                "reason": reason,
            }
        )
    return rows


# --- win rates of one policy ------------------------------------------------------------------------------------


def load_oracle_by_post(oracle_path) -> dict[str, dict]:
    """The synthetic world's oracle (`oracle.load_oracle`: {(split, id): {"facts", "alternatives", "flaw"}}) keyed by
    post id, the key of every ILF table: {post_id: {"split", "facts", "alternatives", "flaw"}}. An id in two splits
    is a DataError (the tables do not say the split, so the post would be ambiguous)."""
    by_post: dict[str, dict] = {}
    for (split, post_id), entry in load_oracle(oracle_path).items():
        if post_id in by_post:
            raise DataError(oracle_path, None, "id", f"post {post_id!r} is in splits {by_post[post_id]['split']!r} "
                            f"and {split!r}: the ILF tables key posts by id alone")
        by_post[post_id] = {"split": split, **entry}
    return by_post


def _oracle_entry(oracle: dict[str, dict], post_id: str, path, record: int | None, field: str, oracle_path) -> dict:
    entry = oracle.get(post_id)
    if entry is None:
        raise DataError(path, record, field, f"post {post_id!r} is not in the oracle {oracle_path}")
    return entry




def oracle_win_rate(summaries: dict[str, str], posts: dict[str, dict], oracle_path) -> tuple[float | None, int]:
    """Win rate by the synthetic world's `summary_quality` (tiny scale): the policy's summary against the post's
    reference summary (ties 1/2), over the posts that have both. A judged post missing from the oracle is a
    DataError (the oracle of another world)."""
    oracle = load_oracle_by_post(oracle_path)
    wins = []
    for post_id, summary in summaries.items():
        if post_id not in posts:
            continue
        entry = oracle.get(post_id)
        if entry is None:
            raise DataError(oracle_path, None, "id", f"test post {post_id!r} is not in the oracle")
        ours = summary_quality(summary, entry["facts"], entry["alternatives"])
        reference = summary_quality(posts[post_id]["reference_summary"], entry["facts"], entry["alternatives"])
        wins.append(score_win(ours, reference))
    return win_rate(wins)


def policy_win_rates(
    policy: str,
    samples_path,
    posts_path,
    judgements_path=None,
    opt_rm_policy_path=None,
    opt_rm_reference_path=None,
    oracle_path=None,
) -> dict:
    """The win rates of one policy's test summaries against the reference, by each judge given."""
    summaries = policy_summaries(samples_path)
    posts = reference_posts(posts_path)
    result: dict = {"policy": policy, "posts": len(summaries)}
    if judgements_path:
        rows = read_table(judgements_path, PAIRWISE_JUDGEMENTS).to_pylist()
        for record, row in enumerate(rows):
            if row["policy"] != policy:
                raise DataError(judgements_path, record, "policy", f"{row['policy']!r}, expected {policy!r}")
        rate, n = win_rate([row["win"] for row in rows])
        result.update(win_rate_judge=rate, judged_pairs=n,
                      judge_unparsed=sum(r["status"] == "unparsed" for r in rows),
                      judge_failed=sum(r["status"] == "failed" for r in rows))
    if opt_rm_policy_path and opt_rm_reference_path:
        policy_scores = opt_rm_scores(opt_rm_policy_path)
        reference_scores = opt_rm_scores(opt_rm_reference_path)
        wins = [
            score_win(policy_scores[p], reference_scores[p])
            for p in summaries
            if p in policy_scores and p in reference_scores
        ]
        rate, n = win_rate(wins)
        result.update(win_rate_opt_rm=rate, opt_rm_pairs=n)
        if policy_scores:
            result["mean_opt_rm_p_yes"] = sum(policy_scores.values()) / len(policy_scores)
    if oracle_path:
        rate, n = oracle_win_rate(summaries, posts, oracle_path)
        result.update(win_rate_oracle=rate, oracle_pairs=n)
    lengths = [len(s.split()) for s in summaries.values()]
    result["mean_words"] = sum(lengths) / len(lengths) if lengths else None
    return result


def refinement_quality(scorer: str, selected_path, feedback_path, oracle_path=None, all_refinements_path=None) -> dict:
    """How good the chosen refinements are. With the synthetic world's oracle (tiny scale): `fix_rate`, the share of
    the chosen refinements that fix the flaw the feedback names (`fixes_flaw`), beside the same share over all
    refinements (what random choice gets on average) and over the summaries the feedback was written on (0 in the
    synthetic world, where feedback is only written on flawed summaries). A post missing from the oracle, or one
    whose oracle entry has no flaw although it has feedback, is a DataError (the oracle of another world)."""
    selected = read_table(selected_path, QA_PROMPTS).to_pylist()
    chosen = {row["prompt_id"]: row["references"][0] for row in selected}
    feedback = read_table(feedback_path, SLF5K_FEEDBACK).to_pylist()
    result: dict = {"scorer": scorer, "posts_with_feedback": len(feedback), "chosen": len(chosen)}
    if oracle_path:

        oracle = load_oracle_by_post(oracle_path)

        def flaw_of(post_id: str, path, record: int, field: str) -> dict:
            entry = _oracle_entry(oracle, post_id, path, record, field, oracle_path)
            if entry["flaw"] is None:
                raise DataError(path, record, field, f"post {post_id!r} has feedback, but the oracle {oracle_path} "
                                "gives its feedback summary no flaw")
            return entry["flaw"]

        fixed = [
            fixes_flaw(row["references"][0], flaw_of(row["prompt_id"], selected_path, record, "prompt_id"))
            for record, row in enumerate(selected)
        ]
        result["fix_rate"] = sum(fixed) / len(fixed) if fixed else None
        if all_refinements_path:
            every = [
                fixes_flaw(row["response"], flaw_of(row["prompt_id"], all_refinements_path, record, "prompt_id"))
                for record, row in enumerate(read_table(all_refinements_path, SAMPLES).to_pylist())
            ]
            result["fix_rate_all_refinements"] = sum(every) / len(every) if every else None
        unchanged = [
            fixes_flaw(row["summary"], flaw_of(row["post_id"], feedback_path, record, "post_id"))
            for record, row in enumerate(feedback)
        ]
        result["fix_rate_initial_summary"] = sum(unchanged) / len(unchanged) if unchanged else None
    return result


# --- stages -----------------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="the policy's test SAMPLES (sample_index 0 is judged)")
    parser.add_argument("--posts", required=True, help="the test SLF5K_POSTS (title, post, reference summary)")
    parser.add_argument("--policy", required=True, help="the policy's name in the output")
    parser.add_argument("--lm", required=True, help="JSON object: the judge LM's LMConfig (backend, model, ...)")
    parser.add_argument("--cache", required=True, help="SQLite reply cache of the judge")
    parser.add_argument("--output", required=True, help="PAIRWISE_JUDGEMENTS Parquet to write")


def main(args: argparse.Namespace) -> None:
    from feedbackflow.llm.language_model import LanguageModel, lm_config_from_json

    lm_config = lm_config_from_json(args.lm, where="--lm")
    summaries = policy_summaries(args.samples)
    posts = reference_posts(args.posts)
    with LanguageModel(lm_config, args.cache) as lm:
        rows = judge_pairs(args.policy, summaries, posts, lm)
    write_rows(rows, args.output, PAIRWISE_JUDGEMENTS)
    rate, n = win_rate([row["win"] for row in rows])
    log.info("%s: judge win rate %s over %d posts -> %s", args.policy, rate, n, args.output)


def configure_win_rates(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="the policy's name")
    parser.add_argument("--samples", required=True, help="the policy's test SAMPLES")
    parser.add_argument("--posts", required=True, help="the test SLF5K_POSTS")
    parser.add_argument("--judgements", help="PAIRWISE_JUDGEMENTS of this policy (the LM judge)")
    parser.add_argument("--opt-rm-policy", help="SCORED_SAMPLES: OPT-RM's P(Yes) of the policy's summaries")
    parser.add_argument("--opt-rm-reference", help="SCORED_SAMPLES: OPT-RM's P(Yes) of the reference summaries")
    parser.add_argument("--oracle", help="the synthetic world's oracle.jsonl (tiny scale only)")
    parser.add_argument("--output", required=True, help="JSON to write")


def main_win_rates(args: argparse.Namespace) -> None:
    if bool(args.opt_rm_policy) != bool(args.opt_rm_reference):
        raise ConfigError("--opt-rm-policy and --opt-rm-reference go together")
    result = policy_win_rates(args.policy, args.samples, args.posts, args.judgements, args.opt_rm_policy,
                              args.opt_rm_reference, args.oracle)
    write_json(result, args.output)
    log.info("%s", result)


# --- the table --------------------------------------------------------------------------------------------------

POLICY_ROWS = ("initial", "human", "initial_summaries", "ilf", "ilf_best_of_n")
POLICY_LABELS = {
    "initial": "initial policy",
    "human": "fine-tuned on human summaries",
    "initial_summaries": "fine-tuned on initial summaries",
    "ilf": "ILF",
    "ilf_best_of_n": "ILF + OPT-RM best-of-n",
}
# Scheurer et al. 2023: win rates (%) vs human summaries with 100 / 1K / 5K training samples (human raters).
PUBLISHED_WIN_RATES = {
    "ilf": (19.6, 29.2, 31.3),
    "human": (16.8, 26.3, 28.9),
    "initial_summaries": (19.6, 25.1, 27.3),
}
PUBLISHED_BEST_OF_64 = {"opt_rm_best_of_64": (25.5, 42.0, 43.7), "ilf_best_of_n": (None, None, 50.8)}
PUBLISHED_RM_ACCURACY = {"5K": 73.4, "1K": 67.2, "100": 53.4}

ILF_METRICS = pa.schema(
    [
        pa.field("policy", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("train_size", pa.string()),
        pa.field("win_rate_judge", pa.float64()),
        pa.field("win_rate_opt_rm", pa.float64()),
        pa.field("win_rate_oracle", pa.float64()),
        pa.field("win_rate_published", pa.float64()),
        pa.field("mean_words", pa.float64()),
        pa.field("posts", pa.int64()),
    ]
)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def metrics_rows(results: dict[str, dict], train_size: str | None) -> list[dict]:
    """ILF_METRICS rows: this run's policies (win rates in %; those of POLICY_ROWS in its order, then any other in
    the order given), then the paper's (human raters)."""
    rows = []
    order = [p for p in POLICY_ROWS if p in results] + [p for p in results if p not in POLICY_ROWS]
    for policy in order:
        r = results[policy]
        rows.append(
            {
                "policy": policy,
                "label": POLICY_LABELS.get(policy, policy),
                "source": "this run",
                "train_size": train_size,
                "win_rate_judge": _percent(r.get("win_rate_judge")),
                "win_rate_opt_rm": _percent(r.get("win_rate_opt_rm")),
                "win_rate_oracle": _percent(r.get("win_rate_oracle")),
                "win_rate_published": None,
                "mean_words": r.get("mean_words"),
                "posts": r.get("posts"),
            }
        )
    for policy, values in {**PUBLISHED_WIN_RATES, **PUBLISHED_BEST_OF_64}.items():
        for size, value in zip(("100", "1K", "5K"), values, strict=True):
            if value is None:
                continue
            rows.append(
                {
                    "policy": policy,
                    "label": POLICY_LABELS.get(policy, "OPT-RM best-of-64"),
                    "source": "published (human raters)",
                    "train_size": size,
                    "win_rate_judge": None,
                    "win_rate_opt_rm": None,
                    "win_rate_oracle": None,
                    "win_rate_published": value,
                    "mean_words": None,
                    "posts": None,
                }
            )
    return rows


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def metrics_markdown(rows: list[dict], opt_rm: dict | None, refinements: list[dict]) -> str:
    lines = [
        "# ILF on SLF5K: win rate (%) against the human reference summary",
        "",
        "| policy | source | train size | judge (LM, both orders) | OPT-RM | oracle | published | words |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['source']} | {_cell(row['train_size'])} | {_cell(row['win_rate_judge'])} | "
            f"{_cell(row['win_rate_opt_rm'])} | {_cell(row['win_rate_oracle'])} | {_cell(row['win_rate_published'])} "
            f"| {_cell(row['mean_words'])} |"
        )
    if opt_rm:
        published = ", ".join(f"{size} {value}%" for size, value in PUBLISHED_RM_ACCURACY.items())
        accuracy = opt_rm.get("accuracy")
        lines += [
            "",
            f"OPT-RM accuracy on held-out comparisons: {_cell(_percent(accuracy))}% over {opt_rm.get('n_pairs')} "
            f"pairs (published, OPT classification: {published}).",
        ]
    if refinements:
        lines += [
            "",
            "## Refinements chosen by each selection scorer",
            "",
            "| scorer | chosen | fixes the named flaw | all refinements | initial summary |",
            "|---|---|---|---|---|",
        ]
        for r in refinements:
            lines.append(
                f"| {r['scorer']} | {r['chosen']} | {_cell(_percent(r.get('fix_rate')))} | "
                f"{_cell(_percent(r.get('fix_rate_all_refinements')))} | "
                f"{_cell(_percent(r.get('fix_rate_initial_summary')))} |"
            )
    return "\n".join(lines) + "\n"


def configure_metrics(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--win-rates", nargs="+", required=True, help="policy_win_rates JSON files")
    parser.add_argument("--opt-rm-accuracy", help="evaluate-opt-rm JSON")
    parser.add_argument("--refinements", nargs="*", default=[], help="refinement-quality JSON files")
    parser.add_argument("--train-size", help="label of the training-set size (100, 1K, 5K, tiny ...)")
    parser.add_argument("--output", required=True, help="metrics Parquet")
    parser.add_argument("--markdown", required=True, help="metrics Markdown")


def main_metrics(args: argparse.Namespace) -> None:
    results: dict[str, dict] = {}
    for path in args.win_rates:
        result = read_json(path)
        if result["policy"] in results:
            raise DataError(path, None, "policy", f"{result['policy']!r} is in two --win-rates files")
        results[result["policy"]] = result
    rows = metrics_rows(results, args.train_size)
    write_table(pa.Table.from_pylist(rows, schema=ILF_METRICS), args.output, ILF_METRICS)
    opt_rm = read_json(args.opt_rm_accuracy) if args.opt_rm_accuracy else None
    refinements = [read_json(path) for path in args.refinements]
    write_text(metrics_markdown(rows, opt_rm, refinements), args.markdown)


def configure_refinements(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scorer", required=True, help="the selection scorer's name")
    parser.add_argument("--selected", required=True, help="the chosen refinements (QA_PROMPTS)")
    parser.add_argument("--feedback", required=True, help="the SLF5K_FEEDBACK the refinements were written for")
    parser.add_argument("--refinements", help="all refinements (SAMPLES)")
    parser.add_argument("--oracle", help="the synthetic world's oracle.jsonl (tiny scale only)")
    parser.add_argument("--output", required=True, help="JSON to write")


def main_refinements(args: argparse.Namespace) -> None:
    result = refinement_quality(args.scorer, args.selected, args.feedback, args.oracle, args.refinements)
    write_json(result, args.output)
    log.info("%s", result)
