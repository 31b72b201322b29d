# Conversion of raw preference files (DSP JSON, Anthropic HH JSONL, text-score JSON) to preference-lists Parquet.


# Quick CPU-only jobs: they run where Snakemake runs.
localrules:
    convert_preferences,
    convert_dsp_domain,


rule convert_preferences:
    input:
        lambda wildcards: config["datasets"][wildcards.dataset]["path"],
    output:
        f"{RESULTS}/data/{{dataset}}.parquet",
    params:
        format=lambda wildcards: config["datasets"][wildcards.dataset]["format"],
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/data/convert_{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_preferences/data/convert_{{dataset}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow convert-preferences --input {input:q} --format {params.format} "
        "--output {output:q} > {log:q} 2>&1"


rule convert_dsp_domain:
    input:
        lambda wildcards: config["datasets"][wildcards.dataset]["path"],
    output:
        f"{RESULTS}/data/{{dataset}}/{{domain}}.parquet",
    params:
        format=lambda wildcards: config["datasets"][wildcards.dataset]["format"],
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/data/convert_{{dataset}}_{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_dsp_domain/data/convert_{{dataset}}_{{domain}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow convert-preferences --input {input:q} --format {params.format} "
        "--domain {wildcards.domain} --output {output:q} > {log:q} 2>&1"
