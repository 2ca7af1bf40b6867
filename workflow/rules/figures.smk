rule grid:
    input:
        config=RUN + "/config.json",
        data=prepared_data,
        checkpoint=lambda w: checkpoint_of(w.run, final_iteration(w.run)),
        latents=lambda w: latents_after(w.run, final_iteration(w.run)),
    output:
        report(RUN + "/figures/grid.png", category="Samples", caption="../report/grid.rst"),
    log:
        RUN + "/logs/grid.log",
    shell:
        "{CLI} grid --run {wildcards.run} --config {input.config} --data {input.data} "
        "--checkpoint {input.checkpoint} --latents {input.latents} --out {output} > {log} 2>&1"
