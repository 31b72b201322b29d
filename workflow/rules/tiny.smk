# Tiny scale: synthetic raw data sets in the real formats, and tiny tokenizers + models built from them. Each paper's
# data set comes from its own `make-synthetic-*` stage and its models from `build-tiny-models` on the data set's
# corpus: build_tiny_detox_model and build_tiny_ilf_model are build_tiny_models with other files and settings.


# Quick CPU-only jobs: they run where Snakemake runs.
localrules:
    make_synthetic_data,
    build_tiny_models,
    make_synthetic_qa_feedback,
    build_tiny_qa_model,
    make_synthetic_rtp,
    build_tiny_detox_model,
    make_synthetic_slf5k,
    build_tiny_ilf_model,


# DSP and RRHF: DSP, Anthropic HH and text-score preference files, and a causal LM with the tokenizer of their corpus.
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
    benchmark:
        f"{RESULTS}/benchmarks/make_synthetic_data/tiny/make_synthetic_data.tsv"
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
    benchmark:
        f"{RESULTS}/benchmarks/build_tiny_models/tiny/build_tiny_models.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow build-tiny-models --corpus {input.corpus:q} --output-dir {output:q} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"


rule make_synthetic_qa_feedback:
    output:
        sft_train=f"{TINY_RAW}/qa_feedback/train_1k.json",
        ppo_train=f"{TINY_RAW}/qa_feedback/train.json",
        dev=f"{TINY_RAW}/qa_feedback/dev.json",
        test=f"{TINY_RAW}/qa_feedback/test.json",
        train_feedback=f"{TINY_RAW}/qa_feedback/train_feedback.json",
        dev_feedback=f"{TINY_RAW}/qa_feedback/dev_feedback.json",
        corpus=f"{TINY_RAW}/qa_feedback/corpus.txt",
    params:
        hparams=hparams({"seed": config["seed"], **config.get("tiny", {}).get("qa_feedback", {})}),
        output_dir=lambda wildcards, output: os.path.dirname(output.corpus),
    priority: QA_CHAIN_PRIORITY
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/tiny/make_synthetic_qa_feedback.log",
    benchmark:
        f"{RESULTS}/benchmarks/make_synthetic_qa_feedback/tiny/make_synthetic_qa_feedback.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow make-synthetic-qa-feedback --output-dir {params.output_dir:q} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"


# qa-feedback: a T5 (policy and value body) and a Longformer (reward-model body), each with the tokenizer trained on
# the qa-feedback corpus (the same corpus and settings give the same tokenizer).
rule build_tiny_qa_model:
    input:
        corpus=f"{TINY_RAW}/qa_feedback/corpus.txt",
    output:
        directory(f"{TINY_MODELS}/qa_{{architecture}}"),
    wildcard_constraints:
        architecture="t5|longformer",
    params:
        architecture=lambda wildcards: {"t5": "seq2seq", "longformer": "longformer"}[wildcards.architecture],
        hparams=hparams({"seed": config["seed"], **config.get("tiny", {}).get("qa_model", {})}),
    priority: QA_CHAIN_PRIORITY
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/tiny/build_tiny_qa_{{architecture}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_tiny_qa_model/tiny/build_tiny_qa_{{architecture}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow build-tiny-models --corpus {input.corpus:q} --output-dir {output:q} "
        "--architecture {params.architecture} --hparams {params.hparams:q} > {log:q} 2>&1"


# Detoxification: RealToxicityPrompts-format prompts and continuations whose toxic sentences the offline scorer
# detects, and two tiny causal LMs with the tokenizer trained on them (the policy's stand-in for GPT-2 and a larger
# one for perplexity; both are fine-tuned on the continuations by workflow/rules/detox.smk).
rule make_synthetic_rtp:
    output:
        prompts=f"{TINY_RAW}/rtp/prompts.jsonl",
        corpus=f"{TINY_RAW}/rtp/corpus.txt",
    params:
        hparams=hparams({"seed": config["seed"], **config.get("tiny", {}).get("rtp", {})}),
        output_dir=lambda wildcards, output: os.path.dirname(output.corpus),
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/tiny/make_synthetic_rtp.log",
    benchmark:
        f"{RESULTS}/benchmarks/make_synthetic_rtp/tiny/make_synthetic_rtp.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow make-synthetic-rtp --output-dir {params.output_dir:q} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"


use rule build_tiny_models as build_tiny_detox_model with:
    input:
        corpus=f"{TINY_RAW}/rtp/corpus.txt",
    output:
        directory(f"{TINY_MODELS}/detox_{{detox_size}}"),
    wildcard_constraints:
        detox_size="lm|lm_large",
    params:
        hparams=lambda wildcards: hparams(
            {"seed": config["seed"], **config.get("tiny", {}).get(f"detox_{wildcards.detox_size}", {})}
        ),
    log:
        f"{RESULTS}/logs/tiny/build_tiny_detox_{{detox_size}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_tiny_detox_model/tiny/build_tiny_detox_{{detox_size}}.tsv"


# ILF: SLF5K-format splits, the synthetic world's oracle and the stand-in LMs' training tables, and a causal LM.
rule make_synthetic_slf5k:
    output:
        splits=expand(f"{TINY_RAW}/slf5k/{{split}}.jsonl", split=("train", "development", "validation", "test")),
        oracle=f"{TINY_RAW}/slf5k/oracle.jsonl",
        tables=expand(f"{TINY_RAW}/slf5k/{{table}}_{{part}}.parquet", table=("policy", "refiner", "instructrm", "judge"),
                      part=("train", "dev")),  # fmt: skip
        corpus=f"{TINY_RAW}/slf5k/corpus.txt",
    params:
        output_dir=lambda wildcards, output: os.path.dirname(output.corpus),
        hparams=hparams({"seed": config["seed"], **config.get("tiny", {}).get("slf5k", {})}),
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/tiny/make_synthetic_slf5k.log",
    benchmark:
        f"{RESULTS}/benchmarks/make_synthetic_slf5k/tiny/make_synthetic_slf5k.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow make-synthetic-slf5k --output-dir {params.output_dir:q} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"


use rule build_tiny_models as build_tiny_ilf_model with:
    input:
        corpus=f"{TINY_RAW}/slf5k/corpus.txt",
    output:
        directory(f"{TINY_MODELS}/ilf_lm"),
    params:
        hparams=hparams({"seed": config["seed"], **config.get("tiny", {}).get("ilf_lm", {})}),
    log:
        f"{RESULTS}/logs/tiny/build_tiny_ilf_lm.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_tiny_ilf_model/tiny/build_tiny_ilf_lm.tsv"
