# Figures of every run (image grids) and of the paper's Sec. 6 (declared under `figures:`).


rule grid:
    input:
        config=f"{RUN}/config.json",
        data=prepared_data,
        final=f"{RUN}/final",
    output:
        png=report(f"{RUN}/figures/grid.png", category="Samples", caption="../report/grid.rst",
                   labels={"run": "{run}"}),
        panels=f"{RUN}/figures/grid.pt",  # the same images, for the figures of several runs (Fig. 4, occlusion)
    params:
        model=lambda w: roles(final_model(w.run)),
        test_steps=EVAL["test_langevin_steps"],
        batch_size=EVAL["batch_size"],
    log:
        f"{RUN}/logs/grid.log",
    resources:
        mem_mb=memory(4000),
        runtime=15,
    shell:
        "{CLI} grid --run {wildcards.run} --config {input.config} --data {input.data} --model {params.model} "
        "--test-steps {params.test_steps} --batch-size {params.batch_size} --device cpu --out {output.png} "
        "--panels {output.panels} > {log} 2>&1"


rule latents:
    """The latents of every training image under the final model, with the images' labels (Fig. 3)."""
    input:
        config=f"{RUN}/config.json",
        data=prepared_data,
        final=f"{RUN}/final",
    output:
        f"{RUN}/latents.pt",
    params:
        model=lambda w: roles(final_model(w.run)),
        batch_size=EVAL["batch_size"],
    log:
        f"{RUN}/logs/latents.log",
    resources:
        mem_mb=4000,
        runtime=15,
    shell:
        "{CLI} latents --run {wildcards.run} --config {input.config} --data {input.data} --model {params.model} "
        "--batch-size {params.batch_size} --device cpu --out {output} > {log} 2>&1"


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
            png=report(f"{RESULTS}/figures/figure2.png", category="Figures", caption="../report/figure2.rst",
                       labels={"figure": "Fig. 2: latents at each OT correction"}),
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
            png=report(f"{RESULTS}/figures/figure5.png", category="Figures", caption="../report/figure5.rst",
                       labels={"figure": "Fig. 5: influence of alpha"}),
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
            csv=report(f"{RESULTS}/table4.csv", category="Tables", caption="../report/table4.rst",
                       labels={"table": "Table 4: step size, before and after a correction"}),
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
                       caption="../report/chain_stability.rst", labels={"figure": "Chain stability against the step size"}),
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


if "figure3" in FIGURES:

    rule figure3:
        """Fig. 3: the 2-D latents of the training images under each run, with the prior's contours and OT cost."""
        input:
            latents=[f"{run_dir(run)}/latents.pt" for run in FIGURES["figure3"]["runs"]],
            metrics=[f"{run_dir(run)}/metrics.json" for run in FIGURES["figure3"]["runs"]],
        output:
            png=report(f"{RESULTS}/figures/figure3.png", category="Figures", caption="../report/figure3.rst",
                       labels={"figure": "Fig. 3: latents of digits 0 and 1 per model"}),
            pdf=f"{RESULTS}/figures/figure3.pdf",
        log:
            f"{RESULTS}/logs/figure3.log",
        localrule: True
        resources:
            mem_mb=2000,
            runtime=5,
        shell:
            "{CLI} figure3 --latents {input.latents} --metrics {input.metrics} --out {output.png} > {log} 2>&1"


if "figure4" in FIGURES:

    rule figure4:
        """Fig. 4: reconstructions and samples, one row per run (per dataset)."""
        input:
            [f"{run_dir(run)}/figures/grid.pt" for run in FIGURES["figure4"]["runs"]],
        output:
            png=report(f"{RESULTS}/figures/figure4.png", category="Figures", caption="../report/figure4.rst",
                       labels={"figure": "Fig. 4: reconstructions and samples"}),
            pdf=f"{RESULTS}/figures/figure4.pdf",
        log:
            f"{RESULTS}/logs/figure4.log",
        localrule: True
        resources:
            mem_mb=2000,
            runtime=5,
        shell:
            "{CLI} figure4 --grids {input} --out {output.png} > {log} 2>&1"


