import json
import shlex
import sys

from snakemake.utils import min_version, validate

from shortrun_ot.config import (
    all_run_settings,
    anomaly_run,
    coerce_command_line_values,
    dataset_id,
    is_correction_iteration,
    stage_settings,
    validate_config,
)
from shortrun_ot import layout

min_version("9.0")

# One run is a dependency chain of 3 jobs per iteration; Snakemake walks it recursively.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 100_000))

# --config a='{b: 4}' hands nested values over as strings; read them as the schema's types.
config.update(coerce_command_line_values(config))
validate(config, "../schemas/config.schema.yaml")
validate_config(config)  # runs merged with the defaults, cross-references

RESULTS = config["results"]
RUN = f"{RESULTS}/runs/{{run}}"
IT = f"{RUN}/it{{t}}"
PREPARED = config["data"]["prepared"]
RAW = config["data"]["raw_root"]
EVAL = config["evaluation"]
ANOMALY = config["anomaly"]
CLI = f"{shlex.quote(sys.executable)} -m shortrun_ot"
DEVICE = config["device"]
COMPUTE = config["compute"]
BLOCK = COMPUTE["iterations_per_job"]
# Flags of the torch stages that change how, not what, they compute.
GRAPHS = "--cuda-graphs" if COMPUTE["cuda_graphs"] else ""
TF32 = "--tf32" if COMPUTE["tf32"] else ""
SETTINGS = all_run_settings(config)  # the keys of `runs` and the anomaly runs

# Cluster resources are declared in each rule's `resources`; profiles only pick the executor.
# The SLURM executor turns gpu into --gpus, mem_mb into --mem, runtime (minutes) into -t and
# threads into --cpus-per-task. Rules that run torch on `device` ask for a GPU unless the
# configuration pins the CPU.
GPU = 0 if DEVICE == "cpu" else 1


wildcard_constraints:
    run=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    t=r"\d\d\d\d+",


def prepared_data_of(run):
    return f"{PREPARED}/{dataset_id(SETTINGS[run])}.pt"


def prepared_data(wildcards):
    return prepared_data_of(wildcards.run)


def run_dir(run):
    return f"{RESULTS}/runs/{run}"


def latents_after(run, t):
    """The latents iteration t hands on: corrected on correction iterations, else inferred."""
    return str(layout.latents_after(run_dir(run), SETTINGS[run], t))


def checkpoint_of(run, t):
    return str(layout.checkpoint_of(run_dir(run), t))


def final_iteration(run):
    return SETTINGS[run]["iterations"]


def final_targets():
    targets = []
    for run in config["runs"]:
        T = final_iteration(run)
        targets += [checkpoint_of(run, T), f"{RESULTS}/runs/{run}/figures/grid.png",
                    f"{RESULTS}/runs/{run}/history.csv"]
    return targets + [f"{RESULTS}/table1.csv"]


def infer_inputs(w):
    inputs = {
        "config": f"{run_dir(w.run)}/config.json",
        "data": prepared_data(w),
        "checkpoint": checkpoint_of(w.run, int(w.t) - 1),
    }
    if SETTINGS[w.run]["langevin"]["persistent"]:
        inputs["latents"] = latents_after(w.run, int(w.t) - 1)
    return inputs


def correct_inputs(w):
    t = int(w.t)
    inputs = {
        "config": f"{run_dir(w.run)}/config.json",
        "latents": str(layout.stage_outputs(run_dir(w.run), "infer", t)["latents"]),
        "prior": str(layout.prior_of(run_dir(w.run))),
    }
    previous = layout.previous_correction(run_dir(w.run), SETTINGS[w.run], t)
    if previous is not None:  # warm start from the previous correction's dual vector h
        inputs["previous"] = str(previous)
    return inputs


def history_inputs(w):
    """Every stage JSON of the run's iterations 1..T (correct.json on correction iterations only)."""
    return [str(layout.stage_outputs(run_dir(w.run), stage, t)["stats"])
            for t in range(1, final_iteration(w.run) + 1) for stage in layout.stages_of(SETTINGS[w.run], t)]


def blocks(run):
    """(first, last) of each job of ``run`` when a job runs BLOCK iterations: 1..B, B+1..2B, ..."""
    T = final_iteration(run)
    return [(first, min(first + BLOCK - 1, T)) for first in range(1, T + 1, BLOCK)]


def block_inputs(run, first, last):
    """What a block needs: iteration first-1's checkpoint and latents, the prior and the last h if it corrects."""
    settings = SETTINGS[run]
    inputs = {
        "config": f"{run_dir(run)}/config.json",
        "data": prepared_data_of(run),
        "checkpoint": checkpoint_of(run, first - 1),
        "latents": latents_after(run, first - 1),
    }
    corrections = [t for t in range(first, last + 1) if "correct" in layout.stages_of(settings, t)]
    if corrections:
        inputs["prior"] = str(layout.prior_of(run_dir(run)))
        previous = layout.previous_correction(run_dir(run), settings, corrections[0])
        if previous is not None:  # always before `first`: corrections are L iterations apart
            inputs["previous"] = str(previous)
    return inputs


def block_outputs(run, first, last):
    return [str(path) for t in range(first, last + 1) for path in layout.iteration_outputs(run_dir(run), SETTINGS[run], t)]


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


def stage_errors(main_logs):
    """The `shortrun-ot: error:` lines in the logs of the jobs that failed, found via Snakemake's main log.

    Stages write their messages to their own log file, of which Snakemake prints only the path.
    """
    import re

    lines = []
    for main_log in [main_logs] if isinstance(main_logs, str) else list(main_logs or []):
        try:
            text = open(main_log, errors="replace").read()
        except (OSError, TypeError):
            continue
        for logs in re.findall(r"log: (.+?) \(check log file\(s\) for error details\)", text):
            for path in logs.split(", "):
                try:
                    with open(path, errors="replace") as f:
                        lines += [l[l.index("shortrun-ot: error:"):].strip() for l in f.read().splitlines()
                                  if "shortrun-ot: error:" in l]  # may follow an unfinished progress bar
                except OSError:
                    pass
    return list(dict.fromkeys(lines))


onerror:
    for line in stage_errors(log):
        print(line, file=sys.stderr)
