"""Tables 1 and 2 assembled from measured JSON files and the paper's reference CSV."""

import json

import pandas as pd
import pytest

from shortrun_ot.tables import markdown, table1, table2

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
