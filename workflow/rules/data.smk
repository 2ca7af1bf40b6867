rule prepare_data:
    output:
        data=PREPARED + "/{dataset}.pt",
        manifest=PREPARED + "/{dataset}.pt.json",
    log:
        PREPARED + "/logs/{dataset}.log",
    wildcard_constraints:
        dataset="mnist|mnist5k",
    shell:
        "{CLI} prepare --dataset {wildcards.dataset} --raw-root {RAW}/{wildcards.dataset} "
        "--out {output.data} > {log} 2>&1"


rule prepare_anomaly_data:
    output:
        data=PREPARED + "/{dataset}-holdout{digit}-seed{seed}.pt",
        manifest=PREPARED + "/{dataset}-holdout{digit}-seed{seed}.pt.json",
    log:
        PREPARED + "/logs/{dataset}-holdout{digit}-seed{seed}.log",
    wildcard_constraints:
        dataset="mnist|mnist5k",
        digit=r"\d",
        seed=r"\d+",
    shell:
        "{CLI} prepare --dataset {wildcards.dataset} --raw-root {RAW}/{wildcards.dataset} "
        "--heldout-digit {wildcards.digit} --seed {wildcards.seed} --out {output.data} > {log} 2>&1"