if "occlusion" in FIGURES:

    rule occlusion:
        """Learning from occluded images: observed pixels, originals and reconstructions per run; MSE on the
        observed and on the missing pixels."""
        input:
            grids=[f"{run_dir(run)}/figures/grid.pt" for run in FIGURES["occlusion"]["runs"]],
            metrics=[f"{run_dir(run)}/metrics.json" for run in FIGURES["occlusion"]["runs"]],
        output:
            png=report(f"{RESULTS}/figures/occlusion.png", category="Figures", caption="../report/occlusion.rst",
                       labels={"figure": "Occlusion: observed, original, reconstructed"}),
            pdf=f"{RESULTS}/figures/occlusion.pdf",
            csv=report(f"{RESULTS}/occlusion.csv", category="Tables", caption="../report/occlusion_table.rst",
                       labels={"table": "Occlusion: MSE on observed and missing pixels"}),
            markdown=f"{RESULTS}/occlusion.md",
        log:
            f"{RESULTS}/logs/occlusion.log",
        localrule: True
        resources:
            mem_mb=2000,
            runtime=5,
        shell:
            "{CLI} occlusion --grids {input.grids} --metrics {input.metrics} --csv {output.csv} "
            "--markdown {output.markdown} --out {output.png} > {log} 2>&1"


if ABLATIONS:

    rule ablation_table:
        """An ablation table (Tables 3, 5, 6): the final metrics and training cost of each point of a sweep."""
        input:
            metrics=lambda w: [path for paths in ablation_metrics(w.table).values() for path in paths],
            reference=PAPER_RESULTS,
        output:
            csv=report(f"{RESULTS}/{{table}}.csv", category="Tables", caption="../report/ablation.rst",
                       labels=lambda w: {"table": f"Table {w.table.removeprefix('table')}: ablation, sweep "
                                                  f"{FIGURES[w.table]['sweep']}"}),
            markdown=f"{RESULTS}/{{table}}.md",
        params:
            number=lambda w: w.table.removeprefix("table"),
            key=lambda w: config["sweeps"][FIGURES[w.table]["sweep"]]["key"],
            metrics=lambda w: value_pairs(ablation_metrics(w.table)),
        log:
            f"{RESULTS}/logs/{{table}}.log",
        wildcard_constraints:
            table="|".join(ABLATIONS),
        localrule: True
        resources:
            mem_mb=1000,
            runtime=5,
        shell:
            "{CLI} ablation-table --table {params.number} --key {params.key} --metrics {params.metrics} "
            "--reference {input.reference} --csv {output.csv} --markdown {output.markdown} > {log} 2>&1"

    rule table3:
        """Table 3 by name: `snakemake table3` (the file target carries the configuration's results folder)."""
        input:
            f"{RESULTS}/table3.csv",
        localrule: True

    rule table5:
        """Table 5 by name: `snakemake table5`."""
        input:
            f"{RESULTS}/table5.csv",
        localrule: True

    rule table6:
        """Table 6 by name: `snakemake table6`."""
        input:
            f"{RESULTS}/table6.csv",
        localrule: True


if "eight_gaussians" in FIGURES:

    rule eight_gaussians:
        """AE-OT Fig. 2: D regressed onto the Kantorovich potential from N(0, I) points to eight Gaussians."""
        output:
            png=report(f"{RESULTS}/figures/eight_gaussians.png", category="Figures",
                       caption="../report/eight_gaussians.rst", labels={"figure": "AE-OT Fig. 2: eight Gaussians"}),
            pdf=f"{RESULTS}/figures/eight_gaussians.pdf",
            csv=f"{RESULTS}/figures/eight_gaussians.csv",
        params:
            settings=shlex.quote(json.dumps(FIGURES["eight_gaussians"], sort_keys=True)),
        log:
            f"{RESULTS}/logs/eight_gaussians.log",
        threads: 2
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "OMP_NUM_THREADS={threads} {CLI} eight-gaussians --settings {params.settings} --csv {output.csv} "
            "--out {output.png} > {log} 2>&1"


