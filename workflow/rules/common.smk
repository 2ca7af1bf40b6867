import functools
import json
import math
import shlex
import sys

from snakemake.utils import min_version, validate

from shortrun_ot import layout
from shortrun_ot.config import (
    anomaly_run,
    coerce_command_line_values,
    correction_iterations,
    dataset_id,
    mixture_settings,
    stage_settings,
    sweep_points,
    table1_runs,
    validate_config,
)
from shortrun_ot.data import DATASETS, raw_source
from shortrun_ot.methods.base import StageRef
from shortrun_ot.models import ARCHITECTURES, architecture_of
from shortrun_ot.pipeline import build_method

min_version("9.0")

# A run is a dependency chain of a few jobs per iteration; Snakemake walks it recursively.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 100_000))

# --config a='{b: 4}' hands nested values over as strings; read them as the schema's types.
config.update(coerce_command_line_values(config))
validate(config, "../schemas/config.schema.yaml")
SETTINGS = validate_config(config)  # every run: the keys of `runs`, the sweep points, the anomaly runs
METHODS = {run: build_method(settings) for run, settings in SETTINGS.items()}  # each run's schedule
TABLE1_RUNS = table1_runs(config, SETTINGS)  # evaluation.runs on each of evaluation.datasets

RESULTS = config["results"]
RUN = f"{RESULTS}/runs/{{run}}"
IT = f"{RUN}/it{{t}}"
PREPARED = config["data"]["prepared"]
RAW = config["data"]["raw_root"]
NO_DOWNLOAD = "" if config["data"]["download"] else "--no-download"
EVAL = config["evaluation"]
ANOMALY = config["anomaly"]
FIGURES = config["figures"]
PAPER_RESULTS = "workflow/resources/paper_results.csv"  # the papers' numbers (Tables 1, 2, 4)
CLI = f"{shlex.quote(sys.executable)} -m shortrun_ot"
DEVICE = config["device"]
COMPUTE = config["compute"]
BLOCK = COMPUTE["iterations_per_job"]
KEEP_EVERY = COMPUTE["keep_states_every"]  # > 1 only with BLOCK > 1 (validate_config)
# Flags of the training stages that change how, not what, they compute.
TRAIN_FLAGS = " ".join(flag for flag, on in (("--cuda-graphs", COMPUTE["cuda_graphs"]), ("--tf32", COMPUTE["tf32"]),
                                             (f"--batches-at-once {COMPUTE['batches_at_once']}",
                                              COMPUTE["batches_at_once"] > 1))
                       if on)
STAGE_NAMES = sorted({stage for method in METHODS.values() for stage in method.STAGES})

# Cluster resources are declared in each rule's `resources`; profiles only pick the executor.
# The SLURM executor turns gpu into --gpus, mem_mb into --mem, runtime (minutes) into -t and
# threads into --cpus-per-task. Rules that run torch on `device` ask for a GPU unless the
# configuration pins the CPU.
GPU = 0 if DEVICE == "cpu" else 1


wildcard_constraints:
    dataset="|".join(DATASETS),
    run=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    t=r"\d\d\d\d+",
    stage="|".join(STAGE_NAMES),


def memory(base_mb, run=None):
    """``mem_mb`` of a rule: ``base_mb`` for images up to CelebA's 3x64x64, scaled with the pixels of larger
    ones (celeba128: 4x), for the dataset of ``run`` (or of the job's ``run`` wildcard) or the job's
    ``dataset`` wildcard."""

    def mem_mb(w):
        run_key = run or (w.run if "run" in w.keys() else None)
        dataset = SETTINGS[run_key]["dataset"] if run_key else w.dataset
        pixels = math.prod(ARCHITECTURES[architecture_of(dataset)]["image_shape"])
        return base_mb * max(1, math.ceil(pixels / (3 * 64 * 64)))

    return mem_mb


def run_dir(run):
    return f"{RESULTS}/runs/{run}"


def prepared_data_of(run):
    return f"{PREPARED}/{dataset_id(SETTINGS[run])}.pt"


def prepared_data(wildcards):
    return prepared_data_of(wildcards.run)


def final_iteration(run):
    return SETTINGS[run]["iterations"]


