# Reward-model evaluation: every model on every eval set (accuracy and first-two accuracy).


rule evaluate_reward_model:
    input:
        model=lambda wildcards: local_input(dsp_model_dir(wildcards.model)),
        eval_sets=dsp_eval_inputs(),
    output:
        metrics=f"{RESULTS}/dsp/eval/{{model}}.parquet",
        rewards=f"{RESULTS}/dsp/eval/{{model}}.rewards.parquet",
    params:
        model=lambda wildcards, input: input.model if input.model else dsp_model_dir(wildcards.model),
        eval_sets=lambda wildcards, input: [
            f"{name}={path}" for name, path in zip(config["dsp"]["eval_sets"], input.eval_sets)
        ],
        hparams=hparams(
            {
                "seed": config["seed"],
                "pooling": config["dsp"]["reward_model"].get("pooling"),
                "max_length": config["dsp"]["reward_model"].get("max_length", 512),
                **config["dsp"].get("evaluation", {}),
                **inference_dtype_hparams(),
            }
        ),
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/dsp/evaluate_{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_reward_model/dsp/evaluate_{{model}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow evaluate-reward-model --model {params.model:q} --model-name {wildcards.model} "
        "--eval-set {params.eval_sets:q} --metrics {output.metrics:q} --rewards {output.rewards:q} "
        "--threads {threads} --hparams {params.hparams:q} > {log:q} 2>&1"