if "aeot_mnist" in FIGURES:
    AEOT_MNIST = FIGURES["aeot_mnist"]

    rule classifier:
        """The digit classifier of the classifier score, trained on a dataset's training digits and checked
        on its test digits (AE-OT's MNIST table, offline stand-in for the Inception network)."""
        input:
            f"{PREPARED}/{{dataset}}.pt",
        output:
            model=f"{RESULTS}/classifiers/{{dataset}}.pt",
            report=f"{RESULTS}/classifiers/{{dataset}}.json",
        params:
            epochs=AEOT_MNIST["classifier"]["epochs"],
            min_accuracy=AEOT_MNIST["classifier"]["min_accuracy"],
        log:
            f"{RESULTS}/classifiers/logs/{{dataset}}.log",
        threads: 2
        resources:
            gpu=GPU,
            mem_mb=4000,
            runtime=30,
        shell:
            "OMP_NUM_THREADS={threads} {CLI} train-classifier --data {input} --epochs {params.epochs} "
            "--min-accuracy {params.min_accuracy} --device {DEVICE} --out {output.model} --report {output.report} "
            "> {log} 2>&1"

    rule sample_scores:
        """Inception Score (where the Inception logits exist) and classifier score of a run's samples."""
        input:
            config=f"{RUN}/config.json",
            data=prepared_data,
            final=f"{RUN}/final",
            classifier=lambda w: f"{RESULTS}/classifiers/{SETTINGS[w.run]['dataset']}.pt",
        output:
            f"{RUN}/scores.json",
        params:
            model=lambda w: roles(final_model(w.run)),
            samples=AEOT_MNIST["samples"],
            batch_size=EVAL["batch_size"],
        log:
            f"{RUN}/logs/scores.log",
        threads: 2
        resources:
            gpu=GPU,
            mem_mb=memory(8000),
            runtime=60,
        shell:
            "OMP_NUM_THREADS={threads} {CLI} sample-scores --run {wildcards.run} --config {input.config} "
            "--data {input.data} --model {params.model} --classifier {input.classifier} --samples {params.samples} "
            "--batch-size {params.batch_size} --device {DEVICE} --out {output} > {log} 2>&1"

    rule score_table:
        """Scores of several runs' samples beside a paper's and their samples side by side (figures.aeot_mnist:
        AE-OT's MNIST Table 1 and Fig. 3, Liu et al., Sec. 4.2)."""
        input:
            scores=[f"{run_dir(run)}/scores.json" for run in AEOT_MNIST["runs"]],
            metrics=[f"{run_dir(run)}/metrics.json" for run in AEOT_MNIST["runs"]],
            grids=[f"{run_dir(run)}/figures/grid.pt" for run in AEOT_MNIST["runs"]],
            reference=PAPER_RESULTS,
        output:
            csv=report(f"{RESULTS}/aeot_mnist.csv", category="Tables", caption="../report/aeot_mnist.rst",
                       labels={"table": "AE-OT Table 1: MNIST scores"}),
            markdown=f"{RESULTS}/aeot_mnist.md",
            png=report(f"{RESULTS}/figures/aeot_mnist.png", category="Figures", caption="../report/aeot_mnist.rst",
                       labels={"figure": "AE-OT Fig. 3: MNIST samples"}),
            pdf=f"{RESULTS}/figures/aeot_mnist.pdf",
        log:
            f"{RESULTS}/logs/aeot_mnist.log",
        localrule: True
        resources:
            mem_mb=2000,
            runtime=5,
        shell:
            "{CLI} aeot-mnist --scores {input.scores} --metrics {input.metrics} --grids {input.grids} "
            "--reference {input.reference} --csv {output.csv} --markdown {output.markdown} --out {output.png} "
            "> {log} 2>&1"


