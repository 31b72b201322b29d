"""Paper-shape scenarios (issue 19): each paper config of config/experiments/ runs through
Snakemake on the CPU, up to its metrics table, with an overlay (tests/paper_shape/<paper>.yaml, a second
--configfile merged over the paper file) that changes sizes only: toy models of the paper's architecture classes,
slices of the real data files of ../shared/data (or files in the paper's format at real lengths), a few steps,
2 CPU processes under the paper's accelerate config. They catch what the tiny world cannot: real data lengths at
the paper's max lengths, DDP / DeepSpeed ZeRO behaviour of the real architectures, batch arithmetic.

Each scenario runs in a scratch copy of the project; its wall time is recorded as the test's `seconds` property
(`pytest --junitxml` keeps it). A scenario that hits a known, open blocker of issue 19 is xfail(strict=True) naming
it, so the blocker's fix turns it into an unexpected pass that must drop the mark.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from openai_stub_server import Action, StubOpenAIServer
from perspective_stub_server import StubPerspectiveServer
from safetensors.torch import load_file
from workflow_runs import copy_project, snakemake, write_service_overlay

from feedbackflow.core.preflight import configured_services

REPO_ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = REPO_ROOT / "tests" / "paper_shape"
# a key naming a length limit of the model input (max_length, max_input_length, max_prompt_tokens, ...), which an
# overlay keeps; counts (max_prompts, max_steps) and max_new_tokens (a generation size) are sizes it may change
LIMIT_SUFFIXES = ("length", "_tokens", "_words", "_embeddings")
GENERATION_SIZES = ("max_new_tokens", "max_tokens")  # max_tokens: the OpenAI-style name of max_new_tokens


@dataclass
class Scenario:
    paper: str  # config/experiments/<paper>.yaml and tests/paper_shape/<paper>.yaml
    experiment: str  # results/<experiment>/metrics.parquet
    assets: list[str]  # PaperShapeAssets names the overlay refers to


RRHF_ASSETS = ["models/llama", "models/gptj_rm", "models/gpt2", "data/rm-static/hh.parquet"]
SCENARIOS = {
    "dsp": Scenario(
        "dsp", "dsp",
        ["models/llama", "data/hh/harmless-base-test.jsonl.gz", "data/dsp/domain_specific_preference.test.json",
         "data/text_score/hh_pairs.json"],
    ),
    "finegrained_qa": Scenario(
        "finegrained_qa", "qa_feedback",
        ["models/t5", "models/longformer", "data/qa_feedback/dev_feedback.json", "data/qa_feedback/prompts.json",
         "data/qa_feedback/dev_feedback.eval.json", "data/qa_feedback/prompts.eval.json"],
    ),
    "finegrained_detox": Scenario("finegrained_detox", "detox", ["models/gpt2", "data/rtp/prompts.jsonl"]),
    "ilf_slf5k": Scenario("ilf_slf5k", "ilf", ["models/opt", "models/llama", "data/slf5k"]),
    "rrhf_hh": Scenario("rrhf_hh", "rrhf", RRHF_ASSETS),
    "wombat": Scenario("wombat", "rrhf", RRHF_ASSETS),
}  # fmt: skip


def judge_score(user_message: str, attempt: int) -> Action:
    """The OpenAI stub's rating: 1-10 from the message's length, so responses get different scores."""
    return Action(text=str(1 + len(user_message) % 10))


@contextlib.contextmanager
def stubbed_services(workdir: Path, configs: list[str]):
    """Loopback stubs for the remote services the merged config calls (feedbackflow.core.preflight: an OpenAI-compatible
    judge, Perspective), a third configfile naming their URLs, and their key variables. A stub is unavoidable here:
    CI is offline, and the real service cannot run on the machine."""
    merged: dict = {}
    for config in configs:
        _merge(merged, yaml.safe_load((workdir / config).read_text()))
    services = configured_services(merged)
    if not services:
        yield [], {}
        return
    openai_stub = StubOpenAIServer(judge_score, max_requests=100_000)
    with openai_stub, StubPerspectiveServer(max_requests=100_000) as perspective:
        env = write_service_overlay(workdir / "services.yaml", services, openai_stub.base_url, perspective.url)
        yield ["services.yaml"], env


def _merge(base: dict, overlay: dict) -> None:
    """Snakemake's merge of several --configfile: nested dicts merged, everything else replaced."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def run_scenario(scenario: Scenario, assets, tmp_path: Path, record_property) -> tuple[Path, pd.DataFrame]:
    """Run the paper file + its overlay to the end in a scratch project; return the workdir and metrics table."""
    (tmp_path / "project").mkdir()
    workdir = copy_project(REPO_ROOT, tmp_path / "project")
    assets.install(workdir, scenario.assets)
    shutil.copy(OVERLAYS / f"{scenario.paper}.yaml", workdir / "paper_shape" / "overlay.yaml")
    configs = [f"config/experiments/{scenario.paper}.yaml", "paper_shape/overlay.yaml"]
    start = time.monotonic()
    try:
        with stubbed_services(workdir, configs) as (services, env):
            snakemake(workdir, "--cores", "2", "--configfile", *configs, *services, env=env)
    finally:
        record_property("seconds", round(time.monotonic() - start, 1))
    table = workdir / "results" / scenario.experiment / "metrics.parquet"
    assert (workdir / "results" / scenario.experiment / "metrics.md").is_file()
    return workdir, pd.read_parquet(table)


