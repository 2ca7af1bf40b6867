"""The methods: their losses against closed forms, their samplers, and the properties every method keeps
(per-stage jobs and block jobs write the same bits; evaluation reads the right state files)."""

import copy
import math

import pytest
import torch
import yaml
from torch import nn

from conftest import REPO
from shortrun_ot import layout, methods
from shortrun_ot.config import deep_merge, run_settings, stage_settings
from shortrun_ot.methods.base import EvaluationProtocol, StageRef
from shortrun_ot.methods.rae import fit_mixture, rae_loss, sample_mixture
from shortrun_ot.methods.two_stage_vae import ScaledVAE, TwoStageVAEModel, two_stage_sample
from shortrun_ot.likelihood import gaussian_nll
from shortrun_ot.methods.vae import gaussian_kl, negative_elbo
from shortrun_ot.pipeline import build_method, load_state, run_stage, train_block, write_final
from test_data import make_mnist_like, write_mnist_files

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


# ---------------------------------------------------------------- VAE


def test_kl_term_equals_the_analytic_gaussian_kl_of_torch_distributions():
    torch.manual_seed(0)
    mean, log_var = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * log_var))
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(gaussian_kl(mean, log_var), expected)
    assert torch.equal(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_gaussian_nll_equals_torch_distributions():
    torch.manual_seed(1)
    x, mu = torch.randn(4, 1, 2, 3), torch.randn(4, 1, 2, 3)
    expected = -torch.distributions.Normal(mu, 0.3).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(x, mu, math.log(0.3)), expected)


@pytest.mark.slow
def test_elbo_of_a_linear_gaussian_model_equals_its_closed_form():
    """Decoder g(z) = W z + b, encoder q(z|x) = N(A x + c, diag s^2): the expected reconstruction term is
    ||x - W mu - b||^2 + sum_j s_j^2 ||W_j||^2 over (2 sigma^2), plus the normaliser, plus the analytic KL."""
    torch.manual_seed(2)
    D, d, n, sigma = 5, 2, 3, 0.7
    decoder, encoder = nn.Linear(d, D), nn.Linear(D, 2 * d)
    log_s2 = torch.tensor([-0.4, 0.3])
    with torch.no_grad():
        encoder.weight[d:] = 0  # the log-variance rows do not depend on x
        encoder.bias[d:] = log_s2
    x = torch.randn(n, D)
    noise = torch.randn(200_000, n, d, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        estimate, reconstruction, kl = negative_elbo(encoder, decoder, x, lambda images, means: gaussian_nll(images, means, math.log(sigma)), noise)
        mu = encoder(x)[:, :d]
        W, b = decoder.weight, decoder.bias
        expected_squared = (x - mu @ W.T - b).pow(2).sum(1) + (log_s2.exp() * W.pow(2).sum(0)).sum()
        expected_reconstruction = expected_squared / (2 * sigma**2) + D * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
        expected_kl = 0.5 * (mu.pow(2) + log_s2.exp() - 1 - log_s2).sum(1)
    torch.testing.assert_close(kl, expected_kl)
    torch.testing.assert_close(reconstruction, expected_reconstruction, rtol=2e-3, atol=0)
    torch.testing.assert_close(estimate, expected_reconstruction + expected_kl, rtol=2e-3, atol=0)


# ---------------------------------------------------------------- 2-stage VAE


class Affine(nn.Module):
    def __init__(self, scale, shift):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x):
        return x * self.scale + self.shift


def test_two_stage_sampler_composes_the_two_decoders():
    u, noise = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.5]])
    second, first = Affine(2.0, 1.0), Affine(3.0, 0.0)  # z = 2u + 1 + gamma eps, x = 3z
    out = two_stage_sample(second, first, u, 0.1, noise)
    torch.testing.assert_close(out, torch.tensor([[3 * (2 + 1 + 0.05), 3 * (-4 + 1 + 0.05)]]))


def test_two_stage_model_samples_through_stage_two_with_its_learned_gamma():
    settings = {"seed": 0, "latent_dim": 2}
    first = ScaledVAE(nn.Identity(), Affine(3.0, 0.0))
    second = ScaledVAE(nn.Identity(), Affine(2.0, 1.0))
    with torch.no_grad():
        second.log_gamma.fill_(math.log(0.25))
    model = TwoStageVAEModel(settings, torch.device("cpu"), EvaluationProtocol(batch_size=3, langevin_steps=1),
                             first, second)
    samples = model.sample(7)
    from shortrun_ot.config import stage_rng

    u = torch.randn((7, 2), generator=stage_rng(0, 0, "samples"))
    eps = torch.randn((7, 2), generator=stage_rng(0, 0, "samples-stage2"))
    torch.testing.assert_close(samples, 3 * (2 * u + 1 + 0.25 * eps))


