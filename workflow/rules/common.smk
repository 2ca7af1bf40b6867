import json
import shlex
import sys

from snakemake.utils import min_version, validate

from shortrun_ot.config import (
    all_run_settings,
    anomaly_run,
    dataset_id,
    is_correction_iteration,
    stage_settings,
    validate_config,
)

min_version("9.0")

# One run is a dependency chain of 3 jobs per iteration; Snakemake walks it recursively.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 100_000))

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
SETTINGS = all_run_settings(config)  # the keys of `runs` and the anomaly runs

# Cluster resources are declared in each rule's `resources`; profiles only pick the executor.
# The SLURM executor turns gpu into --gpus, mem_mb into --mem, runtime (minutes) into -t and
# threads into --cpus-per-task. Rules that run torch on `device` ask for a GPU unless the
# configuration pins the CPU.
GPU = 0 if DEVICE == "cpu" else 1


wildcard_constraints:
    run=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    t=r"\d\d\d\d+",


def it(t):
    """Iteration directory name: it0000, it0001, ..."""
    return f"{int(t):04d}"


def prepared_data(wildcards):
    return f"{PREPARED}/{dataset_id(SETTINGS[wildcards.run])}.pt"


def latents_after(run, t):
    """The latents iteration t hands on: corrected on correction iterations, else inferred."""
    t = int(t)
    if t == 0:
        return f"{RESULTS}/runs/{run}/it0000/latents.pt"
    name = "corrected" if is_correction_iteration(SETTINGS[run], t) else "inferred"
    return f"{RESULTS}/runs/{run}/it{it(t)}/{name}.pt"


def checkpoint_of(run, t):
    return f"{RESULTS}/runs/{run}/it{it(t)}/checkpoint.pt"


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
        "config": f"{RESULTS}/runs/{w.run}/config.json",
        "data": prepared_data(w),
        "checkpoint": checkpoint_of(w.run, int(w.t) - 1),
    }
    if SETTINGS[w.run]["langevin"]["persistent"]:
        inputs["latents"] = latents_after(w.run, int(w.t) - 1)
    return inputs


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


def history_inputs(w):
    """Every stage JSON of the run's iterations 1..T (correct.json on correction iterations only)."""
    stats = []
    for t in range(1, final_iteration(w.run) + 1):
        stages = ["infer", "correct", "learn"] if is_correction_iteration(SETTINGS[w.run], t) else ["infer", "learn"]
        stats += [f"{RESULTS}/runs/{w.run}/it{it(t)}/{stage}.json" for stage in stages]
    return stats


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
