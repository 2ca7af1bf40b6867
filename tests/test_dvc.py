"""The DVC pipeline (dvc.yaml) over the Snakemake workflow, and the run histories it plots.

Cheap by design: the pipeline definition is checked against Snakemake's view of the quick
configuration; `dvc repro --dry` and `dvc status` run on a scratch copy whose outputs are
placeholders; one real stage (prepare-mnist5k) runs, round-trips through a local remote and
is not rerun.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shortrun_ot import cli
from shortrun_ot.config import all_run_settings, anomaly_run, dataset_id, deep_merge
from shortrun_ot.dvc_pipeline import generate, package_sources
from shortrun_ot.history import history_rows, write_history

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = "config/quick.yaml"
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
QUICK = yaml.safe_load((REPO / CONFIG_FILE).read_text())
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
CONFIG = deep_merge(PARAMS, QUICK)
SETTINGS = all_run_settings(CONFIG)
RUNS = CONFIG["evaluation"]["runs"]
ANOMALY_RUNS = [anomaly_run(model, digit, seed) for model in CONFIG["anomaly"]["runs"]
                for digit in CONFIG["anomaly"]["digits"] for seed in range(CONFIG["anomaly"]["seeds"])]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from DVC's internals
ENV = {**os.environ, "PYTHONWARNINGS": "ignore",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(*cmd: str, cwd: Path, check: bool = True) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    output = result.stdout + result.stderr
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)}:\n{output[-5000:]}"
    return output


def dvc(*args: str, cwd: Path, check: bool = True) -> str:
    return run(sys.executable, "-m", "dvc", *args, cwd=cwd, check=check)


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A copy of the repository's pipeline files with a fresh DVC project (no Git)."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("Snakefile", "dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, root / name)
    for name in ("config", "workflow", "src"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dvc("init", "--no-scm", "-q", cwd=root)
    dvc("config", "core.analytics", "false", cwd=root)
    return root


def stages(root: Path) -> dict:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {stage.name: stage for stage in repo.index.stages}


# --- dvc.yaml is generated from the Snakemake configuration it reproduces ---------------------

@pytest.mark.slow
def test_dvc_yaml_is_what_the_configuration_generates():
    assert (REPO / "dvc.yaml").read_text() == generate(CONFIG_FILE), (
        "dvc.yaml is stale: run `shortrun-ot dvc-yaml --configfile config/quick.yaml`")


def test_a_stage_for_every_run_dataset_and_table():
    expected = {f"prepare-{d}" for d in {dataset_id(SETTINGS[r]) for r in [*RUNS, *ANOMALY_RUNS]}}
    expected |= {f"{kind}-{run}" for kind in ("train", "evaluate", "figures") for run in RUNS}
    expected |= {f"anomaly-{run}" for run in ANOMALY_RUNS} | {"fid_reference-mnist5k-300", "table1", "table2"}
    assert set(DVC_YAML["stages"]) == expected
    assert {f"results/quick/runs/{run}/metrics.json" for run in RUNS} <= set(DVC_YAML["stages"]["table1"]["deps"])
    assert {f"results/quick/runs/{run}/anomaly.json" for run in ANOMALY_RUNS} <= set(
        DVC_YAML["stages"]["table2"]["deps"])
    for stage in DVC_YAML["stages"].values():
        assert "--configfile config/quick.yaml" in stage["cmd"]


def test_sources_follow_imports_through_the_package():
    vae = package_sources(("shortrun_ot.methods.vae",))
    assert {"src/shortrun_ot/methods/vae.py", "src/shortrun_ot/methods/vae.schema.yaml",
            "src/shortrun_ot/methods/base.py", "src/shortrun_ot/learning.py", "src/shortrun_ot/models.py",
            "src/shortrun_ot/methods/__init__.py", "src/shortrun_ot/__init__.py"} <= set(vae)
    assert "src/shortrun_ot/ot.py" not in vae and "src/shortrun_ot/methods/shortrun.py" not in vae
    assert "src/shortrun_ot/ot.py" in package_sources(("shortrun_ot.methods.shortrun",))


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _defines(tree: dict, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def _source(run: str, leaf: str) -> tuple[str, str]:
    """(file, dotted key) that sets ``leaf`` of a run's settings (the last layer that defines it)."""
    model = run.split("-holdout")[0]
    method = SETTINGS[run]["method"]
    layers = [("anomaly.training", run != model), (f"runs.{model}", True), (f"methods.{method}", True),
              ("training", True)]
    for section, applies in layers:
        for file, data in ((CONFIG_FILE, QUICK), ("params.yaml", PARAMS)):
            if applies and _defines(data, f"{section}.{leaf}"):
                return file, f"{section}.{leaf}"
    raise AssertionError(f"{run}: no source for {leaf}")


