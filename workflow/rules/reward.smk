# DSP reward-model training: GRFT on the general sets, then CRFT per domain (with and without the LM loss).


rule train_grft:
    input:
        train=[dataset_parquet(ref) for ref in config["dsp"]["general_train"]],
        model=local_input(config["dsp"]["base_model"]),
    output:
        directory(f"{RESULTS}/dsp/models/grft"),
    params:
        model=model_argument(config["dsp"]["base_model"]),
        hparams=reward_training_hparams("grft"),
        work_dir=f"{RESULTS}/work/dsp/grft",
        accelerate_config=config.get("accelerate_config"),
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/dsp/train_grft.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_grft/dsp/train_grft.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        LAUNCH_TRAIN_REWARD_MODEL


rule train_crft:
    input:
        train=lambda wildcards: dataset_parquet(f"{config['dsp']['domain_train']}/{wildcards.domain}"),
        model=f"{RESULTS}/dsp/models/grft",
    output:
        directory(f"{RESULTS}/dsp/models/{{variant}}/{{domain}}"),
    params:
        model=lambda wildcards, input: input.model,
        hparams=lambda wildcards: reward_training_hparams(wildcards.variant),
        work_dir=lambda wildcards: f"{RESULTS}/work/dsp/{wildcards.variant}/{wildcards.domain}",
        accelerate_config=config.get("accelerate_config"),
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/dsp/train_{{variant}}_{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_crft/dsp/train_{{variant}}_{{domain}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        LAUNCH_TRAIN_REWARD_MODEL
