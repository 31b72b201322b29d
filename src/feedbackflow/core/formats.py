"""Table schemas (declared once) and atomic writes of Parquet, JSON and model directories.

Every stage writes through these helpers: a file is written under a temporary name in the same folder and renamed
into place, so a failed stage leaves nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from feedbackflow.errors import DataError

# A list of texts with one score each (the common "text-score" format of Cheng et al. 2023). A DSP pair, an HH
# chosen/rejected pair and a webgpt comparison are all rows of this table. `source` and `record` say where the
# row came from (the raw file and the 0-based index of the record in it), so any later error can name them.
PREFERENCE_LISTS = pa.schema(
    [
        pa.field("text", pa.list_(pa.string()), nullable=False),
        pa.field("score", pa.list_(pa.float64()), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)

# Reward-model evaluation: one row per (model, eval set).
REWARD_METRICS = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("eval_set", pa.string(), nullable=False),
        pa.field("accuracy", pa.float64()),
        pa.field("first_two_accuracy", pa.float64()),
        pa.field("n_pairs", pa.int64(), nullable=False),
        pa.field("n_first_two", pa.int64(), nullable=False),
        pa.field("n_lists", pa.int64(), nullable=False),
    ]
)

# The reward of every text of every evaluated list.
REWARD_SCORES = pa.schema(
    [
        pa.field("eval_set", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
        pa.field("score", pa.list_(pa.float64()), nullable=False),
        pa.field("reward", pa.list_(pa.float64()), nullable=False),
    ]
)

# Prompts of a generation experiment (RRHF, ILF, PPO): a stable id, the text given to the policy, and where it came
# from (the raw file and the 0-based record index).
PROMPTS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)

# Responses to prompts: sampled from a policy or taken from a data set (`origin` names which: a policy name, or
# "chosen" / "rejected" / "response" for a data set's own), numbered per (prompt, origin) by `sample_index`.
SAMPLES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("sample_index", pa.int64(), nullable=False),
    ]
)

# Scores of samples, by a reward model, a language-model judge or a toxicity scorer. `status` is "ok" (score set),
# "unparsed" (a reply came but no score could be read: never guessed), "failed" (no reply after retries) or, for the
# Perspective API, "too_long" (over its text limit, not sent); `reason` says why.
SCORED_SAMPLES = pa.schema(
    [
        *SAMPLES,
        pa.field("score", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
    ]
)

# RRHF training data (Yuan et al. 2023): one row per query with its responses and their scores.
RANKED_RESPONSES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("responses", pa.list_(pa.string()), nullable=False),
        pa.field("scores", pa.list_(pa.float64()), nullable=False),
    ]
)

# qa-feedback prompts (Wu et al. 2023): the policy's input `prompt` ("question: ... context: wikipage: ..."), the
# bare question, the reference answers, and the passages (title, content) the answer should be grounded in.
QA_PROMPTS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("references", pa.list_(pa.string()), nullable=False),
        pa.field(
            "passages",
            pa.list_(pa.struct([pa.field("title", pa.string()), pa.field("content", pa.string())])),
            nullable=False,
        ),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)

# Detoxification prompts (Wu et al. 2023, RealToxicityPrompts): the prompt given to the policy, its toxicity as the
# data set states it (null when the data set has none), the data set's "challenging" flag, the data set's own
# continuation (null when it has none), and where the row came from (the raw file or hub id, 0-based record index).
DETOX_PROMPTS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("prompt_toxicity", pa.float64()),
        pa.field("challenging", pa.bool_(), nullable=False),
        pa.field("continuation", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)

# ILF (Scheurer et al. 2023, SLF5K). Posts of a split: the id, subreddit, title and text, and the human reference
# summary (`tldr_human_reference_summary`; null when the record has none).
SLF5K_POSTS = pa.schema(
    [
        pa.field("post_id", pa.string(), nullable=False),
        pa.field("subreddit", pa.string()),
        pa.field("title", pa.string(), nullable=False),
        pa.field("post", pa.string(), nullable=False),
        pa.field("reference_summary", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)
# Language feedback on a model summary (`generated_summary_for_feedback`, `feedback`) and the annotator's ideal
# summary (`ideal_human_summary`; null when absent). Only posts with non-empty feedback have a row.
SLF5K_FEEDBACK = pa.schema(
    [
        pa.field("post_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("post", pa.string(), nullable=False),
        pa.field("summary", pa.string(), nullable=False),
        pa.field("feedback", pa.string(), nullable=False),
        pa.field("ideal_summary", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)
# A human comparison of two model summaries (`generated_summary_for_comparison_A` / `_B`); `preferred` is "A" or "B".
SLF5K_COMPARISONS = pa.schema(
    [
        pa.field("post_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("post", pa.string(), nullable=False),
        pa.field("summary_a", pa.string(), nullable=False),
        pa.field("summary_b", pa.string(), nullable=False),
        pa.field("preferred", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)
# A selection scorer's score of one refinement (ILF): `refinement_index` is the SAMPLES sample_index; `status` "ok"
# (score set), "empty" (an empty refinement: never chosen), "unparsed" (InstructRM: no template gave a Yes/No
# probability) or "failed" (no reply); `template_scores` InstructRM's P(yes) per template (null where that template
# gave none; empty for other scorers).
REFINEMENT_SCORES = pa.schema(
    [
        pa.field("post_id", pa.string(), nullable=False),
        pa.field("refinement_index", pa.int64(), nullable=False),
        pa.field("refinement", pa.string(), nullable=False),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("template_scores", pa.list_(pa.float64()), nullable=False),
    ]
)
# Token-classification reward-model data (Wu et al. 2023, R1 and R2): the model input is `prefix` followed by each
# segment with a separator token before it; `labels[i]` is the label of segment i, carried by the separator before it
# (1 = error, 0 = no error "O", -100 = ignored).
SEGMENT_LABELS = pa.schema(
    [
        pa.field("prefix", pa.string(), nullable=False),
        pa.field("segments", pa.list_(pa.string()), nullable=False),
        pa.field("labels", pa.list_(pa.int64()), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)

# qa-feedback annotations, one row per record of a `*_feedback.json` file (Wu et al. 2023), for evaluation: the prompt
# built like train.json's `text`, the gold answer as `references`, the four predictions, the error spans
# (character offsets into predictions[0]), the corrected prediction, the 6 pairwise preferences (1v2, 1v3, 1v4, 2v3,
# 2v4, 3v4; 0 tie, 1 first, 2 second) and R3's completeness score of each prediction (null: no info ids).
QA_FEEDBACK = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("references", pa.list_(pa.string()), nullable=False),
        pa.field(
            "passages",
            pa.list_(pa.struct([pa.field("title", pa.string()), pa.field("content", pa.string())])),
            nullable=False,
        ),
        pa.field("predictions", pa.list_(pa.string()), nullable=False),
        pa.field(
            "errors",
            pa.list_(
                pa.struct(
                    [pa.field("error_type", pa.string()), pa.field("start", pa.int64()), pa.field("end", pa.int64())]
                )
            ),
            nullable=False,
        ),
        pa.field("corrected", pa.string(), nullable=False),
        pa.field("preference", pa.list_(pa.int64()), nullable=False),
        pa.field("completeness", pa.list_(pa.float64())),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)

# Training curves: one row per optimiser step.
TRAINING_LOG = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.int64(), nullable=False),
        pa.field("loss", pa.float64()),
        pa.field("ranking_loss", pa.float64()),
        pa.field("lm_loss", pa.float64()),
        pa.field("learning_rate", pa.float64()),
    ]
)

# Supervised fine-tuning curves (qa-feedback SFT, Wu et al. 2023): one row per optimiser step; the dev evaluation
# columns are set on the steps after which the dev set was evaluated (greedy generation), null elsewhere.
SFT_TRAINING_LOG = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.int64(), nullable=False),
        pa.field("loss", pa.float64()),
        pa.field("learning_rate", pa.float64()),
        pa.field("rouge_lsum", pa.float64()),
        pa.field("exact_match", pa.float64()),
        pa.field("generated_tokens", pa.float64()),
    ]
)


# PPO training curve (Wu et al. 2023): one row per PPO step, means over the step's samples on every process.
# `reward` is the mean per-response sum of the raw rewards of all reward functions, `rewards` the same per function
# (by the name in the reward spec), `statistics` the means of the functions' per-sample statistics ("name/key");
# `kl` the mean per-response sum of log pi - log pi_ref (what the KL early stop and adaptive controller see);
# `kl_coef` the coefficient used in this step; losses are the last PPO epoch's length-weighted minibatch means;
# `learning_rate` that of the step's first optimiser step; eval_* are set on evaluation steps only (greedy).
NAMED_VALUES = pa.list_(pa.struct([pa.field("name", pa.string()), pa.field("value", pa.float64())]))
PPO_LOG = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("episodes", pa.int64(), nullable=False),
        pa.field("reward", pa.float64()),
        pa.field("rewards", NAMED_VALUES),
        pa.field("statistics", NAMED_VALUES),
        pa.field("penalised_reward", pa.float64()),
        pa.field("kl", pa.float64()),
        pa.field("kl_coef", pa.float64()),
        pa.field("policy_loss", pa.float64()),
        pa.field("value_loss", pa.float64()),
        pa.field("clip_fraction", pa.float64()),
        pa.field("response_length", pa.float64()),
        pa.field("learning_rate", pa.float64()),
        pa.field("eval_reward", pa.float64()),
        pa.field("eval_rewards", NAMED_VALUES),
    ]
)


def _temporary_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    tmp = _temporary_sibling(target)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are shared like any other file
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `path`; move it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_table(table: pa.Table, path: str | os.PathLike, schema: pa.Schema | None = None) -> None:
    """Write `table` (cast to `schema` when given) as Parquet, atomically."""
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_rows(rows: list[dict], path: str | os.PathLike, schema: pa.Schema) -> None:
    """Write a list of dicts as Parquet with `schema`, atomically."""
    write_table(pa.Table.from_pylist(rows, schema=schema), path)


def read_table(path: str | os.PathLike, schema: pa.Schema | None = None) -> pa.Table:
    """Read a Parquet file; with `schema`, check it has the declared columns and cast to their types."""
    table = pq.read_table(path)
    if schema is not None:
        missing = [name for name in schema.names if name not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected {schema.names}")
        table = table.select(schema.names).cast(schema)
    return table


def read_sample_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a SAMPLES Parquet; DataError naming the file (and record and field) when it is not one."""
    try:
        table = read_table(path, SAMPLES)
    except ValueError as error:  # missing columns, or not Parquet (ArrowInvalid is a ValueError)
        raise DataError(str(path), None, None, str(error)) from error
    rows = table.to_pylist()
    for index, row in enumerate(rows):
        for name in SAMPLES.names:
            if row[name] is None:
                raise DataError(str(path), index, name, "missing value")
    return rows


def write_json(obj, path: str | os.PathLike) -> None:
    """Write JSON (indented, keys sorted), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())
