"""The training workflow run through Snakemake itself on a tiny configuration."""

import json
import textwrap

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, snakemake, tiny_config

pytestmark = pytest.mark.slow


def run_files(results, run, t):
    return sorted((results / "runs" / run / f"it{t:04d}").glob("*.*"))


def api_example() -> str:
    """The Python block of docs/api.md."""
    text = (REPO / "docs" / "api.md").read_text()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_tiny_workflow_trains_resumes_and_is_deterministic(tmp_path, capsys):
    config = tiny_config(tmp_path)
    snakemake("--configfile", "config/quick.yaml", str(config))
    results = tmp_path / "results"
    # docs/api.md's example, on this run: the final model, its samples, reconstructions and anomaly scores
    example = api_example()
    assert '"results/quick/runs/ours"' in example and '"data/prepared"' in example
    exec(example.replace('"results/quick/runs/ours"', repr(str(results / "runs" / "ours")))
         .replace('"data/prepared"', repr(str(tmp_path / "prepared"))), {})
    assert capsys.readouterr().out.strip() == "torch.Size([16, 1, 28, 28]) torch.Size([4, 1, 28, 28]) torch.Size([4])"
    for run in ("ours", "abp"):
        assert (results / "runs" / run / "final" / "model.pt").is_file()
        assert (results / "runs" / run / "figures" / "grid.png").is_file()
        for t in range(1, 5):
            stats = json.loads((results / "runs" / run / f"it{t:04d}" / "infer.json").read_text())
            assert stats["iteration"] == t and stats["steps"] == 3 and stats["latent_fd"] >= 0
    # corrections happen on t % L == 0 for alpha > 0 only (alpha = 0 is plain ABP)
    names = [p.name for p in run_files(results, "ours", 2) if p.name.startswith("correct")]
    assert names == ["correct.json", "correct.pt", "correct.pt.json"]
    assert not list((results / "runs" / "abp").glob("it*/correct.pt"))
    correct = json.loads((results / "runs" / "ours" / "it0002" / "correct.json").read_text())
    assert correct["unmatched"] == 0 and correct["lower_bound"] <= correct["cost"] + 1e-6
    history = pd.read_csv(results / "runs" / "ours" / "history.csv")
    assert list(history.iteration) == [0, 1, 2, 3, 4] and history["correct.cost"].notna().sum() == 2
    table = pd.read_csv(results / "table1.csv")
    measured = table[table.source == "measured"]
    assert sorted(measured.model) == ["ABP", "Ours"] and (measured.fid_samples == 20).all()
    assert measured[["mse_train", "mse_test", "fid", "ot_cost", "train_seconds"]].gt(0).all().all()
    assert (results / "table1.md").read_text().startswith("Table 1")

    # Deleting iterations 3 and later recomputes exactly those, with identical results (CPU, fixed seed);
    # raising T at the same time only adds iterations (config.json, which every stage reads, leaves T out).
    before = {p: p.stat().st_mtime_ns for t in (0, 1, 2) for p in run_files(results, "ours", t)}
    before[results / "runs" / "ours" / "config.json"] = (results / "runs" / "ours" / "config.json").stat().st_mtime_ns
    final = results / "runs" / "ours" / "it0004" / "learn.pt"
    reference = torch.load(final, weights_only=True)["generator"]
    for t in (3, 4):
        for p in run_files(results, "ours", t):
            p.unlink()
    longer = yaml.safe_load(config.read_text())
    longer["training"]["iterations"] = 5
    config.write_text(yaml.safe_dump(longer))
    out = snakemake("--configfile", "config/quick.yaml", str(config))
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "stage=infer" in out.stdout + out.stderr
    assert (results / "runs" / "ours" / "it0003" / "infer.pt").is_file()
    assert (results / "runs" / "ours" / "it0005" / "learn.pt").is_file()
    recomputed = torch.load(final, weights_only=True)["generator"]
    assert all(torch.equal(reference[k], recomputed[k]) for k in reference)

    # One job per block of 3 iterations (compute.iterations_per_job) writes the same files, bit for bit.
    (tmp_path / "blocks").mkdir()
    blocks = tiny_config(tmp_path / "blocks", compute={"iterations_per_job": 3, "cuda_graphs": True, "tf32": False})
    blocks_results = tmp_path / "blocks" / "results"
    out = snakemake("--configfile", "config/quick.yaml", str(blocks), "--",
                    str(blocks_results / "runs" / "ours" / "it0004" / "learn.pt"))
    jobs = out.stdout + out.stderr
    assert "train_ours_it0001_0003" in jobs and "train_ours_it0004_0004" in jobs and "stage=infer" not in jobs
    for t in range(0, 5):
        produced = run_files(blocks_results, "ours", t)
        assert [p.name for p in produced] == [p.name for p in run_files(results, "ours", t)]
        for p in produced:
            if p.suffix == ".pt" or p.name.endswith(".pt.json"):
                assert p.read_bytes() == (results / "runs" / "ours" / f"it{t:04d}" / p.name).read_bytes(), p
    block_stats = json.loads((blocks_results / "runs" / "ours" / "it0001" / "infer.json").read_text())
    assert block_stats["startup_seconds"] > 0 and block_stats["compute_seconds"] <= block_stats["seconds"]
    assert "startup_seconds" not in json.loads((blocks_results / "runs" / "ours" / "it0002" / "infer.json").read_text())


