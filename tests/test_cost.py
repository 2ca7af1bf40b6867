"""The plan's cost estimate (shortrun_ot.cost): hand counts of the work, and the refusal of a plan longer than a
day on the CPU through the real Snakemake, before any job runs."""

from pathlib import Path

import pytest
import yaml

from conftest import snakemake, tiny_config
from shortrun_ot import cost
from shortrun_ot.config import run_settings
from shortrun_ot.pipeline import build_method

PARAMS = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
MNIST = {"dataset": "mnist", "latent_dim": 30, "train_images": None, "classes": None, "heldout_digit": None}
EVALUATION = {"fid_samples": 10_000, "test_images": None, "test_langevin_steps": 200}


def paper_method(run: str):
    """The method of params.yaml's (paper-scale) run ``run``."""
    return build_method(run_settings(PARAMS, run))


def test_the_decoder_flops_are_table_7s_by_hand():
    """Table 7's MNIST generator in multiply-adds: fc 30 -> 1024, fc 1024 -> 7x7x128, then two 2x2 stride-2
    transposed convolutions (each input pixel meets the 2x2 kernel once): 128 -> 64 on 7x7 inputs, 64 -> 1 on
    14x14 inputs. Two FLOPs per multiply-add: 16.2 MFLOP."""
    macs = 30 * 1024 + 1024 * 7 * 7 * 128 + 7 * 7 * 128 * 64 * 2 * 2 + 14 * 14 * 64 * 1 * 2 * 2
    assert cost.decoder_flops("mnist", 30) == 2 * macs == 16_218_112


def test_an_iteration_of_the_short_run_method_by_hand():
    """Paper scale: 60,000 images, K = 50 Langevin steps (2 passes each), L2 = 3 learning passes (3 each)."""
    f = cost.decoder_flops("mnist", 30)
    n = 60_000
    ours = paper_method("ours")
    assert ours.settings["langevin"]["steps"] == 50 and ours.settings["learning"]["passes"] == 3
    assert ours.stage_work("infer", n, f) == (2 * 50 * f * n, 0)
    assert ours.stage_work("learn", n, f) == (3 * 3 * f * n, 0)
    assert ours.stage_work("correct", n, f) == (0, n)  # an OT problem of size n, counted in seconds
    seconds = cost.job_seconds("stage", ours, ["infer", "correct", "learn"], device="cpu", evaluation=EVALUATION)
    expected = cost.STARTUP_SECONDS + cost.OT_SECONDS_AT_60K["cpu"] + 109 * f * n / 0.035e12
    assert seconds == pytest.approx(expected)
    # the measured full-MNIST iteration on this 2-core CPU: 45-60 min (docs/performance.md)
    assert 40 * 60 < seconds < 65 * 60


def test_training_images_follow_the_protocol():
    assert cost.training_images(MNIST) == 60_000
    assert cost.training_images({**MNIST, "classes": [0, 1]}) == 12_000
    assert cost.training_images({**MNIST, "heldout_digit": 1}) == 43_200
    assert cost.training_images({**MNIST, "train_images": 1_000}) == 1_000


def test_the_other_methods_stages_by_hand():
    """An encoder method's epoch is 6 decoder passes; SRI's inference is ours; AE-OT's potential steps and the
    Coupled VAE's pairwise likelihoods (784 pixels, every image against every draw) are counted by hand."""
    f, n = cost.decoder_flops("mnist", 30), 60_000
    vae, sri, aeot, cvae = (paper_method(run) for run in ("vae", "sri", "aeot", "cvae"))
    assert vae.stage_work("learn", n, f) == (6 * f * n, 0) and vae.stage_work("init", n, f) == (0, 0)
    assert sri.stage_work("infer", n, f) == (2 * sri.settings["langevin"]["steps"] * f * n, 0)
    assert aeot.stage_work("autoencoder", n, f) == (6 * f * n, 0) and aeot.stage_work("codes", n, f) == (0, 0)
    p = aeot.settings["potential"]
    per_step = aeot.settings["ot_batch"] * (6 * p["layers"] * p["width"] ** 2 + 2 * n * 30)
    assert aeot.stage_work("potential", n, f) == (aeot.settings["potential_steps"] * per_step, 0)
    steps = cvae.settings["dual"]["steps"]
    assert cvae.stage_work("learn", n, f) == (6 * f * n + 3 * (steps + 1) * n * n * 784, 0)


def test_the_evaluation_counts_the_inception_and_the_reconstructions():
    f = cost.decoder_flops("mnist", 30)
    n, n_test = 60_000, 10_000
    langevin = cost.evaluation_flops(paper_method("ours"), n, n_test, f, 10_000, 200)
    assert langevin == 10_000 * cost.INCEPTION_FLOPS + 2 * 200 * f * n_test + f * n
    encoded = cost.evaluation_flops(paper_method("vae"), n, n_test, f, 10_000, 200)
    assert encoded == 10_000 * cost.INCEPTION_FLOPS + 3 * f * (n + n_test)


def test_the_reference_statistics_cost_the_inception_over_the_real_images():
    seconds = cost.reference_seconds("mnist", "all", device="cpu")
    assert seconds == pytest.approx(cost.STARTUP_SECONDS + 60_000 * 5.7e9 / 0.035e12)  # 2.7 hours
    fast = cost.reference_seconds("mnist5k", "300", device="cpu", inception_speedup=2.0)
    assert fast == pytest.approx(cost.STARTUP_SECONDS + 300 * 5.7e9 / 2 / 0.035e12)


def test_a_plan_is_described_per_run_with_its_wall_time():
    wall, text = cost.describe({"ours": 3 * 86_400.0, "vae": 3_600.0}, "cpu", 2)
    assert wall == pytest.approx((3 * 86_400 + 3_600) / 2)
    assert text.splitlines()[1].split() == ["ours", "3.0", "days"]
    assert "total 3.0 days of CPU-core time: about 36.5 h on 2 cores" in text
    wall, text = cost.describe({"ours": 600.0}, "cuda", 8)
    assert wall == 600.0 and "10 min on one GPU" in text


@pytest.mark.slow
def test_a_plan_of_more_than_a_day_on_the_cpu_stops_before_any_job(tmp_path):
    """Two iterations of 10^5 Langevin steps over 4,500 images (about 5 days): the estimate is printed, nothing
    starts. (A plan of many cheap iterations would be a DAG too large to build in a test.)"""
    path = tiny_config(tmp_path, iterations=2, train_images=None)
    config = yaml.safe_load(path.read_text())
    config["methods"]["shortrun"]["langevin"]["steps"] = 100_000
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--configfile", str(path), "--", str(tmp_path / "results" / "runs" / "ours" / "history.csv"),
                       check=False)
    assert result.returncode != 0
    assert "Estimated cost of this plan on the cpu" in result.stderr
    assert "more than a day on the CPU" in result.stderr and "allow_long_runs=true" in result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "prepared").exists()  # no job ran
    config["methods"]["shortrun"]["langevin"]["steps"] = 3  # a small plan starts, and says what it costs
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--configfile", str(path), "--", str(tmp_path / "results" / "runs" / "ours" / "config.json"))
    assert "Estimated cost of this plan on the cpu" in result.stderr
    assert (tmp_path / "results" / "runs" / "ours" / "config.json").exists()
