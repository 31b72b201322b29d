# Fine-Grained RLHF on qa-feedback (Wu et al. 2023): conversion, SFT, the four reward models and their mean/std,
# holistic and fine-grained PPO, evaluation and the metrics table.
QA = f"{RESULTS}/qa_feedback"
QA_PROMPT_SPLITS = ("sft_train", "ppo_train", "dev", "test")
QA_FEEDBACK_SPLITS = ("train_feedback", "dev_feedback")
QA_REWARD_MODELS = ("relevance", "factuality", "completeness", "preference")
QA_SEQUENCE_RMS = ("completeness", "preference")
QA_PPO_VARIANTS = ("holistic", "fine_grained")
QA_POLICIES = ("sft", *QA_PPO_VARIANTS)


wildcard_constraints:
    qa_split="|".join(QA_PROMPT_SPLITS),
    qa_feedback_split="|".join(QA_FEEDBACK_SPLITS),
    qa_rm="|".join(QA_REWARD_MODELS),
    qa_seq_rm="|".join(QA_SEQUENCE_RMS),
    qa_variant="|".join(QA_PPO_VARIANTS),
    qa_policy="|".join(QA_POLICIES),


localrules:
    convert_qa_prompts,
    convert_qa_feedback,
    qa_metrics,


rule convert_qa_prompts:
    input:
        lambda wildcards: config["qa_feedback"]["files"][wildcards.qa_split],
    output:
        f"{QA}/data/{{qa_split}}.prompts.parquet",
    priority: QA_CHAIN_PRIORITY
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/qa_feedback/convert_{{qa_split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_qa_prompts/qa_feedback/convert_{{qa_split}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow convert-qa-feedback --input {input:q} --format prompts --prompts {output:q} "
        "> {log:q} 2>&1"


rule convert_qa_feedback:
    input:
        lambda wildcards: config["qa_feedback"]["files"][wildcards.qa_feedback_split],
    output:
        relevance=f"{QA}/data/{{qa_feedback_split}}.relevance.parquet",
        factuality=f"{QA}/data/{{qa_feedback_split}}.factuality.parquet",
        completeness=f"{QA}/data/{{qa_feedback_split}}.completeness.parquet",
        preference=f"{QA}/data/{{qa_feedback_split}}.preference.parquet",
        feedback=f"{QA}/data/{{qa_feedback_split}}.feedback.parquet",
    priority: QA_CHAIN_PRIORITY
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/qa_feedback/convert_{{qa_feedback_split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_qa_feedback/qa_feedback/convert_{{qa_feedback_split}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow convert-qa-feedback --input {input:q} --format feedback "
        "--relevance {output.relevance:q} --factuality {output.factuality:q} "
        "--completeness {output.completeness:q} --preference {output.preference:q} "
        "--feedback-table {output.feedback:q} > {log:q} 2>&1"


rule train_qa_sft:
    input:
        train=f"{QA}/data/sft_train.prompts.parquet",
        dev=f"{QA}/data/dev.prompts.parquet",
        model=local_input(config["qa_feedback"]["policy_model"]),
    output:
        directory(f"{QA}/models/sft"),
    params:
        model=model_argument(config["qa_feedback"]["policy_model"]),
        hparams=seeded_hparams(config["qa_feedback"]["sft"]),
        work_dir=f"{RESULTS}/work/qa_feedback/sft",
        accelerate_config=config.get("accelerate_config"),
    priority: QA_CHAIN_PRIORITY
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/qa_feedback/train_sft.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_qa_sft/qa_feedback/train_sft.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        launch_train_sft()


rule train_qa_reward_model:
    input:
        train=f"{QA}/data/train_feedback.{{qa_rm}}.parquet",
        dev=f"{QA}/data/dev_feedback.{{qa_rm}}.parquet",
        model=local_input(config["qa_feedback"]["reward_model"]),
    output:
        directory(f"{QA}/models/{{qa_rm}}"),
    params:
        model=model_argument(config["qa_feedback"]["reward_model"]),
        hparams=lambda wildcards: seeded_hparams(config["qa_feedback"]["reward_models"][wildcards.qa_rm]),
        work_dir=lambda wildcards: f"{RESULTS}/work/qa_feedback/{wildcards.qa_rm}",
        accelerate_config=config.get("accelerate_config"),
    priority: QA_CHAIN_PRIORITY
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/qa_feedback/train_{{qa_rm}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_qa_reward_model/qa_feedback/train_{{qa_rm}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        launch(
            "train-fg-reward-model",
            "--train {input.train:q} --eval {input.dev:q} --model {params.model:q} --output {output:q}",
        )


rule qa_reward_mean_std:
    input:
        model=f"{QA}/models/{{qa_seq_rm}}",
        pairs=f"{QA}/data/train_feedback.{{qa_seq_rm}}.parquet",
    output:
        f"{QA}/models/{{qa_seq_rm}}.mean_std.json",
    params:
        max_length=lambda wildcards: config["qa_feedback"]["reward_models"][wildcards.qa_seq_rm].get(
            "max_length", 2048
        ),
        seed=config["seed"],
        dtype=inference_dtype_flag(),
    priority: QA_CHAIN_PRIORITY
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/qa_feedback/mean_std_{{qa_seq_rm}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/qa_reward_mean_std/qa_feedback/mean_std_{{qa_seq_rm}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow reward-mean-std --model {input.model:q} --pairs {input.pairs:q} "
        "--output {output:q} --max-length {params.max_length} --seed {params.seed} {params.dtype} --threads {threads} "
        "> {log:q} 2>&1"


rule train_qa_ppo:
    input:
        prompts=f"{QA}/data/ppo_train.prompts.parquet",
        policy=f"{QA}/models/sft",
        value=local_input(config["qa_feedback"]["value_model"]),
        reward_models=lambda wildcards: qa_ppo_reward_inputs(wildcards.qa_variant),
    output:
        policy=directory(f"{QA}/models/{{qa_variant}}"),
        value=directory(f"{QA}/models/{{qa_variant}}.value"),
    params:
        value=model_argument(config["qa_feedback"]["value_model"], name="value"),
        rewards=lambda wildcards: canonical_json(qa_ppo_reward_spec(wildcards.qa_variant)),
        hparams=lambda wildcards: ppo_hparams(config["qa_feedback"], wildcards.qa_variant),
        work_dir=lambda wildcards: f"{RESULTS}/work/qa_feedback/{wildcards.qa_variant}",
        accelerate_config=config.get("accelerate_config"),
    priority: QA_CHAIN_PRIORITY
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/qa_feedback/train_{{qa_variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_qa_ppo/qa_feedback/train_{{qa_variant}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        launch_train_ppo(policy="{input.policy:q}")


rule evaluate_qa_policy:
    input:
        prompts=f"{QA}/data/test.prompts.parquet",
        policy=f"{QA}/models/{{qa_policy}}",
        relevance=f"{QA}/models/relevance",
        factuality=f"{QA}/models/factuality",
        completeness=f"{QA}/models/completeness",
        mean_std=f"{QA}/models/completeness.mean_std.json",
        preference=f"{QA}/models/preference",
        preference_mean_std=f"{QA}/models/preference.mean_std.json",
    output:
        responses=f"{QA}/eval/{{qa_policy}}.responses.parquet",
        summary=f"{QA}/eval/{{qa_policy}}.json",
    params:
        # keys sorted: the same settings in another order (a reformatted config) plan no rerun
        evaluation=" ".join(
            f"--{key.replace('_', '-')} {value}" for key, value in sorted(config["qa_feedback"]["evaluation"].items())
        ),
        rm_max_length=config["qa_feedback"]["rewards"].get("max_length", 2048),
        dtype=inference_dtype_flag(),
    priority: QA_CHAIN_PRIORITY
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/qa_feedback/evaluate_{{qa_policy}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_qa_policy/qa_feedback/evaluate_{{qa_policy}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow evaluate-qa --prompts {input.prompts:q} --policy {input.policy:q} "
        "--relevance-model {input.relevance:q} --factuality-model {input.factuality:q} "
        "--completeness-model {input.completeness:q} --completeness-mean-std {input.mean_std:q} "
        "--preference-model {input.preference:q} --preference-mean-std {input.preference_mean_std:q} "
        "--responses {output.responses:q} --summary {output.summary:q} --name {wildcards.qa_policy} "
        "{params.evaluation} --rm-max-length {params.rm_max_length} {params.dtype} --threads {threads} > {log:q} 2>&1"


rule qa_metrics:
    input:
        summaries=expand(f"{QA}/eval/{{qa_policy}}.json", qa_policy=QA_POLICIES),
        ppo_logs=expand(f"{QA}/models/{{qa_variant}}", qa_variant=QA_PPO_VARIANTS),
    output:
        table=f"{QA}/metrics.parquet",
        markdown=report(f"{QA}/metrics.md", caption="../report/qa_metrics.rst", category="Fine-Grained RLHF"),
        curves=f"{QA}/ppo_curves.parquet",
        plot=report(f"{QA}/ppo_curves.png", caption="../report/qa_ppo_curves.rst", category="Fine-Grained RLHF"),
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/qa_feedback/metrics.log",
    benchmark:
        f"{RESULTS}/benchmarks/qa_metrics/qa_feedback/metrics.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow qa-metrics --summaries {input.summaries:q} --ppo-runs {input.ppo_logs:q} "
        "--output {output.table:q} --markdown {output.markdown:q} --curves {output.curves:q} "
        "--plot {output.plot:q} > {log:q} 2>&1"
