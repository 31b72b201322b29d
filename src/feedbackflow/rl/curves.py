"""PPO training curves for the reports: the long table of each run's training log, and its plot (one panel per
metric, a line per PPO variant). Used by the metrics stages of every PPO experiment (qa-feedback, detox)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from feedbackflow.core.formats import atomic_path
from feedbackflow.core.report import add_policy_table_arguments, write_policy_table


def ppo_curves(run_dirs: list[str]) -> pd.DataFrame:
    """Long table of the PPO training curves: (variant, step, episodes, metric, value) from each run's log."""
    frames = []
    for run in run_dirs:
        log_table = pd.read_parquet(Path(run) / "training_log.parquet")
        variant = Path(run).name
        base = log_table[["step", "episodes"]]
        for metric in ("reward", "kl", "value_loss", "policy_loss", "response_length"):
            frames.append(base.assign(variant=variant, metric=metric, value=log_table[metric].astype(float)))
        for row_index, named in enumerate(log_table["rewards"]):
            for item in named:
                frames.append(
                    pd.DataFrame(
                        {
                            "step": [log_table["step"].iat[row_index]],
                            "episodes": [log_table["episodes"].iat[row_index]],
                            "variant": [variant],
                            "metric": [f"reward/{item['name']}"],
                            "value": [float(item["value"])],
                        }
                    )
                )
    return pd.concat(frames, ignore_index=True)[["variant", "step", "episodes", "metric", "value"]]


def plot_ppo_curves(curves: pd.DataFrame, path: str) -> None:
    """One panel per metric (total and per-RM reward, KL, value loss, length), a line per PPO variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(curves["metric"]))
    columns = 3
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        for variant, part in curves[curves["metric"] == metric].groupby("variant", sort=False):
            axis.plot(part["episodes"], part["value"], label=variant)
        axis.set_title(metric)
        axis.set_xlabel("episodes")
        axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(metrics) :]:
        axis.axis("off")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)


def add_ppo_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a metrics stage that also writes the PPO curves: --ppo-runs, --curves, --plot."""
    parser.add_argument("--ppo-runs", nargs="*", default=[], help="PPO output directories (training_log.parquet)")
    parser.add_argument("--curves", default=None, help="PPO curves Parquet to write (with --ppo-runs)")
    parser.add_argument("--plot", default=None, help="PPO curves PNG to write (with --ppo-runs)")


def write_ppo_curves(run_dirs: list[str], curves_path: str | None, plot_path: str | None) -> None:
    """The curves of `run_dirs` as Parquet and / or PNG (atomically); nothing without runs."""
    if not run_dirs:
        return
    curves = ppo_curves(run_dirs)
    if curves_path:
        with atomic_path(curves_path) as tmp:
            curves.to_parquet(tmp, index=False)
    if plot_path:
        plot_ppo_curves(curves, plot_path)


def add_policy_table_and_curve_arguments(parser: argparse.ArgumentParser, summaries_help: str) -> None:
    """The flags of a PPO paper's metrics stage: the policy table's and the PPO curves'."""
    add_policy_table_arguments(parser, summaries_help)
    add_ppo_curve_arguments(parser)


def write_policy_table_and_curves(frame: pd.DataFrame, args: argparse.Namespace, markdown: str) -> None:
    """A PPO paper's metrics stage: its policy table (Parquet, `markdown` text) and the curves of its PPO runs."""
    write_policy_table(frame, args.output, args.markdown, markdown)
    write_ppo_curves(args.ppo_runs, args.curves, args.plot)
