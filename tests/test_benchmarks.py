"""The benchmark scripts at CI size: they run, and what they count matches a hand computation."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from mechanism_study import correction_kept  # noqa: E402
from workflow_overhead import summarise  # noqa: E402


def mnist_generator_forward_flops(latent_dim=30):
    """Table 7 MNIST generator, FLOPs (2 per multiply-add) of matrix products and convolutions per image."""
    linear1 = 2 * latent_dim * 1024
    linear2 = 2 * 1024 * 7 * 7 * 128
    deconv1 = 2 * (7 * 7 * 128) * (64 * 2 * 2)  # 2x2 stride-2 windows do not overlap
    deconv2 = 2 * (14 * 14 * 64) * (1 * 2 * 2)
    return linear1 + linear2 + deconv1 + deconv2


@pytest.mark.slow
def test_stage_benchmark_runs_at_tiny_size_and_counts_flops_by_hand(tmp_path):
    data = tmp_path / "mnist5k.pt"
    subprocess.run([sys.executable, "-m", "shortrun_ot", "prepare", "--dataset", "mnist5k", "--raw-root",
                    str(tmp_path / "raw"), "--out", str(data)], check=True, cwd=REPO)
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "benchmarks/stage_benchmark.py", "--data", str(data), "--n", "64",
                             "--steps", "2", "--batch-size", "32", "--passes", "1", "--device", "cpu",
                             "--json", str(out)], cwd=REPO, capture_output=True, text=True, check=True)
    header = result.stdout.splitlines()[0].split()
    assert header[:6] == ["stage", "variant", "n", "K", "device", "seconds"] and "overhead" in header
    report = json.loads(out.read_text())
    forward = mnist_generator_forward_flops()
    # Langevin step: forward + backward to z; learning update: forward + backward to the weights and
    # the activations (not to z, which is data there).
    assert report["flops_per_image"]["langevin_step"] == 2 * forward
    assert report["flops_per_image"]["learning_update"] == 3 * forward - 2 * 30 * 1024
    rows = {(r["stage"], r["variant"]): r for r in report["rows"]}
    assert set(rows) == {("infer", "eager"), ("learn", "eager"), ("correct", "default"),
                         ("infer", "process"), ("correct", "process"), ("learn", "process")}
    infer = rows[("infer", "eager")]
    assert infer["images_per_second"] == pytest.approx(64 / infer["seconds"])
    assert infer["tflops"] == pytest.approx(2 * forward * 64 * 2 / infer["seconds"] / 1e12)
    for stage in ("infer", "correct", "learn"):
        process = rows[(stage, "process")]
        assert 0 < process["startup_seconds"] < process["seconds"]
        assert 0 < process["overhead_share"] < 1


def test_workflow_overhead_is_the_share_outside_compute(tmp_path):
    run = tmp_path / "ours"
    for t, stages in ((1, {"infer": (2.0, 2.5, 4.0), "learn": (1.0, 1.5, None)}),
                      (2, {"infer": (2.0, 2.5, None), "correct": (0.5, 0.6, None), "learn": (1.0, 1.5, None)})):
        (run / f"it{t:04d}").mkdir(parents=True)
        for stage, (compute, seconds, startup) in stages.items():
            report = {"stage": stage, "compute_seconds": compute, "seconds": seconds}
            if startup is not None:
                report["startup_seconds"] = startup
            (run / f"it{t:04d}" / f"{stage}.json").write_text(json.dumps(report))
    summary = summarise([run], wall=20.0)
    assert summary["stages"] == 5 and summary["processes"] == 1
    assert summary["compute_seconds"] == pytest.approx(6.5)
    assert summary["load_save_seconds"] == pytest.approx(8.6 - 6.5)
    assert summary["overhead_share"] == pytest.approx(1 - 6.5 / 20)
    # inside the jobs alone (start-up, loading, saving): (4.0 + 2.1) / (4.0 + 8.6)
    assert summary["job_overhead_share"] == pytest.approx(6.1 / 12.6)
    assert summarise([run], wall=None)["overhead_share"] is None


def test_correction_kept_is_the_share_of_each_corrections_gain_the_next_inference_keeps():
    import pandas as pd

    nan = float("nan")
    history = pd.DataFrame({
        "iteration": [1, 2, 3, 4, 5, 6],
        "infer.latent_fd": [4.0, 4.0, 3.0, 5.0, 2.6, 2.4],
        # t = 2: 4 -> 2, the next inference ends at 3 (half kept); t = 4: 5 -> 2, next at 2.6 (80% kept);
        # t = 5: 2.6 -> 2.5 is a cut under 10%, nothing to keep
        "correct.latent_fd": [nan, 4.0, nan, 5.0, 2.6, nan],
        "correct.latent_fd_after": [nan, 2.0, nan, 2.0, 2.5, nan],
    })
    assert correction_kept(history) == pytest.approx([0.5, 0.8])
    assert correction_kept(history.drop(columns=["correct.latent_fd", "correct.latent_fd_after"])) == []
