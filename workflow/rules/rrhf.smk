# RRHF (Yuan et al. 2023): prompts, sampling, scoring (reward model or LLM judge), ranking, RRHF training, evaluation.


# Quick CPU-only jobs run where Snakemake runs (the judge is a CPU job: the default partition on a cluster).
localrules:
    convert_rrhf_prompts,
    merge_rrhf_train_samples,
    rank_rrhf_train,
    merge_rrhf_test_samples,


rule convert_rrhf_prompts:
    input:
        lambda wildcards: config["rrhf"]["prompts"][wildcards.split]["path"],
    output:
        prompts=f"{RESULTS}/rrhf/data/{{split}}.prompts.parquet",
        responses=f"{RESULTS}/rrhf/data/{{split}}.responses.parquet",
    params:
        format=lambda wildcards: config["rrhf"]["prompts"][wildcards.split]["format"],
        max_prompts=lambda wildcards: (
            f"--max-prompts {config['rrhf']['prompts'][wildcards.split]['max_prompts']}"
            if config["rrhf"]["prompts"][wildcards.split].get("max_prompts")
            else ""
        ),
        response_fields=lambda wildcards: " ".join(
            ["--response-fields", *config["rrhf"]["prompts"][wildcards.split]["response_fields"]]
            if "response_fields" in config["rrhf"]["prompts"][wildcards.split]
            else []
        ),
        empty_responses=config["rrhf"]["empty_responses"],
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/rrhf/convert_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_rrhf_prompts/rrhf/convert_{{split}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow convert-prompts --input {input:q} --format {params.format} "
        "--prompts {output.prompts:q} --responses {output.responses:q} {params.max_prompts} "
        "{params.response_fields} --empty-responses {params.empty_responses} > {log:q} 2>&1"


# Tiny scale: the initial policy is the tiny LM fine-tuned (SFT) on the data set's own responses.
if config["rrhf"].get("sft"):

    localrules:
        rrhf_sft_data,

    rule rrhf_sft_data:
        input:
            f"{RESULTS}/rrhf/data/train.responses.parquet",
        output:
            f"{RESULTS}/rrhf/data/train.sft.parquet",
        threads: job_threads("cpu")
        resources:
            **job_resources("cpu"),
        log:
            f"{RESULTS}/logs/rrhf/sft_data.log",
        benchmark:
            f"{RESULTS}/benchmarks/rrhf_sft_data/rrhf/sft_data.tsv"
        conda:
            "../envs/feedbackflow.yaml"
        shell:
            "python -m feedbackflow sft-data --samples {input:q} --output {output:q} > {log:q} 2>&1"


    rule train_rrhf_sft:
        input:
            train=f"{RESULTS}/rrhf/data/train.sft.parquet",
            model=local_input(config["rrhf"]["sft"]["base_model"]),
        output:
            directory(f"{RESULTS}/rrhf/models/sft"),
        params:
            model=model_argument(config["rrhf"]["sft"]["base_model"]),
            hparams=rrhf_trainer_hparams(config["rrhf"]["sft"]),
            work_dir=f"{RESULTS}/work/rrhf/sft",
            accelerate_config=config.get("accelerate_config"),
        threads: job_threads("training")
        resources:
            **job_resources("training"),
        log:
            f"{RESULTS}/logs/rrhf/train_sft.log",
        benchmark:
            f"{RESULTS}/benchmarks/train_rrhf_sft/rrhf/train_sft.tsv"
        conda:
            "../envs/feedbackflow.yaml"
        shell:
            LAUNCH_TRAIN_RRHF


# The policy's training samples. With `rrhf.sampling_shards` N > 1, N jobs each sample one shard (consecutive
# batches of the length-sorted prompts; sample-responses --shard/--shards) into its own file, so SLURM runs them on
# N GPUs at once and a retry keeps the finished shards; a local job gathers them in prompt order into the one file
# the later rules read. Each job saves its finished batches in its work dir and a rerun resumes after the last one.
RRHF_SAMPLING_SHARDS = config["rrhf"].get("sampling_shards", 1)
RRHF_TRAIN_SAMPLES = f"{RESULTS}/rrhf/samples/train.policy.parquet"

if RRHF_SAMPLING_SHARDS > 1:

    localrules:
        gather_rrhf_train_samples,

    rule gather_rrhf_train_samples:
        input:
            shards=expand(
                f"{RESULTS}/rrhf/samples/train.policy.shard{{shard}}-of-{RRHF_SAMPLING_SHARDS}.parquet",
                shard=range(RRHF_SAMPLING_SHARDS),
            ),
            prompts=f"{RESULTS}/rrhf/data/train.prompts.parquet",
        output:
            RRHF_TRAIN_SAMPLES,
        threads: job_threads("cpu")
        resources:
            **job_resources("cpu"),
        log:
            f"{RESULTS}/logs/rrhf/gather_train_samples.log",
        benchmark:
            f"{RESULTS}/benchmarks/gather_rrhf_train_samples/rrhf/gather_train_samples.tsv"
        conda:
            "../envs/feedbackflow.yaml"
        shell:
            "python -m feedbackflow merge-samples --samples {input.shards:q} --prompts {input.prompts:q} "
            "--output {output:q} > {log:q} 2>&1"


rule sample_rrhf_train:
    input:
        prompts=f"{RESULTS}/rrhf/data/train.prompts.parquet",
        model=local_input(rrhf_policy()),
    output:
        (
            f"{RESULTS}/rrhf/samples/train.policy.shard{{shard}}-of-{RRHF_SAMPLING_SHARDS}.parquet"
            if RRHF_SAMPLING_SHARDS > 1
            else RRHF_TRAIN_SAMPLES
        ),
    wildcard_constraints:
        shard=r"\d+",
    params:
        model=model_argument(rrhf_policy()),
        hparams=hparams({"seed": config["seed"], "origin": "policy", **config["rrhf"]["sampling"]}),
        shard=lambda wildcards: (
            f"--shard {wildcards.shard} --shards {RRHF_SAMPLING_SHARDS}" if RRHF_SAMPLING_SHARDS > 1 else ""
        ),
        work_dir=lambda wildcards: (
            f"{RESULTS}/work/rrhf/sample_train/shard{wildcards.shard}-of-{RRHF_SAMPLING_SHARDS}"
            if RRHF_SAMPLING_SHARDS > 1
            else f"{RESULTS}/work/rrhf/sample_train/all"
        ),
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        (
            f"{RESULTS}/logs/rrhf/sample_train_shard{{shard}}.log"
            if RRHF_SAMPLING_SHARDS > 1
            else f"{RESULTS}/logs/rrhf/sample_train.log"
        ),
    benchmark:
        (
            f"{RESULTS}/benchmarks/sample_rrhf_train/rrhf/sample_train_shard{{shard}}.tsv"
            if RRHF_SAMPLING_SHARDS > 1
            else f"{RESULTS}/benchmarks/sample_rrhf_train/rrhf/sample_train.tsv"
        ),
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow sample-responses --prompts {input.prompts:q} --model {params.model:q} "
        "--output {output:q} --threads {threads} --hparams {params.hparams:q} {params.shard} "
        "--work-dir {params.work_dir:q} > {log:q} 2>&1"


rule merge_rrhf_train_samples:
    input:
        policy=f"{RESULTS}/rrhf/samples/train.policy.parquet",
        dataset=f"{RESULTS}/rrhf/data/train.responses.parquet",
    output:
        f"{RESULTS}/rrhf/samples/train.merged.parquet",
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/rrhf/merge_train.log",
    benchmark:
        f"{RESULTS}/benchmarks/merge_rrhf_train_samples/rrhf/merge_train.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow merge-samples --samples {input.policy:q} {input.dataset:q} --output {output:q} "
        "> {log:q} 2>&1"


rule score_rrhf_samples:
    input:
        samples=f"{RESULTS}/rrhf/samples/{{name}}.merged.parquet",
        model=local_input(config["rrhf"]["reward_model"]),
    output:
        f"{RESULTS}/rrhf/scored/{{name}}.rm.parquet",
    params:
        model=model_argument(config["rrhf"]["reward_model"]),
        hparams=hparams({"seed": config["seed"], **config["rrhf"]["reward_scoring"], **inference_dtype_hparams()}),
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/rrhf/score_{{name}}_rm.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_rrhf_samples/rrhf/score_{{name}}_rm.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow score-samples --samples {input.samples:q} --model {params.model:q} "
        "--output {output:q} --threads {threads} --hparams {params.hparams:q} > {log:q} 2>&1"


# Tiny scale: the `hf` judge is the tiny LM fine-tuned to give the data set's chosen / rejected responses the scores
# in `rrhf.judge_sft.targets`, prompted exactly as the judge stage prompts it.
if config["rrhf"].get("judge_sft"):

    localrules:
        judge_sft_data,

    rule judge_sft_data:
        input:
            f"{RESULTS}/rrhf/data/train.responses.parquet",
        output:
            f"{RESULTS}/rrhf/data/train.judge_sft.parquet",
        params:
            targets=" ".join(f"--target {o}={s}" for o, s in sorted(config["rrhf"]["judge_sft"]["targets"].items())),
            # only what shapes the rating prompt and reply (a function: templates hold braces)
            hparams=lambda wildcards: hparams(
                {
                    "backend": "hf",
                    "model": config["rrhf"]["judge"]["model"],
                    **{k: v for k, v in config["rrhf"]["judge"].items() if k in JUDGE_PROMPT_KEYS},
                }
            ),
        threads: job_threads("cpu")
        resources:
            **job_resources("cpu"),
        log:
            f"{RESULTS}/logs/rrhf/judge_sft_data.log",
        benchmark:
            f"{RESULTS}/benchmarks/judge_sft_data/rrhf/judge_sft_data.tsv"
        conda:
            "../envs/feedbackflow.yaml"
        shell:
            "python -m feedbackflow judge-sft-data --samples {input:q} --output {output:q} {params.targets} "
            "--hparams {params.hparams:q} > {log:q} 2>&1"


    rule train_judge_lm:
        input:
            train=f"{RESULTS}/rrhf/data/train.judge_sft.parquet",
            model=local_input(config["rrhf"]["judge_sft"]["training"]["base_model"]),
        output:
            directory(f"{RESULTS}/rrhf/models/judge"),
        params:
            model=model_argument(config["rrhf"]["judge_sft"]["training"]["base_model"]),
            hparams=rrhf_trainer_hparams(config["rrhf"]["judge_sft"]["training"]),
            work_dir=f"{RESULTS}/work/rrhf/judge",
            accelerate_config=config.get("accelerate_config"),
        threads: job_threads("training")
        resources:
            **job_resources("training"),
        log:
            f"{RESULTS}/logs/rrhf/train_judge.log",
        benchmark:
            f"{RESULTS}/benchmarks/train_judge_lm/rrhf/train_judge.tsv"
        conda:
            "../envs/feedbackflow.yaml"
        shell:
            LAUNCH_TRAIN_RRHF


rule judge_rrhf_samples:
    input:
        samples=f"{RESULTS}/rrhf/samples/{{name}}.merged.parquet",
        model=local_input(config["rrhf"]["judge"]["model"]) if config["rrhf"]["judge"].get("backend") == "hf" else [],
    output:
        f"{RESULTS}/rrhf/scored/{{name}}.judge.parquet",
    params:
        hparams=lambda wildcards: hparams(config["rrhf"]["judge"]),  # a function: templates hold braces
        cache=f"{RESULTS}/cache/judge.sqlite",
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/rrhf/score_{{name}}_judge.log",
    benchmark:
        f"{RESULTS}/benchmarks/judge_rrhf_samples/rrhf/score_{{name}}_judge.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow judge-samples --samples {input.samples:q} --output {output:q} "
        "--cache {params.cache:q} --hparams {params.hparams:q} > {log:q} 2>&1"


rule rank_rrhf_train:
    input:
        f"{RESULTS}/rrhf/scored/train.{config['rrhf']['scorer']}.parquet",
    output:
        f"{RESULTS}/rrhf/data/train.ranked.parquet",
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/rrhf/rank_train.log",
    benchmark:
        f"{RESULTS}/benchmarks/rank_rrhf_train/rrhf/rank_train.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow rank-responses --scored {input:q} --output {output:q} > {log:q} 2>&1"


rule train_rrhf:
    input:
        train=f"{RESULTS}/rrhf/data/train.ranked.parquet",
        model=local_input(rrhf_policy()),
    output:
        directory(f"{RESULTS}/rrhf/models/rrhf"),
    params:
        model=model_argument(rrhf_policy()),
        hparams=rrhf_trainer_hparams(config["rrhf"]["training"]),
        work_dir=f"{RESULTS}/work/rrhf/rrhf",
        accelerate_config=config.get("accelerate_config"),
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/rrhf/train_rrhf.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_rrhf/rrhf/train_rrhf.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        LAUNCH_TRAIN_RRHF


rule sample_rrhf_test:
    input:
        prompts=f"{RESULTS}/rrhf/data/test.prompts.parquet",
        model=lambda wildcards: local_input(rrhf_eval_policy(wildcards.policy)),
    output:
        f"{RESULTS}/rrhf/samples/test.{{policy}}.parquet",
    params:
        model=lambda wildcards, input: input.model if input.model else rrhf_eval_policy(wildcards.policy),
        hparams=lambda wildcards: hparams(
            {"seed": config["seed"], "origin": wildcards.policy, **config["rrhf"]["evaluation"]["sampling"]}
        ),
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/rrhf/sample_test_{{policy}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_rrhf_test/rrhf/sample_test_{{policy}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow sample-responses --prompts {input.prompts:q} --model {params.model:q} "
        "--output {output:q} --threads {threads} --hparams {params.hparams:q} > {log:q} 2>&1"


rule merge_rrhf_test_samples:
    input:
        policies=expand(f"{RESULTS}/rrhf/samples/test.{{policy}}.parquet", policy=RRHF_EVAL_POLICIES),
        dataset=f"{RESULTS}/rrhf/data/test.responses.parquet",
    output:
        f"{RESULTS}/rrhf/samples/test.merged.parquet",
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/rrhf/merge_test.log",
    benchmark:
        f"{RESULTS}/benchmarks/merge_rrhf_test_samples/rrhf/merge_test.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow merge-samples --samples {input.policies:q} {input.dataset:q} --output {output:q} "
        "> {log:q} 2>&1"


rule rrhf_metrics:
    input:
        scored=f"{RESULTS}/rrhf/scored/test.{config['rrhf']['scorer']}.parquet",
        reference=local_input(config["rrhf"]["evaluation"]["reference_model"]),
    output:
        table=f"{RESULTS}/rrhf/metrics.parquet",
        markdown=report(f"{RESULTS}/rrhf/metrics.md", caption="../report/rrhf_metrics.rst", category="RRHF"),
    params:
        reference=model_argument(config["rrhf"]["evaluation"]["reference_model"], name="reference"),
        hparams=hparams(
            {
                "max_length": config["rrhf"]["evaluation"]["max_length"],
                "batch_size": config["rrhf"]["evaluation"]["batch_size"],
                **inference_dtype_hparams(),
            }
        ),
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/rrhf/metrics.log",
    benchmark:
        f"{RESULTS}/benchmarks/rrhf_metrics/rrhf/metrics.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow evaluate-responses --scored {input.scored:q} --reference-model {params.reference:q} "
        "--output {output.table:q} --markdown {output.markdown:q} --threads {threads} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"