def test_overlays_change_sizes_only():
    """Every paper config has an overlay, and no overlay touches what makes the paper's shape: the accelerate
    config, the experiments, and the max lengths (max_new_tokens is a size, not a limit of the model input: it may
    go down)."""
    papers = sorted(p.stem for p in (REPO_ROOT / "config" / "experiments").glob("*.yaml"))
    assert sorted(p.stem for p in OVERLAYS.glob("*.yaml")) == papers
    for paper in papers:
        overlay = yaml.safe_load((OVERLAYS / f"{paper}.yaml").read_text())
        assert not {"accelerate_config", "experiments", "seed"} & set(overlay), paper
        lengths = [key for key in _keys(overlay) if is_length_limit(key.rsplit(".", 1)[-1])]
        assert not lengths, f"{paper}: the overlay changes {lengths}"


def is_length_limit(name: str) -> bool:
    """Whether a config key's last part is a max length of the model input (see LIMIT_SUFFIXES)."""
    return name.startswith("max_") and name.endswith(LIMIT_SUFFIXES) and name not in GENERATION_SIZES


def test_length_limits_are_told_from_sizes():
    assert all(map(is_length_limit, ["max_length", "max_input_length", "max_prompt_tokens", "max_prompt_words",
                                     "max_position_embeddings", "max_target_length"]))  # fmt: skip
    sizes = ["max_prompts", "max_steps", "max_new_tokens", "max_tokens", "max_eval_examples"]
    assert not any(map(is_length_limit, sizes))


def _keys(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield f"{prefix}{key}"
            yield from _keys(value, f"{prefix}{key}.")


def test_dsp(paper_shape_assets, tmp_path, record_property):
    """GRFT then CRFT (with and without the LM loss) of a toy LLaMA under ZeRO-3 (no offload) on 2 processes, at
    max length 512 on real HH dialogues and DSP responses; every model evaluated on every set."""
    workdir, table = run_scenario(SCENARIOS["dsp"], paper_shape_assets, tmp_path, record_property)
    assert set(table["model"]) >= {"base", "grft", "crft-academy", "crft_imitation-academy"}
    # ZeRO-3 saved the gathered weights (a partitioned save leaves empty tensors): the base model's shapes
    base = load_file(workdir / "paper_shape" / "models" / "llama" / "model.safetensors")
    grft = load_file(workdir / "results" / "dsp" / "models" / "grft" / "model.safetensors")
    assert {k: v.shape for k, v in grft.items()} == {k: v.shape for k, v in base.items()}


def test_finegrained_qa(paper_shape_assets, tmp_path, record_property):
    """SFT of a toy T5, R1/R2 (Longformer token RMs) and R3/preference (sequence RMs) at 2,048 tokens on the real
    qa-feedback dev feedback, the RM mean/std, one step of each PPO variant, greedy evaluation: DDP on 2 processes."""
    _, table = run_scenario(SCENARIOS["finegrained_qa"], paper_shape_assets, tmp_path, record_property)
    assert len(table) > 0


def test_finegrained_detox(paper_shape_assets, tmp_path, record_property):
    """One PPO step of a toy GPT-2 per variant (holistic, fine-grained) against the Perspective stub, 25 samples per
    test prompt, perplexity: DDP on 2 processes."""
    _, table = run_scenario(SCENARIOS["finegrained_detox"], paper_shape_assets, tmp_path, record_property)
    assert len(table) > 0


def test_ilf_slf5k(paper_shape_assets, tmp_path, record_property):
    """Initial summaries of a toy OPT, refinements / InstructRM / judge by a toy LLaMA in the jobs (hf), best-of-64
    with OPT-RM, fine-tuning under ZeRO-2 on 2 processes."""
    _, table = run_scenario(SCENARIOS["ilf_slf5k"], paper_shape_assets, tmp_path, record_property)
    assert len(table) > 0


def test_rrhf_hh(paper_shape_assets, tmp_path, record_property):
    """Diverse beam search of a toy LLaMA on real HH prompts, scoring by the imported GPT-J-layout RM at 1,024
    tokens, RRHF training at 192 tokens under ZeRO-3 on 2 processes, evaluation with GPT-2 perplexity."""
    _, table = run_scenario(SCENARIOS["rrhf_hh"], paper_shape_assets, tmp_path, record_property)
    assert len(table) > 0


def test_wombat(paper_shape_assets, tmp_path, record_property):
    """As rrhf_hh with the responses rated by an OpenAI-compatible judge (a loopback stub), training at 512 tokens."""
    _, table = run_scenario(SCENARIOS["wombat"], paper_shape_assets, tmp_path, record_property)
    assert len(table) > 0
