"""Results of an experiment: per-model metric tables gathered into one Parquet table, Markdown, HTML and a plot."""

from __future__ import annotations

import argparse
import logging

import pandas as pd
import pyarrow as pa

from feedbackflow.core.formats import REWARD_METRICS, atomic_path, read_table, write_table

log = logging.getLogger("feedbackflow.core.report")


def gather_metrics(paths: list[str]) -> pd.DataFrame:
    """Concatenate the per-model metric tables in the given order."""
    tables = [read_table(path, REWARD_METRICS) for path in paths]
    return pa.concat_tables(tables).to_pandas()


def accuracy_matrix(metrics: pd.DataFrame) -> pd.DataFrame:
    """Accuracy with models as rows and eval sets as columns, both in first-seen order."""
    matrix = metrics.pivot(index="model", columns="eval_set", values="accuracy")
    return matrix.loc[metrics["model"].unique(), metrics["eval_set"].unique()]


def plot_accuracy(matrix: pd.DataFrame, path: str, title: str) -> None:
    """A heat map of accuracy per model and eval set, each cell annotated."""
    import matplotlib  # imported when a plot is drawn: the metrics stages that share this module draw none

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * matrix.shape[1] + 3, 0.45 * matrix.shape[0] + 1.5))
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=30, ha="right")
    ax.set_yticks(range(matrix.shape[0]), matrix.index)
    for row in range(matrix.shape[0]):
        for col in range(matrix.shape[1]):
            value = matrix.iat[row, col]
            if pd.notna(value):
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_text(text: str, path: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def add_policy_table_arguments(parser: argparse.ArgumentParser, summaries_help: str) -> None:
    """The flags of a paper's metrics stage over per-policy summary JSONs: --summaries, --output, --markdown."""
    parser.add_argument("--summaries", nargs="+", required=True, help=summaries_help)
    parser.add_argument("--output", required=True, help="metrics Parquet to write")
    parser.add_argument("--markdown", required=True, help="metrics Markdown to write")


def write_policy_table(frame: pd.DataFrame, parquet_path: str, markdown_path: str, markdown: str) -> None:
    """A paper's policy table as Parquet and its Markdown text, each written atomically."""
    with atomic_path(parquet_path) as tmp:
        frame.to_parquet(tmp, index=False)
    write_text(markdown, markdown_path)


def collect_metrics(inputs: list[str], table: str, markdown: str, html: str, plot: str) -> pd.DataFrame:
    metrics = gather_metrics(inputs)
    write_table(pa.Table.from_pandas(metrics, preserve_index=False), table, REWARD_METRICS)
    matrix = accuracy_matrix(metrics)
    summary = "## Accuracy (pairs with different scores)\n\n" + matrix.to_markdown(floatfmt=".3f") + "\n\n"
    details = "## All metrics\n\n" + metrics.to_markdown(index=False, floatfmt=".3f") + "\n"
    write_text("# DSP reward-model evaluation\n\n" + summary + details, markdown)
    write_text(
        "<h2>Accuracy (pairs with different scores)</h2>\n"
        + matrix.to_html(float_format="{:.3f}".format)
        + "\n<h2>All metrics</h2>\n"
        + metrics.to_html(index=False, float_format="{:.3f}".format),
        html,
    )
    plot_accuracy(matrix, plot, "Reward-model accuracy per model and eval set")
    log.info("gathered %d rows from %d tables", len(metrics), len(inputs))
    return metrics


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inputs", nargs="+", required=True, help="per-model metrics Parquet files")
    parser.add_argument("--table", required=True, help="metrics Parquet to write")
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--html", required=True)
    parser.add_argument("--plot", required=True, help="PNG heat map of accuracy")


def main(args: argparse.Namespace) -> None:
    collect_metrics(args.inputs, args.table, args.markdown, args.html, args.plot)
