# feedbackflow: every stage of every paper is a rule; `snakemake --profile profiles/default` runs the default
# (tiny-scale) configuration, `--configfile config/experiments/<paper>.yaml` a paper at full scale.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


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
