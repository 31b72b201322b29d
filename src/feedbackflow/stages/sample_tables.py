"""Tables of samples, no model: merge sample files (and gather sampling shards in prompt order), rank scored samples
into RRHF's ranked responses, and one-response SFT rows. Only pyarrow is imported (no torch): these stages start fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import os

import pyarrow as pa

from feedbackflow.core.formats import (
    PROMPTS,
    RANKED_RESPONSES,
    SAMPLES,
    SCORED_SAMPLES,
    read_table,
    write_rows,
    write_table,
)
from feedbackflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def merge_samples(paths: list[str | os.PathLike], prompts_path: str | os.PathLike | None = None) -> pa.Table:
    """Concatenate SAMPLES files (say, policy samples and the data set's own responses) in the given order.

    A (prompt_id, origin, sample_index) seen twice, or a prompt_id whose prompt text differs between rows, is a
    DataError naming the file and its row. With `prompts_path` (a PROMPTS file: gathering the shards of one
    sampling job), the rows are put in that file's prompt order (a prompt's rows keep their order), and a sample
    whose prompt is not in it, or a prompt without samples, is a DataError.
    """
    if not paths:
        raise ConfigError("merge_samples needs at least one file")
    tables = []
    keys: dict[tuple, str] = {}
    prompts: dict[str, str] = {}
    for path in paths:
        table = read_table(path, SAMPLES)
        columns = [table.column(name).to_pylist() for name in ("prompt_id", "prompt", "origin", "sample_index")]
        for row, (pid, prompt, origin, index) in enumerate(zip(*columns, strict=True)):
            key = (pid, origin, index)
            if key in keys:
                raise DataError(
                    path,
                    row,
                    "sample_index",
                    f"prompt {pid!r}, origin {origin!r}, sample {index} is also in {keys[key]}",
                )
            keys[key] = str(path)
            if prompts.setdefault(pid, prompt) != prompt:
                raise DataError(path, row, "prompt", f"prompt {pid!r} has a different text in another row or file")
        tables.append(table)
    return pa.concat_tables(tables) if prompts_path is None else _in_prompt_order(tables, paths, prompts_path)


def _in_prompt_order(tables: list[pa.Table], paths: list, prompts_path: str | os.PathLike) -> pa.Table:
    """The concatenated `tables` (read from `paths`) in the prompt order of the PROMPTS file `prompts_path`, every
    prompt covered (stable: a prompt's rows keep their order)."""
    table = read_table(prompts_path, PROMPTS)
    position = {pid: row for row, pid in enumerate(table.column("prompt_id").to_pylist())}
    texts = table.column("prompt").to_pylist()
    positions = []
    for path, samples in zip(paths, tables, strict=True):
        columns = (samples.column("prompt_id").to_pylist(), samples.column("prompt").to_pylist())
        for row, (pid, prompt) in enumerate(zip(*columns, strict=True)):
            if pid not in position:
                raise DataError(path, row, "prompt_id", f"prompt {pid!r} is not in {prompts_path}")
            if texts[position[pid]] != prompt:
                raise DataError(path, row, "prompt", f"prompt {pid!r} has another text in {prompts_path}")
            positions.append(position[pid])
    missing = sorted(set(range(table.num_rows)) - set(positions))
    if missing:
        raise DataError(prompts_path, missing[0], "prompt_id", f"{len(missing)} prompt(s) have no samples")
    order = sorted(range(len(positions)), key=positions.__getitem__)
    return pa.concat_tables(tables).take(order)


def ranked_responses(scored: pa.Table, path: str | os.PathLike = "<scored samples>") -> list[dict]:
    """RANKED_RESPONSES rows from SCORED_SAMPLES: per prompt (first-seen order), query = prompt, and the non-empty
    responses whose status is "ok" with their scores, in table order. Prompts with fewer than 2 scored responses
    are dropped (counted in the log)."""
    columns = {name: scored.column(name).to_pylist() for name in ("prompt_id", "prompt", "response", "score", "status")}
    groups: dict[str, dict] = {}
    not_ok = empty = 0
    for row in range(scored.num_rows):
        pid, prompt = columns["prompt_id"][row], columns["prompt"][row]
        group = groups.setdefault(pid, {"prompt_id": pid, "query": prompt, "responses": [], "scores": []})
        if group["query"] != prompt:
            raise DataError(path, row, "prompt", f"prompt {pid!r} has a different text in an earlier row")
        score = columns["score"][row]
        if columns["status"][row] != "ok":
            not_ok += 1
            continue
        if not columns["response"][row].strip():  # a policy may stop at once; an empty response is not ranked
            empty += 1
            continue
        if score is None or not math.isfinite(score):
            raise DataError(path, row, "score", f"status 'ok' but the score is {score!r}")
        group["responses"].append(columns["response"][row])
        group["scores"].append(float(score))
    rows = [group for group in groups.values() if len(group["responses"]) >= 2]
    log.info(
        "%d queries ranked; %d prompts dropped with fewer than 2 scored responses; %d responses not scored ok; "
        "%d empty responses left out",
        len(rows),
        len(groups) - len(rows),
        not_ok,
        empty,
    )
    return rows


def rank_responses(scored_paths: list[str | os.PathLike], output: str | os.PathLike) -> list[dict]:
    """Read SCORED_SAMPLES file(s) and write RANKED_RESPONSES Parquet."""
    tables = [read_table(path, SCORED_SAMPLES) for path in scored_paths]
    name = str(scored_paths[0]) if len(scored_paths) == 1 else ", ".join(map(str, scored_paths))
    rows = ranked_responses(pa.concat_tables(tables), name)
    if not rows:
        raise DataError(name, None, None, "no prompt has 2 or more responses scored 'ok'")
    write_rows(rows, output, RANKED_RESPONSES)
    return rows


def configure_rank(parser: argparse.ArgumentParser) -> None:
    """Flags of the `rank-responses` stage."""
    parser.add_argument("--scored", nargs="+", required=True, help="SCORED_SAMPLES Parquet file(s)")
    parser.add_argument("--output", required=True, help="RANKED_RESPONSES Parquet to write")


def main_rank(args: argparse.Namespace) -> None:
    rows = rank_responses(args.scored, args.output)
    log.info("wrote %d ranked queries to %s", len(rows), args.output)


def sft_rows(samples: pa.Table) -> list[dict]:
    """RANKED_RESPONSES rows with one response each (score 0): supervised fine-tuning data for the RRHF trainer
    with `rrhf_weight` 0, whose loss is then the SFT term alone (Yuan et al. 2023's L_sft on every response)."""
    columns = {name: samples.column(name).to_pylist() for name in ("prompt_id", "prompt", "response")}
    return [
        {"prompt_id": pid, "query": prompt, "responses": [response], "scores": [0.0]}
        for pid, prompt, response in zip(columns["prompt_id"], columns["prompt"], columns["response"], strict=True)
    ]


def configure_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", nargs="+", required=True, help="SAMPLES Parquet files")
    parser.add_argument(
        "--prompts", default=None, help="PROMPTS Parquet: put the rows in its prompt order, every prompt covered"
    )
    parser.add_argument("--output", required=True, help="merged SAMPLES Parquet to write")


def main_merge(args: argparse.Namespace) -> None:
    merged = merge_samples(args.samples, args.prompts)
    write_table(merged, args.output, SAMPLES)
    log.info("merged %d samples from %d files into %s", merged.num_rows, len(args.samples), args.output)


def configure_sft(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", nargs="+", required=True, help="SAMPLES Parquet files (prompt -> response)")
    parser.add_argument("--output", required=True, help="RANKED_RESPONSES Parquet with one response per row")


def main_sft(args: argparse.Namespace) -> None:
    rows = sft_rows(merge_samples(args.samples))
    write_rows(rows, args.output, RANKED_RESPONSES)
    log.info("wrote %d prompt -> response rows to %s", len(rows), args.output)
