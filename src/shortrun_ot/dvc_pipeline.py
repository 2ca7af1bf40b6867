"""``dvc.yaml``, generated from the workflow configuration: ``shortrun-ot dvc-yaml``.

DVC's stage lists cannot be computed from a params file (its ``foreach`` cannot splice a list of
params or dependencies into a stage), yet what a stage depends on differs by run: the method
says which settings and which source files a run reads. So the pipeline file is generated
from the same configuration Snakemake reads, by the same code (``config.all_run_settings``),
and a test fails when the committed file is not what the configuration generates.

Division of labour (docs/dvc.md): DVC owns the graph between stages and
versions the products (prepared data, each run's final model, metrics, histories, tables,
grids); it decides whether a stage is stale from the content of its declared dependencies and
params. Snakemake owns the jobs inside a stage (the iterations of a run, resuming, cluster
submission) and decides which jobs a stale stage redoes; each stage calls ``snakemake <its
products>`` restricted to its own rules and without the mtime trigger, which DVC checkouts do
not preserve. Because Snakemake cannot see edited sources or a re-prepared dataset without
mtimes, the stages that train record a checksum of those inputs (``.dvc-inputs``) and force
their jobs to rerun when it changed.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import yaml

from .config import REPO_ROOT, all_run_settings, anomaly_run, dataset_id, deep_merge, sweep_points, table1_runs

PARAMS_FILE = "params.yaml"
RULE_FILES = ["workflow/rules/common.smk", "workflow/rules/training.smk", "workflow/rules/blocks.smk"]
# What each kind of stage imports besides the run's method module.
STAGE_MODULES = {
    "prepare": ["shortrun_ot.cli", "shortrun_ot.data"],
    "train": ["shortrun_ot.cli", "shortrun_ot.pipeline", "shortrun_ot.history"],
    "evaluate": ["shortrun_ot.cli", "shortrun_ot.pipeline", "shortrun_ot.evaluation", "shortrun_ot.inception"],
    "figures": ["shortrun_ot.cli", "shortrun_ot.pipeline", "shortrun_ot.figures"],
    "tables": ["shortrun_ot.cli", "shortrun_ot.tables"],
}
EVALUATION_KEYS = ["evaluation.batch_size", "evaluation.fid_samples", "evaluation.fid_precision",
                   "evaluation.test_langevin_steps", "evaluation.test_images"]


PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(name: str) -> Path | None:
    """The file of module ``name`` of this package (None for other packages)."""
    parts = name.split(".")
    if parts[0] != PACKAGE_DIR.name:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(name: str, path: Path) -> set[str]:
    """The modules of this package that module ``name`` (file ``path``) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            base = ".".join(filter(None, [base, node.module]))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from . import data` names modules
    return {module for module in found if module_file(module) is not None}


@functools.cache
def package_sources(modules: tuple[str, ...]) -> list[str]:
    """The files of this package (relative to the repository) that importing ``modules`` loads:
    their imports followed through the package, parent packages and method schemas included.
    ``cli`` imports each command's modules inside the command, so its imports are not followed:
    the stage kinds name the modules their commands use (``STAGE_MODULES``)."""
    files, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in files:
            continue
        files.add(path)
        parents = name.split(".")
        todo += [".".join(parents[:i]) for i in range(1, len(parents))]
        if name != f"{PACKAGE_DIR.name}.cli":
            todo += sorted(imported_modules(name, path))
    files |= {path.with_suffix(".schema.yaml") for path in files if path.with_suffix(".schema.yaml").is_file()}
    return sorted(path.relative_to(REPO_ROOT).as_posix() for path in files)


def _defines(tree, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


class Pipeline:
    """The stages of ``dvc.yaml`` for ``params.yaml`` overlaid with ``overlay_file`` (a --configfile)."""

    def __init__(self, params: dict, overlay: dict, overlay_file: str):
        self.params, self.overlay, self.overlay_file = params, overlay, overlay_file
        self.config = deep_merge(params, overlay)
        self.settings = all_run_settings(self.config)
        self.results = self.config["results"]
        self.prepared = self.config["data"]["prepared"]
        self.evaluation, self.anomaly = self.config["evaluation"], self.config["anomaly"]
        self.anomaly_runs = {anomaly_run(model, digit, seed): model for model in self.anomaly["runs"]
                             for digit in self.anomaly["digits"] for seed in range(self.anomaly["seeds"])}
        self.sweeps = {key: (base, name) for name in self.config["sweeps"]
                       for base, _, key in sweep_points(self.config, name, self.settings)
                       if key not in self.config["runs"]}  # a point equal to a run is that run
        self.snakemake = (f"--cores all --rerun-incomplete --rerun-triggers params input code software-env "
                          f"--configfile {overlay_file}")
        self.train_rules = ("run_config stage $(snakemake --list-rules --configfile "
                            f"{overlay_file} | grep -o '^train_[A-Za-z0-9_]*')")

    # -- where settings come from

    def source(self, dotted: str) -> tuple[str, str]:
        """(file, key) that sets ``dotted`` of the merged configuration: the overlay where it sets it."""
        return (self.overlay_file, dotted) if _defines(self.overlay, dotted) else (PARAMS_FILE, dotted)

    def layers(self, run: str) -> list[str]:
        """The configuration sections a run's settings merge, last wins (``config.run_settings``)."""
        if run in self.anomaly_runs:
            return [*self.layers(self.anomaly_runs[run]), "anomaly.training"]
        if run in self.sweeps:
            return self.layers(self.sweeps[run][0])
        base, dataset = self.base_run(run), self.settings[run]["dataset"]
        method = self.settings[run]["method"]
        return ["training", f"datasets.{dataset}.training", f"methods.{method}",
                f"datasets.{dataset}.methods.{method}", f"runs.{base}"]

    def base_run(self, run: str) -> str:
        """The key of ``runs`` behind ``run``: itself, or ``ours`` for ``ours-svhn`` (ours on another dataset)."""
        return run if run in self.config["runs"] else run.removesuffix(f"-{self.settings[run]['dataset']}")

    def run_params(self, run: str) -> dict[str, list[str]]:
        """File -> the keys that set this run's settings, one per leaf (the last layer defining it)."""
        declared: dict[str, list[str]] = {}

        def add(file, key):
            declared.setdefault(file, [])
            if key not in declared[file]:
                declared[file].append(key)

        fixed_by_key = {"heldout_digit", "seed"} if run in self.anomaly_runs else set()
        for leaf in _leaves(self.settings[run]):
            if leaf in fixed_by_key or leaf == "method":
                continue
            if run in self.sweeps and leaf == self.config["sweeps"][self.sweeps[run][1]]["key"]:
                add(*self.source(f"sweeps.{self.sweeps[run][1]}"))
                continue
            if leaf == "dataset" and self.base_run(run) != run:
                add(*self.source("evaluation.datasets"))
                continue
            section = next((s for s in reversed(self.layers(run)) if _defines(self.config, f"{s}.{leaf}")), None)
            if section is not None:
                add(*self.source(f"{section}.{leaf}"))
        for key in ("device", "compute.tf32", "compute.batches_at_once"):
            add(*self.source(key))
        return {file: sorted(keys) for file, keys in sorted(declared.items())}

    def params_list(self, by_file: dict[str, list[str]]) -> list:
        """DVC's params syntax: params.yaml keys plain, other files' keys under the file name."""
        entries = list(by_file.get(PARAMS_FILE, []))
        return entries + [{file: keys} for file, keys in by_file.items() if file != PARAMS_FILE]

    def keys_params(self, keys: list[str]) -> list:
        by_file: dict[str, list[str]] = {}
        for key in keys:
            file, key = self.source(key)
            by_file.setdefault(file, []).append(key)
        return self.params_list(by_file)

    # -- files

    def data(self, run: str) -> str:
        return f"{self.prepared}/{dataset_id(self.settings[run])}.pt"

    def run_dir(self, run: str) -> str:
        return f"{self.results}/runs/{run}"

    def fid_reference(self, run: str) -> str:
        n_real = self.evaluation["fid_real_images"] or "all"
        return f"{self.results}/fid/{self.settings[run]['dataset']}-{n_real}.npz"

    def sources(self, kind: str, run: str | None = None) -> list[str]:
        modules = list(STAGE_MODULES[kind])
        if run is not None:
            method = self.settings[run]["method"]
            modules.append(method if "." in method else f"shortrun_ot.methods.{method}")
        return package_sources(tuple(modules))

    # -- stages

    def forced(self, record: str, checked: list[str], rules: str, force: str, targets: list[str]) -> str:
        """A Snakemake call that passes ``--forcerun force`` when the checksum of ``checked`` differs
        from the one recorded by the last successful call (and records it after success)."""
        return (f"fp={record}; mkdir -p $(dirname $fp); cksum {' '.join(checked)} > $fp.new; "
                f"force=; if [ -f $fp ] && ! cmp -s $fp $fp.new; then force=\"--forcerun {force}\"; fi; "
                f"snakemake {' '.join(targets)} {self.snakemake} --allowed-rules {rules} $force && mv $fp.new $fp")

    def prepare_stage(self, dataset: str) -> dict:
        out = f"{self.prepared}/{dataset}.pt"
        sources = self.sources("prepare")
        return {
            "desc": "Prepared, checksummed dataset",
            "cmd": self.forced(f"{self.prepared}/.{dataset}.dvc-inputs", sources,
                               "prepare_data prepare_anomaly_data", "prepare_data prepare_anomaly_data", [out]),
            "deps": [*sources, "workflow/rules/data.smk"],
            "params": self.params_list({PARAMS_FILE: ["data.raw_root", "data.prepared"]}),  # not data.download
            "outs": [{out: {"persist": True}}, {f"{out}.json": {"persist": True}}],
        }

    def fid_stage(self, path: str, run: str) -> dict:
        return {
            "desc": "Inception statistics of the real training images behind every FID",
            "cmd": f"snakemake {path} {self.snakemake} --allowed-rules fid_reference",
            "deps": [self.data(run), *self.sources("evaluate"), "workflow/rules/evaluation.smk"],
            "params": self.keys_params(["evaluation.batch_size", "evaluation.fid_real_images",
                                                "evaluation.fid_precision"]),
            "outs": [path],
        }

    def train_stage(self, run: str, anomaly: bool) -> dict:
        run_dir, sources = self.run_dir(run), self.sources("train", run)
        product = f"{run_dir}/anomaly.json" if anomaly else f"{run_dir}/history.csv"
        rules = f"{self.train_rules} final_model " + ("anomaly_score" if anomaly else "history")
        deps = [self.data(run), *sources, *RULE_FILES]
        params = self.run_params(run)
        if anomaly:
            deps += self.sources("evaluate", run)
            deps.append("workflow/rules/evaluation.smk")
            for file, key in map(self.source, ("anomaly.test_langevin_steps", "evaluation.batch_size")):
                params.setdefault(file, []).append(key)
        stage = {
            "desc": ("One Table 2 run (trained without one digit) and its anomaly AUPRC" if anomaly else
                     "One Table 1 run: its final model and per-iteration history"),
            "cmd": self.forced(f"{run_dir}/.dvc-inputs", [*sources, self.data(run)], rules, "run_config",
                               [f"{run_dir}/final", product]),
            "deps": sorted(set(deps)),
            "params": self.params_list(params),
            "outs": [f"{run_dir}/final"],
        }
        if anomaly:
            stage["metrics"] = [product]
        else:
            stage["plots"] = [{product: {"x": "iteration"}}]
        return stage

    def evaluate_stage(self, run: str) -> dict:
        run_dir = self.run_dir(run)
        return {
            "desc": "Table 1 metrics of a run (MSE train/test, FID, OT cost to the prior, training cost)",
            "cmd": f"snakemake {run_dir}/metrics.json {self.snakemake} --allowed-rules {self.train_rules} evaluate",
            "deps": [self.data(run), self.fid_reference(run), f"{run_dir}/final", *self.sources("evaluate", run),
                     "workflow/rules/evaluation.smk"],
            "params": self.keys_params(EVALUATION_KEYS),
            "metrics": [f"{run_dir}/metrics.json"],
        }

    def figures_stage(self, run: str) -> dict:
        run_dir = self.run_dir(run)
        return {
            "desc": "Image grid of a run (training images, reconstructions, samples; Fig. 4 layout)",
            "cmd": f"snakemake {run_dir}/figures/grid.png {self.snakemake} --allowed-rules {self.train_rules} grid",
            "deps": [self.data(run), f"{run_dir}/final", *self.sources("figures", run), "workflow/rules/figures.smk"],
            "params": self.keys_params(["evaluation.test_langevin_steps", "evaluation.batch_size"]),
            "outs": [f"{run_dir}/figures/grid.png", f"{run_dir}/figures/grid.pt"],
        }

    def table_stage(self, number: int, inputs: list[str], keys: list[str]) -> dict:
        out = f"{self.results}/table{number}"
        return {
            "desc": f"Table {number} (CSV and Markdown), measured rows beside the paper's",
            "cmd": f"snakemake {out}.csv {self.snakemake} --allowed-rules table{number}",
            "deps": [*inputs, *self.sources("tables"), "workflow/resources/paper_results.csv",
                     "workflow/rules/evaluation.smk"],
            "params": self.keys_params(keys),
            "outs": [f"{out}.csv", f"{out}.md"],
        }

    def stages(self) -> dict:
        table1, anomaly_runs = table1_runs(self.config, self.settings), list(self.anomaly_runs)
        stages = {f"prepare-{dataset}": self.prepare_stage(dataset)
                  for dataset in sorted({dataset_id(self.settings[r]) for r in [*table1, *anomaly_runs]})}
        for run in table1:
            stages.setdefault(f"fid_reference-{Path(self.fid_reference(run)).stem}",
                              self.fid_stage(self.fid_reference(run), run))
        for run in table1:
            stages[f"train-{run}"] = self.train_stage(run, anomaly=False)
            stages[f"evaluate-{run}"] = self.evaluate_stage(run)
            stages[f"figures-{run}"] = self.figures_stage(run)
        for run in anomaly_runs:
            stages[f"anomaly-{run}"] = self.train_stage(run, anomaly=True)
        stages["table1"] = self.table_stage(1, [f"{self.run_dir(r)}/metrics.json" for r in table1],
                                            ["evaluation.runs", "evaluation.datasets"])
        if anomaly_runs:
            stages["table2"] = self.table_stage(2, [f"{self.run_dir(r)}/anomaly.json" for r in anomaly_runs],
                                                ["anomaly.runs", "anomaly.digits", "anomaly.seeds"])
        return stages


def generate(overlay_file: str, root: Path = REPO_ROOT) -> str:
    """The text of ``dvc.yaml`` for ``params.yaml`` overlaid with ``overlay_file`` (both under ``root``)."""
    params = yaml.safe_load((root / PARAMS_FILE).read_text())
    overlay = yaml.safe_load((root / overlay_file).read_text()) or {}
    pipeline = Pipeline(params, overlay, overlay_file)
    header = (f"# Generated by `shortrun-ot dvc-yaml --configfile {overlay_file}` from params.yaml and\n"
              f"# {overlay_file}: regenerate it after changing the runs (tests/test_dvc.py checks that it is\n"
              "# current). `dvc repro` reproduces what `snakemake --configfile "
              f"{overlay_file}` makes; docs/dvc.md explains the stages.\n")
    return header + yaml.safe_dump({"stages": pipeline.stages()}, sort_keys=False, width=120)
