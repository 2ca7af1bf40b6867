"""The SLURM profile against a real SLURM (issue 19).

tests/slurm_cluster.sh starts a one-node cluster on this machine (slurmctld, slurmd and munge, no
accounting database) for the module and stops it afterwards. On it, the tiny configuration runs to
Table 1 through `--profile workflow/profiles/slurm` with the site options of docs/cluster.md; its training job of iteration 1 is cancelled with `scancel` half-way and the next
invocation finishes the run. Beside it run the same configuration locally (the tensors must be
bitwise the same) and a job below its memory needs. Every Snakemake has a working directory of its
own (a params.yaml snapshot, a link to the repository's workflow/), so that its locks, metadata and
SLURM logs never touch the repository's .snakemake.

Without root (or passwordless sudo) and Debian's packages, the module skips and says why.
"""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO, tiny_config

pytestmark = pytest.mark.slow

CLUSTER = REPO / "tests" / "slurm_cluster.sh"
PARAMS = (REPO / "params.yaml").read_text()  # one snapshot: others may edit params.yaml meanwhile
# docs/cluster.md: every job to a partition (this cluster's only one); no account,
# the cluster has no accounting.
SLURM = ("--profile", "workflow/profiles/slurm", "--default-resources", "slurm_partition=main")
# Test only: the first status check 2 s after a submission (the plugin's default is 40 s; each check
# that finds no job finished waits 10 s longer), the SLURM logs of successful jobs kept, and the
# FID reference on one thread, so that on this 2-CPU node it runs beside the first training job.
QUICK = ("--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs",
         "--set-threads", "fid_reference=1")
# The stages of each iteration of the tiny run: short-run method, one iteration, correction every iteration.
STAGES = {0: {"init"}, 1: {"infer", "correct", "learn"}}