# ---------------------------------------------------------------- RAE


def mixture_moments(weights, means, covariances):
    mean = (weights[:, None] * means).sum(0)
    second = (weights[:, None, None] * (covariances + means[:, :, None] * means[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


KNOWN = {
    "weights": torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
    "means": torch.tensor([[0.0, 0.0], [4.0, 1.0], [-3.0, 5.0]], dtype=torch.float64),
    "covariances": torch.tensor([[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0.0], [0.0, 2.0]], [[0.7, -0.2], [-0.2, 0.4]]],
                                dtype=torch.float64),
}


def test_mixture_sampler_has_the_mixture_mean_and_covariance():
    samples = sample_mixture(KNOWN, 200_000, torch.Generator().manual_seed(0)).double()
    mean, covariance = mixture_moments(**KNOWN)
    torch.testing.assert_close(samples.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), covariance, atol=0.05, rtol=0)


def test_gmm_fitted_to_codes_from_a_known_mixture_reproduces_its_moments():
    codes = sample_mixture(KNOWN, 20_000, torch.Generator().manual_seed(1))
    fitted = fit_mixture(codes, 3, seed=0)
    resampled = sample_mixture(fitted, 100_000, torch.Generator().manual_seed(2)).double()
    mean, covariance = mixture_moments(**KNOWN)
    torch.testing.assert_close(resampled.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(resampled.T), covariance, atol=0.15, rtol=0)
    assert sorted(fitted["weights"].tolist()) == pytest.approx([0.2, 0.3, 0.5], abs=0.02)


def test_rae_loss_in_project_units_is_their_loss_times_one_factor():
    """Their loss: per-pixel MSE on [0, 1] + beta mean(z^2) + lambda sum(w^2) over the ConvT kernels."""
    torch.manual_seed(4)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    decoder = nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (1, 2, 2)), nn.ConvTranspose2d(1, 1, 1))
    images = torch.rand(6, 1, 2, 2) * 2 - 1
    loss, terms = rae_loss(encoder, decoder, images, embedding_weight=0.1, decoder_weight_decay=0.01)
    with torch.no_grad():
        z = encoder(images)
        unit = ((images + 1) / 2 - (decoder(z) + 1) / 2).pow(2).mean()
        theirs = unit + 0.1 * z.pow(2).mean() + 0.01 * decoder[2].weight.pow(2).sum()
    factor = 4 * 4 / (2 * 0.3**2)  # 4 D / (2 sigma^2), D = 4 pixels
    torch.testing.assert_close(loss, factor * theirs)
    torch.testing.assert_close(terms["reconstruction"], factor * unit)


# ---------------------------------------------------------------- every method


TINY = {"dataset": "mnist", "train_images": 24, "batch_size": 8, "latent_dim": 4, "iterations": 3}
METHOD_SETTINGS = {  # a few cheap stages of every method; 2sVAE: 2 epochs of each stage
    "shortrun": {"langevin": {"steps": 2, "step_size": 0.05}, "correction": {"every": 2}, "learning": {"passes": 1}},
    "vae": {"elbo_samples": 2},
    "two_stage_vae": {"stage1_iterations": 1, "second": {"depth": 1, "width": 16}},
    "rae": {"mixture_components": 2},
    "sri": {"langevin": {"steps": 2, "step_size": 0.05}},
    "lebm": {"langevin": {"steps": 2, "step_size": 0.05}, "prior_langevin": {"steps": 3, "step_size": 0.3},
             "ebm": {"width": 8}},
    "wae": {"adversary": {"layers": 2, "width": 16}},
    "vae_nf": {"flows": 2},
    "infovae": {"lambda": 2.0},
    "cvae": {"posterior_draws": 50, "dual": {"steps": 2}},
    "aeot": {"autoencoder_iterations": 1, "potential_steps": 2, "ot_batch": 6,
             "potential": {"layers": 3, "width": 16}},
}


def tiny_settings(method: str) -> dict:
    config = deep_merge(PARAMS, {"training": TINY, "methods": {method: {**METHOD_SETTINGS.get(method, {}),
                                                                         "batch_size": 8, "iterations": 3}},
                                 "runs": {"x": {"method": method}}})
    return run_settings(config, "x")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist_files(root / "raw", make_mnist_like())
    from shortrun_ot.data import prepare

    prepare("mnist", root / "raw", root / "mnist.pt")
    return root / "mnist.pt"


