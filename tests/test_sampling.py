"""Policy sampling (Yuan et al. 2023): batching with left padding, seeds, stop strings, diverse beam search,
merging sample files and ranking scored responses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from diverse_beam_reference import reference_diverse_beam_search
from test_experiment_configs import check_stage_arguments, stage_commands
from workflow_runs import copy_project, planned_jobs, snakemake

from feedbackflow.core.batches import length_sorted_batches
from feedbackflow.core.formats import PROMPTS, RANKED_RESPONSES, SAMPLES, SCORED_SAMPLES, read_table, write_rows
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.stages.sample_tables import (
    configure_merge,
    configure_rank,
    main_merge,
    main_rank,
    merge_samples,
    ranked_responses,
)
from feedbackflow.stages.sampling import (
    BatchCheckpoints,
    SamplingConfig,
    configure,
    diverse_beam_search,
    generate_responses,
    generate_shard,
    main,
    sample_responses,
    shard_batches,
)
from feedbackflow.text.tokens import cut_at_stop_strings, decode_response, encode_prompts, pad_left
from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, build_gpt2_lm, train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = TinyModelConfig(
    seed=3,
    vocab_size=300,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=128,
)
CORPUS = [
    "\\n\\nHuman: What is the capital of France?\\n\\nAssistant: Paris is the capital of France.",
    "the quick brown fox jumps over the lazy dog",
    "one two three four five six seven eight nine ten",
    "Human: how do I bake bread? Assistant: mix flour, water, salt and yeast, then bake.",
]
PROMPTS_TEXT = [
    "\n\nHuman: What is the capital of France?\n\nAssistant:",
    "the quick brown fox",
    "one two three four five six seven eight nine ten one two three",
    "bake",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and leave the other cores to parallel test runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 3) + "\n")
    return train_tokenizer([corpus], TINY.vocab_size, TINY.max_position_embeddings)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_causal_lm(tokenizer, TINY).eval()


def greedy(**overrides) -> SamplingConfig:
    values = dict(num_return_sequences=1, num_beams=1, num_beam_groups=1, max_new_tokens=8, stop_strings=[])
    return SamplingConfig(**{**values, **overrides})


def test_encode_left_truncates_and_pads_left(tokenizer):
    ids = tokenizer("one two three four five six", add_special_tokens=False)["input_ids"]
    assert encode_prompts(tokenizer, ["one two three four five six"], 4) == [[tokenizer.bos_token_id] + ids[-3:]]
    input_ids, mask = pad_left([[5, 6, 7], [8]], pad_id=2)
    assert input_ids.tolist() == [[5, 6, 7], [2, 2, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_stop_strings_and_decoding(tokenizer):
    assert cut_at_stop_strings("a\n\nAssistant: b\n\nHuman: c", ["\n\nHuman:", "\n\nAssistant:"]) == "a"
    assert cut_at_stop_strings("no stop", ["\n\nHuman:"]) == "no stop"
    ids = tokenizer(" Paris.\n\nHuman: and", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    assert decode_response(tokenizer, ids, {eos}, ["\n\nHuman:"]) == "Paris."
    assert decode_response(tokenizer, ids[:2] + [eos] + ids[2:], {eos}, []) == tokenizer.decode(ids[:2]).strip()


def test_greedy_batched_with_left_padding_equals_unbatched(model, tokenizer):
    batched = generate_responses(model, tokenizer, PROMPTS_TEXT, greedy(batch_size=4))
    one_by_one = generate_responses(model, tokenizer, PROMPTS_TEXT, greedy(batch_size=1))
    assert batched == one_by_one
    assert [len(group) for group in batched] == [1] * len(PROMPTS_TEXT)
    assert any(group[0] for group in batched)


def test_sampling_is_deterministic_from_the_seed(model, tokenizer):
    config = greedy(do_sample=True, num_return_sequences=3, temperature=1.0, top_k=50, top_p=0.95, batch_size=4)
    first = generate_responses(model, tokenizer, PROMPTS_TEXT, config)
    assert first == generate_responses(model, tokenizer, PROMPTS_TEXT, config)
    assert [len(group) for group in first] == [3] * len(PROMPTS_TEXT)
    other = generate_responses(model, tokenizer, PROMPTS_TEXT, greedy(**{**config.__dict__, "seed": 7}))
    assert other != first


def test_stop_strings_cut_generated_responses(model, tokenizer):
    plain = generate_responses(model, tokenizer, PROMPTS_TEXT, greedy(max_new_tokens=12))
    text = next(group[0] for group in plain if len(group[0]) > 4)
    stop = text[2:4]
    cut = generate_responses(model, tokenizer, PROMPTS_TEXT, greedy(max_new_tokens=12, stop_strings=[stop]))
    for (full,), (short,) in zip(plain, cut, strict=True):
        assert short == cut_at_stop_strings(full, [stop]).strip()
        assert stop not in short
    assert (text[:2].strip(),) in [tuple(group) for group in cut]


def test_diverse_beam_search_without_penalty_is_greedy(model, tokenizer):
    expected = generate_responses(model, tokenizer, PROMPTS_TEXT, greedy())
    config = SamplingConfig(max_new_tokens=8, diversity_penalty=0.0, stop_strings=[])
    diverse = generate_responses(model, tokenizer, PROMPTS_TEXT, config)
    assert diverse == [group * 4 for group in expected]


def test_diverse_beam_search_paper_settings(model, tokenizer):
    config = SamplingConfig(max_new_tokens=6, stop_strings=[], batch_size=4)  # beams 4, groups 4, penalty 1.0
    batched = generate_responses(model, tokenizer, PROMPTS_TEXT, config)
    assert [len(group) for group in batched] == [4] * len(PROMPTS_TEXT)
    assert all(len(set(group)) >= 3 for group in batched)
    assert batched == generate_responses(
        model, tokenizer, PROMPTS_TEXT, SamplingConfig(**{**config.__dict__, "batch_size": 1})
    )


def test_large_diversity_penalty_makes_every_group_start_differently(model, tokenizer):
    input_ids, mask = pad_left(encode_prompts(tokenizer, PROMPTS_TEXT, 64), tokenizer.pad_token_id)
    results = diverse_beam_search(
        model,
        input_ids,
        mask,
        num_beams=4,
        num_beam_groups=4,
        diversity_penalty=1000.0,
        max_new_tokens=5,
        eos_token_ids={tokenizer.eos_token_id},
        pad_token_id=tokenizer.pad_token_id,
        num_return_sequences=4,
    )
    for group in results:
        assert len({tokens[0] for tokens in group}) == 4


def test_one_group_matches_transformers_beam_search(tokenizer):
    model = build_causal_lm(tokenizer, TinyModelConfig(**{**TINY.__dict__, "seed": 1})).eval()
    with torch.no_grad():  # make eos likely, so some beams finish early and some do not
        model.lm_head.weight[tokenizer.eos_token_id] += 0.03 * model.model.norm.weight.sign()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    input_ids, mask = pad_left(encode_prompts(tokenizer, PROMPTS_TEXT, 64), pad)
    ours = diverse_beam_search(
        model,
        input_ids,
        mask,
        num_beams=4,
        num_beam_groups=1,
        diversity_penalty=0.0,
        max_new_tokens=10,
        eos_token_ids={eos},
        pad_token_id=pad,
        num_return_sequences=4,
    )
    reference = model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        num_beams=4,
        num_return_sequences=4,
        max_new_tokens=10,
        pad_token_id=pad,
        eos_token_id=eos,
        do_sample=False,
    )[:, input_ids.shape[1] :].tolist()
    reference = [
        [[t for t in seq if t != pad] for seq in reference[i * 4 : (i + 1) * 4]] for i in range(len(PROMPTS_TEXT))
    ]
    assert ours == reference
    finished = sum(eos in seq for group in ours for seq in group)
    assert 0 < finished < 4 * len(PROMPTS_TEXT)


BEAM_PROMPTS = [*PROMPTS_TEXT, "the lazy dog", "\n\nHuman: how do I bake bread?\n\nAssistant: mix"]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "settings",
    [
        # the paper's: 4 groups of 1 beam, penalty 1.0
        {"num_beams": 4, "num_beam_groups": 4, "diversity_penalty": 1.0, "num_return_sequences": 4},
        # groups of 2 beams, a length penalty, more returns than groups
        {
            "num_beams": 6,
            "num_beam_groups": 3,
            "diversity_penalty": 0.5,
            "num_return_sequences": 5,
            "length_penalty": 0.7,
        },
        # a third of the vocabulary ends a hypothesis: groups finish early, some slots are left unfilled
        {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 2.0, "num_return_sequences": 3, "many_eos": True},
    ],
)
def test_vectorised_diverse_beam_search_equals_the_per_prompt_loop(tokenizer, architecture, settings):
    """The vectorised decode step gives the token lists of the per-prompt, per-group loop it replaced
    (tests/diverse_beam_reference.py, the code of commit 1a9b829), on LLaMA and GPT-2 layouts, with prompts of
    different lengths (left padding), finished and running hypotheses."""
    settings = dict(settings)
    build = build_causal_lm if architecture == "llama" else build_gpt2_lm
    model = build(tokenizer, TinyModelConfig(**{**TINY.__dict__, "seed": 5})).eval()
    head = model.lm_head.weight
    with torch.no_grad():  # make eos likely, so some hypotheses finish before max_new_tokens and some do not
        head[tokenizer.eos_token_id] += 0.03 * head.mean(dim=0).sign()
    eos_ids = {tokenizer.eos_token_id}
    if settings.pop("many_eos", False):
        eos_ids |= set(range(0, len(tokenizer), 3))
    input_ids, mask = pad_left(encode_prompts(tokenizer, BEAM_PROMPTS, 64), tokenizer.pad_token_id)
    common = dict(max_new_tokens=12, eos_token_ids=eos_ids, pad_token_id=tokenizer.pad_token_id, **settings)
    reference = reference_diverse_beam_search(model, input_ids, mask, **common)
    vectorised = diverse_beam_search(model, input_ids, mask, **common)
    assert vectorised == reference
    ended = [tokens[-1] in eos_ids for group in reference for tokens in group]
    assert any(ended) and not all(ended), "the case needs finished and unfinished hypotheses"


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_beams": 4, "num_beam_groups": 3},
        {"num_beams": 2, "num_beam_groups": 2, "num_return_sequences": 3},
        {"do_sample": True, "num_beam_groups": 4},
        {"num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 2},
        {"max_new_tokens": 0},
        {"stop_strings": [""]},
    ],
)
def test_config_errors(overrides):
    with pytest.raises(ConfigError):
        SamplingConfig(**overrides).validate()


def test_sample_responses_stage(model, tokenizer, tmp_path):
    policy = tmp_path / "policy"
    model.save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    prompts = tmp_path / "prompts.parquet"
    rows = [
        {"prompt_id": f"p-{i}", "prompt": text, "source": "test", "record": i} for i, text in enumerate(PROMPTS_TEXT)
    ]
    write_rows(rows, prompts, PROMPTS)
    parser = argparse.ArgumentParser()
    configure(parser)
    output = tmp_path / "samples.parquet"
    args = parser.parse_args(
        ["--prompts", str(prompts), "--model", str(policy), "--output", str(output), "--max-new-tokens", "6"]
        + ["--num-return-sequences", "2", "--origin", "tiny", "--stop-strings", json.dumps(["\n\nHuman:"])]
    )
    main(args)
    samples = read_table(output, SAMPLES).to_pylist()
    assert len(samples) == 2 * len(PROMPTS_TEXT)
    assert [(s["prompt_id"], s["sample_index"]) for s in samples[:2]] == [("p-0", 0), ("p-0", 1)]
    assert {s["origin"] for s in samples} == {"tiny"} and samples[2]["prompt"] == PROMPTS_TEXT[1]


def samples_file(path, rows) -> str:
    write_rows(
        [
            {"prompt_id": p, "prompt": f"prompt {p}", "response": r, "origin": o, "sample_index": k}
            for p, r, o, k in rows
        ],
        path,
        SAMPLES,
    )
    return str(path)


def test_merge_samples(tmp_path):
    policy = samples_file(tmp_path / "policy.parquet", [("a", "x", "tiny", 0), ("a", "y", "tiny", 1)])
    data = samples_file(tmp_path / "data.parquet", [("a", "c", "chosen", 0), ("b", "r", "rejected", 0)])
    merged = merge_samples([policy, data])
    assert merged.schema == SAMPLES and merged.column("response").to_pylist() == ["x", "y", "c", "r"]
    with pytest.raises(DataError) as caught:
        merge_samples([policy, data, policy])
    assert caught.value.path == policy and caught.value.record == 0 and caught.value.field == "sample_index"
    clash = tmp_path / "clash.parquet"
    write_rows(
        [{"prompt_id": "a", "prompt": "other", "response": "z", "origin": "o", "sample_index": 0}], clash, SAMPLES
    )
    with pytest.raises(DataError, match="different text"):
        merge_samples([policy, clash])


def test_ranked_responses(tmp_path):
    def row(pid, response, score, status="ok"):
        return {
            "prompt_id": pid,
            "prompt": f"q{pid}",
            "response": response,
            "origin": "o",
            "sample_index": 0,
            "score": score,
            "status": status,
            "reason": None,
            "scorer": "rm:x",
            "prompt_tokens": None,
            "completion_tokens": None,
        }

    rows = [row("1", "a", 0.5), row("2", "only", 1.0), row("1", "b", -1.0), row("1", "c", None, "unparsed")]
    rows.append(row("2", "failed", None, "failed"))
    table = pa.Table.from_pylist(rows, schema=SCORED_SAMPLES)
    assert ranked_responses(table) == [
        {"prompt_id": "1", "query": "q1", "responses": ["a", "b"], "scores": [0.5, -1.0]}
    ]
    scored = tmp_path / "scored.parquet"
    write_rows(rows, scored, SCORED_SAMPLES)
    parser = argparse.ArgumentParser()
    configure_rank(parser)
    main_rank(parser.parse_args(["--scored", str(scored), "--output", str(tmp_path / "ranked.parquet")]))
    assert read_table(tmp_path / "ranked.parquet", RANKED_RESPONSES).num_rows == 1
    with pytest.raises(DataError, match="score"):
        ranked_responses(pa.Table.from_pylist([row("1", "a", None)], schema=SCORED_SAMPLES))


def test_shard_batches_split_consecutive_batches():
    assert [shard_batches(5, k, 2) for k in range(2)] == [range(0, 2), range(2, 5)]
    assert [list(shard_batches(2, k, 3)) for k in range(3)] == [[], [0], [1]]  # more shards than batches
    assert length_sorted_batches([[1, 2, 3], [1], [1, 2], [1]], 2) == [[1, 3], [2, 0]]  # by length, ties in file order
    with pytest.raises(ConfigError, match="shard"):
        shard_batches(5, 2, 2)


def policy_and_prompts(model, tokenizer, tmp_path, texts) -> tuple[str, str]:
    policy = tmp_path / "policy"
    model.save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    prompts = tmp_path / "prompts.parquet"
    rows = [{"prompt_id": f"p-{i}", "prompt": text, "source": "test", "record": i} for i, text in enumerate(texts)]
    write_rows(rows, prompts, PROMPTS)
    return str(policy), str(prompts)


def run_stage(configure_stage, main_stage, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    configure_stage(parser)
    main_stage(parser.parse_args(argv))


@pytest.mark.parametrize("shards", [2, 4])  # 4 shards of 3 batches: one is empty
def test_sharded_sampling_gathers_to_the_unsharded_samples(model, tokenizer, tmp_path, shards):
    """The paper's decoding (diverse beam search) on 6 prompts in 3 batches: `shards` sample-responses jobs, then
    merge-samples with --prompts, give the table one job gives (rows in prompt-file order)."""
    policy, prompts = policy_and_prompts(model, tokenizer, tmp_path, BEAM_PROMPTS)
    hparams = ["--max-new-tokens", "5", "--batch-size", "2", "--origin", "policy", "--stop-strings", "[]"]
    common = ["--prompts", prompts, "--model", policy, *hparams]
    whole = tmp_path / "whole.parquet"
    run_stage(configure, main, [*common, "--output", str(whole), "--work-dir", str(tmp_path / "work-whole")])
    parts = [str(tmp_path / f"shard{k}.parquet") for k in range(shards)]
    for k, part in enumerate(parts):
        argv = [*common, "--output", part, "--shard", str(k), "--shards", str(shards)]
        run_stage(configure, main, [*argv, "--work-dir", str(tmp_path / f"work{k}")])
        assert not (tmp_path / f"work{k}").exists()  # removed once the output is written
    gathered = tmp_path / "gathered.parquet"
    run_stage(
        configure_merge, main_merge, ["--samples", *reversed(parts), "--prompts", prompts, "--output", str(gathered)]
    )
    expected = read_table(whole, SAMPLES)
    assert expected.num_rows == 4 * len(BEAM_PROMPTS)
    assert [read_table(part, SAMPLES).num_rows for part in parts] != [expected.num_rows] + [0] * (shards - 1)
    assert read_table(gathered, SAMPLES).equals(expected)


def test_a_stopped_sampling_job_resumes_after_its_last_finished_batch(model, tokenizer, tmp_path):
    """Sampling (the random stream matters) in 4 batches, saved per batch; after deleting the last two batches'
    files (a job stopped after batch 2), a rerun loads batches 0-1 (an edited saved response comes back) and
    generates 2-3 from the random state saved after batch 1, as the uninterrupted run did."""
    config = SamplingConfig(
        num_return_sequences=2, num_beams=1, num_beam_groups=1, do_sample=True, max_new_tokens=6, batch_size=1
    )
    config.stop_strings = []
    fingerprint = {"run": 1}
    work = tmp_path / "work"
    full = generate_shard(model, tokenizer, PROMPTS_TEXT, config, checkpoints=BatchCheckpoints(work, fingerprint))
    assert full == dict(enumerate(generate_responses(model, tokenizer, PROMPTS_TEXT, config)))
    plan = length_sorted_batches(encode_prompts(tokenizer, PROMPTS_TEXT, config.max_prompt_tokens), 1)
    for batch in (2, 3):
        (work / f"batch-{batch:06d}.parquet").unlink()
    first = work / "batch-000000.parquet"
    edited = pa.table({"prompt_index": plan[0], "responses": [["edited", "saved"]]})
    pq.write_table(edited.cast(pq.read_schema(first)), first)
    resumed = generate_shard(model, tokenizer, PROMPTS_TEXT, config, checkpoints=BatchCheckpoints(work, fingerprint))
    assert resumed == {**full, plan[0][0]: ["edited", "saved"]}
    again = generate_shard(model, tokenizer, PROMPTS_TEXT, config, checkpoints=BatchCheckpoints(work, {"run": 2}))
    assert again == full  # another fingerprint: the saved batches are not reused


def test_gathering_shards_checks_prompt_coverage(tmp_path):
    prompts = tmp_path / "prompts.parquet"
    write_rows(
        [{"prompt_id": p, "prompt": f"prompt {p}", "source": "t", "record": i} for i, p in enumerate("abc")],
        prompts,
        PROMPTS,
    )
    second = samples_file(tmp_path / "s1.parquet", [("c", "z", "policy", 0), ("b", "y", "policy", 0)])
    first = samples_file(tmp_path / "s0.parquet", [("a", "x", "policy", 0), ("a", "w", "policy", 1)])
    merged = merge_samples([second, first], prompts)
    assert merged.column("response").to_pylist() == ["x", "w", "y", "z"]
    with pytest.raises(DataError) as caught:
        merge_samples([second], prompts)
    assert (caught.value.path, caught.value.record, caught.value.field) == (str(prompts), 0, "prompt_id")
    stray = samples_file(tmp_path / "s2.parquet", [("d", "v", "policy", 0)])
    with pytest.raises(DataError) as caught:
        merge_samples([second, first, stray], prompts)
    assert (caught.value.path, caught.value.record, caught.value.field) == (stray, 0, "prompt_id")


def project_copy(path: Path) -> Path:
    path.mkdir()
    return copy_project(REPO_ROOT, path)


def write_overlay(path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_workflow_plans_one_sampling_job_per_shard_and_a_gather(tmp_path):
    """`rrhf.sampling_shards: 3` over the default config: a real `snakemake -n` plans 3 sample-responses jobs (shards
    0-2, each its own output and work dir, their flags accepted by the stage's parser) and one merge-samples job
    gathering them in prompt order into the file merge_rrhf_train_samples reads; 1 shard (the default) plans one."""
    workdir = project_copy(tmp_path / "project")
    target = "results/rrhf/samples/train.merged.parquet"
    default = snakemake(workdir, target, "-n")
    assert planned_jobs(default.stdout)["sample_rrhf_train"] == 1
    assert "gather_rrhf_train_samples" not in planned_jobs(default.stdout)
    overlay = write_overlay(tmp_path / "shards.yaml", {"rrhf": {"sampling_shards": 3}})
    result = snakemake(workdir, target, "-n", "-p", "--configfile", "config/config.yaml", overlay)
    jobs = planned_jobs(result.stdout)
    assert jobs["sample_rrhf_train"] == 3 and jobs["gather_rrhf_train_samples"] == 1
    commands = [argv for argv, _ in stage_commands(result.stdout)]
    sampling = sorted((a for a in commands if a[0] == "sample-responses"), key=lambda a: a[a.index("--shard") + 1])
    for k, argv in enumerate(sampling):
        check_stage_arguments(argv, 1)
        assert argv[argv.index("--shard") + 1 :][:3] == [str(k), "--shards", "3"]
        assert argv[argv.index("--output") + 1] == f"results/rrhf/samples/train.policy.shard{k}-of-3.parquet"
        assert argv[argv.index("--work-dir") + 1] == f"results/work/rrhf/sample_train/shard{k}-of-3"
    (gather,) = [a for a in commands if a[0] == "merge-samples" and "--prompts" in a]
    check_stage_arguments(gather, 1)
    assert gather[gather.index("--samples") + 1 : gather.index("--prompts")] == [
        f"results/rrhf/samples/train.policy.shard{k}-of-3.parquet" for k in range(3)
    ]
    assert gather[gather.index("--output") + 1] == "results/rrhf/samples/train.policy.parquet"


def test_workflow_sampling_on_two_shards_gathers_to_the_one_job_file(model, tokenizer, tmp_path):
    """A real run of the training-set sampling rules (convert, 2 shard jobs, gather) on a tiny policy and 6 HH
    prompts with the paper's diverse beam search gives the file one sample-responses job writes (the 1-shard rule's
    command, run here in-process on the same converted prompts)."""
    policy, _ = policy_and_prompts(model, tokenizer, tmp_path, BEAM_PROMPTS)
    raw = tmp_path / "hh.jsonl"
    pairs = [(text, " Yes.", " No.") for text in BEAM_PROMPTS if text.startswith("\n\nHuman:")]
    pairs += [(f"\n\nHuman: {text}\n\nAssistant:", " Sure.", " No.") for text in BEAM_PROMPTS[1:4]]
    raw.write_text("".join(json.dumps({"chosen": p + c, "rejected": p + r}) + "\n" for p, c, r in pairs))
    sampling = {"max_new_tokens": 5, "num_beams": 4, "num_beam_groups": 4, "do_sample": False, "batch_size": 2}
    workdir = project_copy(tmp_path / "project")
    overlay = {
        "experiments": ["rrhf"],
        "rrhf": {
            "prompts": {"train": {"path": str(raw), "format": "hh", "max_prompts": None}},
            "sft": None,
            "policy": policy,
            "sampling": sampling,
            "sampling_shards": 2,
        },
    }
    configfile = write_overlay(tmp_path / "overlay.yaml", overlay)
    target = "results/rrhf/samples/train.policy.parquet"
    result = snakemake(workdir, target, "--cores", "2", "--configfile", "config/config.yaml", configfile)
    assert "4 of 4 steps (100%) done" in result.stderr  # convert, 2 shards, gather
    assert not list((workdir / "results/work/rrhf/sample_train").iterdir())  # each shard removed its batches
    one_job = tmp_path / "one_job.parquet"
    merged = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())  # the rule's hparams
    config = SamplingConfig(**{**merged["rrhf"]["sampling"], **sampling}, seed=merged["seed"], origin="policy")
    sample_responses(workdir / "results/rrhf/data/train.prompts.parquet", policy, one_job, config)
    expected = read_table(one_job, SAMPLES)
    assert expected.num_rows == 4 * len(pairs) and read_table(workdir / target, SAMPLES).equals(expected)
