# One training iteration t = inference -> (correction when t % L == 0) -> learning (Alg. 1).
# Every stage is its own job writing its own files under results/runs/{run}/it{t}/.


rule run_config:
    output:
        RUN + "/config.json",
    params:
        settings=lambda w: shlex.quote(json.dumps(stage_settings(SETTINGS[w.run]), sort_keys=True)),
    log:
        RUN + "/logs/config.log",
    shell:
        "{CLI} write-config --run {wildcards.run} --settings {params.settings} --out {output} > {log} 2>&1"


rule init:
    input:
        config=RUN + "/config.json",
        data=prepared_data,
    output:
        checkpoint=RUN + "/it0000/checkpoint.pt",
        latents=RUN + "/it0000/latents.pt",
        prior=RUN + "/prior.pt",
    log:
        RUN + "/logs/it0000/init.log",
    shell:
        "{CLI} init --run {wildcards.run} --config {input.config} --data {input.data} "
        "--checkpoint-out {output.checkpoint} --latents-out {output.latents} --prior-out {output.prior} > {log} 2>&1"


def infer_inputs(w):
    inputs = {
        "config": f"{RESULTS}/runs/{w.run}/config.json",
        "data": prepared_data(w),
        "checkpoint": checkpoint_of(w.run, int(w.t) - 1),
    }
    if SETTINGS[w.run]["langevin"]["persistent"]:
        inputs["latents"] = latents_after(w.run, int(w.t) - 1)
    return inputs


rule infer:
    input:
        unpack(infer_inputs),
    output:
        latents=IT + "/inferred.pt",
        stats=IT + "/infer.json",
    params:
        latents=lambda w, input: input.get("latents", "none"),
    log:
        IT + "/logs/infer.log",
    group:
        "{run}_it{t}"
    threads: 4
    shell:
        "OMP_NUM_THREADS={threads} {CLI} infer --run {wildcards.run} --iteration {wildcards.t} "
        "--config {input.config} --data {input.data} --checkpoint {input.checkpoint} --latents {params.latents} "
        "--device {DEVICE} --latents-out {output.latents} --stats-out {output.stats} > {log} 2>&1"


def correct_inputs(w):
    t, every = int(w.t), SETTINGS[w.run]["correction"]["every"]
    inputs = {
        "config": f"{RESULTS}/runs/{w.run}/config.json",
        "latents": f"{RESULTS}/runs/{w.run}/it{it(t)}/inferred.pt",
        "prior": f"{RESULTS}/runs/{w.run}/prior.pt",
    }
    if t - every > 0:  # warm start from the previous correction's dual vector h
        inputs["previous"] = f"{RESULTS}/runs/{w.run}/it{it(t - every)}/corrected.pt"
    return inputs


rule correct:
    input:
        unpack(correct_inputs),
    output:
        latents=IT + "/corrected.pt",
        stats=IT + "/correct.json",
    params:
        previous=lambda w, input: f"--previous {input.previous}" if "previous" in input.keys() else "",
    log:
        IT + "/logs/correct.log",
    group:
        "{run}_it{t}"
    threads: 4
    shell:
        "OMP_NUM_THREADS={threads} {CLI} correct --run {wildcards.run} --iteration {wildcards.t} "
        "--config {input.config} --latents {input.latents} --prior {input.prior} {params.previous} "
        "--device {DEVICE} --latents-out {output.latents} --stats-out {output.stats} > {log} 2>&1"


rule learn:
    input:
        config=RUN + "/config.json",
        data=prepared_data,
        checkpoint=lambda w: checkpoint_of(w.run, int(w.t) - 1),
        latents=lambda w: latents_after(w.run, w.t),
    output:
        checkpoint=IT + "/checkpoint.pt",
        stats=IT + "/learn.json",
    log:
        IT + "/logs/learn.log",
    group:
        "{run}_it{t}"
    threads: 4
    shell:
        "OMP_NUM_THREADS={threads} {CLI} learn --run {wildcards.run} --iteration {wildcards.t} "
        "--config {input.config} --data {input.data} --checkpoint {input.checkpoint} --latents {input.latents} "
        "--device {DEVICE} --checkpoint-out {output.checkpoint} --stats-out {output.stats} > {log} 2>&1"
