"""SRI, SRI (L = 5) and LEBM: the properties that would fail on a wrong method (issue: MCMC baselines)."""

import copy

import pytest
import torch
from torch import nn

from shortrun_ot.langevin import log_joint, prior_langevin, short_run_inference
from shortrun_ot.methods.base import EvaluationProtocol, StageContext, StageRef, StateFile
from shortrun_ot.methods.lebm import prior_loss
from shortrun_ot.models import EnergyPrior, build_generator
from shortrun_ot import layout
from shortrun_ot.config import stage_settings
from shortrun_ot.pipeline import build_method, train_block
from test_methods import run_per_stage, tiny_data, tiny_settings  # noqa: F401 (tiny_data: a fixture)

IMAGES = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
CTX = StageContext(IMAGES, torch.device("cpu"))


def initial_state(method):
    return StateFile(method.run("init", 0, {}, CTX)[0])


class Quadratic(nn.Module):
    """f(z) = -z^T A z / 2 as an (n, 1) output, so that exp(f) N(0, I) is N(0, (A + I)^-1)."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, z):
        return -0.5 * ((z @ self.a) * z).sum(1, keepdim=True)


def test_sri_starts_every_inference_from_fresh_noise_and_never_reads_earlier_latents():
    settings = tiny_settings("sri")
    sri = build_method(settings)
    assert sri.inputs("infer", 2) == {"model": StageRef(1, "learn")} and sri.stages(4) == ["infer", "learn"]
    model = initial_state(sri)
    z, _ = sri.run("infer", 2, {"model": model}, CTX)
    generator = sri.trained_model({"model": model, "latents": model}, CTX.device,
                                  EvaluationProtocol(10, 2)).generator.train()
    by_hand, _ = short_run_inference(  # K Langevin steps from z_0 ~ N(0, I) drawn from iteration 2's stream
        generator, IMAGES, torch.randn((24, 4), generator=sri.rng(2, "init")), steps=2, step_size=0.05,
        sigma=settings["sigma"], batch_size=8, rng=sri.rng(2, "langevin"))
    torch.testing.assert_close(z["latents"], by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_lebm_with_a_zero_energy_is_exactly_sri():
    """f = 0 (last layer zero) leaves the posterior of Eq. (5) and therefore every chain unchanged."""
    lebm, sri = build_method(tiny_settings("lebm")), build_method(tiny_settings("sri") | {"langevin": tiny_settings("lebm")["langevin"]})
    state = initial_state(lebm)
    assert all(torch.equal(state["generator"][k], v) for k, v in initial_state(sri)["generator"].items())
    state["ebm"]["net.4.weight"].zero_(), state["ebm"]["net.4.bias"].zero_()
    for t in (1, 2):
        inferred, _ = lebm.run("infer", t, {"model": state}, CTX)
        expected, _ = sri.run("infer", t, {"model": state}, CTX)
        assert torch.equal(inferred["latents"], expected["latents"])
    learned, report = lebm.run("learn", 1, {"model": state, "latents": StateFile(inferred)}, CTX)
    expected, _ = sri.run("learn", 1, {"model": state, "latents": StateFile(inferred)}, CTX)
    assert all(torch.equal(learned["generator"][k], v) for k, v in expected["generator"].items())
    assert report["ebm_updates"] == 3  # one Adam step of the prior per minibatch of 8
    # a non-zero energy moves the chains
    state["ebm"]["net.4.bias"].fill_(1.0), state["ebm"]["net.4.weight"].fill_(0.5)
    moved, _ = lebm.run("infer", 2, {"model": state}, CTX)
    assert not torch.allclose(moved["latents"], sri.run("infer", 2, {"model": state}, CTX)[0]["latents"])


@pytest.mark.slow
def test_the_prior_takes_an_adam_step_on_prior_loss_with_fresh_prior_langevin_samples():
    """One minibatch (batch 24 = all images): the learned f is Adam's first step, theta - lr g / (|g| + eps),
    with g the gradient of prior_loss at the posterior latents and prior samples redrawn by hand."""
    settings = tiny_settings("lebm") | {"batch_size": 24}
    lebm = build_method(settings)
    state = initial_state(lebm)
    inferred, _ = lebm.run("infer", 1, {"model": state}, CTX)
    learned, _ = lebm.run("learn", 1, {"model": state, "latents": StateFile(inferred)}, CTX)
    energy = lebm.load_energy_prior(state, CTX.device)
    noise = lebm.rng(1, "prior-langevin")
    z_prior = prior_langevin(energy.log_prior, torch.randn((24, 4), generator=noise), steps=3, step_size=0.3, rng=noise)
    prior_loss(energy, inferred["latents"], z_prior).backward()
    lr = settings["ebm"]["learning"]["lr"]
    for name, p in energy.named_parameters():
        expected = (p - lr * p.grad / (p.grad.abs() + 1e-8)).detach()
        torch.testing.assert_close(learned["ebm"][name], expected, rtol=1e-5, atol=1e-7)
        # the output bias cancels in the difference of means: the only parameter that stays
        assert torch.equal(learned["ebm"][name], p.detach()) == (name == "net.4.bias")


@pytest.mark.slow
def test_a_trained_lebm_infers_scores_and_samples_under_its_learned_prior():
    lebm = build_method(tiny_settings("lebm"))
    sri = build_method(tiny_settings("sri") | {"langevin": tiny_settings("lebm")["langevin"]})
    state = initial_state(lebm)
    protocol = EvaluationProtocol(10, 2)

    def model(method, weight):
        state["ebm"]["net.4.weight"].fill_(weight), state["ebm"]["net.4.bias"].zero_()
        return method.trained_model({"model": StateFile(copy.deepcopy(state)), "latents": state}, CTX.device, protocol)

    flat, learned, plain = model(lebm, 0.0), model(lebm, 0.5), model(sri, 0.0)
    assert torch.equal(flat.anomaly_scores(IMAGES[:6]), plain.anomaly_scores(IMAGES[:6]))  # f = 0: SRI's score
    assert torch.equal(flat.encode(IMAGES[:6]), plain.encode(IMAGES[:6]))
    assert not torch.allclose(learned.anomaly_scores(IMAGES[:6]), flat.anomaly_scores(IMAGES[:6]))
    assert not torch.allclose(learned.encode(IMAGES[:6]), flat.encode(IMAGES[:6]))
    assert not torch.allclose(learned.sample(4), flat.sample(4))
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    options = {"step_size": 0.3, "steps": 3, "perturbation": 1e-3}
    assert not torch.allclose(learned.chain_divergence(IMAGES[:6], z, **options),
                              flat.chain_divergence(IMAGES[:6], z, **options))


def nested_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(nested_equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


@pytest.mark.slow
def test_lebm_stages_never_change_their_inputs():
    """Adam updates its state in place: a stage must copy the optimizer states it loads (t >= 2 has them)."""
    lebm = build_method(tiny_settings("lebm"))
    state = initial_state(lebm)
    inferred, _ = lebm.run("infer", 1, {"model": state}, CTX)
    model = StateFile(lebm.run("learn", 1, {"model": state, "latents": StateFile(inferred)}, CTX)[0])
    latents = StateFile(lebm.run("infer", 2, {"model": model}, CTX)[0])
    before = copy.deepcopy((dict(model), dict(latents)))
    lebm.run("learn", 2, {"model": model, "latents": latents}, CTX)
    assert nested_equal(before, (dict(model), dict(latents)))


@pytest.mark.slow
def test_prior_langevin_on_a_quadratic_energy_reaches_its_gaussian_covariance():
    """Prior exp(-z^T A z / 2) N(0, I) = N(0, P^-1), P = A + I. Unadjusted Langevin with step s has the
    stationary covariance (P (I - s^2 P / 4))^-1 exactly (a linear recursion), which at s = 0.5 is 21%
    above P^-1 along P's largest eigenvalue: the test tells the two apart."""
    a = torch.tensor([[1.5, 0.6], [0.6, 0.5]])
    energy = EnergyPrior(2)
    energy.net = Quadratic(a)
    s, p = 0.5, a + torch.eye(2)
    z = prior_langevin(energy.log_prior, torch.randn(40_000, 2, generator=torch.Generator().manual_seed(1)),
                       steps=300, step_size=s, rng=torch.Generator().manual_seed(2))
    covariance = torch.cov(z.T)
    exact = torch.linalg.inv(p @ (torch.eye(2) - s**2 * p / 4))
    torch.testing.assert_close(covariance, exact, rtol=0.03, atol=0.01)
    assert z.mean(0).abs().max() < 0.02
    assert (covariance - torch.linalg.inv(p)).abs().max() > 0.05  # the continuous-time value is not what ULA samples


