"""Tables 1 and 2 assembled from measured JSON files and the paper's reference CSV."""

import json

import pandas as pd
import pytest

from shortrun_ot.tables import ablation_table, markdown, occlusion_table, table1, table2

REFERENCE = "workflow/resources/paper_results.csv"


@pytest.fixture(autouse=True)
def _in_repo(repo, monkeypatch):
    monkeypatch.chdir(repo)


def test_table1_has_measured_and_paper_rows(tmp_path):
    metrics = {"run": "ours", "method": "shortrun", "dataset": "mnist5k", "mse_train": 0.01, "mse_test": 0.02,
               "fid": 50.0, "fid_samples": 500, "fid_real_images": 500, "train_images": 2000, "iterations": 15,
               "ot_cost": 3.0, "ot_cost_prior_floor": 2.5, "latent_fd": 0.1, "device": "cpu",
               "training": {"train_seconds": 12.5}}
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    (tmp_path / "v.json").write_text(json.dumps({**metrics, "run": "vae", "method": "vae", "fid": 60.0}))
    t = table1([tmp_path / "m.json", tmp_path / "v.json"], REFERENCE)
    measured = t[t.source == "measured"]
    assert list(measured.model) == ["Ours", "VAE"] and list(measured.fid) == [50.0, 60.0]
    assert (measured.iloc[0].fid_samples, measured.iloc[0].train_seconds, measured.iloc[0].device) == (500, 12.5, "cpu")
    paper = t[(t.source == "paper") & (t.dataset == "MNIST") & (t.model == "Ours")].iloc[0]
    assert (paper.mse_train, paper.fid) == (0.0008, 14.28)
    assert len(t[t.source == "paper"]) == 22  # 8 models x 3 datasets; MNIST has no ABP or LEBM entry


def test_table2_aggregates_seeds_with_sample_std(tmp_path):
    files = []
    for seed, value in enumerate([0.5, 0.7, 0.9]):
        path = tmp_path / f"a{seed}.json"
        path.write_text(json.dumps({"model": "ours", "heldout_digit": 4, "seed": seed, "auprc": value}))
        files.append(path)
    t = table2(files, REFERENCE)
    row = t[t.source == "measured"].iloc[0]
    assert (row.model, row.digit, row.seeds) == ("Ours", 4, 3)
    assert row["mean"] == pytest.approx(0.7) and row["std"] == pytest.approx(0.2)
    paper = t[(t.source == "paper") & (t.model == "Ours") & (t.digit == 4)].iloc[0]
    assert (paper["mean"], paper["std"]) == (0.770, 0.024)


def test_markdown_rendering():
    text = markdown(pd.DataFrame({"a": [1.23456, float("nan")], "b": ["x", "y"]}), "Caption")
    assert text.splitlines() == ["Caption", "", "| a | b |", "|---|---|", "| 1.235 | x |", "|  | y |"]


METRICS = {"method": "shortrun", "dataset": "mnist5k", "mse_train": 0.01, "mse_test": 0.02, "fid": 50.0,
           "fid_samples": 300, "ot_cost": 3.0, "ot_cost_prior_floor": 2.5, "latent_fd": 0.1, "train_images": 1000,
           "iterations": 12, "device": "cpu"}


def test_ablation_table_has_a_row_per_value_with_its_cost_and_the_papers_rows(tmp_path):
    files = {}
    for steps, seconds in ((5, 40.0), (20, 160.0)):
        path = tmp_path / f"k{steps}.json"
        path.write_text(json.dumps({**METRICS, "run": f"ours-steps{steps}", "fid": 100.0 - steps,
                                    "training": {"train_seconds": seconds}}))
        files[float(steps)] = [path]
    t = ablation_table(5, "langevin.steps", files, REFERENCE)
    measured = t[t.source == "measured"]
    assert list(measured["langevin.steps"]) == [5.0, 20.0] and list(measured.fid) == [95.0, 80.0]
    assert list(measured.train_seconds) == [40.0, 160.0] and set(measured.device) == {"cpu"}
    paper = t[t.source == "paper"].set_index("langevin.steps")
    assert list(paper.index) == [30.0, 50.0, 100.0]
    assert (paper.loc[100.0, "mse_train"], paper.loc[100.0, "fid"]) == (0.007, 15.43)
    table3 = ablation_table(3, "latent_dim", files, REFERENCE)
    svhn = table3[table3.source == "paper"].set_index("latent_dim")
    assert (svhn.loc[64.0, "dataset"], svhn.loc[64.0, "mse_train"], svhn.loc[64.0, "fid"]) == ("SVHN", 0.002, 19.48)
    table6 = ablation_table(6, "learning.passes", files, REFERENCE)
    assert table6[table6.source == "paper"].set_index("learning.passes").loc[3.0, "fid"] == 14.28


def test_occlusion_table_lists_observed_and_missing_pixel_errors(tmp_path):
    paths = []
    for run, missing in (("ours-missing90", 0.9), ("abp-missing50", 0.5)):
        path = tmp_path / f"{run}.json"
        path.write_text(json.dumps({**METRICS, "run": run, "missing_fraction": missing, "mse_train_observed": 0.01,
                                    "mse_train_missing": 0.05, "training": {"train_seconds": 9.0}}))
        paths.append(path)
    t = occlusion_table(paths)
    assert list(t.run) == ["abp-missing50", "ours-missing90"] and list(t.mse_train_missing) == [0.05, 0.05]
    complete = tmp_path / "ours.json"
    complete.write_text(json.dumps({**METRICS, "run": "ours"}))
    with pytest.raises(ValueError, match="did not learn from occluded images"):
        occlusion_table([complete])


def test_aeot_mnist_table_puts_each_runs_scores_beside_the_papers(tmp_path):
    import json

    from shortrun_ot.tables import aeot_mnist_table

    metrics = {"run": "wae-mnist64", "dataset": "mnist64", "method": "wae", "mse_train": 0.01, "mse_test": 0.02,
               "fid": 50.0, "fid_samples": 100, "ot_cost": 1.0, "ot_cost_prior_floor": 0.5, "latent_fd": 0.1,
               "train_images": 60000, "iterations": 1000, "device": "cpu", "training": {"train_seconds": 12.5}}
    scores = {"run": "wae-mnist64", "inception_score": None, "inception_score_std": None, "classifier_score": 8.5,
              "classifier_score_std": 0.2, "classifier_test_accuracy": 0.99, "samples": 10000}
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    (tmp_path / "s.json").write_text(json.dumps(scores))
    table = aeot_mnist_table([tmp_path / "s.json"], [tmp_path / "m.json"], REFERENCE)
    row = table.iloc[0]
    assert (row["model"], row["dataset"], row["classifier_score"], row["fid"], row["train_seconds"]) == (
        "WAE", "MNIST 64x64", 8.5, 50.0, 12.5)
    paper = table[table["source"] == "paper"].set_index("model")
    assert paper.loc["AE-OT", "inception_score"] == 1.78 and paper.loc["WAE", "inception_score_std"] == 0.09
    (tmp_path / "s.json").write_text(json.dumps({**scores, "run": "vae-mnist64"}))
    with pytest.raises(ValueError, match="is of run 'vae-mnist64'"):
        aeot_mnist_table([tmp_path / "s.json"], [tmp_path / "m.json"], REFERENCE)
