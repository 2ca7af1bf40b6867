# One job per block of compute.iterations_per_job iterations (1..B, B+1..2B, ...): it reads
# iteration first-1 and writes every file of iterations first..last, as the per-stage jobs would.
# A block's files are its outputs, so deleting any of them reruns that block and the ones after it.
# The rules are made per run and block because a block's list of files depends on which of its
# iterations correct (t % L == 0), which an output pattern with wildcards cannot express.

for _run in SETTINGS:
    for _first, _last in blocks(_run):

        rule:
            name:
                f"train_{_run.replace('-', '_')}_it{_first:04d}_{_last:04d}"
            input:
                **block_inputs(_run, _first, _last),
            output:
                block_outputs(_run, _first, _last),
            params:
                run=_run,
                run_dir=run_dir(_run),
                first=_first,
                last=_last,
                flags=f"{GRAPHS} {TF32}",
            log:
                f"{run_dir(_run)}/logs/it{_first:04d}-{_last:04d}.log",
            threads: 1  # raise with --set-threads (README, "Performance")
            resources:
                gpu=GPU,
                mem_mb=16000,
                runtime=60 * 24,
            shell:
                "OMP_NUM_THREADS={threads} {CLI} train-block {params.flags} --run {params.run} "
                "--config {input.config} --data {input.data} --run-dir {params.run_dir} "
                "--first {params.first} --last {params.last} --device {DEVICE} > {log} 2>&1"
