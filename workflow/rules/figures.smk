rule grid:
    input:
        config=f"{RUN}/config.json",
        data=prepared_data,
        checkpoint=lambda w: checkpoint_of(w.run, final_iteration(w.run)),
        latents=lambda w: latents_after(w.run, final_iteration(w.run)),
    output:
        report(f"{RUN}/figures/grid.png", category="Samples", caption="../report/grid.rst"),
    log:
        f"{RUN}/logs/grid.log",
    resources:
        mem_mb=4000,
        runtime=15,
    shell:
        "{CLI} grid --run {wildcards.run} --config {input.config} --data {input.data} "
        "--checkpoint {input.checkpoint} --latents {input.latents} --out {output} > {log} 2>&1"
