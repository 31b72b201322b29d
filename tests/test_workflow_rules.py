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
