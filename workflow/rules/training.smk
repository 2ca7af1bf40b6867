# One training iteration t = inference -> (correction when t % L == 0) -> learning (Alg. 1).
# Every stage writes its own files under results/runs/{run}/it{t}/ (shortrun_ot.layout).
# compute.iterations_per_job = 1: one job per stage (stages.smk); B > 1: one job per block of B
# iterations writing the same files (blocks.smk; README, "Performance").


rule run_config:
    output:
        f"{RUN}/config.json",
    params:
        settings=lambda w: shlex.quote(json.dumps(stage_settings(SETTINGS[w.run]), sort_keys=True)),
    log:
        f"{RUN}/logs/config.log",
    localrule: True
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{CLI} write-config --run {wildcards.run} --settings {params.settings} --out {output} > {log} 2>&1"


rule init:
    input:
        config=f"{RUN}/config.json",
        data=prepared_data,
    output:
        checkpoint=f"{RUN}/it0000/checkpoint.pt",
        manifest=f"{RUN}/it0000/checkpoint.pt.json",  # SHA-256 of the checkpoint (written by the stage)
        latents=f"{RUN}/it0000/latents.pt",
        prior=f"{RUN}/prior.pt",
    log:
        f"{RUN}/logs/it0000/init.log",
    resources:
        mem_mb=4000,
        runtime=15,
    shell:
        "{CLI} init --run {wildcards.run} --config {input.config} --data {input.data} "
        "--checkpoint-out {output.checkpoint} --latents-out {output.latents} --prior-out {output.prior} > {log} 2>&1"


if BLOCK == 1:

    include: "stages.smk"

else:

    include: "blocks.smk"


rule history:
    """Per-iteration curves of a run (one CSV row per iteration): DVC plots and the report."""
    input:
        history_inputs,
    output:
        report(
            f"{RUN}/history.csv",
            category="Training curves",
            subcategory="{run}",
            caption="../report/history.rst",
            labels={"run": "{run}", "table": "per-iteration history"},
        ),
    log:
        f"{RUN}/logs/history.log",
    localrule: True
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{CLI} history --run {wildcards.run} --stats {input} --out {output} > {log} 2>&1"


rule final_model:
    """The final iteration's generator and latents under a fixed name (what DVC tracks)."""
    input:
        checkpoint=lambda w: checkpoint_of(w.run, final_iteration(w.run)),
        latents=lambda w: latents_after(w.run, final_iteration(w.run)),
    output:
        checkpoint=f"{RUN}/final/checkpoint.pt",
        latents=f"{RUN}/final/latents.pt",
    log:
        f"{RUN}/logs/final_model.log",
    localrule: True
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "(cp {input.checkpoint} {output.checkpoint} && cp {input.latents} {output.latents}) > {log} 2>&1"