class LinearAndSquare(nn.Module):
    """f(z) = w . z + c ||z||^2 + b, as an (n, 1) output."""

    def __init__(self):
        super().__init__()
        self.w, self.c, self.b = nn.Parameter(torch.tensor([0.3, -0.2])), nn.Parameter(torch.tensor(0.7)), nn.Parameter(torch.tensor(0.1))

    def forward(self, z):
        return (z @ self.w + self.c * z.pow(2).sum(1) + self.b).unsqueeze(1)


def test_the_prior_update_is_the_difference_of_prior_and_posterior_expectations_of_grad_f():
    energy = EnergyPrior(2)
    energy.net = LinearAndSquare()
    posterior = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    prior = torch.tensor([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]])
    prior_loss(energy, posterior, prior).backward()
    f = energy.net
    # by hand: d/dw = mean prior z - mean posterior z = (1/3, 1) - (2, 1/2); d/dc = mean ||z||^2: 10/3 - 7.5; d/db = 0
    torch.testing.assert_close(f.w.grad, torch.tensor([1 / 3 - 2, 1 - 0.5]))
    torch.testing.assert_close(f.c.grad, torch.tensor(10 / 3 - 7.5))
    torch.testing.assert_close(f.b.grad, torch.tensor(0.0))


def test_the_five_layer_generator_passes_the_langevin_gradient_to_every_latent_layer():
    torch.manual_seed(0)
    dims, d = [3, 2, 2, 5], 4
    generator = build_generator("mnist", d, dims).train()
    z = torch.randn(6, sum(dims) + d, requires_grad=True)
    reconstruction = log_joint(generator, z, IMAGES[:6], 0.3) + z.pow(2).sum(1) / 2  # the likelihood term alone
    (grad,) = torch.autograd.grad(reconstruction.sum(), z, retain_graph=True)
    blocks = grad.split([*dims, d], dim=1)
    assert len(blocks) == 5 and all(block.norm(dim=1).min() > 0 for block in blocks)
    # and learning reaches every parameter of the hierarchy and of the Table 7 network below it
    generator.zero_grad()
    reconstruction.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())


