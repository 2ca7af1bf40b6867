"""Several batches of a Langevin sweep through the generator at once (``batches_at_once``), batch norm per
batch: the same numbers as the batches one after another, bit for bit on the CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO, tiny_config
from shortrun_ot.cli import main as cli_main
from shortrun_ot.config import run_settings, stage_settings
from shortrun_ot.langevin import DivergenceError, langevin_step, short_run_inference
from shortrun_ot.models import (ARCHITECTURES, batch_norm_per_group, build_generator, deinterleave, EnergyPrior,
                                frozen_batchnorm_statistics, interleave)

LATENT, GROUPS, BATCH, STEPS = 8, 3, 16, 4


def generator_and_data(architecture="mnist", n=GROUPS * BATCH, upper=(), seed=0):
    """A training-mode generator with Xavier-normal weights, n images in [-1, 1] and starting latents."""
    torch.manual_seed(seed)
    generator = build_generator(architecture, LATENT, upper).train()
    images = torch.rand(n, *ARCHITECTURES[architecture]["image_shape"]) * 2 - 1
    return generator, images, torch.randn(n, LATENT + sum(upper))


def infer(generator, images, z0, batches_at_once, **kwargs):
    """Inference as the stage runs it (running statistics frozen); (z, stats, the rng's state after)."""
    rng = torch.Generator().manual_seed(1)
    options = {"steps": STEPS, "step_size": 0.1, "sigma": 0.3, "batch_size": BATCH, **kwargs}
    with frozen_batchnorm_statistics(generator):
        z, stats = short_run_inference(generator, images, z0, rng=rng, batches_at_once=batches_at_once, **options)
    return z, stats, rng.get_state()


@pytest.mark.slow
def test_grouped_steps_equal_per_batch_steps_and_not_one_big_batch():
    """K steps of Eq. 6 from the same noise: the grouped chain (interleaved batches) is each batch's chain,
    bit for bit; one batch norm over all groups together (the batch simply made larger) gives other latents."""
    generator, images, z0 = generator_and_data()
    noise = torch.randn(STEPS, *z0.shape, generator=torch.Generator().manual_seed(2))
    step = {"step_size": 0.1, "sigma": 0.3}
    with frozen_batchnorm_statistics(generator):
        per_batch = []
        for batch, z, batch_noise in zip(images.chunk(GROUPS), z0.chunk(GROUPS), noise.chunk(GROUPS, dim=1)):
            for xi in batch_noise:
                z, _ = langevin_step(generator, z, batch, noise=xi, **step)
            per_batch.append(z)
        per_batch = torch.cat(per_batch)
        grouped, together = interleave(z0, GROUPS), z0
        for xi in noise:
            with batch_norm_per_group(generator, GROUPS):
                grouped, _ = langevin_step(generator, grouped, interleave(images, GROUPS),
                                           noise=interleave(xi, GROUPS), **step)
            together, _ = langevin_step(generator, together, images, noise=xi, **step)
    assert torch.equal(deinterleave(grouped, GROUPS), per_batch)
    assert (together - per_batch).abs().max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("architecture, upper", [("mnist", ()), ("svhn", ()), ("mog", ()), ("mnist", (4, 4))])
def test_batch_norm_per_group_is_each_batch_alone(architecture, upper):
    """Forward and gradient to z of every Table 7 generator family, a hierarchy on top of one included."""
    generator, _, z = generator_and_data(architecture, upper=upper)
    z.requires_grad_(True)
    with frozen_batchnorm_statistics(generator):
        alone = torch.cat([generator(part) for part in z.chunk(GROUPS)])
        with batch_norm_per_group(generator, GROUPS):
            grouped = deinterleave(generator(interleave(z, GROUPS)), GROUPS)
    weights = torch.randn_like(alone)
    (grad_alone,) = torch.autograd.grad((alone * weights).sum(), z)
    (grad_grouped,) = torch.autograd.grad((grouped * weights).sum(), z)
    assert torch.equal(grouped, alone) and torch.equal(grad_grouped, grad_alone)


def test_interleave_puts_example_b_of_batch_g_in_row_b_groups_plus_g():
    rows = torch.arange(6)  # batches [0, 1, 2] and [3, 4, 5]
    assert interleave(rows, 2).tolist() == [0, 3, 1, 4, 2, 5]
    assert torch.equal(deinterleave(interleave(rows, 2), 2), rows)
    noise = torch.arange(12).view(2, 6)  # (steps, examples)
    assert torch.equal(interleave(noise, 3, dim=1), torch.stack([interleave(row, 3) for row in noise]))


def test_batch_norm_per_group_leaves_the_model_as_it_was():
    """Running statistics untouched; in eval mode (running statistics) the plain forward; afterwards the
    layers' own forward again."""
    generator, _, z = generator_and_data()
    state = {k: v.clone() for k, v in generator.state_dict().items()}
    with batch_norm_per_group(generator, GROUPS):
        generator(z)
        generator.eval()
        in_eval = generator(z)
    assert all(torch.equal(v, state[k]) for k, v in generator.state_dict().items())
    assert torch.equal(in_eval, generator(z))
    assert all("forward" not in vars(m) for m in generator.modules())


@pytest.mark.slow
@pytest.mark.parametrize("n, batches_at_once", [(GROUPS * BATCH, GROUPS), (5 * BATCH + 7, 2), (5 * BATCH + 7, 64)])
def test_inference_equals_per_batch_inference(n, batches_at_once):
    """Latents, statistics and the noise drawn: the same bits, with blocks of several batches, a last block
    with fewer and a last, smaller batch."""
    generator, images, z0 = generator_and_data(n=n)
    z, stats, rng_after = infer(generator, images, z0, 1)
    z_grouped, stats_grouped, rng_after_grouped = infer(generator, images, z0, batches_at_once)
    assert torch.equal(z_grouped, z)
    assert stats_grouped == stats
    assert torch.equal(rng_after_grouped, rng_after)


@pytest.mark.slow
def test_inference_with_mask_and_learned_prior_equals_per_batch():
    generator, images, z0 = generator_and_data()
    torch.manual_seed(3)
    mask = (torch.rand(len(images), 1, 28, 28) > 0.3).float()
    prior = EnergyPrior(LATENT).log_prior
    options = {"mask": mask, "log_prior": prior}
    z, stats, _ = infer(generator, images, z0, 1, **options)
    z_grouped, stats_grouped, _ = infer(generator, images, z0, GROUPS, **options)
    assert torch.equal(z_grouped, z) and stats_grouped == stats


@pytest.mark.slow
def test_a_diverging_block_runs_again_batch_by_batch():
    """Back-off and its record, and the error without back-off, are those of the batches one at a time."""
    generator, images, z0 = generator_and_data()
    z0[BATCH + 1] *= 1e4  # only the second batch diverges at this step size
    z, stats, _ = infer(generator, images, z0, 1, step_size=100.0, backoff=3)
    z_grouped, stats_grouped, _ = infer(generator, images, z0, GROUPS, step_size=100.0, backoff=3)
    assert [b["examples"] for b in stats.backoff] == [[BATCH, 2 * BATCH - 1]]
    assert torch.equal(z_grouped, z) and stats_grouped == stats
    messages = []
    for batches_at_once in (1, GROUPS):
        with pytest.raises(DivergenceError) as error:
            infer(generator, images, z0, batches_at_once, step_size=100.0)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and f"examples {BATCH}..{2 * BATCH - 1}" in messages[0]


def test_batches_at_once_must_be_positive():
    generator, images, z0 = generator_and_data()
    with pytest.raises(ValueError, match="batches_at_once"):
        infer(generator, images, z0, 0)


def test_the_stage_command_gives_the_same_latents_with_batches_at_once(tmp_path, monkeypatch):
    """``shortrun_ot stage --batches-at-once`` (``compute.batches_at_once`` of the workflow) reaches the
    inference stage and writes the same latents as one batch at a time."""
    data, config = tmp_path / "mnist5k.pt", tmp_path / "config.json"
    settings = run_settings(yaml.safe_load((REPO / "params.yaml").read_text()), "ours", "mnist5k")
    settings.update(train_images=3 * 32, batch_size=32)
    settings["langevin"]["steps"] = 2
    common = ["--config", str(config), "--data", str(data), "--device", "cpu", "--run", "ours"]
    init = tmp_path / "init.pt"
    for argv in (["prepare", "--dataset", "mnist5k", "--raw-root", str(tmp_path / "raw"), "--out", str(data)],
                 ["write-config", "--run", "ours", "--settings", json.dumps(stage_settings(settings)), "--out",
                  str(config)],
                 ["stage", *common, "--stage", "init", "--iteration", "0", "--out", str(init)]):
        assert cli_main(argv) == 0
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["batches_at_once"])
        return short_run_inference(*args, **kwargs)

    monkeypatch.setattr("shortrun_ot.methods.shortrun.short_run_inference", spy)
    latents = []
    for batches_at_once in ("1", "3"):
        out = tmp_path / f"infer{batches_at_once}.pt"
        assert cli_main(["stage", *common, "--stage", "infer", "--iteration", "1", "--batches-at-once",
                         batches_at_once, "--inputs", f"model={init}", f"latents={init}", "--out", str(out)]) == 0
        latents.append(torch.load(out)["latents"])
    assert seen == [1, 3]
    assert torch.equal(latents[0], latents[1])


@pytest.mark.slow
@pytest.mark.parametrize("batches_at_once", [1, 3])
def test_the_workflow_passes_compute_batches_at_once_to_every_stage(tmp_path, batches_at_once):
    """A dry run's stage commands carry the flag; with the default 1 they are the commands of before."""
    config = tiny_config(tmp_path, compute={"iterations_per_job": 1, "batches_at_once": batches_at_once})
    result = subprocess.run([sys.executable, "-m", "snakemake", "all", "-n", "-p", "--configfile", str(config)],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    stages = [line for line in result.stdout.splitlines() if " -m shortrun_ot stage " in line]
    assert stages and all(("--batches-at-once 3" in line) == (batches_at_once == 3) for line in stages)


def test_benchmark_script_runs_at_tiny_size(tmp_path):
    out = tmp_path / "sweep.json"
    subprocess.run([sys.executable, "benchmarks/grouped_sweep.py", "--n", "70", "--batch-size", "16", "--steps", "2",
                    "--at-once", "1", "2", "--repeats", "1", "--json", str(out)],
                   cwd=REPO, check=True, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert [r["batches_at_once"] for r in rows] == [1, 2]
    assert all(r["max_abs_diff"] == 0 for r in rows)
