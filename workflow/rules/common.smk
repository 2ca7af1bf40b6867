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
RUN = RESULTS + "/runs/{run}"
IT = RUN + "/it{t}"
PREPARED = config["data"]["prepared"]
RAW = config["data"]["raw_root"]
CLI = f"{shlex.quote(sys.executable)} -m shortrun_ot"
DEVICE = config["device"]
SETTINGS = all_run_settings(config)  # the keys of `runs` and the anomaly runs


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
        targets += [checkpoint_of(run, T), f"{RESULTS}/runs/{run}/figures/grid.png"]
    return targets + [f"{RESULTS}/table1.csv"]

