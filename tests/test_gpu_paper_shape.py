"""The GPU paper-shape harness (benchmarks/gpu_paper_shape.py, issues 20 and 21) at `--tiny` on the CPU: every stage
runs through the project's own stage code and gets a row; a failing stage gets its row with the error and a nonzero
exit; `--budget-s` still writes the table. The GPU numbers themselves come from the device machine, not from CI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_paper_shape.py"


def load_harness():
    spec = importlib.util.spec_from_file_location("gpu_paper_shape", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def harness():
    return load_harness()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One whole `--tiny` run in its own process (as a user runs it); its exit code, output directory and rows."""
    out = tmp_path_factory.mktemp("gpu_paper_shape")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=REPO_ROOT)  # fmt: skip
    rows = json.loads((out / "results.json").read_text())["rows"] if (out / "results.json").is_file() else []
    return done, out, rows


def test_every_stage_runs_at_tiny_size(tiny_run, harness):
    done, out, rows = tiny_run
    failed = {row["stage"]: row.get("error") for row in rows if row["status"] != "ok"}
    assert not failed, f"failed stages: {failed}\n{done.stderr[-4000:]}"
    assert [row["stage"] for row in rows] == list(harness.all_stages())
    assert done.returncode == 0, done.stderr[-4000:]
    for row in rows:
        assert row["seconds"] > 0 and row["items_per_s"] > 0, row
        assert row["peak_memory"].startswith("n/a (cpu"), row  # no CUDA here: the CPU's peak RSS instead
    # issue 20's and issue 21's stages, one table each, every stage a row
    for group, members in harness.GROUPS.items():
        table = (out / f"{group}.md").read_text()
        assert "- device: cpu" in table and "--tiny" in table
        for name in members:
            assert f"| {name} | ok |" in table


def test_training_stages_report_seconds_per_optimiser_step(tiny_run):
    _, _, rows = tiny_run
    per_step = {row["stage"] for row in rows if row["per"] == "step"}
    assert {"qa_sft", "qa_rm_token", "qa_rm_sequence", "rrhf_training", "dsp_reward_training",
            "ilf_opt_rm_training", "ilf_fine_tuning", "qa_ppo_fine_grained", "qa_ppo_holistic",
            "detox_ppo"} <= per_step  # fmt: skip


def test_sampling_rows_compare_with_transformers_generate(tiny_run):
    """Issue 21: our diverse beam search and greedy sampling against transformers' generate on the same model, prompts
    and batches, as a ratio from the same run (generation time alone)."""
    _, _, rows = tiny_run
    for row in (r for r in rows if r["stage"] in ("rrhf_sampling", "rrhf_greedy")):
        assert row["per"] == "generation (all batches)"
        assert row["seconds"] == row["ours_seconds"] > 0 and row["generate_seconds"] > 0
        # The ratio is rounded to 3 decimals, the times to 6: at a few milliseconds a coarser rounding of the times
        # moved the recomputed ratio by over 1% (CI: 1.091 against 1.078 from times rounded to 0.1 ms).
        assert row["ratio_generate_over_ours"] == pytest.approx(row["generate_seconds"] / row["ours_seconds"],
                                                                rel=0.01, abs=0.0015)  # fmt: skip
        assert "ratio generate / ours" in row["notes"]


def test_ppo_rows_split_the_step(tiny_run):
    """The PPO step's shares: generation, scoring passes, rewards and optimisation, each a part of the step (the
    rest is the step's own bookkeeping), so they sum to at most 1 and cover most of it."""
    _, _, rows = tiny_run
    ppo = [row for row in rows if row["stage"] in ("qa_ppo_fine_grained", "qa_ppo_holistic", "detox_ppo")]
    assert len(ppo) == 3
    for row in ppo:
        shares = row["shares"]
        assert set(shares) == {"generation", "scoring passes", "rewards", "optimisation"}
        assert all(value > 0 for value in shares.values()), row
        assert 0.5 < sum(shares.values()) <= 1.0 + 1e-3, row


