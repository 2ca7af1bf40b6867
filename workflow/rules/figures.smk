# Figures of every run (image grids) and of the paper's Sec. 6 (declared under `figures:`).


rule grid:
    input:
        config=f"{RUN}/config.json",
        data=prepared_data,
        final=f"{RUN}/final",
    output:
        report(f"{RUN}/figures/grid.png", category="Samples", caption="../report/grid.rst"),
    params:
        model=lambda w: roles(final_model(w.run)),
        test_steps=EVAL["test_langevin_steps"],
        batch_size=EVAL["batch_size"],
    log:
        f"{RUN}/logs/grid.log",
    resources:
        mem_mb=4000,
        runtime=15,
    shell:
        "{CLI} grid --run {wildcards.run} --config {input.config} --data {input.data} --model {params.model} "
        "--test-steps {params.test_steps} --batch-size {params.batch_size} --device cpu --out {output} > {log} 2>&1"
