"""`python -m feedbackflow <stage> ...`: every workflow stage runs from the command line too.

Stage modules are imported only when their stage runs, so `--help` is quick. Each stage module has
`configure(parser)` (its flags) and `main(args)` (the stage); a module with two stages names the second
`configure_<x>` / `main_<x>`, registered as "module:<x>".
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from feedbackflow.errors import ConfigError, DataError

# stage name -> (module, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "make-synthetic-data": ("feedbackflow.synthetic", "write the tiny-scale synthetic raw data sets"),
    "make-synthetic-qa-feedback": ("feedbackflow.qa_synthetic", "write the tiny-scale synthetic qa-feedback files"),
    "build-tiny-models": ("feedbackflow.tiny_models", "train a tokenizer and build a tiny causal LM"),
    "convert-preferences": ("feedbackflow.convert", "DSP / HH / text-score files -> preference-lists Parquet"),
    "train-reward-model": ("feedbackflow.reward_training", "train a reward model (GRFT or CRFT)"),
    "evaluate-reward-model": ("feedbackflow.reward_evaluation", "accuracy of a reward model on eval sets"),
    "collect-metrics": ("feedbackflow.report", "gather per-model metrics into one table, Markdown and a plot"),
    "convert-prompts": ("feedbackflow.prompts", "rm-static / HH files -> prompts Parquet (+ the data set's responses)"),
    "sample-responses": ("feedbackflow.sampling", "sample N responses per prompt from a policy"),
    "score-samples": ("feedbackflow.reward_scoring", "score samples with a reward model"),
    "import-reward-model": ("feedbackflow.import_reward_model", "trlx/Dahoas GPT reward model -> reward-model dir"),
    "rank-responses": ("feedbackflow.sampling:rank", "scored samples -> RRHF ranked-responses Parquet"),
    "merge-samples": ("feedbackflow.sampling:merge", "concatenate samples Parquet files (checked for clashes)"),
    "sft-data": ("feedbackflow.sampling:sft", "samples -> one-response rows for SFT with the RRHF trainer"),
    "train-rrhf": ("feedbackflow.rrhf_training", "RRHF: rank loss on length-normalised log-probs + SFT on the best"),
    "train-sft": ("feedbackflow.sft_training", "SFT on reference answers; keeps the best model by dev rougeLsum"),
    "judge-samples": ("feedbackflow.judge", "rate samples with an LLM judge (openai API or local hf model), cached"),
    "judge-sft-data": ("feedbackflow.judge:sft_data", "labelled samples -> rating-prompt/score rows (local judge)"),
    "evaluate-responses": ("feedbackflow.response_evaluation", "mean reward and perplexity of responses per origin"),
    "train-ppo": ("feedbackflow.ppo_training", "PPO with per-token rewards (Fine-Grained RLHF), seq2seq or causal"),
    "convert-qa-feedback": ("feedbackflow.qa_feedback", "qa-feedback JSON -> prompts, R1/R2/R3 and preference data"),
    "train-fg-reward-model": ("feedbackflow.fg_reward_training", "train R1/R2 (token) or R3/preference (sequence) RMs"),
    "reward-mean-std": ("feedbackflow.fg_reward_training:mean_std", "mean/std of a sequence RM's train-pair scores"),
    "evaluate-qa": ("feedbackflow.qa_evaluation", "qa-feedback: rougeLsum, relevance, factuality, completeness"),
    "qa-metrics": ("feedbackflow.qa_evaluation:metrics", "qa-feedback policy summaries -> metrics Parquet/Markdown"),
    "make-synthetic-rtp": ("feedbackflow.detox_synthetic", "write the tiny-scale synthetic RealToxicityPrompts file"),
    "convert-rtp": ("feedbackflow.detox_data", "RealToxicityPrompts -> detox prompt splits (+ continuations for SFT)"),
    "score-toxicity": ("feedbackflow.toxicity", "score samples' toxicity (Perspective API or offline), cached"),
    "evaluate-detox": ("feedbackflow.detox_evaluation", "detox: max toxicity, toxic probability, perplexity, distinct"),
    "detox-metrics": ("feedbackflow.detox_evaluation:metrics", "detox policy summaries -> metrics Parquet/Markdown"),
    "train-opt-rm": ("feedbackflow.opt_rm", "ILF's OPT-RM: a causal LM trained to answer Yes (preferred) / No"),
    "evaluate-opt-rm": ("feedbackflow.opt_rm:evaluate", "OPT-RM pair accuracy on held-out SLF5K comparisons"),
    "score-opt-rm": ("feedbackflow.opt_rm:score", "score summaries (samples + posts) with OPT-RM's P(Yes)"),
    "best-of-n": ("feedbackflow.opt_rm:best_of_n", "scored samples -> the best-scored sample per prompt"),
    "make-synthetic-slf5k": ("feedbackflow.slf5k_synthetic", "write the tiny synthetic SLF5K (+ oracle, LM tables)"),
    "convert-slf5k": ("feedbackflow.slf5k_data", "SLF5K JSONL (or hub id) -> posts, feedback and comparison tables"),
    "select-refinements": ("feedbackflow.instruct_rm", "ILF: score refinements (InstructRM, baselines), pick one"),
    "generate-texts": ("feedbackflow.lm_generation", "N texts per prompt from a local or API language model, cached"),
    "ilf-prompts": ("feedbackflow.ilf_data", "ILF: summary prompts of posts, or refinement prompts of feedback"),
    "ilf-sft-data": ("feedbackflow.ilf_data:sft", "ILF: fine-tuning sets (human, initial summaries, reference)"),
    "ilf-reference-samples": ("feedbackflow.ilf_data:reference", "ILF: the human reference summaries as samples"),
    "ilf-judge": ("feedbackflow.ilf_evaluation", "ILF: an LM judge's pairwise verdicts vs the reference, both orders"),
    "ilf-win-rates": ("feedbackflow.ilf_evaluation:win_rates", "ILF: a policy's win rates vs the reference"),
    "ilf-refinement-quality": ("feedbackflow.ilf_evaluation:refinements", "ILF: how good the chosen refinements are"),
    "ilf-metrics": ("feedbackflow.ilf_evaluation:metrics", "ILF: every policy's win rates -> metrics Parquet/Markdown"),
    "launch": ("feedbackflow.launch", "run a stage here or under `accelerate launch` with N processes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m feedbackflow", description=__doc__)
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, (_module, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


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
    module_name, help_text = STAGES[name]
    module_name, _, suffix = module_name.partition(":")  # "module:x" -> configure_x / main_x of that module
    module = importlib.import_module(module_name)
    configure = getattr(module, f"configure_{suffix}" if suffix else "configure")
    run = getattr(module, f"main_{suffix}" if suffix else "main")
    parser = argparse.ArgumentParser(prog=f"python -m feedbackflow {name}", description=help_text)
    configure(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run(args)
    except (DataError, ConfigError) as error:
        logging.getLogger("feedbackflow").error("%s", error)
        sys.exit(f"error: {error}")
    end_distributed()
