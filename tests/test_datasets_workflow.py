"""SVHN and CelebA through the real workflow: tiny files in the official formats to Table 1 rows, and the
one clear error, before any job starts, when their raw files are missing."""

import pandas as pd
import pytest
import yaml

from conftest import snakemake, tiny_config
from test_raw_formats import write_celeba, write_svhn

pytestmark = pytest.mark.slow


def dataset_config(tmp_path, download=False):
    """The tiny configuration with Table 1 = run ``ours`` on SVHN and on CelebA (keys ours-svhn, ours-celeba)."""
    path = tiny_config(tmp_path, iterations=2, train_images=None)  # all of the tiny files
    config = yaml.safe_load(path.read_text())
    config["data"]["download"] = download
    config["evaluation"].update(runs=["ours"], datasets=["svhn", "celeba"], fid_real_images=None)
    path.write_text(yaml.safe_dump(config))
    return path


def test_svhn_and_celeba_files_become_table1_rows(tmp_path):
    write_svhn(tmp_path / "raw" / "svhn")
    write_celeba(tmp_path / "raw" / "celeba")
    config = dataset_config(tmp_path)
    results = tmp_path / "results"
    snakemake("--configfile", "config/quick.yaml", str(config), "--", str(results / "table1.csv"),
              str(results / "runs" / "ours-celeba" / "figures" / "grid.png"))
    table = pd.read_csv(results / "table1.csv")
    measured = table[table["source"] == "measured"]
    assert measured[["dataset", "model"]].values.tolist() == [["SVHN", "Ours"], ["CelebA", "Ours"]]
    assert measured["train_images"].tolist() == [12, 5]  # all 12 SVHN images; the 5 of CelebA's train partition
    assert measured["fid"].notna().all() and (measured["mse_test"] > 0).all()
    # the paper's per-dataset settings reached the runs (params.yaml, datasets: d = 64, alpha = 0.3)
    for run in ("ours-svhn", "ours-celeba"):
        settings = yaml.safe_load((results / "runs" / run / "config.json").read_text())
        assert settings["latent_dim"] == 64 and settings["correction"]["alpha"] == 0.3
    paper = table[(table["source"] == "paper") & (table["dataset"] == "SVHN") & (table["model"] == "Ours")]
    assert paper["fid"].tolist() == [19.48]


def test_missing_raw_files_stop_the_workflow_before_any_job(tmp_path):
    write_svhn(tmp_path / "raw" / "svhn")  # SVHN is there, CelebA is not
    config = dataset_config(tmp_path)
    dry = snakemake("--configfile", "config/quick.yaml", str(config), "-n", "--quiet", "rules")
    assert "prepare_data" in dry.stdout  # a dry run lists the jobs, data or not
    result = snakemake("--configfile", "config/quick.yaml", str(config), check=False)
    assert result.returncode != 0
    message = result.stderr + result.stdout
    assert f"CelebA is not in {tmp_path / 'raw' / 'celeba'}" in message
    assert "img_align_celeba/" in message and "list_eval_partition.txt" in message
    assert "SVHN is not in" not in message
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "results").exists()  # no job ran


def test_aeot_celeba_configuration_names_the_missing_celeba_files(tmp_path):
    """config/aeot-celeba.yaml (AE-OT's Figs. 4 and 5) runs where CelebA is; here it stops before any job."""
    config = dataset_config(tmp_path)
    result = snakemake("--configfile", "config/quick.yaml", str(config), "config/aeot-celeba.yaml", "--",
                       str(tmp_path / "results" / "figures" / "aeot_celeba.png"), check=False)
    assert result.returncode != 0
    assert f"CelebA is not in {tmp_path / 'raw' / 'celeba'}" in result.stderr + result.stdout
    assert not (tmp_path / "prepared").exists()
