"""Snakemake profiles (local, SLURM), per-rule resources and the linter.

The SLURM dry run needs the executor plugin (snakemake-executor-plugin-slurm) but no SLURM
installation: with -n Snakemake parses the profile and the plugin's settings, builds the DAG
with every job's resources, and submits nothing.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config, with_figures

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "workflow" / "profiles"
GPU_RULES = {"stage", "evaluate", "evaluate_point", "fid_reference", "anomaly_score", "chain_stability", "classifier",
             "sample_scores"}
RESOURCE_KEYS = {"gpu", "gres", "gpu_model", "mem_mb", "mem_mb_per_cpu", "runtime", "cpus_per_task",
                 "slurm_partition", "slurm_account"}


def workflow_rules() -> set[str]:
    names = set()
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        names |= set(re.findall(r"^\s*rule (\w+):", path.read_text(), flags=re.M))
    return names


def run_snakemake(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def job_resources(dry_run_output: str) -> dict[str, list[dict[str, str]]]:
    """rule name -> the `resources:` of each of its jobs in a dry run's output."""
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in dry_run_output.splitlines():
        if m := re.match(r"\s*(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif (m := re.match(r"\s*resources: (.*)", line)) and rule:
            jobs.setdefault(rule, []).append(dict(item.split("=", 1) for item in m.group(1).split(", ")))
            rule = None
    return jobs


def cluster_config(tmp: Path) -> Path:
    """The tiny configuration on a GPU device (so GPU rules ask for one), with a Table 2 run and the figures."""
    path = tiny_config(tmp)
    config = with_figures(yaml.safe_load(path.read_text()))
    config["device"] = "cuda"
    config["training"]["iterations"] = 2
    config["anomaly"] = {"digits": [1], "seeds": 1, "test_langevin_steps": 3}
    path.write_text(yaml.safe_dump(config))
    return path


def every_rule_targets(tmp: Path) -> list[str]:
    results = tmp / "results"
    return ["all", "figures", "table3", "table5", "table6", str(results / "table2.csv"), str(results / "runs" / "ours" / "evaluation" / "end-it0002.json")]


@pytest.mark.parametrize("profile", ["slurm", "local"])
def test_profile_files_leave_resources_to_the_rules(profile):
    settings = yaml.safe_load((PROFILES / profile / "config.yaml").read_text())
    assert settings["executor"] == profile
    assert "set-resources" not in settings and "set-threads" not in settings
    defaults = {item.split("=")[0] for item in settings.get("default-resources") or []}
    assert not defaults & (RESOURCE_KEYS - {"slurm_partition", "slurm_account"})


def site_settings() -> list[str]:
    """The site settings of docs/cluster.md: a partition for every job, the GPU rules on a GPU
    partition with a GPU type."""
    gpu = [f"{rule}:{key}" for rule in sorted(GPU_RULES) for key in ("slurm_partition=gpu", "gpu_model=a100")]
    return ["--default-resources", "slurm_partition=cpu", "--set-resources", *gpu]


@pytest.mark.slow
def test_slurm_profile_dry_run_gives_every_rule_resources(tmp_path):
    config = cluster_config(tmp_path)
    output = run_snakemake("-n", "--profile", "workflow/profiles/slurm", *site_settings(), "--configfile", str(config),
                           "--", *every_rule_targets(tmp_path))
    assert "Using profile workflow/profiles/slurm" in output
    jobs = job_resources(output)
    assert set(jobs) == workflow_rules() | {"all"}, "every rule of the workflow appears in the dry run"
    for target in ("all", "figures", "table3", "table5", "table6"):  # the target rules run nothing
        del jobs[target]
    for rule, resources in jobs.items():
        for job in resources:
            assert int(job["mem_mb"]) > 0 and int(job["runtime"]) > 0, (rule, job)
            assert int(job.get("gpu", 0)) == (1 if rule in GPU_RULES else 0), (rule, job)
            assert (job["slurm_partition"], job.get("gpu_model")) == (("gpu", "a100") if rule in GPU_RULES
                                                                      else ("cpu", None)), (rule, job)
    assert not (tmp_path / "results").exists(), "a dry run writes nothing"


@pytest.mark.slow
def test_local_profile_dry_run(tmp_path):
    config = tiny_config(tmp_path)
    output = run_snakemake("all", "-n", "--profile", "workflow/profiles/local", "--configfile", str(config))
    jobs = job_resources(output)
    assert {"stage", "evaluate", "table1", "history"} <= set(jobs)
    assert all(job.get("gpu", "0") == "0" for resources in jobs.values() for job in resources), "device: cpu asks for no GPU"


# What `snakemake --lint` may still say; docs/cluster.md and docs/development.md ("Linting") explain each.
EXPLAINED_LINTS = {
    "Specify a conda environment or container for each rule.",
    "Shell command directly uses variable CLI from outside of the rule",
    "Shell command directly uses variable DEVICE from outside of the rule",
    "Shell command directly uses variable NO_DOWNLOAD from outside of the rule",
    "Shell command directly uses variable TRAIN_FLAGS from outside of the rule",
}


@pytest.mark.slow
def test_lint_reports_only_explained_warnings():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    output = result.stdout + result.stderr
    titles = {m.group(1).rstrip(":") for m in re.finditer(r"^    \* (.+?)(?: in line \d+)?:?$", output, flags=re.M)}
    assert titles <= EXPLAINED_LINTS, sorted(titles - EXPLAINED_LINTS)
    assert "Lints for snakefile" not in output, "no workflow-level lints (paths, functions)"
