"""The prompts of ILF (Scheurer et al. 2023), declared once: every stage and the tiny synthetic world build them from
here.

- `summary_prompt`: the initial-summary prompt ("Write an excellent summary of the given text. ... TL;DR:").
- `refinement_prompt`: the refinement prompt with the feedback; `direct_refinement_prompt` the ablation without it.
- `INSTRUCT_RM_TEMPLATES`: InstructRM's five questions whether a refinement incorporates the feedback. The paper
  (Scheurer et al. 2023, appendix) used five templates, three answered with Yes/No and two with True/False; these
  follow that structure (the post, the original summary, the feedback, the new summary, then the question and
  "Answer:"); the wording is ours, since the paper does not give its text.
- `opt_rm_prompt`: OPT-RM's "Is the above an excellent summary ...? Answer with Yes or No.\\n\\nAnswer:" prompt.
- `PAIRWISE_TEMPLATE`: the win-rate judge's question (which of two summaries is better, answer A or B); the
  evaluation asks it in both orders.

The answer words are without the leading space: a backend adds the space its tokenizer puts before a word after
"Answer:" (`answer_variants`).
"""

from __future__ import annotations

import dataclasses

SUMMARY_PROMPT = "Write an excellent summary of the given text.\n\nTitle: {title}\n\nText: {post}\n\nTL;DR:"

REFINEMENT_PROMPT = (
    "Write an excellent summary that incorporates the feedback on the given summary and is better than the given "
    "summary.\n\nTitle: {title}\n\nText: {post}\n\nSummary: {summary}\n\nFeedback on summary: {feedback}\n\n"
    "Improved TL;DR:"
)

# The ablation "refinement without feedback" (Scheurer et al. 2023): the same prompt with the feedback left out.
DIRECT_REFINEMENT_PROMPT = (
    "Write an excellent summary that is better than the given summary.\n\nTitle: {title}\n\nText: {post}\n\n"
    "Summary: {summary}\n\nImproved TL;DR:"
)

OPT_RM_PROMPT = (
    "Title: {title}\n\nText: {post}\n\nTL;DR: {summary}\n\nQuestion: Is the above an excellent summary of the given "
    "text? An excellent summary is coherent, accurate, concise, and detailed. Answer with Yes or No.\n\nAnswer:"
)

PAIRWISE_TEMPLATE = (
    "Which of the two summaries of the Reddit post below is better? A good summary is coherent, accurate, concise "
    "and detailed.\n\nTitle: {title}\n\nText: {post}\n\nSummary A: {summary_a}\n\nSummary B: {summary_b}\n\n"
    "Answer with A or B.\n\nAnswer:"
)


@dataclasses.dataclass(frozen=True)
class InstructTemplate:
    """One InstructRM question: the text (fields title, post, summary, feedback, refinement) and its answer words."""

    name: str
    text: str
    positive: str  # the answer that means "the refinement incorporates the feedback"
    negative: str


_CONTEXT = (
    "Here's a summary of a Reddit post, feedback on the summary, and a new summary. You will be asked to determine "
    "whether the new summary incorporates the feedback provided.\n\nTitle: {title}\n\nText: {post}\n\n"
    "Summary: {summary}\n\nFeedback on summary: {feedback}\n\nNew summary: {refinement}\n\n"
)

INSTRUCT_RM_TEMPLATES: tuple[InstructTemplate, ...] = (
    InstructTemplate(
        "incorporates_yes_no",
        _CONTEXT + "Question: Does the new summary incorporate the feedback provided? Answer Yes or No.\n\nAnswer:",
        "Yes",
        "No",
    ),
    InstructTemplate(
        "addresses_yes_no",
        _CONTEXT + "Question: Does the new summary address the problem the feedback points out? Answer Yes or No."
        "\n\nAnswer:",
        "Yes",
        "No",
    ),
    InstructTemplate(
        "follows_yes_no",
        _CONTEXT + "Question: Was the new summary written following the feedback? Answer Yes or No.\n\nAnswer:",
        "Yes",
        "No",
    ),
    InstructTemplate(
        "incorporates_true_false",
        _CONTEXT + "Statement: The new summary incorporates the feedback provided. Answer True or False.\n\nAnswer:",
        "True",
        "False",
    ),
    InstructTemplate(
        "fixes_true_false",
        _CONTEXT + "Statement: The new summary fixes what the feedback says is wrong with the summary. Answer True "
        "or False.\n\nAnswer:",
        "True",
        "False",
    ),
)


def summary_prompt(title: str, post: str) -> str:
    """The initial-summary prompt of Scheurer et al. 2023."""
    return SUMMARY_PROMPT.format(title=title, post=post)


def refinement_prompt(title: str, post: str, summary: str, feedback: str, use_feedback: bool = True) -> str:
    """The refinement prompt of Scheurer et al. 2023; `use_feedback=False` is the direct-refinement ablation."""
    if use_feedback:
        return REFINEMENT_PROMPT.format(title=title, post=post, summary=summary, feedback=feedback)
    return DIRECT_REFINEMENT_PROMPT.format(title=title, post=post, summary=summary)


def instruct_rm_prompt(template: InstructTemplate, title: str, post: str, summary: str, feedback: str,
                       refinement: str) -> str:
    """One InstructRM question about a refinement."""
    return template.text.format(title=title, post=post, summary=summary, feedback=feedback, refinement=refinement)


def opt_rm_prompt(title: str, post: str, summary: str) -> str:
    """OPT-RM's question about one summary (Scheurer et al. 2023); the answer token follows."""
    return OPT_RM_PROMPT.format(title=title, post=post, summary=summary)


def pairwise_prompt(title: str, post: str, summary_a: str, summary_b: str) -> str:
    """The win-rate judge's question: which of two summaries is better (answer A or B)."""
    return PAIRWISE_TEMPLATE.format(title=title, post=post, summary_a=summary_a, summary_b=summary_b)


def answer_variants(word: str) -> tuple[str, ...]:
    """The token strings that count as `word` as the next token after "Answer:": with and without the space."""
    return (" " + word, word)
