# feedbackflow: every stage of every paper is a rule; `snakemake --profile profiles/default` runs the default
# (tiny-scale) configuration, `--configfile config/experiments/<paper>.yaml` a paper at full scale.
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


# The configuration comes from `--configfile`: config/config.yaml through profiles/default, or a complete
# experiment file such as config/experiments/dsp.yaml, which replaces it rather than merging into it.
if not config:
    raise ValueError(
        "no configuration: run with --profile profiles/default, or give --configfile config/config.yaml "
        "or an experiment file from config/experiments/"
    )


validate(config, "workflow/schemas/config.schema.yaml")


# The remote services the configured stages call (ILF's LMs, the RRHF judge, Perspective): an unset API key
# variable, a loopback endpoint under a cluster executor, or an endpoint nobody answers (a TCP connect, no request)
# fail here, before any job is submitted (feedbackflow.core.preflight). Jobs parse this file again on their node: not there.
if workflow.is_main_process:
    try:
        from feedbackflow.core.preflight import check_services, snakemake_executor
    except ImportError:  # Snakemake runs outside the project's environment: the module needs only the stdlib
        sys.path.insert(0, os.path.join(workflow.basedir, "src"))
        from feedbackflow.core.preflight import check_services, snakemake_executor
    check_services(config, snakemake_executor(sys.argv[1:]))


include: "workflow/rules/common.smk"
include: "workflow/rules/tiny.smk"
include: "workflow/rules/data.smk"
if "dsp" in config:

    include: "workflow/rules/dsp_helpers.smk"
    include: "workflow/rules/reward.smk"
    include: "workflow/rules/evaluate.smk"
    include: "workflow/rules/report.smk"


if "rrhf" in config:

    include: "workflow/rules/rrhf_helpers.smk"
    include: "workflow/rules/rrhf.smk"


if "qa_feedback" in config:

    include: "workflow/rules/qa_feedback_helpers.smk"
    include: "workflow/rules/qa_feedback.smk"


if "detox" in config:

    include: "workflow/rules/detox_helpers.smk"
    include: "workflow/rules/detox.smk"


if "ilf" in config:

    include: "workflow/rules/ilf_helpers.smk"
    include: "workflow/rules/ilf.smk"


# Quick CPU-only jobs run where Snakemake runs, never on a cluster node: conversion, the tiny-scale builders and
# the reports (each module names its own). Training, sampling, scoring and evaluation go to a cluster executor.
localrules:
    all,


rule all:
    input:
        final_outputs(),
        f"{RESULTS}/timing.parquet",


include: "workflow/rules/timing.smk"
