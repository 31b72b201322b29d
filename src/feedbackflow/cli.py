"""`python -m feedbackflow <stage> ...`: every workflow stage runs from the command line too.

Stage modules are imported only when their stage runs, so `--help` is quick. Each stage module has
`configure(parser)` (its flags) and `main(args)` (the stage); a module with two stages names the second
`configure_<x>` / `main_<x>`, registered as "module:<x>". Modules are named below the package (`stages.sampling`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from feedbackflow.errors import ConfigError, DataError

# stage name -> (module under feedbackflow, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "make-synthetic-data": ("tiny.synthetic", "write the tiny-scale synthetic raw data sets"),
    "make-synthetic-qa-feedback": ("tiny.qa", "write the tiny-scale synthetic qa-feedback files"),
    "build-tiny-models": ("tiny.models", "train a tokenizer and build a tiny causal LM"),
    "convert-preferences": ("stages.preferences", "DSP / HH / text-score files -> preference-lists Parquet"),
    "train-reward-model": ("papers.dsp.reward_training", "train a reward model (GRFT or CRFT)"),
    "evaluate-reward-model": ("papers.dsp.reward_evaluation", "accuracy of a reward model on eval sets"),
    "collect-metrics": ("core.report", "gather per-model metrics into one table, Markdown and a plot"),
    "stage-times": ("core.timing", "the rules' benchmark files -> time per stage (Parquet, Markdown)"),
    "convert-prompts": ("papers.rrhf.prompts", "rm-static / HH files -> prompts Parquet (+ the data set's responses)"),
    "sample-responses": ("stages.sampling", "sample N responses per prompt from a policy"),
    "score-samples": ("stages.reward_scoring", "score samples with a reward model"),
    "import-reward-model": ("papers.rrhf.import_reward_model", "trlx/Dahoas GPT reward model -> reward-model dir"),
    "rank-responses": ("stages.sample_tables:rank", "scored samples -> RRHF ranked-responses Parquet"),
    "merge-samples": ("stages.sample_tables:merge", "concatenate samples Parquet files (checked for clashes)"),
    "sft-data": ("stages.sample_tables:sft", "samples -> one-response rows for SFT with the RRHF trainer"),
    "train-rrhf": ("papers.rrhf.training", "RRHF: rank loss on length-normalised log-probs + SFT on the best"),
    "train-sft": ("stages.sft", "SFT on reference answers; keeps the best model by dev rougeLsum"),
    "judge-samples": ("llm.judge", "rate samples with an LLM judge (openai API or local hf model), cached"),
    "judge-sft-data": ("llm.judge:sft_data", "labelled samples -> rating-prompt/score rows (local judge)"),
    "evaluate-responses": ("stages.response_evaluation", "mean reward and perplexity of responses per origin"),
    "train-ppo": ("rl.ppo", "PPO with per-token rewards (Fine-Grained RLHF), seq2seq or causal"),
    "convert-qa-feedback": ("papers.fgrlhf.qa.data", "qa-feedback JSON -> prompts, R1/R2/R3 and preference data"),
    "train-fg-reward-model": ("papers.fgrlhf.qa.reward_training", "train R1/R2 (token) or R3/preference (sequence)"),
    "reward-mean-std": ("papers.fgrlhf.qa.reward_training:mean_std", "mean/std of a sequence RM's train-pair scores"),
    "evaluate-qa": ("papers.fgrlhf.qa.evaluation", "qa-feedback: rougeLsum, relevance, factuality, completeness"),
    "qa-metrics": ("papers.fgrlhf.qa.table:metrics", "qa-feedback policy summaries -> metrics Parquet/Markdown"),
    "make-synthetic-rtp": ("tiny.detox", "write the tiny-scale synthetic RealToxicityPrompts file"),
    "convert-rtp": ("papers.fgrlhf.detox.data", "RealToxicityPrompts -> detox prompt splits (+ continuations for SFT)"),
    "score-toxicity": ("papers.fgrlhf.detox.toxicity", "score samples' toxicity (Perspective API or offline), cached"),
    "evaluate-detox": ("papers.fgrlhf.detox.evaluation", "detox: max toxicity, toxic prob., perplexity, distinct"),
    "detox-metrics": ("papers.fgrlhf.detox.table:metrics", "detox policy summaries -> metrics Parquet/Markdown"),
    "train-opt-rm": ("papers.ilf.opt_rm", "ILF's OPT-RM: a causal LM trained to answer Yes (preferred) / No"),
    "evaluate-opt-rm": ("papers.ilf.opt_rm:evaluate", "OPT-RM pair accuracy on held-out SLF5K comparisons"),
    "score-opt-rm": ("papers.ilf.opt_rm:score", "score summaries (samples + posts) with OPT-RM's P(Yes)"),
    "best-of-n": ("papers.ilf.opt_rm:best_of_n", "scored samples -> the best-scored sample per prompt"),
    "make-synthetic-slf5k": ("tiny.slf5k", "write the tiny synthetic SLF5K (+ oracle, LM tables)"),
    "convert-slf5k": ("papers.ilf.slf5k", "SLF5K JSONL (or hub id) -> posts, feedback and comparison tables"),
    "select-refinements": ("papers.ilf.instruct_rm", "ILF: score refinements (InstructRM, baselines), pick one"),
    "generate-texts": ("llm.generation", "N texts per prompt from a local or API language model, cached"),
    "ilf-prompts": ("papers.ilf.data", "ILF: summary prompts of posts, or refinement prompts of feedback"),
    "ilf-sft-data": ("papers.ilf.data:sft", "ILF: fine-tuning sets (human, initial summaries, reference)"),
    "ilf-reference-samples": ("papers.ilf.data:reference", "ILF: the human reference summaries as samples"),
    "ilf-judge": ("papers.ilf.evaluation", "ILF: an LM judge's pairwise verdicts vs the reference, both orders"),
    "ilf-win-rates": ("papers.ilf.evaluation:win_rates", "ILF: a policy's win rates vs the reference"),
    "ilf-refinement-quality": ("papers.ilf.evaluation:refinements", "ILF: how good the chosen refinements are"),
    "ilf-metrics": ("papers.ilf.evaluation:metrics", "ILF: every policy's win rates -> metrics Parquet/Markdown"),
    "launch": ("launch", "run a stage here or under `accelerate launch` with N processes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m feedbackflow", description=__doc__)
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, (_module, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def stage_entry(name: str):
    """(module, configure, main) of stage `name`: "module:x" in STAGES names configure_x / main_x of that module."""
    module_name, _, suffix = STAGES[name][0].partition(":")
    module = importlib.import_module(f"feedbackflow.{module_name}")
    configure = getattr(module, f"configure_{suffix}" if suffix else "configure")
    return module, configure, getattr(module, f"main_{suffix}" if suffix else "main")


def end_distributed() -> None:
    """Destroy the process group that a stage's Accelerator opened (under `accelerate launch`: DDP or DeepSpeed)
    once the stage has finished. Left to interpreter finalisation, gloo's worker threads can abort a process that
    has finished and saved ("terminate called without an active exception", SIGABRT: seen at the exit of a CRFT
    stage under ZeRO-3), which fails the job. Destroying a group is local: no collective, no wait on the others."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STAGES:
        build_parser().parse_args(argv)  # prints usage / the list of stages and exits
        return
    name, rest = argv[0], argv[1:]
    _, configure, run = stage_entry(name)
    parser = argparse.ArgumentParser(prog=f"python -m feedbackflow {name}", description=STAGES[name][1])
    configure(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run(args)
    except (DataError, ConfigError) as error:
        logging.getLogger("feedbackflow").error("%s", error)
        sys.exit(f"error: {error}")
    end_distributed()
