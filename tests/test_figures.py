"""The figures and ablation tables of Sec. 6 (Figs. 2-5, Tables 4 and 5, chain stability, occlusion) built by
the real workflow."""

import json

import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import snakemake, tiny_config, with_figures

pytestmark = pytest.mark.slow


def test_the_figure_targets_build_from_a_tiny_configuration(tmp_path):
    path = tiny_config(tmp_path, compute={"iterations_per_job": 3, "cuda_graphs": False, "tf32": False}, iterations=3)
    config = yaml.safe_load(path.read_text())
    config["methods"]["shortrun"]["correction"]["every"] = 1
    with_figures(config)
    path.write_text(yaml.safe_dump(config))
    snakemake("--configfile", "config/quick.yaml", str(path), "--", "figures")
    results = tmp_path / "results"
    for name in ("figure2", "figure3", "figure4", "figure5", "occlusion", "chain_stability", "eight_gaussians"):
        assert Image.open(results / "figures" / f"{name}.png").size[0] > 500
        assert (results / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")

    # Fig. 2: one panel per correction of the 2-D run (L = 1: iterations 1, 2, 3), then the prior sample
    drawn = json.loads((results / "logs" / "figure2.log").read_text())
    assert drawn["panels"] == ["correction 1 (iteration 1)", "correction 2 (iteration 2)",
                               "correction 3 (iteration 3)", "prior sample"]
    assert set(drawn["digits"]) == {0, 1}

    # Fig. 5: alpha = 0 is the run abp itself; FID at every 2nd iteration and the last (2, 3) of both values
    curves = pd.read_csv(results / "figures" / "figure5.csv")
    assert sorted(curves["alpha"].unique()) == [0.0, 0.9]
    assert len(curves) == 2 * 3 and curves["latent_fd"].gt(0).all()
    assert curves.dropna(subset=["fid"]).groupby("alpha")["iteration"].apply(list).to_dict() == {0.0: [2, 3],
                                                                                                  0.9: [2, 3]}
    assert curves[curves["alpha"] == 0.9]["ot_cost"].notna().sum() == 3  # a correction every iteration
    assert curves[curves["alpha"] == 0.0]["ot_cost"].isna().all()  # ABP never corrects
    assert (results / "runs" / "abp" / "evaluation" / "end-it0003.json").is_file()

    # Table 4: before and after the last correction (t = 3) per step size, beside the paper's four columns
    table = pd.read_csv(results / "table4.csv")
    measured = table[table["source"] == "measured"]
    assert sorted(zip(measured["step_size"], measured["point"])) == [
        (0.01, "after"), (0.01, "before"), (0.05, "after"), (0.05, "before")]
    assert (measured["iteration"] == 3).all()
    assert sorted(table[table["source"] == "paper"]["step_size"].unique()) == [0.003, 0.015, 0.03, 0.06]
    before = json.loads((results / "runs" / "ours-step_size0.01" / "evaluation" /
                         "before_correction-it0003.json").read_text())
    after = json.loads((results / "runs" / "ours-step_size0.01" / "evaluation" /
                        "after_correction-it0003.json").read_text())
    assert before["point"] == "before_correction" and after["point"] == "after_correction"
    assert before["latent_norm"] != after["latent_norm"]  # "after" reads the corrected latents

    # chain stability: a tiny step contracts, a huge one blows a perturbation up
    stability = pd.read_csv(results / "figures" / "chain_stability.csv").set_index("step_size")
    assert stability.loc[0.01, "growth"] < 1 < stability.loc[3.0, "growth"]
    assert not stability.loc[0.01, "chaotic"] and stability.loc[3.0, "chaotic"]

    # Fig. 3: one panel per run, titled with the OT cost its metrics.json holds
    costs = json.loads((results / "logs" / "figure3.log").read_text())
    assert len(costs) == 2 and all(value > 0 for value in costs.values())
    vae = json.loads((results / "runs" / "vae-digits01" / "metrics.json").read_text())
    assert costs["VAE (run vae-digits01)"] == round(vae["ot_cost"], 4)

    # Table 5: K = 3 is the run ours itself, K = 2 a new run; each row with its training cost
    table5 = pd.read_csv(results / "table5.csv")
    measured = table5[table5["source"] == "measured"]
    assert list(zip(measured["langevin.steps"], measured["run"])) == [(2, "ours-steps2"), (3, "ours")]
    assert measured["train_seconds"].gt(0).all() and set(measured["device"]) == {"cpu"}
    assert sorted(table5[table5["source"] == "paper"]["langevin.steps"]) == [30, 50, 100]
    for number, key in ((3, "latent_dim"), (6, "learning.passes")):  # the run ours itself, beside the paper's rows
        table = pd.read_csv(results / f"table{number}.csv")
        assert table[table["source"] == "measured"]["run"].tolist() == ["ours"]

    # occlusion: MSE on observed and missing pixels of the occluded run's training images
    occlusion = pd.read_csv(results / "occlusion.csv").iloc[0]
    assert occlusion["run"] == "ours-missing50" and occlusion["missing_fraction"] == pytest.approx(0.5)
    assert 0 < occlusion["mse_train_observed"] and 0 < occlusion["mse_train_missing"]
    assert (results / "occlusion.md").read_text().startswith("Learning from occluded images")

    # AE-OT's MNIST table: scores of each run's samples beside the paper's three Inception Scores
    aeot = pd.read_csv(results / "aeot_mnist.csv")
    measured = aeot[aeot["source"] == "measured"]
    assert measured["run"].tolist() == ["ours", "abp"] and measured["classifier_score"].between(1, 10).all()
    assert measured["classifier_test_accuracy"].gt(0.5).all()
    from shortrun_ot.inception import logit_layer  # the Inception Score exists where pytorch-fid's logits do

    assert measured["inception_score"].isna().all() == (logit_layer() is None)
    assert aeot[aeot["source"] == "paper"]["inception_score"].tolist() == [1.76, 1.64, 1.78]
    assert Image.open(results / "figures" / "aeot_mnist.png").size[0] > 200
    for name in ("aeot_mnist", "aeot_celeba", "aeot_celeba_samples"):  # AE-OT's Fig. 3; Figs. 5 and 4 on tiny runs
        assert (results / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")

    # the Coupled VAE's Tables 1 and 2: every model over both seeds beside the paper's five rows; Figs. 1 to 4
    mixture = pd.read_csv(results / "coupled_vae_mixture.csv")
    measured = mixture[mixture["source"] == "measured"].set_index("model")
    assert sorted(measured.index) == ["C-VAE", "InfoVAE", "VAE", "VAE-NF", "WAE"]
    assert (measured["seeds"] == 2).all() and (measured["points"] == 100).all()
    assert measured["high_density_ratio"].between(0, 1).all() and measured["train_seconds"].gt(0).all()
    paper = mixture[mixture["source"] == "paper"].set_index("model")
    assert paper.loc["C-VAE", "high_density_ratio"] == 0.985 and paper.loc["WAE", "mmd"] == 0.006
    for name in ("coupled_vae_mixture", "coupled_vae_mnist", "coupled_vae_mnist_posterior"):
        assert Image.open(results / "figures" / f"{name}.png").size[0] > 500
        assert (results / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")

    # AE-OT's Fig. 2: a row of mode coverage per snapshot
    coverage = pd.read_csv(results / "figures" / "eight_gaussians.csv")
    assert coverage["iteration"].tolist() == [1, 3] and coverage["near_fraction"].between(0, 1).all()
