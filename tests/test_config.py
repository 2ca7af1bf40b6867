"""The configuration schema rejects bad configurations at once, naming the key.

Two ways in: `snakemake` (workflow/rules/common.smk validates before building the DAG) and the
Python entry points (`shortrun_ot.config.validate_config`, the stage CLI on a run's settings).
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shortrun_ot import cli
from shortrun_ot.config import (
    ConfigError,
    all_run_settings,
    coerce_command_line_values,
    deep_merge,
    run_settings,
    stage_settings,
    validate_config,
)

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
QUICK = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())


def _set(path: str, value):
    def change(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return change


def _drop(path: str):
    def change(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        del node[last]
    return change


# (change, the key the error must name)
BAD = {
    "misspelt method key": (_set("methods.shortrun.langevin.step_sise", 0.1), "methods.shortrun.langevin.step_sise"),
    "misspelt section": (_set("methods.shortrun.corection", {"alpha": 0.5}), "methods.shortrun.corection"),
    "misspelt protocol key": (_set("training.latent_dimension", 3), "training.latent_dimension"),
    "unknown top-level key": (_set("iterations", 10), "iterations"),
    "negative step size": (_set("methods.shortrun.langevin.step_size", -0.1), "methods.shortrun.langevin.step_size"),
    "zero step size": (_set("methods.shortrun.langevin.step_size", 0), "methods.shortrun.langevin.step_size"),
    "alpha above 1": (_set("methods.shortrun.correction.alpha", 1.5), "methods.shortrun.correction.alpha"),
    "alpha below 0 in a run": (_set("runs.abp.correction.alpha", -0.2), "runs.abp.correction.alpha"),
    "misspelt run override": (_set("runs.abp.correction.alpah", 0.0), "runs.abp.correction.alpah"),
    "a key the method does not take": (_set("runs.abp.kl_weight", 1.0), "runs.abp.kl_weight"),
    "run without method": (_drop("runs.abp.method"), "runs.abp.method"),
    "bad anomaly override": (_set("anomaly.training.learning", {"lr": -1.0}), r"anomaly \(ours-holdout1-seed0\).learning.lr"),
    "wrong type": (_set("training.iterations", "ten"), "training.iterations"),
    "missing key": (_drop("methods.shortrun.learning.lr"), "runs.ours.learning.lr"),
    "bad device": (_set("device", "gpu"), "device"),
    "table run not defined": (_set("evaluation.runs", ["ours", "nosuchrun"]), "evaluation.runs"),
    "digit out of range": (_set("anomaly.digits", [1, 10]), "anomaly.digits"),
    "sweep of a key that does not exist": (_set("sweeps.s", {"runs": ["ours"], "key": "langevin.size", "values": [1]}),
                                           "sweeps.s.key"),
    "sweep value out of range": (_set("sweeps.s", {"runs": ["ours"], "key": "correction.alpha", "values": [2.0]}),
                                 r"sweeps.s \(ours, 2.0\).correction.alpha"),
    "sweep of an unknown run": (_set("sweeps.s", {"runs": ["nosuch"], "key": "seed", "values": [1]}), "sweeps.s.runs"),
    "figure of an unknown sweep": (_set("figures.table4", {"sweep": "nosuch"}), "figures.table4.sweep"),
    "Fig. 2 of a run with 30-D latents": (_set("figures.figure2.run", "ours"), "figures.figure2.run"),
    "Fig. 2 of a run that never corrects": (_set("runs.ours-digits01.correction", {"alpha": 0.0}),
                                            "figures.figure2.run"),
    "Table 4 of a sweep over ABP": (_set("sweeps.step_size.runs", ["abp"]), "figures.table4.sweep"),
    "Table 4 of a two-run sweep": (_set("sweeps.step_size.runs", ["ours", "abp"]), "figures.table4.sweep"),
    "Fig. 2 of a VAE": (_set("runs.ours-digits01", {"method": "vae", "latent_dim": 2}), "figures.figure2.run"),
    "chain stability of an unknown run": (_set("figures.chain_stability.runs", ["ours", "nosuch"]),
                                          "figures.chain_stability.runs"),
    "Fig. 3 of a run with 30-D latents": (_set("figures.figure3.runs", ["vae-digits01", "ours"]), "figures.figure3.runs"),
    "occlusion figure of complete images": (_set("figures.occlusion.runs", ["ours"]), "figures.occlusion.runs"),
    "all pixels missing": (_set("runs.ours-missing90.occlusion", {"missing": 1.0}), "runs.ours-missing90.occlusion.missing"),
    "occlusion of a method without it": (_set("runs.vae.occlusion", {"missing": 0.5}), "runs.vae.occlusion"),
    "ablation table of an unknown sweep": (_set("figures.table5", {"sweep": "nosuch"}), "figures.table5.sweep"),
    "Table 5 of a sweep over another setting": (_set("figures.table5", {"sweep": "step_size"}), "figures.table5.sweep"),
    "Fig. 4 of an unknown run": (_set("figures.figure4.runs", ["nosuch"]), "figures.figure4.runs"),
    "unknown dataset": (_set("evaluation.datasets", ["mnist", "cifar10"]), "evaluation.datasets.1"),
    "per-dataset key of no method": (_set("datasets.svhn.methods.vae.langevin", {"steps": 3}),
                                     "datasets.svhn.methods.vae.langevin"),
    "per-dataset value out of range": (_set("datasets.svhn.methods.shortrun.correction", {"alpha": 2.0}),
                                       "datasets.svhn.methods.shortrun.correction.alpha"),
    "digits of CelebA": (_set("runs.vae-digits01.dataset", "celeba"), "runs.vae-digits01"),
    "AE-OT table over two datasets": (_set("figures.aeot_mnist.runs", ["vae-mnist64", "vae"]),
                                      "figures.aeot_mnist.runs"),
    "interpolation of a GMM sampler": (_set("figures.aeot_celeba", {"runs": ["rae"], "pairs": 1, "steps": 2}),
                                       "figures.aeot_celeba.runs"),
    "per-dataset key a method sets": (_set("datasets.svhn.training.iterations", 5), "datasets.svhn.training.iterations"),
    "states left out by per-stage jobs": (_set("compute.keep_states_every", 10), "compute.keep_states_every"),
}


def test_unknown_method_lists_the_methods():
    config = deep_merge(PARAMS, {"runs": {"x": {"method": "nosuch"}}})
    with pytest.raises(ConfigError, match="unknown method 'nosuch'; choose one of .*shortrun"):
        validate_config(config)


def test_a_run_is_the_protocol_then_its_method_defaults_then_its_overrides():
    config = deep_merge(PARAMS, {"training": {"seed": 7}, "methods": {"shortrun": {"sigma": 0.5}},
                                 "runs": {"abp": {"sigma": 0.2}}})
    ours, abp = run_settings(config, "ours"), run_settings(config, "abp")
    assert (ours["seed"], ours["sigma"], ours["method"]) == (7, 0.5, "shortrun")
    assert (abp["seed"], abp["sigma"], abp["correction"]["alpha"]) == (7, 0.2, 0.0)


def test_the_schema_lists_the_datasets_the_data_module_prepares():
    from shortrun_ot.config import MIXTURE_DATASET, load_schema
    from shortrun_ot.data import DATASETS

    assert load_schema()["$defs"]["dataset"]["enum"] == [*DATASETS, MIXTURE_DATASET]


def test_per_dataset_settings_sit_between_the_protocol_the_method_and_the_run():
    config = deep_merge(PARAMS, {"datasets": {"svhn": {"training": {"latent_dim": 48, "seed": 3},
                                                       "methods": {"shortrun": {"sigma": 0.4}}}},
                                 "methods": {"shortrun": {"sigma": 0.5}},
                                 "runs": {"abp": {"seed": 9}}})
    ours, abp, ours_mnist = run_settings(config, "ours", "svhn"), run_settings(config, "abp", "svhn"), \
        run_settings(config, "ours")
    assert (ours["dataset"], ours["latent_dim"], ours["seed"], ours["sigma"]) == ("svhn", 48, 3, 0.4)
    assert (abp["seed"], abp["correction"]["alpha"]) == (9, 0.0)  # the run's own keys win over the dataset's
    assert (ours_mnist["dataset"], ours_mnist["latent_dim"], ours_mnist["sigma"]) == ("mnist", 30, 0.5)


def test_table1_measures_every_run_on_every_dataset_side_by_side():
    from shortrun_ot.config import table1_runs

    settings = validate_config(copy.deepcopy(PARAMS))
    runs = table1_runs(PARAMS, settings)
    methods = PARAMS["evaluation"]["runs"]
    assert runs == methods + [f"{m}-svhn" for m in methods] + [f"{m}-celeba" for m in methods]
    # the supplementary's settings: d = 30 / 64 / 64, alpha 0.5 / 0.3 / 0.3 for ours; ABP keeps alpha 0
    assert [settings[r]["latent_dim"] for r in ("ours", "ours-svhn", "ours-celeba", "vae-celeba")] == [30, 64, 64, 64]
    assert [settings[r]["correction"]["alpha"] for r in ("ours", "ours-svhn", "abp-svhn")] == [0.5, 0.3, 0.0]
    assert settings["ours-svhn"]["dataset"] == "svhn" and settings["aeot-celeba"]["dataset"] == "celeba"
    # Table 3 (the paper's on SVHN) sweeps d over ours-svhn: d = 64 is ours-svhn itself
    from shortrun_ot.config import sweep_points

    points = sweep_points(PARAMS, PARAMS["figures"]["table3"]["sweep"], settings)
    assert [key for base, _, key in points if base == "ours-svhn"] == ["ours-svhn-latent_dim20", "ours-svhn-latent_dim40",
                                                                 "ours-svhn"]
    quick = deep_merge(PARAMS, QUICK)
    assert table1_runs(quick, validate_config(quick)) == methods  # the quick Table 1: the MNIST subset only


def test_a_sweep_of_two_values_yields_two_runs_that_differ_only_in_that_value():
    config = deep_merge(PARAMS, {"sweeps": {"steps": {"runs": ["ours", "abp"], "key": "langevin.step_size",
                                                      "values": [0.02, 0.04]}}})
    settings = all_run_settings(config)
    for base in ("ours", "abp"):
        low, high = settings[f"{base}-step_size0.02"], settings[f"{base}-step_size0.04"]
        assert (low["langevin"]["step_size"], high["langevin"]["step_size"]) == (0.02, 0.04)
        assert deep_merge(low, {"langevin": {"step_size": 0.04}}) == high
        assert deep_merge(low, {"langevin": {"step_size": settings[base]["langevin"]["step_size"]}}) == settings[base]


def test_a_sweep_point_equal_to_an_existing_run_is_that_run():
    alpha = PARAMS["methods"]["shortrun"]["correction"]["alpha"]
    config = deep_merge(PARAMS, {"sweeps": {"alpha": {"runs": ["ours"], "key": "correction.alpha",
                                                      "values": [0.0, 0.1, alpha]}}})
    from shortrun_ot.config import sweep_points

    points = sweep_points(config, "alpha", all_run_settings(config))
    assert [key for _, _, key in points] == ["abp", "ours-alpha0.1", "ours"]


def test_shipped_configurations_are_valid():
    validate_config(copy.deepcopy(PARAMS))
    validate_config(deep_merge(PARAMS, QUICK))


@pytest.mark.parametrize("case", sorted(BAD))
def test_validate_config_names_the_bad_key(case):
    change, key = BAD[case]
    config = copy.deepcopy(PARAMS)
    change(config)
    with pytest.raises(ConfigError, match=rf"config key '{key}(\.\d+)?'"):
        validate_config(config)


def test_stage_entry_point_rejects_bad_run_settings(tmp_path, capsys):
    """A stage run directly (not through Snakemake) validates the settings it is given."""
    settings = stage_settings(run_settings(deep_merge(PARAMS, {"runs": {"ours": {"correction": {"alpha": 0.5}}}}),
                                           "ours"))
    settings["correction"]["alpha"] = 2.0
    out = tmp_path / "config.json"
    code = cli.main(["write-config", "--run", "ours", "--settings", json.dumps(settings), "--out", str(out)])
    assert code == 1 and not out.exists()
    assert "runs.ours.correction.alpha" in capsys.readouterr().err

    settings = stage_settings(run_settings(PARAMS, "ours"))
    settings["langevin"]["stepsize"] = 0.1
    (tmp_path / "bad.json").write_text(json.dumps(settings))
    code = cli.main(["stage", "--run", "ours", "--stage", "learn", "--iteration", "1", "--config",
                     str(tmp_path / "bad.json"), "--data", "none.pt", "--out", str(tmp_path / "c.pt")])
    assert code == 1
    assert "langevin.stepsize" in capsys.readouterr().err


# Through Snakemake: the workflow stops while parsing, before any job is planned or started.
SNAKEMAKE_BAD = {
    "misspelt key": ({"methods": {"shortrun": {"langevin": {"step_sise": 0.1}}}}, "step_sise"),
    "negative step size": ({"methods": {"shortrun": {"langevin": {"step_size": -0.1}}}}, "step_size"),
    "alpha outside [0, 1]": ({"runs": {"ours": {"correction": {"alpha": 1.5}}}}, "alpha"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SNAKEMAKE_BAD))
def test_snakemake_rejects_bad_configuration_before_any_job(tmp_path, case):
    overlay, key = SNAKEMAKE_BAD[case]
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"results": str(tmp_path / "results"), **overlay}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(config)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert key in output, output
    assert "Job stats" not in output and "rule prepare_data" not in output
    assert not (tmp_path / "results").exists()


# Snakemake's --config reads nested values with YAML's BaseLoader: every nested scalar is a string.
def test_command_line_strings_become_the_schema_types():
    given = deep_merge(PARAMS, {
        "compute": {"iterations_per_job": "10", "tf32": "true"},
        "results": "2021", "methods": {"shortrun": {"correction": {"alpha": "0", "max_iter": "null", "eps": "1e-3"}}},
        "runs": {"abp": {"correction": {"alpha": "0.0"}}, "new": {"method": "shortrun",
                                                                   "langevin": {"persistent": "false"}}},
        "sweeps": {"s": {"runs": ["ours"], "key": "langevin.step_size", "values": ["0.02", "0.04"]}},
        "evaluation": {"test_images": "null", "runs": ["ours"]},
        "anomaly": {"digits": ["1", "4"], "training": {"iterations": "10"}},
    })
    given["figures"] = {}  # alpha = 0 everywhere: no run would correct for Fig. 2
    config = coerce_command_line_values(given)
    assert config["compute"] == {**PARAMS["compute"], "iterations_per_job": 10, "tf32": True}
    assert config["results"] == "2021", "a string field stays a string"
    correction = config["methods"]["shortrun"]["correction"]
    assert (correction["alpha"], correction["max_iter"], correction["eps"]) == (0, None, 1e-3)
    assert type(correction["alpha"]) is int and type(correction["eps"]) is float
    assert config["runs"]["abp"]["correction"]["alpha"] == 0.0
    assert config["runs"]["new"]["langevin"]["persistent"] is False
    assert config["sweeps"]["s"]["values"] == [0.02, 0.04]
    assert config["evaluation"]["test_images"] is None
    assert config["anomaly"]["digits"] == [1, 4] and config["anomaly"]["training"]["iterations"] == 10
    validate_config(config)
    assert given["compute"]["iterations_per_job"] == "10", "the input is not modified"


@pytest.mark.parametrize("value", ["ten", "1.5", "true", "[1]"])
def test_command_line_strings_of_the_wrong_type_are_still_rejected(value):
    config = coerce_command_line_values(deep_merge(PARAMS, {"training": {"iterations": value}}))
    with pytest.raises(ConfigError, match="config key 'training.iterations'"):
        validate_config(config)


@pytest.mark.slow
def test_snakemake_accepts_nested_command_line_values(tmp_path):
    overlay = tmp_path / "results.yaml"
    overlay.write_text(yaml.safe_dump({"results": str(tmp_path / "results")}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--configfile", str(overlay), "--config",
         "compute={iterations_per_job: 25, tf32: false}", "methods={shortrun: {correction: {every: 5}}}",
         "--list-rules"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    rules = set(result.stdout.split())
    assert {"train_ours_it0001_0025", "train_ours_it0476_0500", "train_abp_it0026_0050"} <= rules, output
