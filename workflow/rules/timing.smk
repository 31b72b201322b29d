# Time per stage: every rule writes its job's benchmark file (`benchmark:`, wall and CPU seconds, peak memory) under
# results/benchmarks/<rule>/; this last job of a run gathers them into one table (feedbackflow.core.timing).


localrules:
    stage_times,


rule stage_times:
    input:
        final_outputs(),
    output:
        table=f"{RESULTS}/timing.parquet",
        markdown=report(f"{RESULTS}/timing.md", caption="../report/timing.rst", category="Run"),
    params:
        benchmarks=f"{RESULTS}/benchmarks",
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/timing.log",
    benchmark:
        f"{RESULTS}/benchmarks/stage_times/timing.tsv"  # not in its own table: it is written after the job
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow stage-times --benchmarks {params.benchmarks:q} --output {output.table:q} "
        "--markdown {output.markdown:q} > {log:q} 2>&1"
