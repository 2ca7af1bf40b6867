rule prepare_data:
    output:
        data=f"{PREPARED}/{{dataset}}.pt",
        manifest=f"{PREPARED}/{{dataset}}.pt.json",
    log:
        f"{PREPARED}/logs/{{dataset}}.log",
    params:
        raw=lambda w: f"{RAW}/{raw_source(w.dataset)}",  # mnist64 reads data/raw/mnist
    localrule: True  # on a cluster: runs where Snakemake runs (downloads need the network)
    resources:
        mem_mb=memory(4000),
        runtime=30,
    shell:
        "{CLI} prepare --dataset {wildcards.dataset} --raw-root {params.raw} {NO_DOWNLOAD} "
        "--out {output.data} > {log} 2>&1"


rule prepare_anomaly_data:
    output:
        data=f"{PREPARED}/{{dataset}}-holdout{{digit}}-seed{{seed}}.pt",
        manifest=f"{PREPARED}/{{dataset}}-holdout{{digit}}-seed{{seed}}.pt.json",
    log:
        f"{PREPARED}/logs/{{dataset}}-holdout{{digit}}-seed{{seed}}.log",
    wildcard_constraints:
        digit=r"\d",
        seed=r"\d+",
    params:
        raw=lambda w: f"{RAW}/{raw_source(w.dataset)}",
    localrule: True
    resources:
        mem_mb=memory(4000),
        runtime=30,
    shell:
        "{CLI} prepare --dataset {wildcards.dataset} --raw-root {params.raw} {NO_DOWNLOAD} "
        "--heldout-digit {wildcards.digit} --seed {wildcards.seed} --out {output.data} > {log} 2>&1"
