"""The training workflow run through Snakemake itself on a tiny configuration."""

import json

import pandas as pd
import pytest
import torch

from conftest import snakemake, tiny_config

pytestmark = pytest.mark.slow


def run_files(results, run, t):
    return sorted((results / "runs" / run / f"it{t:04d}").glob("*.*"))


def test_tiny_workflow_trains_resumes_and_is_deterministic(tmp_path):
    config = tiny_config(tmp_path)
    snakemake("--configfile", "config/quick.yaml", str(config))
    results = tmp_path / "results"
    for run in ("ours", "abp"):
        final = results / "runs" / run / "it0004" / "checkpoint.pt"
        assert final.is_file() and (results / "runs" / run / "figures" / "grid.png").is_file()
        for t in range(1, 5):
            stats = json.loads((results / "runs" / run / f"it{t:04d}" / "infer.json").read_text())
            assert stats["iteration"] == t and stats["steps"] == 3
    # corrections happen on t % L == 0 for alpha > 0 only (alpha = 0 is plain ABP)
    assert [p.name for p in run_files(results, "ours", 2) if p.name.startswith("correct")] == ["correct.json", "corrected.pt"]
    assert not list((results / "runs" / "abp").glob("it*/corrected.pt"))
    correct = json.loads((results / "runs" / "ours" / "it0002" / "correct.json").read_text())
    assert correct["unmatched"] == 0 and correct["lower_bound"] <= correct["cost"] + 1e-6
    table = pd.read_csv(results / "table1.csv")
    measured = table[table.source == "measured"]
    assert sorted(measured.model) == ["ABP", "Ours"] and (measured.fid_samples == 20).all()
    assert measured[["mse_train", "mse_test", "fid"]].gt(0).all().all()
    assert (results / "table1.md").read_text().startswith("Table 1")

    # Deleting iterations 3 and later recomputes exactly those, with identical results (CPU, fixed seed).
    before = {p: p.stat().st_mtime_ns for t in (0, 1, 2) for p in run_files(results, "ours", t)}
    final = results / "runs" / "ours" / "it0004" / "checkpoint.pt"
    reference = torch.load(final, weights_only=True)["model"]
    for t in (3, 4):
        for p in run_files(results, "ours", t):
            p.unlink()
    out = snakemake("--configfile", "config/quick.yaml", str(config))
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "rule infer" in out.stdout + out.stderr
    assert (results / "runs" / "ours" / "it0003" / "inferred.pt").is_file()
    recomputed = torch.load(final, weights_only=True)["model"]
    assert all(torch.equal(reference[k], recomputed[k]) for k in reference)

    # One job per block of 3 iterations (compute.iterations_per_job) writes the same files, bit for bit.
    (tmp_path / "blocks").mkdir()
    blocks = tiny_config(tmp_path / "blocks", compute={"iterations_per_job": 3, "cuda_graphs": True, "tf32": False})
    blocks_results = tmp_path / "blocks" / "results"
    out = snakemake("--configfile", "config/quick.yaml", str(blocks), "--",
                    str(blocks_results / "runs" / "ours" / "it0004" / "checkpoint.pt"))
    jobs = out.stdout + out.stderr
    assert "train_ours_it0001_0003" in jobs and "train_ours_it0004_0004" in jobs and "rule infer" not in jobs
    for t in range(0, 5):
        produced = run_files(blocks_results, "ours", t)
        assert [p.name for p in produced] == [p.name for p in run_files(results, "ours", t)]
        for p in produced:
            if p.suffix == ".pt" or p.name == "checkpoint.pt.json":
                assert p.read_bytes() == (results / "runs" / "ours" / f"it{t:04d}" / p.name).read_bytes(), p
    block_stats = json.loads((blocks_results / "runs" / "ours" / "it0001" / "infer.json").read_text())
    assert block_stats["startup_seconds"] > 0 and block_stats["compute_seconds"] <= block_stats["seconds"]
    assert "startup_seconds" not in json.loads((blocks_results / "runs" / "ours" / "it0002" / "infer.json").read_text())
