"""The tiny-run claims per seed: each chosen experiment run for each chosen seed, and a claim x seed table of margins.

    make claims                                   # the default plan below
    .venv/bin/python benchmarks/claims.py --experiments ilf --seeds 42 1 2 3
    .venv/bin/python benchmarks/claims.py --table-only    # read what the scratch copies hold, run nothing

Each seed runs in its own scratch copy of the project (`--workdir`/seed-<n>: Snakefile, workflow, config, profiles)
with `--config seed=<n>`, which reseeds the synthetic worlds, the tiny models and every stage. A copy is kept, so a
second call resumes its runs and reruns only what a change invalidated: spread the seeds over a working day. The
claims are `feedbackflow.tiny.claims`; a cell is the margin (value - reference, or reference - value where lower is
better, in the claim's unit; > 0: holds) and the `min` column the smallest over the seeds, beside the margin the test
suite asserts. The table also goes to `--workdir`/claims.md. Runs take hours on 2 cores: never time anything else
while they run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from feedbackflow.tiny.claims import EXPERIMENTS, Claim, claims_of  # noqa: E402

PROJECT_ITEMS = ("Snakefile", "workflow", "config", "profiles")
# Issue 18's plan: four seeds where margins were thin (ILF, Fine-Grained qa), one extra seed where they are wide.
DEFAULT_SEEDS = {"dsp": (42, 1), "rrhf": (42, 1), "detox": (42, 1), "ilf": (42, 1, 2, 3), "qa": (42, 1, 2, 3)}


def fresh_copy(root: Path, target: Path) -> None:
    """Copy (or refresh) the project files Snakemake needs into `target`, keeping its results/ and .snakemake/."""
    target.mkdir(parents=True, exist_ok=True)
    for item in PROJECT_ITEMS:
        source, dest = root / item, target / item
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            shutil.copy(source, dest)


def run_seed(root: Path, workdir: Path, seed: int, experiments: list[str], cores: int) -> float:
    """Run the experiments' targets for one seed in its scratch copy; return the wall time in seconds."""
    copy = workdir / f"seed-{seed}"
    fresh_copy(root, copy)
    targets = [target for name in experiments for target in EXPERIMENTS[name][1]]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    # the targets before --config, whose values run to the end of the line
    command = [sys.executable, "-m", "snakemake", "--profile", "profiles/default", *targets, "--cores", str(cores),
               "--config", f"seed={seed}"]  # fmt: skip
    with open(copy / "claims_run.log", "a") as log:
        result = subprocess.run(command, cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"seed {seed}: snakemake failed; see {copy / 'claims_run.log'}")
    return time.perf_counter() - start


def claim_table(workdir: Path, plan: dict[str, list[int]]) -> str:
    """Markdown: one row per claim, a column per seed (margin, a mark when it fails or is under the CI margin)."""
    seeds = sorted({seed for seeds in plan.values() for seed in seeds}, key=lambda s: (s != 42, s))
    lines = [
        "| experiment | claim | " + " | ".join(f"seed {s}" for s in seeds) + " | min | CI asserts |",
        "|---|---|" + "---:|" * (len(seeds) + 2),
    ]
    for experiment, experiment_seeds in plan.items():
        by_seed: dict[int, list[Claim]] = {}
        for seed in experiment_seeds:
            try:
                by_seed[seed] = claims_of(workdir / f"seed-{seed}", experiment)
            except FileNotFoundError:
                continue  # not run (yet)
        if not by_seed:
            continue
        names = [claim.name for claim in next(iter(by_seed.values()))]
        for index, name in enumerate(names):
            cells, margins, ci = [], [], None
            for seed in seeds:
                claim = by_seed[seed][index] if seed in by_seed else None
                if claim is None:
                    cells.append("")
                    continue
                ci = claim.ci_margin
                margins.append(claim.margin)
                mark = "" if claim.safe else (" (under CI margin)" if claim.holds else " FAILS")
                cells.append(f"{claim.margin:+.3f} ({claim.value:.3f} vs {claim.reference:.3f}){mark}")
            lines.append(f"| {experiment} | {name} | " + " | ".join(cells) + f" | {min(margins):+.3f} | {ci:+.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", choices=sorted(EXPERIMENTS), default=list(DEFAULT_SEEDS))
    parser.add_argument("--seeds", nargs="+", type=int, help="the same seeds for every experiment (default: the plan)")
    parser.add_argument("--workdir", type=Path, default=Path("results/claims"), help="scratch copies, one per seed")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--table-only", action="store_true", help="print the table of what the copies hold")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    workdir = args.workdir.resolve()
    plan = {name: list(args.seeds or DEFAULT_SEEDS[name]) for name in args.experiments}
    if not args.table_only:
        for seed in sorted({s for seeds in plan.values() for s in seeds}, key=lambda s: (s != 42, s)):
            experiments = [name for name, seeds in plan.items() if seed in seeds]
            seconds = run_seed(root, workdir, seed, experiments, args.cores)
            print(f"seed {seed}: {', '.join(experiments)} in {seconds / 60:.1f} min", flush=True)
    table = claim_table(workdir, plan)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "claims.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
