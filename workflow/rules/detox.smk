# Fine-Grained RLHF detoxification (Wu et al. 2023): RealToxicityPrompts conversion, the initial policy (a tiny LM
# fine-tuned on the data set's continuations at tiny scale; GPT-2 large as it is at paper scale), holistic and
# fine-grained PPO on toxicity rewards, 25 samples per test prompt, toxicity / perplexity / distinct-n, the table.
DETOX = f"{RESULTS}/detox"
DETOX_SPLITS = ("train", "dev", "test")
DETOX_PPO_VARIANTS = ("holistic", "fine_grained")
DETOX_POLICIES = ("initial", *DETOX_PPO_VARIANTS)


wildcard_constraints:
    detox_split="|".join(DETOX_SPLITS),
    detox_variant="|".join(DETOX_PPO_VARIANTS),
    detox_policy="|".join(DETOX_POLICIES),
    detox_lm="|".join(DETOX_TRAINABLE_LMS),


localrules:
    convert_rtp,
    detox_metrics,


rule convert_rtp:
    input:
        source=local_input(config["detox"]["prompts"]),
    output:
        train=f"{DETOX}/data/train.parquet",
        dev=f"{DETOX}/data/dev.parquet",
        test=f"{DETOX}/data/test.parquet",
        sft_train=f"{DETOX}/data/sft_train.parquet",
        sft_dev=f"{DETOX}/data/sft_dev.parquet",
        report=f"{DETOX}/data/conversion.json",
    params:
        source=model_argument(config["detox"]["prompts"], name="source"),
        hparams=hparams({"seed": config["seed"], **config["detox"].get("selection", {})}),
        output_dir=lambda wildcards, output: os.path.dirname(output.report),
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/detox/convert_rtp.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_rtp/detox/convert_rtp.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow convert-rtp --input {params.source:q} --output-dir {params.output_dir:q} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"


rule train_detox_lm:
    """Tiny scale only: the stand-in for GPT-2 (initial) and for the larger perplexity LM, trained on continuations."""
    input:
        train=f"{DETOX}/data/sft_train.parquet",
        dev=f"{DETOX}/data/sft_dev.parquet",
        model=lambda wildcards: local_input(detox_lm_section(wildcards.detox_lm)["base_model"]),
    output:
        directory(f"{DETOX}/models/{{detox_lm}}"),
    params:
        model=lambda wildcards, input: input.model or detox_lm_section(wildcards.detox_lm)["base_model"],
        hparams=lambda wildcards: seeded_hparams(detox_lm_section(wildcards.detox_lm), drop=("base_model",)),
        work_dir=lambda wildcards: f"{RESULTS}/work/detox/{wildcards.detox_lm}",
        accelerate_config=config.get("accelerate_config"),
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/detox/train_{{detox_lm}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_detox_lm/detox/train_{{detox_lm}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        launch_train_sft()


rule train_detox_ppo:
    input:
        prompts=f"{DETOX}/data/train.parquet",
        policy=local_input(detox_policy_model("initial")),
        value=local_input(detox_value_model()),
    output:
        policy=directory(f"{DETOX}/models/{{detox_variant}}"),
        value=directory(f"{DETOX}/models/{{detox_variant}}.value"),
    params:
        policy=model_argument(detox_policy_model("initial"), name="policy"),
        value=model_argument(detox_value_model(), name="value"),
        rewards=lambda wildcards: canonical_json(detox_reward_spec(wildcards.detox_variant)),
        hparams=lambda wildcards: ppo_hparams(config["detox"], wildcards.detox_variant),
        work_dir=lambda wildcards: f"{RESULTS}/work/detox/{wildcards.detox_variant}",
        accelerate_config=config.get("accelerate_config"),
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/detox/train_{{detox_variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_detox_ppo/detox/train_{{detox_variant}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        launch_train_ppo()


rule sample_detox:
    input:
        prompts=f"{DETOX}/data/test.parquet",
        policy=lambda wildcards: local_input(detox_policy_model(wildcards.detox_policy)),
    output:
        f"{DETOX}/eval/{{detox_policy}}.samples.parquet",
    params:
        policy=lambda wildcards, input: input.policy or detox_policy_model(wildcards.detox_policy),
        hparams=lambda wildcards: hparams(
            {"seed": config["seed"], **config["detox"]["sampling"], "origin": wildcards.detox_policy}
        ),
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/detox/sample_{{detox_policy}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_detox/detox/sample_{{detox_policy}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow sample-responses --prompts {input.prompts:q} --model {params.policy:q} "
        "--output {output:q} --threads {threads} --hparams {params.hparams:q} > {log:q} 2>&1"


rule score_detox_toxicity:
    input:
        f"{DETOX}/eval/{{detox_policy}}.samples.parquet",
    output:
        scored=f"{DETOX}/eval/{{detox_policy}}.scored.parquet",
        stats=f"{DETOX}/eval/{{detox_policy}}.scoring.json",
    params:
        scorer=canonical_json(config["detox"]["toxicity"]),
        # one cache per policy (parallel jobs never share a SQLite file); it outlives the outputs, so a rerun
        # after a crash or a changed downstream rule sends no request twice
        cache=lambda wildcards: f"{DETOX}/cache/eval_{wildcards.detox_policy}.sqlite",
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/detox/score_{{detox_policy}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_detox_toxicity/detox/score_{{detox_policy}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow score-toxicity --samples {input:q} --output {output.scored:q} "
        "--stats {output.stats:q} --cache {params.cache:q} --scorer {params.scorer:q} > {log:q} 2>&1"


rule evaluate_detox_policy:
    input:
        scored=f"{DETOX}/eval/{{detox_policy}}.scored.parquet",
        perplexity_model=local_input(detox_perplexity_model()),
    output:
        f"{DETOX}/eval/{{detox_policy}}.json",
    params:
        perplexity_model=model_argument(detox_perplexity_model(), name="perplexity_model"),
        hparams=hparams({**config["detox"].get("evaluation", {}), **inference_dtype_hparams()}),
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/detox/evaluate_{{detox_policy}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_detox_policy/detox/evaluate_{{detox_policy}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow evaluate-detox --scored {input.scored:q} --perplexity-model "
        "{params.perplexity_model:q} --name {wildcards.detox_policy} --summary {output:q} --threads {threads} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"


rule detox_metrics:
    input:
        summaries=expand(f"{DETOX}/eval/{{detox_policy}}.json", detox_policy=DETOX_POLICIES),
        ppo_runs=expand(f"{DETOX}/models/{{detox_variant}}", detox_variant=DETOX_PPO_VARIANTS),
    output:
        table=f"{DETOX}/metrics.parquet",
        markdown=report(f"{DETOX}/metrics.md", caption="../report/detox_metrics.rst", category="Detoxification"),
        curves=f"{DETOX}/ppo_curves.parquet",
        plot=report(f"{DETOX}/ppo_curves.png", caption="../report/detox_ppo_curves.rst", category="Detoxification"),
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/detox/metrics.log",
    benchmark:
        f"{RESULTS}/benchmarks/detox_metrics/detox/metrics.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow detox-metrics --summaries {input.summaries:q} --ppo-runs {input.ppo_runs:q} "
        "--output {output.table:q} --markdown {output.markdown:q} --curves {output.curves:q} "
        "--plot {output.plot:q} > {log:q} 2>&1"