if INTERPOLATING:

    rule interpolation:
        """Decoded linear paths between the generative latents of pairs of prior draws (AE-OT's Fig. 5, the Coupled
        VAE's Fig. 4)."""
        input:
            config=f"{RUN}/config.json",
            data=prepared_data,
            final=f"{RUN}/final",
        output:
            f"{RUN}/figures/interpolation.pt",
        params:
            model=lambda w: roles(final_model(w.run)),
            pairs=lambda w: interpolation_spec(w.run)["pairs"],
            steps=lambda w: interpolation_spec(w.run)["steps"],
            batch_size=EVAL["batch_size"],
        log:
            f"{RUN}/logs/interpolation.log",
        resources:
            mem_mb=memory(4000),
            runtime=15,
        shell:
            "{CLI} interpolation --run {wildcards.run} --config {input.config} --data {input.data} "
            "--model {params.model} --pairs {params.pairs} --steps {params.steps} --batch-size {params.batch_size} "
            "--device cpu --out {output} > {log} 2>&1"


if "aeot_celeba" in FIGURES:
    AEOT_CELEBA = FIGURES["aeot_celeba"]

    rule samples_and_interpolations:
        """Samples side by side and interpolations, a row per run (figures.aeot_celeba: AE-OT's CelebA Figs. 4
        and 5, Liu et al., Sec. 4.3)."""
        input:
            grids=[f"{run_dir(run)}/figures/grid.pt" for run in AEOT_CELEBA["runs"]],
            interpolations=[f"{run_dir(run)}/figures/interpolation.pt" for run in AEOT_CELEBA["runs"]],
        output:
            samples=report(f"{RESULTS}/figures/aeot_celeba_samples.png", category="Figures",
                           caption="../report/aeot_celeba.rst", labels={"figure": "AE-OT Fig. 4: CelebA samples"}),
            samples_pdf=f"{RESULTS}/figures/aeot_celeba_samples.pdf",
            png=report(f"{RESULTS}/figures/aeot_celeba.png", category="Figures", caption="../report/aeot_celeba.rst",
                       labels={"figure": "AE-OT Fig. 5: CelebA interpolations"}),
            pdf=f"{RESULTS}/figures/aeot_celeba.pdf",
        log:
            f"{RESULTS}/logs/aeot_celeba.log",
        localrule: True
        resources:
            mem_mb=2000,
            runtime=5,
        shell:
            "{CLI} aeot-celeba --grids {input.grids} --interpolations {input.interpolations} "
            "--samples-out {output.samples} --out {output.png} > {log} 2>&1"


if "coupled_vae_mixture" in FIGURES:
    MIXTURE = FIGURES["coupled_vae_mixture"]
    MIXTURE_DIR = f"{RESULTS}/coupled_vae_mixture"

    rule mixture_run:
        """One model and seed of the Coupled VAE's 25-Gaussian experiment, trained in memory (a run takes seconds
        to minutes; its stages are not cached one by one)."""
        output:
            json=f"{MIXTURE_DIR}/{{model}}-seed{{seed}}.json",
            panels=f"{MIXTURE_DIR}/{{model}}-seed{{seed}}.pt",
        wildcard_constraints:
            model="|".join(MIXTURE_MODELS),
            seed=r"\d+",
        params:
            settings=lambda w: shlex.quote(json.dumps(MIXTURE_MODELS[w.model], sort_keys=True)),
            samples=MIXTURE["samples"],
            points_per_mode=MIXTURE["points_per_mode"],
        log:
            f"{MIXTURE_DIR}/logs/{{model}}-seed{{seed}}.log",
        threads: 1
        resources:
            mem_mb=3000,
            runtime=60,
        shell:
            "OMP_NUM_THREADS={threads} {CLI} mixture-run --model {wildcards.model} --settings {params.settings} "
            "--seed {wildcards.seed} --samples {params.samples} --points-per-mode {params.points_per_mode} "
            "--device cpu --panels {output.panels} --out {output.json} > {log} 2>&1"

    rule mixture_table:
        """The Coupled VAE's Tables 1 and 2 over every model and seed, and Figs. 1 and 2 (Hao & Shafto, Sec. 5)."""
        input:
            results=[f"{MIXTURE_DIR}/{model}-seed{seed}.json" for model in MIXTURE_MODELS
                     for seed in range(MIXTURE["seeds"])],
            panels=[f"{MIXTURE_DIR}/{model}-seed0.pt" for model in MIXTURE_MODELS],
            reference=PAPER_RESULTS,
        output:
            csv=report(f"{RESULTS}/coupled_vae_mixture.csv", category="Tables", caption="../report/coupled_vae_mixture.rst",
                       labels={"table": "Coupled VAE Tables 1 and 2: mixture of Gaussians"}),
            markdown=f"{RESULTS}/coupled_vae_mixture.md",
            png=report(f"{RESULTS}/figures/coupled_vae_mixture.png", category="Figures",
                       caption="../report/coupled_vae_mixture.rst",
                       labels={"figure": "Coupled VAE Figs. 1 and 2: mixture of Gaussians"}),
            pdf=f"{RESULTS}/figures/coupled_vae_mixture.pdf",
        log:
            f"{RESULTS}/logs/coupled_vae_mixture.log",
        localrule: True
        resources:
            mem_mb=2000,
            runtime=5,
        shell:
            "{CLI} mixture-table --results {input.results} --panels {input.panels} --reference {input.reference} "
            "--csv {output.csv} --markdown {output.markdown} --out {output.png} > {log} 2>&1"


