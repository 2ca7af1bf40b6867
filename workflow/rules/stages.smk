# One job per stage of iteration t (compute.iterations_per_job = 1), grouped per iteration.


rule infer:
    input:
        unpack(infer_inputs),
    output:
        latents=f"{IT}/inferred.pt",
        stats=f"{IT}/infer.json",
    params:
        latents=lambda w, input: input.get("latents", "none"),
        flags=f"{GRAPHS} {TF32}",
    log:
        f"{IT}/logs/infer.log",
    group:
        "{run}_it{t}"
    threads: 1  # raise with --set-threads infer=N learn=N correct=N (README, "Performance")
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} {CLI} infer {params.flags} --run {wildcards.run} --iteration {wildcards.t} "
        "--config {input.config} --data {input.data} --checkpoint {input.checkpoint} --latents {params.latents} "
        "--device {DEVICE} --latents-out {output.latents} --stats-out {output.stats} > {log} 2>&1"


rule correct:
    input:
        unpack(correct_inputs),
    output:
        latents=f"{IT}/corrected.pt",
        stats=f"{IT}/correct.json",
    params:
        previous=lambda w, input: f"--previous {input.previous}" if "previous" in input.keys() else "",
        flags=TF32,
    log:
        f"{IT}/logs/correct.log",
    group:
        "{run}_it{t}"
    threads: 1  # raise with --set-threads infer=N learn=N correct=N (README, "Performance")
    resources:
        gpu=GPU,
        mem_mb=16000,
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} {CLI} correct {params.flags} --run {wildcards.run} --iteration {wildcards.t} "
        "--config {input.config} --latents {input.latents} --prior {input.prior} {params.previous} "
        "--device {DEVICE} --latents-out {output.latents} --stats-out {output.stats} > {log} 2>&1"


rule learn:
    input:
        config=f"{RUN}/config.json",
        data=prepared_data,
        checkpoint=lambda w: checkpoint_of(w.run, int(w.t) - 1),
        latents=lambda w: latents_after(w.run, w.t),
    output:
        checkpoint=f"{IT}/checkpoint.pt",
        manifest=f"{IT}/checkpoint.pt.json",  # SHA-256 of the checkpoint (written by the stage)
        stats=f"{IT}/learn.json",
    params:
        flags=TF32,
    log:
        f"{IT}/logs/learn.log",
    group:
        "{run}_it{t}"
    threads: 1  # raise with --set-threads infer=N learn=N correct=N (README, "Performance")
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} {CLI} learn {params.flags} --run {wildcards.run} --iteration {wildcards.t} "
        "--config {input.config} --data {input.data} --checkpoint {input.checkpoint} --latents {input.latents} "
        "--device {DEVICE} --checkpoint-out {output.checkpoint} --stats-out {output.stats} > {log} 2>&1"
