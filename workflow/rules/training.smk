# Training: every stage of every iteration is one cached job writing results/runs/{run}/it{t}/{stage}.pt
# (+ .pt.json manifest, .json report); the run's method says which stages iteration t has and which
# earlier state files each reads (shortrun_ot.methods, shortrun_ot.layout). With
# compute.iterations_per_job = B > 1, one job runs B iterations and writes the same files
# (blocks.smk; docs/performance.md).


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


rule stage:
    input:
        unpack(stage_inputs),
    output:
        state=f"{IT}/{{stage}}.pt",
        manifest=f"{IT}/{{stage}}.pt.json",  # SHA-256 of the state (written by the stage)
        report=f"{IT}/{{stage}}.json",
    params:
        inputs=lambda w: roles(stage_input_files(w)),
    log:
        f"{IT}/logs/{{stage}}.log",
    wildcard_constraints:
        t=r"\d\d\d\d+" if BLOCK == 1 else "0000",  # with block jobs only iteration 0 runs per stage
    group:
        "{run}_it{t}"
    threads: 1  # raise with --set-threads stage=N (docs/performance.md)
    resources:
        gpu=GPU,
        mem_mb=memory(16000),
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} {CLI} stage {TRAIN_FLAGS} --run {wildcards.run} --stage {wildcards.stage} "
        "--iteration {wildcards.t} --config {input.config} --data {input.data} --inputs {params.inputs} "
        "--device {DEVICE} --out {output.state} > {log} 2>&1"


if BLOCK > 1:

    include: "blocks.smk"


rule history:
    """Per-iteration curves of a run (one CSV row per iteration): DVC plots and the report."""
    input:
        stage_reports,
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
    """The model after the last iteration under fixed names, and the run's training cost (what DVC tracks)."""
    input:
        unpack(lambda w: {"config": f"{run_dir(w.run)}/config.json", **final_state_files(w)}),
        reports=stage_reports,
    output:
        directory(f"{RUN}/final"),
    params:
        inputs=lambda w: roles(final_state_files(w)),
    log:
        f"{RUN}/logs/final_model.log",
    localrule: True
    resources:
        mem_mb=4000,
        runtime=5,
    shell:
        "{CLI} final --run {wildcards.run} --config {input.config} --inputs {params.inputs} "
        "--reports {input.reports} --out-dir {output} > {log} 2>&1"