def cluster_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER), *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The one-node cluster; afterwards none of its jobs and none of its daemons is left running."""
    directory = tmp_path_factory.mktemp("slurm")
    result = cluster_script("install")
    if result.returncode == 3:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr
    try:
        result = cluster_script("start", str(directory))
        if result.returncode == 3:
            pytest.skip(result.stderr.strip())
        assert result.returncode == 0, result.stderr
        yield directory
    finally:
        daemons = [int(path.read_text()) for path in directory.glob("*.pid")]
        result = cluster_script("stop", str(directory))
        assert result.returncode == 0, result.stderr
        assert not [pid for pid in daemons if Path(f"/proc/{pid}").exists()], "a SLURM or munge daemon survived"


class Snakemake:
    """The real Snakemake in ``workdir``, in a new session, its output going to a file."""

    def __init__(self, workdir: Path, *args: str):
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "params.yaml").exists():
            (workdir / "params.yaml").write_text(PARAMS)
            (workdir / "workflow").symlink_to(REPO / "workflow")  # the profiles, the papers' numbers
        self.log = workdir / f"snakemake-{len(list(workdir.glob('snakemake-*.log')))}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args], cwd=workdir,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"})

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 600) -> tuple[int, str]:
        """Exit status and output, once Snakemake has ended."""
        try:
            return self.process.wait(timeout), self.output()
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"Snakemake ran longer than {timeout} s:\n{self.output()[-5000:]}") from None

    def kill(self):
        """SIGKILL Snakemake and what it started here (SIGTERM only makes it wait for its SLURM jobs)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def wait_for(condition, snakemake: Snakemake, what: str, timeout: float = 300):
    """The first true value of ``condition()``, polled while ``snakemake`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and snakemake.process.poll() is None:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} (Snakemake exit status {snakemake.process.poll()}):\n"
                         f"{snakemake.output()[-5000:]}")


def config_in(root: Path, data: Path | None = None) -> Path:
    """The tiny run `ours` (one iteration, with correction) and its Table 1, under ``root``; the data
    under ``data`` if given."""
    path = tiny_config(root, iterations=1)
    config = yaml.safe_load(path.read_text())
    config["methods"]["shortrun"]["correction"]["every"] = 1
    config["evaluation"]["runs"] = ["ours"]
    config["anomaly"] = {"digits": [1], "seeds": 1}  # fewer Table 2 runs for every Snakemake to read
    if data:
        config["data"] = {"raw_root": str(data / "raw"), "prepared": str(data / "prepared")}
    path.write_text(yaml.safe_dump(config))
    return path


def tensors(root: Path) -> dict[str, str]:
    """Iteration directory/state file -> SHA-256 of every state file of `ours` under ``root``."""
    return {f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "results" / "runs" / "ours").glob("it*/*.pt"))}


def stage_jobs(output: str) -> set[tuple[int, str]]:
    """(iteration, stage) of every training stage that a Snakemake output shows."""
    return {(int(t), stage) for t, stage in re.findall(r"wildcards: run=ours, t=(\d+), stage=(\w+)", output)}


def slurm_jobs() -> list[dict[str, str]]:
    """SLURM's own record of every job of the cluster (slurmctld keeps it for MinJobAge = 600 s after the
    job ends): JobId, JobState, Comment (the plugin's `rule_<rule or group>_...`), StdOut (the SLURM log)."""
    out = subprocess.run(["scontrol", "--oneliner", "show", "job"], check=True, capture_output=True, text=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.startswith("JobId=")]


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """Every Snakemake of the module, at once where they are independent: the tiny run through SLURM
    (its iteration 1 cancelled once), the same run locally, and a SLURM job below its memory needs."""
    root = tmp_path_factory.mktemp("runs")
    started = []
    try:
        local_root = root / "local"
        local_root.mkdir()
        it1 = [str(local_root / "results" / "runs" / "ours" / "it0001" / f"{s}.pt") for s in sorted(STAGES[1])]
        local = Snakemake(local_root / "wd", "--profile", "workflow/profiles/local", "--configfile",
                          str(config_in(local_root)), "--", *it1)
        started.append(local)

        table1 = str(root / "results" / "table1.csv")
        options = (*SLURM, *QUICK, "--configfile", str(config_in(root)))
        # The profile resubmits a failed job once (retries: 1); without that retry the cancelled job
        # ends the invocation, as it does once the retry has failed too.
        first = Snakemake(root / "wd", *options, "--retries", "0", "--", table1)
        started.append(first)
        pattern = r"SLURM jobid (\d+) \(log: \S+/group_ours_it0001_stage/"
        job = wait_for(lambda: re.search(pattern, first.output()), first, "submission of iteration 1").group(1)

        # 100 MB: less than Python with torch needs. The data prepared by the run above; no retry.
        memory_root = root / "memory"
        memory_root.mkdir()
        memory = Snakemake(memory_root / "wd", *SLURM, *QUICK, "--retries", "0", "--set-resources",
                           "stage:mem_mb=100", "--configfile", str(config_in(memory_root, data=root)), "--",
                           str(memory_root / "results" / "runs" / "ours" / "it0000" / "init.pt"))
        started.append(memory)

        it1_dir = root / "results" / "runs" / "ours" / "it0001"
        wait_for(lambda: (it1_dir / "infer.pt").exists(), first, "state of iteration 1's first stage")
        subprocess.run(["scancel", job], check=True)
        first_result = first.wait()
        missing = {s for s in STAGES[1]
                   if not all((it1_dir / f"{s}{ext}").exists() for ext in (".pt", ".pt.json", ".json"))}
        done = {p: p.stat().st_mtime_ns for p in (root / "results").rglob("*") if p.is_file() and "logs" not in p.parts}

        second = Snakemake(root / "wd", *options, "--", table1)
        started.append(second)
        yield SimpleNamespace(root=root, local_root=local_root, cancelled=job, missing=missing, done=done,
                              first=first_result, second=second.wait(), local=local.wait(), memory=memory.wait(),
                              jobs=slurm_jobs())
    finally:
        for snakemake in started:
            snakemake.kill()


def test_every_training_iteration_ran_as_one_slurm_job(runs):
    status, output = runs.second
    assert status == 0, output[-5000:]
    assert (runs.root / "results" / "table1.csv").is_file()
    jobs = [job for job in runs.jobs if job["WorkDir"] == str(runs.root / "wd")]  # not the memory test's
    assert sorted(job["Comment"] for job in jobs if job["JobState"] == "COMPLETED") == sorted(
        ["rule_fid_reference_wildcards_mnist5k_20", "rule_evaluate_wildcards_ours"]
        + [f"rule_ours_it{t:04d}_stage" for t in STAGES]), jobs
    groups = [(job, int(m.group(1))) for job in jobs if (m := re.fullmatch(r"rule_ours_it(\d+)_stage", job["Comment"]))]
    for job, t in groups:
        # The job's own Snakemake (in one srun step) ran the stages of the group: every stage of the
        # iteration, but in the job that finished the cancelled iteration 1 those the cancel left incomplete.
        expected = runs.missing if t == 1 and job["JobState"] == "COMPLETED" else STAGES[t]
        assert {stage for _, stage in stage_jobs(Path(job["StdOut"]).read_text())} == expected, job
        assert job["StdOut"].endswith(f"/.snakemake/slurm_logs/group_ours_it{t:04d}_stage/{job['JobId']}.log")


def test_a_cancelled_job_is_rerun_by_the_next_invocation_and_nothing_else(runs):
    status, output = runs.first
    assert status != 0
    # Snakemake reports a failed group without the plugin's message (SLURM's state); SLURM's reason is in
    # the job's SLURM log, which the profile's show-failed-logs prints.
    assert re.search(rf"\*\*\* JOB {runs.cancelled} ON \S+ CANCELLED AT \S+ \*\*\*", output), output[-5000:]
    assert [job["JobState"] for job in runs.jobs if job["JobId"] == runs.cancelled] == ["CANCELLED"]
    assert runs.missing, "the job was cancelled after its first stage, before its last"
    status, output = runs.second
    assert status == 0, output[-5000:]
    assert stage_jobs(output) == {(1, stage) for stage in runs.missing}
    assert {p: p.stat().st_mtime_ns for p in runs.done} == runs.done, "a complete file was written again"


def test_tensors_are_bitwise_those_of_the_local_run(runs):
    status, output = runs.local
    assert status == 0, output[-5000:]
    slurm, local = tensors(runs.root), tensors(runs.local_root)
    assert set(slurm) == {f"it{t:04d}/{s}.pt" for t, stages in STAGES.items() for s in stages}
    assert slurm == local


def test_a_job_over_its_memory_request_fails_with_slurms_reason(runs):
    status, output = runs.memory
    assert status != 0
    job = re.search(r"SLURM jobid (\d+) ", output).group(1)
    assert re.search(rf"StepId={job}\.batch exceeded memory limit \(\d+ > 104857600\), being killed", output), output
    assert "Exceeded job memory limit" in output
    assert [record["JobState"] for record in runs.jobs if record["JobId"] == job] == ["FAILED"]