def roles(paths):
    """`ROLE=PATH ...` for the command line."""
    return " ".join(f"{role}={shlex.quote(str(path))}" for role, path in paths.items())


def stage_input_files(w):
    """The state files stage `w.stage` of iteration `w.t` reads (its method says which)."""
    method, t = METHODS[w.run], int(w.t)
    if w.stage not in method.stages(t):
        raise ValueError(f"run {w.run!r} (method {SETTINGS[w.run]['method']!r}) has no stage {w.stage!r} in "
                         f"iteration {t}; its stages there: {', '.join(method.stages(t))}")
    return {role: str(path) for role, path in layout.input_files(run_dir(w.run), method, w.stage, t).items()}


def stage_inputs(w):
    return {"config": f"{run_dir(w.run)}/config.json", "data": prepared_data(w), **stage_input_files(w)}


def stage_reports(w):
    """Every stage report of the run's iterations 0..T."""
    method = METHODS[w.run]
    return [str(layout.report_file(run_dir(w.run), StageRef(0, "init")))] + [
        str(path) for path in layout.reports(run_dir(w.run), method, final_iteration(w.run))]


def final_state_files(w):
    """Role -> the state file of the model after the last iteration (copied into final/)."""
    method = METHODS[w.run]
    return {role: str(layout.state_file(run_dir(w.run), ref))
            for role, ref in method.evaluation_points(final_iteration(w.run))["end"].items()}


def final_model(run):
    """Role -> final/<role>.pt of the run."""
    return {role: str(path) for role, path in layout.final_files(run_dir(run), METHODS[run]).items()}


def blocks(run):
    """(first, last) of each job of ``run`` when a job runs BLOCK iterations: 1..B, B+1..2B, ..."""
    T = final_iteration(run)
    return [(first, min(first + BLOCK - 1, T)) for first in range(1, T + 1, BLOCK)]


@functools.cache
def kept_iterations(run):
    """The iterations whose state files `run` keeps (None: every one; compute.keep_states_every > 1)."""
    if KEEP_EVERY == 1:
        return None
    return layout.kept_iterations(METHODS[run], blocks(run), KEEP_EVERY)


def keep_flag(wildcards, output):
    """` --keep-iterations T ...` of a block job: the iterations that have state files among its outputs (empty
    when every iteration keeps its states). Derived from the outputs, it is no parameter that Snakemake's params
    trigger compares, so changing compute.keep_states_every reruns no block already run."""
    if KEEP_EVERY == 1:
        return ""
    kept = sorted({layout.iteration_of(path) for path in output if path.endswith(".pt")})
    return " --keep-iterations " + " ".join(map(str, kept))


def require_kept(run, refs, product):
    """Stop with a clear message where `product` needs states that compute.keep_states_every leaves out."""
    kept = kept_iterations(run)
    missing = sorted({ref.iteration for ref in refs} - kept) if kept is not None else []
    if missing:
        raise ValueError(f"{product} needs the states of iteration(s) {missing} of run {run!r}, which "
                         f"compute.keep_states_every = {KEEP_EVERY} does not keep; set it to 1, or to a divisor "
                         f"of those iterations")


def fid_reference_of(w):
    n_real = EVAL["fid_real_images"] or "all"
    return f"{RESULTS}/fid/{SETTINGS[w.run]['dataset']}-{n_real}.npz"


def evaluation_inputs(w):
    inputs = {"config": f"{run_dir(w.run)}/config.json", "data": prepared_data(w), "fid_reference": fid_reference_of(w)}
    if w.get("t") is None:  # the final model
        return {**inputs, "final": f"{run_dir(w.run)}/final"}
    points = METHODS[w.run].evaluation_points(int(w.t))
    require_kept(w.run, points.get(w.point, {}).values(), f"the evaluation of point {w.point!r} of iteration {w.t}")
    return {**inputs, **layout.point_files(run_dir(w.run), METHODS[w.run], int(w.t), w.point)}


def evaluation_model(w):
    if w.get("t") is None:
        return roles(final_model(w.run))
    return roles(layout.point_files(run_dir(w.run), METHODS[w.run], int(w.t), w.point))


