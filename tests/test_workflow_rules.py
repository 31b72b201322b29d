"""The rule files: `snakemake --lint` finds nothing (each paper's helper functions live in its own *_helpers.smk, none
beside rules), and every shell command that several training rules share is the one `launch` builds."""

from __future__ import annotations

import re
from pathlib import Path

from workflow_runs import copy_project, snakemake

RULES = Path(__file__).resolve().parents[1] / "workflow" / "rules"


def test_snakemake_lint_is_clean(repo_root, tmp_path):
    """The default configuration includes every rule file, so the lint reads them all."""
    result = snakemake(copy_project(repo_root, tmp_path), "--lint", check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Congratulations, your workflow is in a good condition!" in output, output


def test_helpers_and_rules_live_in_separate_files():
    """Snakemake's lint rule 'Mixed rules and functions in same snakefile', checked on each file by its own name."""
    for path in sorted(RULES.glob("*.smk")):
        text = path.read_text()
        has_rules = re.search(r"^(use )?rule \w+", text, re.M) is not None
        has_functions = re.search(r"^def \w+", text, re.M) is not None
        assert not (has_rules and has_functions), path.name
        assert has_functions == (path.name == "common.smk" or path.name.endswith("_helpers.smk")), path.name


def test_training_rules_launch_their_stage_through_launch():
    """No rule file spells out `feedbackflow launch` itself: common.smk's `launch` builds that command."""
    for path in sorted(RULES.glob("*.smk")):
        if path.name != "common.smk":
            assert "feedbackflow launch" not in path.read_text(), path.name


def test_every_rule_writes_a_benchmark_file_named_by_the_rule():
    """Each job's time lands in results/benchmarks/<rule>/ (the `stage_times` table reads the rule from there)."""
    header = re.compile(r"^\s*(?:rule (\w+):|use rule \w+ as (\w+) with:)", re.M)
    checked = []
    for path in sorted(RULES.glob("*.smk")):
        text = path.read_text()
        starts = list(header.finditer(text))
        for match, following in zip(starts, [*starts[1:], None][: len(starts)], strict=True):
            rule = match.group(1) or match.group(2)
            block = text[match.start() : following.start() if following else len(text)]
            benchmark = re.search(r"benchmark:\s*\(?\s*f\"\{RESULTS\}/benchmarks/(\w+)/", block)
            assert benchmark is not None, f"{path.name}: rule {rule} has no benchmark: file"
            assert benchmark.group(1) == rule, (
                f"{path.name}: rule {rule} writes its benchmark under {benchmark.group(1)}"
            )
            checked.append(rule)
    assert len(checked) >= 60 and "stage_times" in checked
