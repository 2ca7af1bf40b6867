"""benchmarks/gpu_slot.py, the prepared script for a short GPU slot: its logic on the CPU at tiny size."""

import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
import time

import pytest
import yaml

from conftest import REPO, tiny_config

spec = importlib.util.spec_from_file_location("gpu_slot", REPO / "benchmarks" / "gpu_slot.py")
gpu_slot = sys.modules["gpu_slot"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(gpu_slot)


def test_deadlines_are_the_cumulative_shares_of_the_budget():
    assert gpu_slot.deadlines(100.0, [0.2, 0.5, 0.3]) == pytest.approx(
        {"benchmark": 20.0, "table1": 70.0, "table2": 100.0})
    assert gpu_slot.deadlines(100.0, [0.5, 0.7, 0.3])["table2"] == 100.0  # never past the budget


def test_a_step_that_reaches_its_deadline_is_stopped_and_reported(tmp_path):
    slot = gpu_slot.Slot(gpu_slot.parse_args(["--out", str(tmp_path / "out"), "--budget-seconds", "60"]))
    step = slot.run("part", "sleeper", [sys.executable, "-c", "print('started', flush=True); "
                                        "import time; time.sleep(60)"], deadline=slot.elapsed() + 2)
    assert step.status == "stopped" and 2 <= step.seconds < 2 + gpu_slot.STOP_GRACE_SECONDS
    assert (tmp_path / "out" / "logs" / "part-sleeper.log").read_text() == "started\n"
    failed = slot.run("part", "failing", [sys.executable, "-c", "raise SystemExit(3)"], deadline=slot.elapsed() + 60)
    assert (failed.status, failed.note) == ("failed", "exit status 3")
    shutil.rmtree(slot.work)


def test_pack_leaves_the_summaries_and_one_archive(tmp_path):
    for name in ("summary.json", "summary.md", "table1/table1.csv", "table1/ours/grid.png", "logs/table1-ours.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    gpu_slot.pack(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_slot.tar.gz", "summary.json", "summary.md"]
    with tarfile.open(tmp_path / "gpu_slot.tar.gz") as tar:
        assert {"summary.json", "table1/table1.csv", "table1/ours/grid.png", "logs/table1-ours.log"} <= set(
            tar.getnames())


def test_table1_runs_ours_and_abp_first():
    config = gpu_slot.workflow_config(["config/gpu.yaml"])
    assert config["results"] == "results/gpu" and config["device"] == "cuda"
    runs = gpu_slot.table1_runs(config)
    assert runs[:2] == ["ours", "abp"] and set(runs) == set(config["evaluation"]["runs"])


@pytest.mark.slow
def test_tiny_slot_writes_summary_and_table1_and_skips_what_the_budget_cannot_fit(tmp_path):
    """The whole script at tiny size (embedded MNIST subset, 200 images, 1 iteration with its correction): the
    benchmark and Table 1 (run ``ours``) finish; Table 2 needs more than the budget, so it is skipped and said so."""
    config = yaml.safe_load(tiny_config(tmp_path, compute={"iterations_per_job": 10}, iterations=1).read_text())
    config["methods"]["shortrun"]["correction"]["every"] = 1
    config["evaluation"]["runs"] = ["ours"]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out, budget = tmp_path / "out", 400
    start = time.monotonic()
    result = subprocess.run([sys.executable, "benchmarks/gpu_slot.py", "--out", str(out), "--budget-seconds",
                             str(budget), "--configfile", str(tmp_path / "tiny.yaml"), "--shares", "0.4", "0.6", "0",
                             "--min-seconds", "benchmark=1", "table1=1", f"table2={budget}"],
                            cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert wall < budget

    summary = json.loads((out / "summary.json").read_text())
    parts = {p["name"]: p for p in summary["parts"]}
    assert list(parts) == ["benchmark", "table1", "table2"]
    assert summary["wall_seconds"] < budget and all(p["deadline"] <= budget for p in parts.values())
    assert parts["benchmark"]["status"] == "finished", parts["benchmark"]
    assert parts["table1"]["status"] == "finished", parts["table1"]
    assert [s["name"] for s in parts["table1"]["steps"]] == ["ours", "assemble"]
    assert parts["table2"]["status"] == "skipped" and parts["table2"]["seconds"] < 1
    assert parts["table2"]["unfinished"] == [
        f"skipped ({parts['table2']['steps'][0]['note']}): digit1-seed0, digit4-seed0, digit5-seed0, ... (50 in all)"]
    assert f"needs {budget}" in parts["table2"]["steps"][0]["note"]

    rows = (out / "table1" / "table1.csv").read_text().splitlines()
    assert any(",Ours,measured," in row for row in rows), rows[:3]
    benchmark = json.loads((out / "benchmark" / "stage_benchmark.json").read_text())
    assert {r["stage"] for r in benchmark["rows"]} == {"infer", "learn", "correct"}
    for name in ("metrics.json", "history.csv", "grid.png", "training.json"):
        assert (out / "table1" / "ours" / name).is_file(), name
    markdown = (out / "summary.md").read_text()
    assert "| table2 | skipped |" in markdown and "Ours" in markdown  # Table 1 is in the summary too
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 3_000_000
    assert not any(p.suffix == ".pt" for p in files)  # no checkpoints
