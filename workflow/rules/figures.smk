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


rule figures:
    """Every figure and ablation table declared under `figures:` (Sec. 6.1 and 6.4)."""
    input:
        figure_targets(),


if "figure2" in FIGURES:

    rule figure2:
        """Fig. 2: the inferred 2-D latents q(z^K) at each correction iteration, beside the prior sample."""
        input:
            unpack(figure2_inputs),
        output:
            png=report(f"{RESULTS}/figures/figure2.png", category="Figures", caption="../report/figure2.rst"),
            pdf=f"{RESULTS}/figures/figure2.pdf",
        params:
            run=FIGURES["figure2"]["run"],
            latents=lambda w, input: " ".join(f"{k.removeprefix('latents')}={v}" for k, v in input.items()
                                              if k.startswith("latents")),
        log:
            f"{RESULTS}/logs/figure2.log",
        resources:
            mem_mb=4000,
            runtime=10,
        shell:
            "{CLI} figure2 --run {params.run} --config {input.config} --data {input.data} "
            "--latents {params.latents} --prior {input.prior} --out {output.png} > {log} 2>&1"


if "figure5" in FIGURES:

    rule figure5:
        """Fig. 5: per alpha, the latents' distance to the prior and the training MSE every iteration, FID at some."""
        input:
            history=[f"{run_dir(run)}/history.csv" for _, run in sweep_values(FIGURES["figure5"]["sweep"])],
            evaluations=[path for paths in figure5_evaluations().values() for path in paths],
        output:
            png=report(f"{RESULTS}/figures/figure5.png", category="Figures", caption="../report/figure5.rst"),
            pdf=f"{RESULTS}/figures/figure5.pdf",
            csv=f"{RESULTS}/figures/figure5.csv",
        params:
            key=config["sweeps"][FIGURES["figure5"]["sweep"]]["key"].split(".")[-1],
            history=value_pairs({value: f"{run_dir(run)}/history.csv"
                                 for value, run in sweep_values(FIGURES["figure5"]["sweep"])}),
            evaluations=value_pairs(figure5_evaluations()),
        log:
            f"{RESULTS}/logs/figure5.log",
        localrule: True
        resources:
            mem_mb=2000,
            runtime=5,
        shell:
            "{CLI} figure5 --key {params.key} --history {params.history} --evaluations {params.evaluations} "
            "--csv {output.csv} --out {output.png} > {log} 2>&1"


if "table4" in FIGURES:

    rule table4:
        """Table 4: per step size, the metrics right before and right after the last correction."""
        input:
            before=list(table4_evaluations("before_correction").values()),
            after=list(table4_evaluations("after_correction").values()),
            reference=PAPER_RESULTS,
        output:
            csv=report(f"{RESULTS}/table4.csv", category="Tables", caption="../report/table4.rst"),
            markdown=f"{RESULTS}/table4.md",
        params:
            before=value_pairs(table4_evaluations("before_correction")),
            after=value_pairs(table4_evaluations("after_correction")),
        log:
            f"{RESULTS}/logs/table4.log",
        localrule: True
        resources:
            mem_mb=1000,
            runtime=5,
        shell:
            "{CLI} table4 --before {params.before} --after {params.after} --reference {input.reference} "
            "--csv {output.csv} --markdown {output.markdown} > {log} 2>&1"


if "chain_stability" in FIGURES:
    STABILITY = FIGURES["chain_stability"]

    rule chain_stability:
        """Two Langevin chains (same noise) from the run's final latents and a perturbed copy, per step size."""
        input:
            config=f"{RUN}/config.json",
            data=prepared_data,
            final=f"{RUN}/final",
        output:
            f"{RUN}/chain_stability.json",
        params:
            model=lambda w: roles(final_model(w.run)),
            step_sizes=" ".join(str(s) for s in STABILITY["step_sizes"]),
            batch_size=EVAL["batch_size"],
        log:
            f"{RUN}/logs/chain_stability.log",
        threads: 2
        resources:
            gpu=GPU,
            mem_mb=8000,
            runtime=30,
        shell:
            "OMP_NUM_THREADS={threads} {CLI} chain-stability --run {wildcards.run} --config {input.config} "
            "--data {input.data} --model {params.model} --step-sizes {params.step_sizes} "
            f"--steps {STABILITY['steps']} --images {STABILITY['images']} --perturbation {STABILITY['perturbation']} "
            "--batch-size {params.batch_size} --device {DEVICE} --out {output} > {log} 2>&1"

    rule chain_stability_figure:
        input:
            expand(f"{RUN}/chain_stability.json", run=STABILITY["runs"]),
        output:
            png=report(f"{RESULTS}/figures/chain_stability.png", category="Figures",
                       caption="../report/chain_stability.rst"),
            pdf=f"{RESULTS}/figures/chain_stability.pdf",
            csv=f"{RESULTS}/figures/chain_stability.csv",
        log:
            f"{RESULTS}/logs/chain_stability_figure.log",
        localrule: True
        resources:
            mem_mb=2000,
            runtime=5,
        shell:
            "{CLI} chain-stability-figure --results {input} --csv {output.csv} --out {output.png} > {log} 2>&1"