@pytest.mark.slow
def test_sri5_block_jobs_write_the_bits_of_per_stage_jobs(tiny_data, tmp_path):
    settings = tiny_settings("sri") | {"upper_latent_dims": [3, 2]}
    per_stage = run_per_stage(settings, tmp_path / "stages", tiny_data, 2)
    run_per_stage(settings, tmp_path / "blocks", tiny_data, 0)
    train_block(stage_settings(settings), tmp_path / "blocks", 1, 2, tiny_data, torch.device("cpu"))
    for path in layout.block_outputs(tmp_path / "stages", per_stage, 1, 2):
        if path.suffix == ".pt":
            assert path.read_bytes() == (tmp_path / "blocks" / path.relative_to(tmp_path / "stages")).read_bytes()
    assert torch.load(tmp_path / "stages" / "it0002" / "infer.pt")["latents"].shape == (24, 9)


@pytest.mark.slow
def test_sri5_trains_and_is_evaluated_on_its_whole_latent_vector():
    settings = tiny_settings("sri") | {"upper_latent_dims": [3, 2]}
    sri5 = build_method(settings)
    state = initial_state(sri5)
    assert state["latents"].shape == (24, 9)
    inferred, _ = sri5.run("infer", 1, {"model": state}, CTX)
    learned, _ = sri5.run("learn", 1, {"model": state, "latents": StateFile(inferred)}, CTX)
    model = sri5.trained_model({"model": StateFile(learned), "latents": StateFile(inferred)}, CTX.device,
                               EvaluationProtocol(10, 2))
    assert model.latent_population(IMAGES).shape == (24, 9) and model.sample(3).shape == (3, 1, 28, 28)
    assert model.encode(IMAGES[:5]).shape == (5, 9)
