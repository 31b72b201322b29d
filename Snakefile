# feedbackflow: every stage of every paper is a rule; `snakemake --profile profiles/default` runs the default
# (tiny-scale) configuration, `--configfile config/experiments/<paper>.yaml` a paper at full scale.
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


include: "workflow/rules/common.smk"
include: "workflow/rules/tiny.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/reward.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs(),
