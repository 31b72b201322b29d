"""The prompts of ILF (Scheurer et al. 2023), declared once: every stage and the tiny synthetic world build them from
here.

- `summary_prompt`: the initial-summary prompt ("Write an excellent summary of the given text. ... TL;DR:").
- `refinement_prompt`: the refinement prompt with the feedback; `direct_refinement_prompt` the ablation without it.
- `INSTRUCT_RM_TEMPLATES`: InstructRM's five questions whether a refinement incorporates the feedback, verbatim from
  the original code (JeremyAlain/imitation_learning_from_language_feedback, scoring_functions/causal_response.py,
  prompts 1-5): prompts 1, 2 and 4 are answered " Yes" / " No", prompts 3 and 5 " True" / " False"; the summary the
  feedback was written on fills `{original_summary}`. The paper-scale default (docs/methods/ilf.md).
- `TINY_INSTRUCT_RM_TEMPLATES`: the tiny world's own five (the same fields and answer tokens, shorter text), which
  the tiny InstructRM stand-in is trained on (`feedbackflow.tiny.slf5k`); the paper's prompt 4 is ~390 tokens in
  the tiny tokenizer, past the tiny LM's 384 positions. `INSTRUCT_RM_TEMPLATE_SETS` names both sets
  (`SelectionConfig.instructrm_templates`).
- `opt_rm_prompt`: OPT-RM's "Is the above an excellent summary ...? Answer with Yes or No.\\n\\nAnswer:" prompt.
- `PAIRWISE_TEMPLATE`: the win-rate judge's question (which of two summaries is better, answer A or B); the
  evaluation asks it in both orders.

InstructRM's answer tokens carry their leading space (" Yes"), as the original reads them; the pairwise judge's answer
words do not: it reads them with and without the space (`answer_variants`).
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
    """One InstructRM question: the text (fields title, post, original_summary, feedback, refinement) and the two
    next-token strings its score reads, exactly, leading space included (docs/methods/ilf.md)."""

    name: str
    text: str
    positive: str  # the answer token that means "the refinement incorporates the feedback"
    negative: str


# The five templates of the original code, character for character (tests/test_instruct_rm.py checks them against
# ../shared/data/ilf/instructrm_templates.json).
INSTRUCT_RM_TEMPLATES: tuple[InstructTemplate, ...] = (
    InstructTemplate(
        "prompt_1",
        "Here's a summary of a Reddit post, feedback on the summary, and a new summary. You will be asked to "
        "determine whether the new summary incorporates the feedback provided.\n\nA good summary is a short "
        "piece of text that has the essence of the original text. A good summary tries to accomplish the same "
        "purpose and conveys the same information as the original text.\n\nPost title: {title}\n\nBelow, "
        "there's the content of the post that was summarized.\n\nOriginal post: {post}\n\nOriginal summary: "
        "{original_summary}\n\nA human then provided feedback on the above summary.\n\nFeedback: {feedback}\n\n"
        "Based on this feedback, a new summary was written.\n\nNew summary: {refinement}\n\nDoes this new "
        "summary incorporate the feedback provided? Answer Yes or No.\n\nAnswer:",
        " Yes",
        " No",
    ),
    InstructTemplate(
        "prompt_2",
        "Post title: {title}\n\nOriginal post: {post}\n\nOriginal summary: {original_summary}\n\nFeedback: "
        "{feedback}\n\nNew summary: {refinement}\n\nQuestion: Does the new summary incorporate the feedback "
        "provided? Answer Yes or No.\n\nAnswer:",
        " Yes",
        " No",
    ),
    InstructTemplate(
        "prompt_3",
        "You will be given a Reddit post title, its content, an original summary of that post, and feedback "
        "for that summary. Then, your goal will be to determine whether the new summary improves upon the "
        "original with respect to provided feedback.\n\nPost title: {title}\n\nPost content: {post}\n\n"
        "Original summary: {original_summary}\n\nFeedback: {feedback}\n\nNew summary: {refinement}\n\n"
        "Question: Does the new summary incorporate the feedback provided? Answer True or False.\n\nAnswer:",
        " True",
        " False",
    ),
    InstructTemplate(
        "prompt_4",
        "Here's a summary of a Reddit post, feedback on the summary, and a new summary. You will be asked to "
        "determine whether the new summary incorporates the feedback provided.\n\nA good summary is a short "
        "piece of text that has the essence of the original text. A good summary tries to accomplish the same "
        "purpose and conveys the same information as the original text. Remember, you will be asked to "
        "determine whether the new summary incorporates the feedback provided.\n\nPost title: {title}\n\n"
        "Below, there's the content of the post that was summarized. \n\nOriginal post: {post}\n\nRemember, "
        "you will be asked to determine whether the new summary incorporates the feedback provided. Here's the "
        "original summary.\n\nOriginal summary: {original_summary}\n\nRemember, you will be asked to determine "
        "whether the new summary incorporates the feedback provided. A human then provided feedback on the "
        "above summary.\n\nFeedback: {feedback}\n\nBased on this feedback, a new summary was written.\n\nNew "
        "summary: {refinement}\n\nDoes this new summary incorporate the feedback provided? Answer Yes or No.\n"
        "\nAnswer:",
        " Yes",
        " No",
    ),
    InstructTemplate(
        "prompt_5",
        "Here's a summary of a Reddit post, feedback on the summary, and a new summary. You will be asked to "
        "determine whether the new summary incorporates the feedback provided.\n\nThe feedback was:\nFeedback: "
        "{feedback}\n\nHere's the post that was summarized in the first place.\n\nPost title: {title}\n\n"
        "Original post: {post}\n\nRemember, you will be asked to determine whether the new summary "
        "incorporates the feedback provided. Here's the original summary.\n\nOriginal summary: "
        "{original_summary}\n\nRemember, you will be asked to determine whether the new summary incorporates "
        "the feedback provided. A human then provided feedback on the above summary. Here's the feedback "
        "again.\n\nFeedback: {feedback}\n\nBased on this feedback, a new summary was written.\n\nNew summary: "
        "{refinement}\n\nDoes this new summary incorporate the feedback provided? Answer True or False.\n\n"
        "Answer:",
        " True",
        " False",
    ),
)

# The tiny world's five: the stand-in LM is trained on exactly these (tiny/slf5k.py), and they fit its 384 positions.
_TINY_CONTEXT = (
    "Here's a summary of a Reddit post, feedback on the summary, and a new summary. You will be asked to determine "
    "whether the new summary incorporates the feedback provided.\n\nTitle: {title}\n\nText: {post}\n\n"
    "Summary: {original_summary}\n\nFeedback on summary: {feedback}\n\nNew summary: {refinement}\n\n"
)

TINY_INSTRUCT_RM_TEMPLATES: tuple[InstructTemplate, ...] = (
    InstructTemplate(
        "incorporates_yes_no",
        _TINY_CONTEXT + "Question: Does the new summary incorporate the feedback provided? Answer Yes or No.\n\n"
        "Answer:",
        " Yes",
        " No",
    ),
    InstructTemplate(
        "addresses_yes_no",
        _TINY_CONTEXT + "Question: Does the new summary address the problem the feedback points out? Answer Yes or "
        "No.\n\nAnswer:",
        " Yes",
        " No",
    ),
    InstructTemplate(
        "follows_yes_no",
        _TINY_CONTEXT + "Question: Was the new summary written following the feedback? Answer Yes or No.\n\nAnswer:",
        " Yes",
        " No",
    ),
    InstructTemplate(
        "incorporates_true_false",
        _TINY_CONTEXT + "Statement: The new summary incorporates the feedback provided. Answer True or False.\n\n"
        "Answer:",
        " True",
        " False",
    ),
    InstructTemplate(
        "fixes_true_false",
        _TINY_CONTEXT + "Statement: The new summary fixes what the feedback says is wrong with the summary. Answer "
        "True or False.\n\nAnswer:",
        " True",
        " False",
    ),
)

INSTRUCT_RM_TEMPLATE_SETS: dict[str, tuple[InstructTemplate, ...]] = {
    "paper": INSTRUCT_RM_TEMPLATES,
    "tiny": TINY_INSTRUCT_RM_TEMPLATES,
}


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
    """One InstructRM question about a refinement; `summary` is the one the feedback was written on."""
    return template.text.format(title=title, post=post, original_summary=summary, feedback=feedback,
                                refinement=refinement)


def opt_rm_prompt(title: str, post: str, summary: str) -> str:
    """OPT-RM's question about one summary (Scheurer et al. 2023); the answer token follows."""
    return OPT_RM_PROMPT.format(title=title, post=post, summary=summary)


def pairwise_prompt(title: str, post: str, summary_a: str, summary_b: str) -> str:
    """The win-rate judge's question: which of two summaries is better (answer A or B)."""
    return PAIRWISE_TEMPLATE.format(title=title, post=post, summary_a=summary_a, summary_b=summary_b)


def answer_variants(word: str) -> tuple[str, ...]:
    """The pairwise judge's token strings for `word` after "Answer:": with and without the space (InstructRM reads
    its templates' exact tokens instead)."""
    return (" " + word, word)