def final_targets():
    """Table 1 and, per run, its grid, history and last iteration's state files (so that deleting
    iterations makes Snakemake recompute them)."""
    targets = []
    for run in TABLE1_RUNS:
        last = layout.iteration_refs(METHODS[run], final_iteration(run))
        targets += [f"{run_dir(run)}/figures/grid.png", f"{run_dir(run)}/history.csv",
                    *(str(layout.state_file(run_dir(run), ref)) for ref in last)]
    return targets + [f"{RESULTS}/table1.csv"]


def anomaly_runs():
    return [
        anomaly_run(model, digit, seed)
        for model in ANOMALY["runs"]
        for digit in ANOMALY["digits"]
        for seed in range(ANOMALY["seeds"])
    ]


def sweep_runs(name):
    return [key for _, _, key in sweep_points(config, name, SETTINGS)]


def sweep_values(name):
    """(value, run key) of each point of a one-base-run sweep (figures.figure5, figures.table4)."""
    return [(value, key) for _, value, key in sweep_points(config, name, SETTINGS)]


def figure2_inputs(w):
    """Fig. 2: the inferred latents of every correction iteration of the figure's run, and its prior sample."""
    run = FIGURES["figure2"]["run"]
    method = METHODS[run]
    require_kept(run, [StageRef(t, "infer") for t in correction_iterations(method)], "Fig. 2")
    latents = {f"latents{t}": str(layout.state_file(run_dir(run), StageRef(t, "infer")))
               for t in correction_iterations(method)}
    return {"config": f"{run_dir(run)}/config.json", "data": prepared_data_of(run),
            "prior": str(layout.state_file(run_dir(run), StageRef(0, "init"))), **latents}


def figure5_evaluations():
    """VALUE -> evaluation files of each run of the Fig. 5 sweep: every fid_every-th iteration and the last."""
    spec = FIGURES["figure5"]
    files = {}
    for value, run in sweep_values(spec["sweep"]):
        T = final_iteration(run)
        files[value] = [f"{run_dir(run)}/evaluation/end-it{t:04d}.json"
                        for t in sorted({*range(spec["fid_every"], T + 1, spec["fid_every"]), T})]
    return files


def table4_evaluations(point):
    """VALUE -> the evaluation of ``point`` (before_correction / after_correction) at each run's last correction."""
    return {value: f"{run_dir(run)}/evaluation/{point}-it{correction_iterations(METHODS[run])[-1]:04d}.json"
            for value, run in sweep_values(FIGURES["table4"]["sweep"])}


ABLATIONS = [name for name in FIGURES if name in ("table3", "table5", "table6")]  # one-key sweeps as tables


def ablation_metrics(table):
    """VALUE -> the final metrics.json of the point of each base run of the ablation's sweep."""
    files = {}
    for _, value, run in sweep_points(config, FIGURES[table]["sweep"], SETTINGS):
        files.setdefault(value, []).append(f"{run_dir(run)}/metrics.json")
    return files


def value_pairs(files):
    """`VALUE=PATH ...` for the command line, from VALUE -> path or list of paths."""
    return " ".join(f"{value}={path}" for value, paths in files.items()
                    for path in ([paths] if isinstance(paths, str) else paths))


INTERPOLATING = [name for name in ("aeot_celeba", "coupled_vae_mnist") if name in FIGURES]
MIXTURE_MODELS = mixture_settings(config) if "coupled_vae_mixture" in FIGURES else {}


def interpolation_spec(run):
    """``pairs`` and ``steps`` of the first figure (figures.aeot_celeba, figures.coupled_vae_mnist) that names the run."""
    return next(FIGURES[name] for name in INTERPOLATING if run in FIGURES[name]["runs"])


#: the product that a `figures:` entry makes, and which its short target name builds
FIGURE_PRODUCTS = {
    "figure2": "figures/figure2.png", "figure3": "figures/figure3.png", "figure4": "figures/figure4.png",
    "figure5": "figures/figure5.png", "table3": "table3.csv", "table4": "table4.csv", "table5": "table5.csv",
    "table6": "table6.csv", "occlusion": "figures/occlusion.png", "chain_stability": "figures/chain_stability.png",
    "eight_gaussians": "figures/eight_gaussians.png", "aeot_mnist": "aeot_mnist.csv",
    "aeot_celeba": "figures/aeot_celeba.png", "coupled_vae_mixture": "coupled_vae_mixture.csv",
    "coupled_vae_mnist": "figures/coupled_vae_mnist.png"}