def run_per_stage(settings, run_dir, data_path, last):
    """Iterations 0..last, each stage as the stage command runs it (on settings without T, as in config.json)."""
    method = build_method(settings)
    for t in range(0, last + 1):
        for ref in layout.iteration_refs(method, t):
            inputs = {role: str(p) for role, p in layout.input_files(run_dir, method, ref.stage, t).items()}
            run_stage(stage_settings(settings), ref, inputs, data_path, layout.state_file(run_dir, ref),
                      torch.device("cpu"))
    return method


def test_every_method_is_shipped_with_defaults_and_tested_here():
    assert set(methods.available()) == set(PARAMS["methods"]) == set(METHOD_SETTINGS)


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_the_schedule_does_not_depend_on_the_number_of_iterations(method):
    """Stage processes read config.json, which leaves T out, so that raising T only adds iterations."""
    settings = tiny_settings(method)
    planned, staged = build_method(settings), build_method(stage_settings(settings))
    assert staged.iterations is None
    for t in range(0, 6):
        assert staged.stages(t) == planned.stages(t)
        assert [staged.inputs(stage, t) for stage in staged.stages(t)] == [
            planned.inputs(stage, t) for stage in planned.stages(t)]
        assert staged.evaluation_points(t) == planned.evaluation_points(t)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_block_jobs_write_the_bits_of_per_stage_jobs(method, tiny_data, tmp_path):
    settings = tiny_settings(method)
    per_stage = run_per_stage(settings, tmp_path / "stages", tiny_data, settings["iterations"])
    run_per_stage(settings, tmp_path / "blocks", tiny_data, 0)
    train_block(stage_settings(settings), tmp_path / "blocks", 1, 2, tiny_data, torch.device("cpu"))
    train_block(stage_settings(settings), tmp_path / "blocks", 3, 3, tiny_data, torch.device("cpu"))
    files = layout.block_outputs(tmp_path / "stages", per_stage, 1, 3)
    assert files and all(p.is_file() for p in files)
    for path in files:
        if path.suffix == ".pt" or path.name.endswith(".pt.json"):
            twin = tmp_path / "blocks" / path.relative_to(tmp_path / "stages")
            assert path.read_bytes() == twin.read_bytes(), path


def test_the_kept_iterations_by_hand():
    """compute.keep_states_every: ours (a correction every 2 iterations) keeps iteration 0, the multiples of
    N, each block's last iteration (which the next block reads) and iteration 2, whose correction's dual
    vector warm-starts the correction of iteration 4 in the next block; AE-OT (autoencoder_iterations = 1)
    keeps iteration 2's codes, which every later potential step reads, and iteration 1's autoencoder, which
    its trained model is."""
    ours, aeot = build_method(tiny_settings("shortrun")), build_method(tiny_settings("aeot"))
    assert ours.settings["correction"]["every"] == 2
    assert layout.kept_iterations(ours, [(1, 3), (4, 6), (7, 7)], 4) == {0, 2, 3, 4, 6, 7}
    assert layout.kept_iterations(ours, [(1, 3), (4, 6), (7, 7)], 1) == set(range(8))
    assert layout.kept_iterations(aeot, [(1, 3), (4, 5)], 10) == {0, 1, 2, 3, 5}
    assert layout.iteration_of(layout.state_file("r", StageRef(12, "infer"))) == 12
    assert layout.kept_iterations(ours, [], 4) == {0}
    outputs = layout.block_outputs("r", ours, 1, 3, kept={0, 3})
    assert [str(p) for p in outputs if p.suffix == ".pt"] == ["r/it0003/infer.pt", "r/it0003/learn.pt"]
    reports = [p for p in outputs if p.name.endswith(".json") and not p.name.endswith(".pt.json")]
    assert len(reports) == 2 + 3 + 2  # one per stage; iteration 2 corrects