def test_a_failing_stage_gets_its_row_and_the_run_goes_on(harness, tmp_path):
    """run_stage on a stage that raises: a failed row naming the error, then the next stage runs."""
    world = harness.World(tmp_path, tiny=True, data_dir=None)

    def broken(world):
        raise ValueError("first line\nthe last line names the problem")

    def fine(world):
        return harness.StageResult(None, 4, "samples", 40.0, notes="ran")

    failed, ok = harness.run_stage(world, "broken", broken), harness.run_stage(world, "fine", fine)
    assert failed["status"] == "failed"
    assert failed["error"] == "ValueError: the last line names the problem"
    assert "Traceback" in failed["traceback"]
    assert ok["status"] == "ok" and ok["per"] == "stage" and ok["notes"] == "ran"
    table = harness.markdown_table([failed, ok])
    assert "| broken | failed |" in table and "| fine | ok |" in table


def test_budget_skips_the_rest_and_still_writes_the_table(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--budget-s", "0",
                           "--stages", "qa_sft,rrhf_training"], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(row["stage"], row["status"]) for row in rows] == [("qa_sft", "skipped (budget)"),
                                                               ("rrhf_training", "skipped (budget)")]  # fmt: skip
    assert "| qa_sft | skipped (budget) |" in (out / "gpu_fgrlhf.md").read_text()
    assert "| rrhf_training | skipped (budget) |" in (out / "gpu_rrhf_dsp_ilf.md").read_text()


def test_unknown_stage_is_an_error_naming_it(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path), "--stages", "qa_sft,nope"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)  # fmt: skip
    assert done.returncode == 2 and "unknown stage(s) ['nope']" in done.stderr


# the hub models' parameter counts (their model cards / config sizes), and the class the harness builds for them
HUB_PARAMETERS = {
    "t5-large": 737.7e6, "t5-base": 222.9e6, "gpt2-large": 774.0e6, "gpt2-xl": 1557.6e6, "gpt2-medium": 354.8e6,
    "llama-7b": 6738.4e6, "gptj-6b": 6053.4e6, "opt-1.3b": 1315.8e6, "opt-2.7b": 2651.6e6,
    "longformer-base-4096": 148.7e6,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HUB_PARAMETERS))
def test_architectures_are_the_papers_models(harness, tmp_path, name):
    """Each written-out config, built on the meta device (no memory) as the harness builds it for the GPU, has the hub
    model's parameter count and real vocabulary size; the docstring's estimate agrees."""
    world = harness.World(tmp_path, tiny=True, data_dir=None)
    world.tiny, world.device = False, "meta"  # the paper-size build, without allocating it
    model, tokenizer = world.build(name, "token" if name.startswith("longformer") else "lm")
    arch = harness.ARCHITECTURES[name]
    assert len(tokenizer) == arch.vocab_size == model.config.vocab_size
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(HUB_PARAMETERS[name], rel=0.01)
    assert arch.parameters() == pytest.approx(count, rel=0.03)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_full_fine_tuning_falls_back_to_the_smaller_llama_on_out_of_memory(harness, tmp_path):
    """with_fallback: a CUDA out-of-memory error on LLaMA-7B runs the stage again on llama-5b and says so; any other
    error, or running out on the last model, is the stage's error. (The out-of-memory error is raised by the stage
    function here: no GPU in CI.)"""
    world = harness.World(tmp_path, tiny=True, data_dir=None)
    tried = []

    def run(model: str):
        tried.append(Path(model).name)
        if "llama-7b" in model:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return harness.StageResult(1.0, 8, "queries", 100.0, notes="ran")

    result = harness.with_fallback(world, ["llama-7b", "llama-5b"], run)
    assert tried == ["llama-7b.lm", "llama-5b.lm"]
    assert result.notes == "llama-5b (toy width); llama-7b ran out of memory; ran"

    def always(model: str):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        harness.with_fallback(world, ["llama-7b", "llama-5b"], always)
