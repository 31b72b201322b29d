"""The house's layering, read from the import graph of src/feedbackflow (every import, inside functions too).

- `losses` are pure torch functions: they import nothing of ours but `errors`.
- The shared layers (core, text, llm, losses, models, rl, stages) never import a paper, `tiny` or `cli`.
- A paper (`papers/<paper>`; fgrlhf's qa and detox are one paper) imports the shared layers only: never another
  paper, never `tiny`.
- Only `tiny` (and the entry points) may import `tiny`.

Two string tables name modules above them, to import them only when used: `cli.STAGES` and the PPO engine's reward
registry (`rl.rewards.REWARD_TYPES`). Their entries are resolved by tests of their own (test_cli, test_ppo_training).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "feedbackflow"
SHARED = {"core", "text", "llm", "losses", "models", "rl", "stages"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every feedbackflow module `path` imports (`from feedbackflow.x import y` counts x.y when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "feedbackflow":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if is_module(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "feedbackflow")
    return found


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def room_of(module: str) -> str:
    """'feedbackflow.papers.fgrlhf.qa.rewards' -> 'papers.fgrlhf'; 'feedbackflow.rl.ppo' -> 'rl'."""
    parts = module.split(".")[1:]
    if not parts:
        return "feedbackflow"
    return ".".join(parts[:2]) if parts[0] == "papers" and len(parts) > 1 else parts[0]


def violations(graph: dict[str, set[str]]) -> list[str]:
    """The imports that break the layering, as 'importer -> imported: rule'."""
    found = []
    for importer, imported in sorted(graph.items()):
        source = room_of(importer)
        for target_module in sorted(imported):
            target = room_of(target_module)
            if target == source or target in ("errors", "feedbackflow"):
                continue
            if source == "losses":
                found.append(f"{importer} -> {target_module}: losses import only errors")
            elif source in SHARED and (target.startswith("papers") or target in ("tiny", "cli")):
                found.append(f"{importer} -> {target_module}: a shared layer imports no paper, tiny or cli")
            elif source.startswith("papers") and target not in SHARED:
                found.append(f"{importer} -> {target_module}: a paper imports only the shared layers")
            elif target == "tiny" and source not in ("tiny", "cli", "__main__"):
                found.append(f"{importer} -> {target_module}: only tiny imports tiny")
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def test_the_package_keeps_its_layers():
    graph = import_graph()
    assert len(graph) > 50 and any(room_of(m) == "papers.ilf" for m in graph)  # the walk saw the rooms
    assert violations(graph) == []


@pytest.mark.parametrize(
    ("importer", "imported", "rule"),
    [
        ("feedbackflow.papers.ilf.evaluation", "feedbackflow.tiny.slf5k", "a paper imports only the shared layers"),
        ("feedbackflow.papers.fgrlhf.detox.rewards", "feedbackflow.papers.dsp.reward_training", "a paper imports only"),
        ("feedbackflow.rl.ppo", "feedbackflow.papers.fgrlhf.qa.rewards", "a shared layer imports no paper"),
        ("feedbackflow.stages.sampling", "feedbackflow.tiny.models", "a shared layer imports no paper, tiny"),
        ("feedbackflow.losses.ppo", "feedbackflow.core.formats", "losses import only errors"),
    ],
)
def test_each_rule_catches_a_break(importer, imported, rule):
    found = violations({importer: {imported}})
    assert len(found) == 1 and rule in found[0]


def test_what_the_rules_allow():
    allowed = {
        "feedbackflow.papers.fgrlhf.detox.rewards": {"feedbackflow.papers.fgrlhf.qa.data", "feedbackflow.rl.rewards"},
        "feedbackflow.launch": {"feedbackflow.cli", "feedbackflow.core.training"},
        "feedbackflow.tiny.slf5k": {"feedbackflow.papers.ilf.prompts", "feedbackflow.tiny.synthetic"},
        "feedbackflow.losses.rrhf": {"feedbackflow.errors"},
        "feedbackflow.cli": {"feedbackflow.errors"},
    }
    assert violations(allowed) == []


def test_imports_are_read_inside_functions_too(tmp_path):
    source = tmp_path / "feedbackflow" / "papers" / "x" / "m.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from feedbackflow.tiny.slf5k import load\n    import feedbackflow.papers.dsp\n")
    assert imports_of(source) >= {"feedbackflow.tiny.slf5k", "feedbackflow.papers.dsp"}
