# Table 1 (MSE, FID, distance to the prior) and Table 2 (anomaly AUPRC): one protocol for every
# run, whatever its method (shortrun_ot.evaluation; docs/protocol.md, "Metrics").


rule fid_reference:
    input:
        f"{PREPARED}/{{dataset}}.pt",
    output:
        f"{RESULTS}/fid/{{dataset}}-{{n_real}}.npz",
    params:
        images=lambda w: "" if w.n_real == "all" else f"--images {w.n_real}",
        batch_size=EVAL["batch_size"],
        precision=EVAL["fid_precision"],
    log:
        f"{RESULTS}/fid/logs/{{dataset}}-{{n_real}}.log",
    wildcard_constraints:
        n_real=r"all|\d+",
    threads: 2
    priority: 1  # every evaluation waits for it: run it before further training jobs
    resources:
        gpu=GPU,
        mem_mb=memory(8000),
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} {CLI} fid-reference --data {input} {params.images} "
        "--batch-size {params.batch_size} --fid-precision {params.precision} --device {DEVICE} "
        "--out {output} > {log} 2>&1"


EVALUATE = (
    "OMP_NUM_THREADS={threads} {CLI} evaluate --run {wildcards.run} --config {input.config} --data {input.data} "
    "--model {params.model} --iteration {params.iteration} --point {params.point} "
    "--fid-reference {input.fid_reference} --fid-samples {params.fid_samples} --fid-precision {params.precision} "
    "--test-steps {params.test_steps} {params.test_images} --batch-size {params.batch_size} {params.training} "
    "--device {DEVICE} --out {output} > {log} 2>&1"
)


rule evaluate:
    """Table 1 metrics of the final model of a run."""
    input:
        unpack(evaluation_inputs),
    output:
        f"{RUN}/metrics.json",
    params:
        model=evaluation_model,
        iteration=lambda w: final_iteration(w.run),
        point="end",
        training=lambda w: f"--training {run_dir(w.run)}/final/training.json",
        test_images=lambda w: f"--test-images {EVAL['test_images']}" if EVAL["test_images"] else "",
        fid_samples=EVAL["fid_samples"],
        precision=EVAL["fid_precision"],
        test_steps=EVAL["test_langevin_steps"],
        batch_size=EVAL["batch_size"],
    log:
        f"{RUN}/logs/evaluate.log",
    threads: 1  # one thread: evaluations pack beside training jobs (raise with --set-threads evaluate=N)
    resources:
        gpu=GPU,
        mem_mb=memory(16000),
        runtime=120,
    shell:
        EVALUATE


rule evaluate_point:
    """The same metrics at an intermediate iteration t and evaluation point (Fig. 5 curves, Table 4)."""
    input:
        unpack(evaluation_inputs),
    output:
        f"{RUN}/evaluation/{{point}}-it{{t}}.json",
    params:
        model=evaluation_model,
        iteration=lambda w: int(w.t),
        point=lambda w: w.point,
        training="",
        test_images=lambda w: f"--test-images {EVAL['test_images']}" if EVAL["test_images"] else "",
        fid_samples=EVAL["fid_samples"],
        precision=EVAL["fid_precision"],
        test_steps=EVAL["test_langevin_steps"],
        batch_size=EVAL["batch_size"],
    log:
        f"{RUN}/logs/evaluation/{{point}}-it{{t}}.log",
    wildcard_constraints:
        point=r"[a-z_]+",
    threads: 2
    resources:
        gpu=GPU,
        mem_mb=memory(16000),
        runtime=120,
    shell:
        EVALUATE


rule table1:
    input:
        metrics=expand(f"{RUN}/metrics.json", run=TABLE1_RUNS),
        reference=PAPER_RESULTS,
    output:
        csv=report(f"{RESULTS}/table1.csv", category="Tables", caption="../report/table1.rst",
                   labels={"table": "Table 1: MSE, FID and OT cost"}),
        markdown=f"{RESULTS}/table1.md",
    log:
        f"{RESULTS}/logs/table1.log",
    localrule: True
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{CLI} table1 --metrics {input.metrics} --reference {input.reference} "
        "--csv {output.csv} --markdown {output.markdown} > {log} 2>&1"


rule anomaly_score:
    input:
        config=f"{RUN}/config.json",
        data=prepared_data,
        final=f"{RUN}/final",
    output:
        f"{RUN}/anomaly.json",
    params:
        model=lambda w: roles(final_model(w.run)),
        model_key=lambda w: w.run.split("-holdout")[0],
        test_steps=ANOMALY["test_langevin_steps"],
        batch_size=EVAL["batch_size"],
    log:
        f"{RUN}/logs/anomaly.log",
    wildcard_constraints:
        run=r"[A-Za-z0-9_.-]+-holdout\d-seed\d+",
    threads: 1  # as evaluate
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} {CLI} anomaly --run {wildcards.run} --model-key {params.model_key} "
        "--config {input.config} --data {input.data} --model {params.model} "
        "--test-steps {params.test_steps} --batch-size {params.batch_size} --device {DEVICE} "
        "--out {output} > {log} 2>&1"


rule table2:
    input:
        anomaly=expand(f"{RUN}/anomaly.json", run=anomaly_runs()),
        reference=PAPER_RESULTS,
    output:
        csv=report(f"{RESULTS}/table2.csv", category="Tables", caption="../report/table2.rst",
                   labels={"table": "Table 2: anomaly detection (AUPRC)"}),
        markdown=f"{RESULTS}/table2.md",
    log:
        f"{RESULTS}/logs/table2.log",
    localrule: True
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{CLI} table2 --anomaly {input.anomaly} --reference {input.reference} "
        "--csv {output.csv} --markdown {output.markdown} > {log} 2>&1"