def figure_targets():
    """Every figure and ablation table the configuration declares."""
    return [f"{RESULTS}/{FIGURE_PRODUCTS[name]}" for name in FIGURES]


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


def missing_raw_data():
    """For each dataset that this invocation prepares: its raw files, downloaded if absent; the message
    of each that is neither on disk nor downloadable (shortrun_ot.data.fetch_raw)."""
    from shortrun_ot.data import DatasetUnavailableError, fetch_raw

    prepare_rules = {"prepare_data", "prepare_anomaly_data"}
    datasets = sorted({job.wildcards.dataset for job in workflow.dag.needrun_jobs() if job.rule.name in prepare_rules})
    problems = []
    for dataset in datasets:
        try:
            fetch_raw(dataset, f"{RAW}/{raw_source(dataset)}", download=config["data"]["download"])
        except DatasetUnavailableError as exc:
            problems.append(str(exc))
    return problems


def plan_cost():
    """(device, wall seconds, printable lines) of the jobs this invocation will run (shortrun_ot.cost)."""
    import torch
    from shortrun_ot import cost

    device = "cpu" if DEVICE == "cpu" or (DEVICE == "auto" and not torch.cuda.is_available()) else "cuda"
    speedup = cost.BFLOAT16_SPEEDUP if device == "cpu" and EVAL["fid_precision"] == "bfloat16" else 1.0
    anomaly_evaluation = {**EVAL, "fid_samples": 0, "test_langevin_steps": ANOMALY["test_langevin_steps"]}
    plan = {}
    for job in workflow.dag.needrun_jobs():
        name, run = job.rule.name, job.wildcards_dict.get("run")
        stages = [job.wildcards_dict["stage"]] if name == "stage" else []
        if name.startswith("train_") and hasattr(job.params, "first"):  # a block job (blocks.smk)
            run = job.params.run
            stages = [stage for t in range(job.params.first, job.params.last + 1) for stage in METHODS[run].stages(t)]
        evaluated = "evaluate" if name == "anomaly_score" else name  # its score: the test set's reconstructions
        seconds = cost.job_seconds(evaluated, METHODS.get(run), stages, device=device,
                                   evaluation=anomaly_evaluation if name == "anomaly_score" else EVAL,
                                   inception_speedup=speedup)
        if name == "fid_reference":
            seconds = cost.reference_seconds(job.wildcards_dict["dataset"], job.wildcards_dict["n_real"],
                                             device=device, inception_speedup=speedup)
        key = run if run in SETTINGS else "other jobs"
        plan[key] = plan.get(key, 0.0) + seconds * (job.threads if device == "cpu" else 1)
    try:
        cores = workflow.cores
    except Exception:  # cluster execution: no core count, jobs run side by side
        cores = workflow.nodes or 1
    wall, text = cost.describe(plan, device, cores)
    return device, wall, text


onstart:
    # Before any job starts (not on a dry run): every dataset to prepare is on disk or downloadable, and
    # the plan's estimated cost is printed; more than a day on the CPU needs allow_long_runs.
    problems = missing_raw_data()
    if problems:
        for problem in problems:
            print(f"shortrun-ot: error: {problem}", file=sys.stderr)
        raise SystemExit(1)
    device, wall, text = plan_cost()
    print(text, file=sys.stderr)
    if device == "cpu" and wall > 24 * 3600 and not config["allow_long_runs"]:
        print("shortrun-ot: error: this plan would take more than a day on the CPU (estimate above). Run it on "
              "a GPU (config/gpu.yaml) or a cluster (docs/cluster.md), ask for less (config/quick.yaml), or "
              "start it anyway with --config allow_long_runs=true", file=sys.stderr)
        raise SystemExit(1)


onerror:
    for line in stage_errors(log):
        print(line, file=sys.stderr)
