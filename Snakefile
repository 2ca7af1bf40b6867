# Short-run MCMC inference with OT correction (An, Xie, Li, CVPR 2021) as a Snakemake workflow.
# The Snakefile only includes rule files; see workflow/rules/common.smk for configuration.

configfile: "params.yaml"

# the landing page of `snakemake --report` (docs/report.md)
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/evaluation.smk"


rule all:
    input:
        final_targets(),
    default_target: True