@pytest.mark.slow
def test_blocks_that_keep_some_states_leave_the_others_out_and_the_run_complete(tmp_path):
    """compute.keep_states_every = 4, blocks of 3, 7 iterations, a correction every 2: the states of
    iterations 0, 2 (the next block's correction reads its dual vector), 3 and 6 (blocks' ends), 4 and 7 are
    written, the others' reports only; a second invocation has nothing to do, and an evaluation of a
    dropped iteration stops with the key to change."""
    config = tiny_config(tmp_path, compute={"iterations_per_job": 3, "keep_states_every": 4}, iterations=7)
    run = tmp_path / "results" / "runs" / "ours"
    targets = [str(run / "history.csv"), str(run / "final")]
    snakemake("--configfile", str(config), "--", *targets)
    for t in range(8):
        stages = ["init"] if t == 0 else ["infer", "correct", "learn"] if t % 2 == 0 else ["infer", "learn"]
        written = sorted(p.name for p in (run / f"it{t:04d}").glob("*.pt"))
        assert written == (sorted(f"{stage}.pt" for stage in stages) if t in {0, 2, 3, 4, 6, 7} else []), t
        assert all((run / f"it{t:04d}" / f"{stage}.json").is_file() for stage in stages), t
    assert (run / "final" / "model.pt").is_file()
    again = snakemake("--configfile", str(config), "-n", "--", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr
    # N says how, not what: another N (3: block 4..6 would keep iteration 6 only) reruns no block
    other = yaml.safe_load(config.read_text())
    other["compute"]["keep_states_every"] = 3
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    again = snakemake("--configfile", str(tmp_path / "other.yaml"), "-n", "--", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr
    dropped = snakemake("--configfile", str(config), "--", str(run / "evaluation" / "end-it0005.json"), check=False)
    assert dropped.returncode != 0
    assert "needs the states of iteration(s) [5] of run 'ours', which compute.keep_states_every = 4" in dropped.stderr


TOY_METHOD = '''
"""A method that exists only in this test: the mean training image, whatever z."""
import torch
from shortrun_ot.methods.base import Method, StageRef, TrainedModel


class MeanImage(Method):
    STAGES = ("init", "average")

    def stages(self, t):
        return ["init"] if t == 0 else ["average"]

    def inputs(self, stage, t):
        return {} if stage == "init" else {"previous": self.previous(t)}

    def init(self, t, inputs, ctx):
        return {"mean": torch.zeros_like(ctx.images[0]), "count": torch.tensor(0)}, {}

    def average(self, t, inputs, ctx):
        shift = self.settings["shift"]
        return {"mean": ctx.images.mean(0) + shift, "count": inputs["previous"]["count"] + 1}, {"shift": shift}

    def evaluation_points(self, t):
        return {"end": {"model": StageRef(t, self.stages(t)[-1])}}

    def trained_model(self, states, device, protocol):
        return MeanModel(self.settings, device, protocol, states["model"]["mean"])


class MeanModel(TrainedModel):
    def __init__(self, settings, device, protocol, mean):
        super().__init__(settings, device, protocol)
        self.mean = mean

    def decode(self, z):
        return self.mean.expand(len(z), *self.mean.shape).clone()

    def encode(self, images):
        return torch.zeros(len(images), self.latent_dim)


METHOD = MeanImage
'''


def test_a_method_defined_outside_the_package_runs_through_the_unchanged_workflow(tmp_path):
    """The rules never name a method: a module on PYTHONPATH, with its schema beside it, is enough."""
    package = tmp_path / "plugins" / "toy_methods"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mean_image.py").write_text(textwrap.dedent(TOY_METHOD))
    (package / "mean_image.schema.yaml").write_text(yaml.safe_dump(
        {"properties": {"shift": {"type": "number", "description": "added to the mean image"}}}))
    config = tiny_config(tmp_path)
    overlay = yaml.safe_load(config.read_text())
    overlay.update(runs={"toy": {"method": "toy_methods.mean_image", "shift": -0.5, "iterations": 2}},
                   evaluation={**overlay["evaluation"], "runs": ["toy"]})
    config.write_text(yaml.safe_dump(overlay))
    import os

    env_path = f"{tmp_path / 'plugins'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    os.environ["PYTHONPATH"], previous = env_path, os.environ.get("PYTHONPATH")
    try:
        snakemake("--configfile", "config/quick.yaml", str(config), "--", str(tmp_path / "results" / "table1.csv"))
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous
    run = tmp_path / "results" / "runs" / "toy"
    assert [json.loads((run / f"it{t:04d}" / "average.json").read_text())["shift"] for t in (1, 2)] == [-0.5, -0.5]
    assert int(torch.load(run / "final" / "model.pt")["count"]) == 2
    table = pd.read_csv(tmp_path / "results" / "table1.csv")
    row = table[table.source == "measured"].iloc[0]
    assert (row.model, row.method) == ("toy", "toy_methods.mean_image") and row.fid > 0
    rules = {path.name: path.read_text() for path in (REPO / "workflow" / "rules").glob("*.smk")}
    assert not any("mean_image" in text for text in rules.values())


PRODUCTS = {"table1": "table1.csv", "table2": "table2.csv", "table3": "table3.csv", "table4": "table4.csv",
            "table5": "table5.csv", "table6": "table6.csv", "figure2": "figures/figure2.png",
            "figure3": "figures/figure3.png", "figure4": "figures/figure4.png", "figure5": "figures/figure5.png",
            "occlusion": "figures/occlusion.png", "eight_gaussians": "figures/eight_gaussians.png",
            "chain_stability_figure": "figures/chain_stability.png", "aeot_mnist": "aeot_mnist.csv",
            "coupled_vae_mixture": "coupled_vae_mixture.csv", "coupled_vae_mnist": "figures/coupled_vae_mnist.png"}


def test_the_main_products_have_short_rule_names_that_build_their_files():
    """`snakemake table2` builds results/quick/table2.csv: each README name is a target of its product's file
    (a dry run of the quick configuration lists the job that writes it)."""
    # --forceall: every job is listed, whatever a local results/quick/ already holds
    result = snakemake("-n", "--forceall", "--configfile", "config/quick.yaml", "--", *PRODUCTS, "figures")
    for name, path in PRODUCTS.items():
        assert f"results/quick/{path}" in result.stdout, name


def test_loading_a_folder_without_a_finished_run_says_what_to_do(tmp_path):
    from shortrun_ot.api import load_run

    with pytest.raises(FileNotFoundError, match="holds no finished run"):
        load_run(tmp_path)