if "coupled_vae_mnist" in FIGURES:
    COUPLED_VAE_MNIST = FIGURES["coupled_vae_mnist"]

    rule posterior:
        """One draw z ~ q(z | I) per training image under the final model, with the digit labels."""
        input:
            config=f"{RUN}/config.json",
            data=prepared_data,
            final=f"{RUN}/final",
        output:
            f"{RUN}/figures/posterior.pt",
        params:
            model=lambda w: roles(final_model(w.run)),
            batch_size=EVAL["batch_size"],
        log:
            f"{RUN}/logs/posterior.log",
        resources:
            mem_mb=memory(4000),
            runtime=15,
        shell:
            "{CLI} posterior --run {wildcards.run} --config {input.config} --data {input.data} --model {params.model} "
            "--batch-size {params.batch_size} --device cpu --out {output} > {log} 2>&1"

    rule posteriors_and_samples:
        """Aggregate posteriors by digit (Fig. 3) and samples, reconstructions, interpolations (Fig. 4) of the
        Coupled VAE's MNIST experiment (Hao & Shafto, Sec. 5)."""
        input:
            posteriors=[f"{run_dir(run)}/figures/posterior.pt" for run in COUPLED_VAE_MNIST["runs"]],
            grids=[f"{run_dir(run)}/figures/grid.pt" for run in COUPLED_VAE_MNIST["runs"]],
            interpolations=[f"{run_dir(run)}/figures/interpolation.pt" for run in COUPLED_VAE_MNIST["runs"]],
        output:
            posterior=report(f"{RESULTS}/figures/coupled_vae_mnist_posterior.png", category="Figures",
                             caption="../report/coupled_vae_mnist.rst",
                             labels={"figure": "Coupled VAE Fig. 3: MNIST posteriors"}),
            posterior_pdf=f"{RESULTS}/figures/coupled_vae_mnist_posterior.pdf",
            png=report(f"{RESULTS}/figures/coupled_vae_mnist.png", category="Figures",
                       caption="../report/coupled_vae_mnist.rst",
                       labels={"figure": "Coupled VAE Fig. 4: MNIST samples and paths"}),
            pdf=f"{RESULTS}/figures/coupled_vae_mnist.pdf",
        log:
            f"{RESULTS}/logs/coupled_vae_mnist.log",
        localrule: True
        resources:
            mem_mb=2000,
            runtime=5,
        shell:
            "{CLI} posteriors-and-samples --posteriors {input.posteriors} --grids {input.grids} "
            "--interpolations {input.interpolations} --posterior-figure {output.posterior} --out {output.png} "
            "> {log} 2>&1"


# A short target name for every declared product that no rule above is named after (`snakemake
# coupled_vae_mixture`): its `figures:` key. figure2 ... table6, occlusion and eight_gaussians are the
# rules that write them; chain_stability's figure is `chain_stability_figure`.
for product in sorted(FIGURES.keys() - {named.name for named in workflow.rules}):

    rule:
        name:
            product
        input:
            f"{RESULTS}/{FIGURE_PRODUCTS[product]}",
        localrule: True