@pytest.mark.slow
@pytest.mark.parametrize("method", ["shortrun", "aeot"])
def test_blocks_that_keep_some_states_write_the_bits_of_blocks_that_keep_all(method, tiny_data, tmp_path):
    """The states a block keeps are those of a run that keeps every state, bit for bit; the others are not
    written; every stage's report is."""
    settings = stage_settings(tiny_settings(method))
    method_ = run_per_stage(settings, tmp_path / "all", tiny_data, 0)
    run_per_stage(settings, tmp_path / "some", tiny_data, 0)
    blocks = [(1, 3), (4, 5)]
    kept = layout.kept_iterations(method_, blocks, 10)
    for first, last in blocks:
        train_block(settings, tmp_path / "all", first, last, tiny_data, torch.device("cpu"))
        train_block(settings, tmp_path / "some", first, last, tiny_data, torch.device("cpu"), keep=kept)
    for first, last in blocks:
        for path in layout.block_outputs(tmp_path / "all", method_, first, last):
            twin = tmp_path / "some" / path.relative_to(tmp_path / "all")
            t = layout.iteration_of(path)
            if path.name.endswith(".json") and not path.name.endswith(".pt.json"):
                assert twin.is_file(), twin  # every report
            elif t in kept:
                assert path.read_bytes() == twin.read_bytes(), path
            else:
                assert not twin.exists(), twin


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_every_method_answers_the_evaluation_protocol(method, tiny_data, tmp_path):
    settings = tiny_settings(method)
    trained = run_per_stage(settings, tmp_path, tiny_data, settings["iterations"])
    final = {role: layout.state_file(tmp_path, ref) for role, ref in trained.evaluation_points(3)["end"].items()}
    states = {role: load_state(path, settings) for role, path in final.items()}
    from shortrun_ot.pipeline import load_training_images

    images = load_training_images(tiny_data, settings)  # as the CLI passes them (the Coupled VAE's posterior needs them)
    model = trained.trained_model(states, torch.device("cpu"), EvaluationProtocol(batch_size=10, langevin_steps=2,
                                                                                  train_images=images))
    latents = model.latent_population(images)
    assert latents.shape == (24, 4) and torch.isfinite(latents).all()
    for produced in (model.decode(latents), model.sample(5), model.reconstruct(images[:5])):
        assert produced.shape[1:] == (1, 28, 28) and torch.isfinite(produced).all()
        assert produced.abs().max() <= 1
    if trained.SCORES_ANOMALIES:
        scores = model.anomaly_scores(images[:6])
        assert scores.shape == (6,) and torch.isfinite(scores).all()


@pytest.mark.slow
def test_ours_is_evaluated_on_the_latents_its_inference_produced_not_the_corrected_ones(tiny_data, tmp_path):
    settings = tiny_settings("shortrun")
    settings["iterations"] = 2  # iteration 2 corrects (L = 2)
    method = run_per_stage(settings, tmp_path, tiny_data, 2)
    assert method.stages(2) == ["infer", "correct", "learn"]
    out = tmp_path / "final"
    inputs = {role: layout.state_file(tmp_path, ref) for role, ref in method.evaluation_points(2)["end"].items()}
    reports = [layout.report_file(tmp_path, StageRef(t, s)) for t in range(3) for s in method.stages(t)]
    write_final(settings, inputs, reports, out)
    model = method.trained_model({role: load_state(out / f"{role}.pt", settings) for role in inputs},
                                 torch.device("cpu"), EvaluationProtocol(batch_size=10, langevin_steps=2))
    population = model.latent_population(torch.zeros(24, 1, 28, 28))
    inferred = torch.load(tmp_path / "it0002" / "infer.pt")["latents"]
    corrected = torch.load(tmp_path / "it0002" / "correct.pt")["latents"]
    assert torch.equal(population, inferred) and not torch.equal(population, corrected)
    generator = torch.load(out / "model.pt")["generator"]
    learned = torch.load(tmp_path / "it0002" / "learn.pt")["generator"]
    assert all(torch.equal(generator[k], learned[k]) for k in learned)


def test_table4_points_are_the_model_and_latents_around_the_correction():
    method = build_method(tiny_settings("shortrun"))
    points = method.evaluation_points(2)
    assert points["before_correction"] == {"model": StageRef(1, "learn"), "latents": StageRef(2, "infer")}
    assert points["after_correction"] == {"model": StageRef(2, "learn"), "latents": StageRef(2, "correct")}
    assert set(method.evaluation_points(3)) == {"end"}


@pytest.mark.slow
def test_stage_inputs_never_change_a_cached_state(tiny_data, tmp_path):
    """Stages must not modify their inputs: block jobs hand the same objects on in memory."""
    settings = tiny_settings("vae")
    method = run_per_stage(settings, tmp_path, tiny_data, 0)
    state = load_state(layout.state_file(tmp_path, StageRef(0, "init")), settings)
    before = copy.deepcopy(state)
    from shortrun_ot.methods.base import StageContext
    from shortrun_ot.pipeline import load_training_images

    method.run("learn", 1, {"model": state}, StageContext(load_training_images(tiny_data, settings),
                                                          torch.device("cpu")))
    for key in ("encoder", "decoder"):
        assert all(torch.equal(before[key][k], state[key][k]) for k in before[key])
