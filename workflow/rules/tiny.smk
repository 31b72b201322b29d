# Tiny scale: synthetic raw data sets in the real formats, and a tiny tokenizer + causal LM built from them.


rule make_synthetic_data:
    output:
        dsp_train=f"{TINY_RAW}/dsp/domain_specific_preference.train.json",
        dsp_test=f"{TINY_RAW}/dsp/domain_specific_preference.test.json",
        helpful_train=f"{TINY_RAW}/hh/helpful-base/train.jsonl.gz",
        helpful_test=f"{TINY_RAW}/hh/helpful-base/test.jsonl.gz",
        harmless_train=f"{TINY_RAW}/hh/harmless-base/train.jsonl.gz",
        harmless_test=f"{TINY_RAW}/hh/harmless-base/test.jsonl.gz",
        text_score_train=f"{TINY_RAW}/text_score/webgpt_like.train.json",
        text_score_test=f"{TINY_RAW}/text_score/webgpt_like.test.json",
        corpus=f"{TINY_RAW}/corpus.txt",
    params:
        hparams=hparams({"seed": config["seed"], **config.get("tiny", {}).get("data", {})}),
        output_dir=lambda wildcards, output: os.path.dirname(output.corpus),
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/tiny/make_synthetic_data.log",
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow make-synthetic-data --output-dir {params.output_dir:q} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"


rule build_tiny_models:
    input:
        corpus=f"{TINY_RAW}/corpus.txt",
    output:
        directory(f"{TINY_MODELS}/causal_lm"),
    params:
        hparams=hparams({"seed": config["seed"], **config.get("tiny", {}).get("model", {})}),
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/tiny/build_tiny_models.log",
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow build-tiny-models --corpus {input.corpus:q} --output-dir {output:q} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"
