# One job per block of compute.iterations_per_job iterations (1..B, B+1..2B, ...): it reads the state
# files from before the block and writes every file of iterations first..last, as the per-stage
# jobs would. A block's files are its outputs, so deleting any of them reruns that block and the
# ones after it. The rules are made per run and block because a block's list of files depends on
# the stages of its iterations (the run's method says which), which an output pattern cannot express.
# With compute.keep_states_every = N > 1 the iterations that layout.kept_iterations leaves out write
# their reports only (docs/performance.md, "Disk").

for _run, _method in METHODS.items():
    for _first, _last in blocks(_run):

        rule:
            name:
                f"train_{_run.replace('-', '_').replace('.', '_')}_it{_first:04d}_{_last:04d}"
            input:
                config=f"{run_dir(_run)}/config.json",
                data=prepared_data_of(_run),
                states=[str(path) for path in layout.block_inputs(run_dir(_run), _method, _first, _last)],
            output:
                [str(path) for path in layout.block_outputs(run_dir(_run), _method, _first, _last,
                                                            kept_iterations(_run))],
            params:
                run=_run,
                run_dir=run_dir(_run),
                first=_first,
                last=_last,
                keep=keep_flag,
            log:
                f"{run_dir(_run)}/logs/it{_first:04d}-{_last:04d}.log",
            threads: 1  # raise with --set-threads (docs/performance.md)
            resources:
                gpu=GPU,
                mem_mb=memory(16000, run=_run),
                runtime=60 * 24,
            shell:
                "OMP_NUM_THREADS={threads} {CLI} train-block {TRAIN_FLAGS} --run {params.run} "
                "--config {input.config} --data {input.data} --run-dir {params.run_dir} "
                "--first {params.first} --last {params.last}{params.keep} --device {DEVICE} > {log} 2>&1"
