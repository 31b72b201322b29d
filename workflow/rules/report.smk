# Results tables, plots and the HTML report (`snakemake --report`).


localrules:
    dsp_metrics,


rule dsp_metrics:
    input:
        expand(f"{RESULTS}/dsp/eval/{{model}}.parquet", model=dsp_model_names()),
    output:
        table=f"{RESULTS}/dsp/metrics.parquet",
        markdown=f"{RESULTS}/dsp/metrics.md",
        html=report(f"{RESULTS}/dsp/metrics.html", caption="../report/dsp_metrics.rst", category="DSP"),
        plot=report(f"{RESULTS}/dsp/accuracy.png", caption="../report/dsp_accuracy.rst", category="DSP"),
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/dsp/metrics.log",
    benchmark:
        f"{RESULTS}/benchmarks/dsp_metrics/dsp/metrics.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow collect-metrics --inputs {input:q} --table {output.table:q} "
        "--markdown {output.markdown:q} --html {output.html:q} --plot {output.plot:q} > {log:q} 2>&1"
