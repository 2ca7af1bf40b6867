# Table 1 (MSE, FID) and Table 2 (anomaly AUPRC) from trained runs.
EVAL = config["evaluation"]
ANOMALY = config["anomaly"]
PAPER_RESULTS = "workflow/resources/paper_results.csv"


def fid_reference_of(w):
    n_real = EVAL["fid_real_images"] or "all"
    return f"{RESULTS}/fid/{SETTINGS[w.run]['dataset']}-{n_real}.npz"


def anomaly_runs():
    return [
        anomaly_run(model, digit, seed)
        for model in ANOMALY["runs"]
        for digit in ANOMALY["digits"]
        for seed in range(ANOMALY["seeds"])
    ]


rule fid_reference:
    input:
        PREPARED + "/{dataset}.pt",
    output:
        RESULTS + "/fid/{dataset}-{n_real}.npz",
    params:
        images=lambda w: "" if w.n_real == "all" else f"--images {w.n_real}",
    log:
        RESULTS + "/fid/logs/{dataset}-{n_real}.log",
    wildcard_constraints:
        dataset="mnist|mnist5k",
        n_real=r"all|\d+",
    threads: 2
    shell:
        "OMP_NUM_THREADS={threads} {CLI} fid-reference --data {input} {params.images} "
        "--batch-size {EVAL[batch_size]} --device {DEVICE} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        config=RUN + "/config.json",
        data=prepared_data,
        checkpoint=lambda w: checkpoint_of(w.run, final_iteration(w.run)),
        latents=lambda w: latents_after(w.run, final_iteration(w.run)),
        prior=RUN + "/prior.pt",
        fid_reference=fid_reference_of,
    output:
        RUN + "/metrics.json",
    params:
        iteration=lambda w: final_iteration(w.run),
        test_images=lambda w: f"--test-images {EVAL['test_images']}" if EVAL["test_images"] else "",
    log:
        RUN + "/logs/evaluate.log",
    threads: 2
    shell:
        "OMP_NUM_THREADS={threads} {CLI} evaluate --run {wildcards.run} --config {input.config} --data {input.data} "
        "--iteration {params.iteration} --checkpoint {input.checkpoint} --latents {input.latents} "
        "--prior {input.prior} --fid-reference {input.fid_reference} --fid-samples {EVAL[fid_samples]} "
        "--test-steps {EVAL[test_langevin_steps]} {params.test_images} --batch-size {EVAL[batch_size]} "
        "--device {DEVICE} --out {output} > {log} 2>&1"


rule table1:
    input:
        metrics=expand(RUN + "/metrics.json", run=EVAL["runs"]),
        reference=PAPER_RESULTS,
    output:
        csv=report(RESULTS + "/table1.csv", category="Tables", caption="../report/table1.rst"),
        markdown=RESULTS + "/table1.md",
    params:
        metrics=" ".join(f"{run}={RESULTS}/runs/{run}/metrics.json" for run in EVAL["runs"]),
    log:
        RESULTS + "/logs/table1.log",
    shell:
        "{CLI} table1 --metrics {params.metrics} --reference {input.reference} "
        "--csv {output.csv} --markdown {output.markdown} > {log} 2>&1"


rule anomaly_score:
    input:
        config=RUN + "/config.json",
        data=prepared_data,
        checkpoint=lambda w: checkpoint_of(w.run, final_iteration(w.run)),
    output:
        RUN + "/anomaly.json",
    params:
        model=lambda w: w.run.split("-holdout")[0],
    log:
        RUN + "/logs/anomaly.log",
    wildcard_constraints:
        run=r"[A-Za-z0-9_-]+-holdout\d-seed\d+",
    threads: 2
    shell:
        "OMP_NUM_THREADS={threads} {CLI} anomaly --run {wildcards.run} --model {params.model} "
        "--config {input.config} --data {input.data} --checkpoint {input.checkpoint} "
        "--test-steps {ANOMALY[test_langevin_steps]} --batch-size {EVAL[batch_size]} --device {DEVICE} "
        "--out {output} > {log} 2>&1"


rule table2:
    input:
        anomaly=expand(RUN + "/anomaly.json", run=anomaly_runs()),
        reference=PAPER_RESULTS,
    output:
        csv=report(RESULTS + "/table2.csv", category="Tables", caption="../report/table2.rst"),
        markdown=RESULTS + "/table2.md",
    log:
        RESULTS + "/logs/table2.log",
    shell:
        "{CLI} table2 --anomaly {input.anomaly} --reference {input.reference} "
        "--csv {output.csv} --markdown {output.markdown} > {log} 2>&1"