def test_run_stages_declare_exactly_the_params_their_settings_come_from(scratch):
    found = stages(scratch)
    for run in [*RUNS, *ANOMALY_RUNS]:
        stage = found[f"train-{run}" if run in RUNS else f"anomaly-{run}"]
        declared = {(Path(d.def_path).as_posix(), key) for d in stage.deps if hasattr(d, "params") for key in d.params}
        sources = set()
        for leaf in _leaves(SETTINGS[run]):
            if leaf == "method" or (run in ANOMALY_RUNS and leaf in ("heldout_digit", "seed")):
                continue  # the method is the run's identity; digit and seed are set by the run's key
            sources.add(_source(run, leaf))
            assert _source(run, leaf) in declared, (run, leaf)
        # precision: every declared run-settings key sets something this run reads
        for file, key in declared:
            if key.split(".")[0] in ("training", "methods", "runs"):
                assert (file, key) in sources, (run, file, key)


# --- dvc repro --dry, dvc status, plots on placeholder outputs -------------------------------

def fill_outputs(root: Path) -> None:
    """Write a placeholder for every output of every stage (history CSVs that DVC can plot)."""
    for stage in stages(root).values():
        for out in stage.outs:
            path = Path(out.fs_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.name == "history.csv":
                path.write_text("iteration,stages,learn.loss\n" + "".join(f"{t},learn,{1 / t}\n" for t in (1, 2, 3)))
            elif path.name == "final":
                path.mkdir()
                (path / "model.pt").write_text(f"{stage.name}\n")
            elif path.suffix == ".json":
                path.write_text(json.dumps({"stage": stage.name, "value": 1.0}))
            else:
                path.write_text(f"{stage.name}\n")


def stages_to_run(root: Path) -> set[str]:
    output = dvc("repro", "--dry", cwd=root)
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
def test_repro_dry_status_and_a_change_of_one_methods_setting(scratch):
    assert set(stages(scratch)) == set(DVC_YAML["stages"])
    fill_outputs(scratch)
    dvc("commit", "--force", "-q", cwd=scratch)  # record the placeholders as if every stage had run
    assert "Data and pipelines are up to date" in dvc("status", cwd=scratch)
    assert stages_to_run(scratch) == set(), "running again does nothing"

    plots = json.loads(dvc("plots", "show", "--json", cwd=scratch))
    assert {f"results/quick/runs/{run}/history.csv" for run in RUNS} <= set(plots["data"])

    params = scratch / "params.yaml"
    _edit(params, "      alpha: 0.5 ", "      alpha: 0.6 ")  # methods.shortrun.correction.alpha; abp sets its own
    assert stages_to_run(scratch) == {"train-ours"} | {f"anomaly-{r}" for r in ANOMALY_RUNS if r.startswith("ours-")}
    dvc("commit", "--force", "-q", cwd=scratch)
    _edit(params, "    kl_weight: 1.0", "    kl_weight: 0.5")  # methods.vae.kl_weight
    assert stages_to_run(scratch) == {"train-vae"} | {f"anomaly-{r}" for r in ANOMALY_RUNS if r.startswith("vae-")}

    from dvc.repo import Repo

    with Repo(str(scratch)) as repo:  # what reruns once train-ours has new outputs
        graph = repo.index.graph
        by_name = {stage.name: stage for stage in graph}
        import networkx as nx

        downstream = {s.name for s in nx.ancestors(graph, by_name["train-ours"])}
    assert downstream == {"evaluate-ours", "figures-ours", "table1"}


# --- one real stage: run, push, pull, no rerun --------------------------------------------------

@pytest.mark.slow
def test_prepare_stage_runs_round_trips_through_a_local_remote_and_is_not_rerun(scratch, tmp_path):
    output = dvc("repro", "prepare-mnist5k", cwd=scratch)
    assert "Running stage 'prepare-mnist5k'" in output
    data = scratch / "data" / "prepared" / "mnist5k.pt"
    digest = data.read_bytes()
    assert "didn't change" in dvc("repro", "prepare-mnist5k", cwd=scratch)

    dvc("remote", "add", "-d", "local", str(tmp_path / "dvc-storage"), cwd=scratch)
    dvc("push", "prepare-mnist5k", cwd=scratch)
    data.unlink()
    shutil.rmtree(scratch / ".dvc" / "cache")
    assert "not in cache" in dvc("status", "prepare-mnist5k", cwd=scratch)
    dvc("pull", "prepare-mnist5k", cwd=scratch)
    assert data.read_bytes() == digest
    assert "up to date" in dvc("status", "prepare-mnist5k", cwd=scratch)
    assert "didn't change" in dvc("repro", "prepare-mnist5k", cwd=scratch)


@pytest.mark.slow
def test_train_stage_runs_block_jobs(scratch):
    """With compute.iterations_per_job > 1 the stage allows the generated block rules."""
    quick = scratch / CONFIG_FILE
    config = yaml.safe_load(quick.read_text())
    config["compute"] = {"iterations_per_job": 2}
    config["training"].update(train_images=200, batch_size=100, iterations=3)
    config["methods"]["shortrun"].update(langevin={"steps": 2}, correction={"every": 2})
    quick.write_text(yaml.safe_dump(config))

    output = dvc("repro", "train-ours", cwd=scratch)
    assert "Running stage 'train-ours'" in output
    run_dir = scratch / CONFIG["results"] / "runs" / "ours"
    logs = sorted(p.name for p in (run_dir / "logs").iterdir() if p.name.startswith("it") and p.suffix == ".log")
    assert logs == ["it0001-0002.log", "it0003-0003.log"], logs
    with open(run_dir / "history.csv") as f:
        assert [row["iteration"] for row in csv.DictReader(f)] == ["0", "1", "2", "3"]  # 0: the init stage
    assert "didn't change" in dvc("repro", "train-ours", cwd=scratch)


# --- the history CSV behind the plots ------------------------------------------------------------

def _stats(root: Path, t: int, stage: str, **values) -> Path:
    path = root / f"it{t:04d}" / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": stage, "iteration": t, "seconds": 0.5, **values}))
    return path


def test_history_has_one_row_per_iteration(tmp_path):
    files = []
    for t in (1, 2):
        files.append(_stats(tmp_path, t, "infer", log_joint_start=-9.0 + t, log_joint_end=-5.0 + t, latent_norm=1.0))
        files.append(_stats(tmp_path, t, "learn", loss_first_pass=3.0 / t, loss_last_pass=2.0 / t, grad_norm=0.1))
    files.append(_stats(tmp_path, 2, "correct", cost=12.5, lower_bound=12.0, unmatched=0, repaired=True))
    out = tmp_path / "history.csv"
    assert cli.main(["history", "--run", "ours", "--stats", *map(str, reversed(files)), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:2] == ["iteration", "stages"]
    assert {"infer.log_joint_end", "learn.loss_last_pass", "correct.cost", "infer.seconds"} <= set(rows[0])
    assert "correct.repaired" not in rows[0], "booleans are not measurements"
    assert [r["iteration"] for r in rows] == ["1", "2"]
    assert [sorted(r["stages"].split()) for r in rows] == [["infer", "learn"], ["correct", "infer", "learn"]]
    assert rows[0]["correct.cost"] == "" and float(rows[1]["correct.cost"]) == 12.5
    assert float(rows[1]["learn.loss_last_pass"]) == 1.0 and float(rows[0]["infer.log_joint_end"]) == -4.0


def test_history_rejects_duplicate_or_broken_reports(tmp_path):
    infer = _stats(tmp_path, 1, "infer", log_joint_end=-1.0)
    with pytest.raises(ValueError, match="a second infer report for iteration 1"):
        history_rows([infer, infer])
    broken = tmp_path / "it0001" / "learn.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        write_history([infer, broken], tmp_path / "h.csv")
    assert not (tmp_path / "h.csv").exists()
