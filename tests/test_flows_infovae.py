"""The Coupled VAE paper's VAE-NF and InfoVAE baselines (Hao & Shafto, Sec. 2.1 and Sec. 5, footnotes 1 and 3),
and the Gaussian-kernel MMD: planar flows against autograd Jacobians, the losses against hand computations and
against the VAE's, and both methods through their stages on the mixture-of-Gaussians architecture."""

import math

import jsonschema
import pytest
import torch
import yaml
from torch import nn

from conftest import REPO
from shortrun_ot.config import ConfigError, deep_merge, run_schema
from shortrun_ot.likelihood import gaussian_nll
from shortrun_ot.methods.base import EvaluationProtocol, StageContext, StageRef
from shortrun_ot.methods.infovae import InfoVAE, infovae_loss, reference_bandwidths
from shortrun_ot.methods.vae import VAE, VAEModel, gaussian_kl, negative_elbo
from shortrun_ot.methods.vae_nf import (PlanarFlows, VAENF, VAENFModel, flow_negative_elbo, invertible_u,
                                        planar_flow)
from shortrun_ot.metrics import gaussian_kernel_mmd
from shortrun_ot.pipeline import load_state, save_state

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
DOUBLE = torch.float64
SOFTPLUS_ZERO = math.log(math.e - 1)  # softplus(x) = 1 there, so m(x) = 0: the w^T u that makes u_hat = 0


def nll_of(sigma):
    return lambda images, decoded: gaussian_nll(images, decoded, math.log(sigma))


# ---------------------------------------------------------------- the Gaussian-kernel MMD


def test_gaussian_kernel_mmd_equals_a_hand_computation():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=DOUBLE)
    y = torch.tensor([[1.0, 1.0], [-1.0, 0.5]], dtype=DOUBLE)
    expected = 0.0
    for h in (0.5, 2.0):
        def k(a, b):
            return math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))

        xx = sum(k(x[i], x[j]) for i in range(3) for j in range(3) if i != j) / 6
        yy = sum(k(y[i], y[j]) for i in range(2) for j in range(2) if i != j) / 2
        xy = sum(k(x[i], y[j]) for i in range(3) for j in range(2)) / 6
        expected += xx + yy - 2 * xy
    assert float(gaussian_kernel_mmd(x, y, [0.5, 2.0])) == pytest.approx(expected, rel=1e-12)
    # one bandwidth as a number; the points of x in pairs: ||x1 - x2||^2 = 1, ||x1 - x3||^2 = 4, ||x2 - x3||^2 = 5
    one = gaussian_kernel_mmd(x, y, 1.0)
    xx = (math.exp(-0.5) + math.exp(-2.0) + math.exp(-2.5)) / 3
    yy = math.exp(-(4 + 0.25) / 2)
    xy = sum(math.exp(-d / 2) for d in (2, 1.25, 1, 4.25, 2, 3.25)) / 6
    assert float(one) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


@pytest.mark.slow
def test_gaussian_kernel_mmd_is_zero_in_expectation_for_one_distribution_and_positive_for_a_shift():
    generator = torch.Generator().manual_seed(0)
    same = [float(gaussian_kernel_mmd(torch.randn(200, 3, generator=generator),
                                      torch.randn(200, 3, generator=generator), [1.0, 2.0])) for _ in range(20)]
    shifted = float(gaussian_kernel_mmd(torch.randn(200, 3, generator=generator) + 1.0,
                                        torch.randn(200, 3, generator=generator), [1.0, 2.0]))
    mean, spread = sum(same) / 20, (sum((v - sum(same) / 20) ** 2 for v in same) / 19) ** 0.5
    assert abs(mean) < 3 * spread / 20 ** 0.5  # unbiased: the mean of 20 estimates is within 3 standard errors of 0
    assert shifted > 0.1 and shifted > 10 * max(abs(v) for v in same)


def test_gaussian_kernel_mmd_refuses_single_points_and_bad_bandwidths():
    with pytest.raises(ValueError, match="at least two points"):
        gaussian_kernel_mmd(torch.zeros(1, 2), torch.zeros(4, 2), [1.0])
    with pytest.raises(ValueError, match="at least two points"):
        gaussian_kernel_mmd(torch.zeros(4, 2), torch.zeros(1, 2), [1.0])
    for bad in ([], [1.0, 0.0], -1.0):
        with pytest.raises(ValueError, match="positive bandwidths"):
            gaussian_kernel_mmd(torch.zeros(3, 2), torch.ones(3, 2), bad)


def test_the_reference_bandwidth_is_zhao_et_al_s_kernel():
    """Their compute_kernel: exp(-mean_k (x_k - y_k)^2 / d) over the d coordinates = exp(-||x - y||^2 / d^2)."""
    generator = torch.Generator().manual_seed(1)
    d = 5
    x, y = torch.randn(4, d, generator=generator, dtype=DOUBLE), torch.randn(3, d, generator=generator, dtype=DOUBLE)

    def theirs(a, b):
        return math.exp(-float(((a - b) ** 2).mean()) / d)

    xx = sum(theirs(x[i], x[j]) for i in range(4) for j in range(4) if i != j) / 12
    yy = sum(theirs(y[i], y[j]) for i in range(3) for j in range(3) if i != j) / 6
    xy = sum(theirs(x[i], y[j]) for i in range(4) for j in range(3)) / 12
    assert reference_bandwidths(d) == [pytest.approx(d / math.sqrt(2))]
    assert float(gaussian_kernel_mmd(x, y, reference_bandwidths(d))) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


# ---------------------------------------------------------------- planar flows


def random_planar_parameters(generator, d, violate):
    """u, w, b; with ``violate``, u is moved along w so that w^T u < -1 (a non-invertible flow before the
    reparameterisation)."""
    u, w = torch.randn(d, generator=generator, dtype=DOUBLE), torch.randn(d, generator=generator, dtype=DOUBLE)
    b = torch.randn((), generator=generator, dtype=DOUBLE)
    if violate:
        u = u - (float(w @ u) + 1 + 3 * torch.rand((), generator=generator, dtype=DOUBLE)) * w / w.dot(w)
    return u, w, b


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_planar_log_det_equals_the_log_det_of_the_autograd_jacobian(d):
    generator = torch.Generator().manual_seed(d)
    for trial in range(6):
        violate = trial % 2 == 1
        u, w, b = random_planar_parameters(generator, d, violate)
        if violate:
            assert float(w @ u) < -1
        u_hat = invertible_u(u, w)
        assert float(w @ u_hat) > -1
        torch.testing.assert_close(w @ u_hat, -1 + nn.functional.softplus(w @ u))  # w^T u_hat = m(w^T u)
        z = 2 * torch.randn(7, d, generator=generator, dtype=DOUBLE)
        z[0] = -b * w / w.dot(w)  # w^T z + b = 0: h' = 1, where a violating flow would be least invertible
        _, log_det = planar_flow(z, u_hat, w, b)
        for i in range(len(z)):
            jacobian = torch.autograd.functional.jacobian(lambda p: planar_flow(p[None], u_hat, w, b)[0][0], z[i])
            torch.testing.assert_close(log_det[i], torch.linalg.slogdet(jacobian)[1], rtol=1e-10, atol=1e-12)
            assert torch.linalg.det(jacobian) > 0


def test_a_stack_of_flows_sums_the_log_dets_of_its_jacobian():
    torch.manual_seed(0)
    flows = PlanarFlows(3, 4).double()
    with torch.no_grad():
        flows.u.mul_(4)  # far from the identity
        flows.b.normal_()
    z = torch.randn(5, 3, dtype=DOUBLE)
    _, log_det = flows(z)
    for i in range(len(z)):
        jacobian = torch.autograd.functional.jacobian(lambda p: flows(p[None])[0][0], z[i])
        torch.testing.assert_close(log_det[i], torch.linalg.slogdet(jacobian)[1], rtol=1e-10, atol=1e-12)


def identity_flows(flows: PlanarFlows) -> PlanarFlows:
    """``flows`` with u = log(e - 1) w / ||w||^2, where m(w^T u) = 0 and so u_hat = 0: the identity map.
    (u = 0 is not the identity under the reparameterisation: m(0) = -1 + log 2, u_hat = m(0) w / ||w||^2.)"""
    with torch.no_grad():
        flows.u.copy_(SOFTPLUS_ZERO * flows.w / flows.w.pow(2).sum(1, keepdim=True))
    return flows


def test_u_zero_is_not_the_identity_but_u_hat_zero_is():
    torch.manual_seed(1)
    flows = PlanarFlows(2, 3).double()
    with torch.no_grad():
        flows.u.zero_()
    w = flows.w.detach()
    torch.testing.assert_close(invertible_u(flows.u, flows.w),
                               (math.log(2) - 1) * w / w.pow(2).sum(1, keepdim=True))
    identity_flows(flows)
    torch.testing.assert_close(invertible_u(flows.u, flows.w), torch.zeros(3, 2, dtype=DOUBLE), atol=1e-15, rtol=0)
    z = torch.randn(4, 2, dtype=DOUBLE)
    out, log_det = flows(z)
    torch.testing.assert_close(out, z, atol=1e-14, rtol=0)
    torch.testing.assert_close(log_det, torch.zeros(4, dtype=DOUBLE), atol=1e-14, rtol=0)


# ---------------------------------------------------------------- the VAE-NF loss


def linear_vae(D, d, seed):
    torch.manual_seed(seed)
    return nn.Linear(D, 2 * d).double(), nn.Linear(d, D).double()


@pytest.mark.parametrize("flow_count", [0, 3])
def test_with_identity_flows_the_vae_nf_loss_is_the_vae_s_with_a_monte_carlo_kl(flow_count):
    """With the same noise, hence the same z, the two reconstruction terms are equal (to rounding). The
    VAE-NF KL term is, per draw, log N(z; mu, sigma^2) - log N(z; 0, I) (checked against torch.distributions);
    so the two losses differ, draw by draw, by that estimate minus the VAE's analytic KL, and the estimate's
    mean over 100,000 draws per image is within 4 standard errors of the analytic KL."""
    D, d, n, sigma, draws = 4, 2, 3, 0.5, 100_000
    encoder, decoder = linear_vae(D, d, 0)
    flows = identity_flows(PlanarFlows(d, flow_count).double())
    x = torch.randn(n, D, dtype=DOUBLE)
    noise = torch.randn(5, n, d, generator=torch.Generator().manual_seed(1), dtype=DOUBLE)
    with torch.no_grad():
        loss, reconstruction, kl = flow_negative_elbo(encoder, decoder, flows, x, nll_of(sigma), noise)
        vae_loss, vae_reconstruction, vae_kl = negative_elbo(encoder, decoder, x, nll_of(sigma), noise)
        torch.testing.assert_close(reconstruction, vae_reconstruction, rtol=1e-12, atol=0)
        mean, log_var = encoder(x).chunk(2, dim=1)
        q = torch.distributions.Normal(mean, torch.exp(0.5 * log_var))
        p = torch.distributions.Normal(torch.zeros(d, dtype=DOUBLE), torch.ones(d, dtype=DOUBLE))
        z = mean + torch.exp(0.5 * log_var) * noise  # (5, n, d)
        torch.testing.assert_close(kl, (q.log_prob(z) - p.log_prob(z)).sum(2).mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss, reconstruction + kl, rtol=1e-12, atol=0)
        # many draws at once: each image repeated, one draw per copy
        many = torch.randn(1, draws * n, d, generator=torch.Generator().manual_seed(2), dtype=DOUBLE)
        repeated = x.repeat(draws, 1)
        loss, _, kl = flow_negative_elbo(encoder, decoder, flows, repeated, nll_of(sigma), many)
        vae_loss, _, _ = negative_elbo(encoder, decoder, repeated, nll_of(sigma), many)
        torch.testing.assert_close(loss - vae_loss, kl - vae_kl.repeat(draws), rtol=0, atol=1e-10)
        per_draw = kl.reshape(draws, n)
        standard_error = per_draw.std(0) / math.sqrt(draws)
        assert ((per_draw.mean(0) - vae_kl).abs() < 4 * standard_error).all()
        assert (standard_error < 0.02 * vae_kl).all()  # and that is within 2 % of the KL


def test_one_flow_negative_elbo_in_one_dimension_by_hand():
    """d = 1, a 2-pixel image, encoder and decoder linear, one planar flow, one draw eps; every term by hand."""
    encoder, decoder = nn.Linear(2, 2).double(), nn.Linear(1, 2).double()
    flows = PlanarFlows(1, 1).double()
    with torch.no_grad():
        encoder.weight.copy_(torch.tensor([[0.5, -0.25], [0.1, 0.2]], dtype=DOUBLE))
        encoder.bias.copy_(torch.tensor([0.3, -0.4], dtype=DOUBLE))
        decoder.weight.copy_(torch.tensor([[1.5], [-0.7]], dtype=DOUBLE))
        decoder.bias.copy_(torch.tensor([0.2, 0.1], dtype=DOUBLE))
        flows.u.fill_(-2.0)  # w u = -1.6 < -1: the reparameterisation matters
        flows.w.fill_(0.8)
        flows.b.fill_(0.25)
    x1, x2, eps, sigma = 0.6, -0.2, 0.7, 0.3
    with torch.no_grad():
        loss, reconstruction, kl = flow_negative_elbo(encoder, decoder, flows, torch.tensor([[x1, x2]], dtype=DOUBLE),
                                                      nll_of(sigma), torch.tensor([[[eps]]], dtype=DOUBLE))
    mu = 0.5 * x1 - 0.25 * x2 + 0.3
    log_var = 0.1 * x1 + 0.2 * x2 - 0.4
    s = math.exp(0.5 * log_var)
    z0 = mu + s * eps
    u, w, b = -2.0, 0.8, 0.25
    m = -1 + math.log(1 + math.exp(w * u))
    u_hat = u + (m - w * u) * w / (w * w)  # = m / w in one dimension
    a = math.tanh(w * z0 + b)
    z1 = z0 + u_hat * a
    log_det = math.log(abs(1 + u_hat * (1 - a * a) * w))
    g1, g2 = 1.5 * z1 + 0.2, -0.7 * z1 + 0.1
    minus_log_likelihood = ((x1 - g1) ** 2 + (x2 - g2) ** 2) / (2 * sigma**2) + 2 * (math.log(sigma)
                                                                                    + 0.5 * math.log(2 * math.pi))
    log_q0 = -0.5 * ((z0 - mu) ** 2 / s**2 + log_var + math.log(2 * math.pi))
    log_prior = -0.5 * (z1**2 + math.log(2 * math.pi))
    assert float(reconstruction) == pytest.approx(minus_log_likelihood, rel=1e-12)
    assert float(kl) == pytest.approx(log_q0 - log_det - log_prior, rel=1e-12)
    assert float(loss) == pytest.approx(minus_log_likelihood + log_q0 - log_det - log_prior, rel=1e-12)


# ---------------------------------------------------------------- the InfoVAE loss


def test_infovae_loss_is_the_weighted_elbo_plus_the_weighted_mmd():
    """(1 - alpha) on the KL, (alpha + lambda - 1) on the MMD between the 3 posterior samples and 3 prior draws,
    the MMD by hand."""
    D, d, sigma, alpha, lam, h = 4, 2, 0.4, 0.3, 2.0, 1.5
    encoder, decoder = linear_vae(D, d, 2)
    x = torch.randn(3, D, dtype=DOUBLE)
    noise, prior = torch.randn(3, d, dtype=DOUBLE), torch.randn(3, d, dtype=DOUBLE)
    with torch.no_grad():
        loss, terms = infovae_loss(encoder, decoder, x, nll_of(sigma), noise, prior, alpha, lam, [h])
        elbo, reconstruction, kl = negative_elbo(encoder, decoder, x, nll_of(sigma), noise[None], 1 - alpha)
        mean, log_var = encoder(x).chunk(2, dim=1)
        z = (mean + torch.exp(0.5 * log_var) * noise).tolist()
    k = lambda a, b: math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * h * h))  # noqa: E731
    pz = prior.tolist()
    mmd = (sum(k(z[i], z[j]) for i in range(3) for j in range(3) if i != j) / 6
           + sum(k(pz[i], pz[j]) for i in range(3) for j in range(3) if i != j) / 6
           - 2 * sum(k(z[i], pz[j]) for i in range(3) for j in range(3)) / 9)
    assert float(terms["mmd"]) == pytest.approx(mmd, rel=1e-12)
    assert float(loss) == pytest.approx(float(elbo.mean()) + (alpha + lam - 1) * mmd, rel=1e-12)
    expected_kl = float(gaussian_kl(mean, log_var).mean())
    assert float(terms["kl"]) == pytest.approx(expected_kl, rel=1e-12)
    assert float(loss) == pytest.approx(float(reconstruction.mean()) + (1 - alpha) * expected_kl
                                        + (alpha + lam - 1) * mmd, rel=1e-12)


def test_infovae_with_alpha_0_and_lambda_1_is_exactly_the_vae_loss():
    encoder, decoder = linear_vae(5, 3, 3)
    x, noise, prior = torch.randn(6, 5, dtype=DOUBLE), torch.randn(6, 3, dtype=DOUBLE), torch.randn(6, 3, dtype=DOUBLE)
    loss, _ = infovae_loss(encoder, decoder, x, nll_of(0.3), noise, prior, 0.0, 1.0, [1.0])
    vae_loss = negative_elbo(encoder, decoder, x, nll_of(0.3), noise[None])[0].mean()
    assert torch.equal(loss, vae_loss)


# ---------------------------------------------------------------- both methods on the mixture of 25 Gaussians


def mog_points(per_mode=20, seed=0):
    """The Coupled VAE paper's data (Sec. 5): 25 isotropic Gaussians, means on {-2, -1, 0, 1, 2}^2, sd 0.05."""
    grid = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    means = torch.cartesian_prod(grid, grid).repeat_interleave(per_mode, 0)
    return means + 0.05 * torch.randn(means.shape, generator=torch.Generator().manual_seed(seed))


def mog_settings(method: str, **override) -> dict:
    """A run's settings on the mixture (the ``mog`` architecture, d = 2), validated with the run schema."""
    settings = deep_merge(deep_merge(PARAMS["training"], PARAMS["methods"][method]),
                          {"method": method, "dataset": "mog25", "latent_dim": 2, "batch_size": 50, "iterations": 3,
                           **override})
    schema = run_schema(method)
    dataset = schema["properties"]["dataset"]
    if "mog25" not in dataset.get("enum", ["mog25"]):  # until the mixture is a dataset of the schema
        dataset["enum"] = [*dataset["enum"], "mog25"]
    jsonschema.Draft202012Validator(schema).validate(settings)
    return settings


def train_through_stages(settings, images, tmp_path):
    """init and iterations 1..T, each state saved and loaded back (manifest checks included) before the next
    stage; returns the method, the reports, the last state as loaded and as computed."""
    method = {"vae_nf": VAENF, "infovae": InfoVAE, "vae": VAE}[settings["method"]](settings)
    ctx = StageContext(images, torch.device("cpu"))
    state, reports = None, []
    for t in range(settings["iterations"] + 1):
        (stage,) = method.stages(t)
        inputs = {role: state for role in method.inputs(stage, t)}
        new, report = method.run(stage, t, inputs, ctx)
        path = tmp_path / f"it{t}" / f"{stage}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_state(new, path, settings, StageRef(t, stage))
        state = load_state(path, settings)
        for key in ("encoder", "decoder", *(["flows"] if "flows" in new else [])):
            assert state[key].keys() == new[key].keys()
            assert all(torch.equal(state[key][k], new[key][k]) for k in new[key])
        reports.append(report)
    return method, reports, state, new


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vae_nf", "infovae"])
def test_training_on_the_mixture_lowers_the_loss_and_the_state_round_trips(method, tmp_path):
    settings = mog_settings(method, **({"lambda": 2.0} if method == "infovae" else {}))  # fn. 3: lambda 2 here
    images = mog_points()
    trained, reports, state, computed = train_through_stages(settings, images, tmp_path)
    losses = [report["loss"] for report in reports[1:]]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    if method == "vae_nf":
        assert set(state) == {"encoder", "decoder", "flows", "optimizer"}
        assert state["flows"]["u"].shape == (10, 2) and state["flows"]["b"].shape == (10,)
    else:
        assert set(state) == {"encoder", "decoder", "optimizer"} and reports[-1]["mmd"] > -1
    # a stage from the loaded file computes what it computes from the in-memory state
    from_file, _ = trained.run("learn", 4, {"model": state}, StageContext(images, torch.device("cpu")))
    from_memory, _ = trained.run("learn", 4, {"model": computed}, StageContext(images, torch.device("cpu")))
    for key in ("encoder", "decoder", *(["flows"] if method == "vae_nf" else [])):
        assert all(torch.equal(from_file[key][k], from_memory[key][k]) for k in from_memory[key])
    model = trained.trained_model({"model": state}, torch.device("cpu"), EvaluationProtocol(batch_size=64,
                                                                                          langevin_steps=1))
    assert isinstance(model, VAENFModel if method == "vae_nf" else VAEModel)
    codes = model.encode(images)
    draws = model.posterior_samples(images, torch.Generator().manual_seed(0))
    assert codes.shape == draws.shape == (500, 2) and torch.isfinite(codes).all() and torch.isfinite(draws).all()
    assert not torch.equal(codes, draws)
    samples = model.sample(30)
    assert samples.shape == (30, 2) and torch.isfinite(samples).all()
    assert trained.SCORES_ANOMALIES is False


def test_vae_nf_codes_and_posterior_samples_are_the_flows_of_the_vae_s():
    """With the trained flows replaced by the identity, VAE-NF's codes and posterior draws are the VAE's (same
    encoder, same generator); with the trained flows they are the flows applied to those."""
    settings = mog_settings("vae_nf", flows=2)
    method = VAENF(settings)
    state, _ = method.run("init", 0, {}, StageContext(mog_points(2), torch.device("cpu")))
    protocol = EvaluationProtocol(batch_size=16, langevin_steps=1)
    model = method.trained_model({"model": state}, torch.device("cpu"), protocol)
    vae = VAEModel(settings, torch.device("cpu"), protocol, model.encoder, model.decoder)
    images = mog_points(2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(images), model.flows(vae.encode(images))[0])
        torch.testing.assert_close(model.posterior_samples(images, torch.Generator().manual_seed(3)),
                                   model.flows(vae.posterior_samples(images, torch.Generator().manual_seed(3)))[0])
        identity_flows(model.flows)
        torch.testing.assert_close(model.encode(images), vae.encode(images))


@pytest.mark.slow
def test_infovae_with_alpha_0_and_lambda_1_trains_the_vae_bit_for_bit(tmp_path):
    images = mog_points(4)
    info = mog_settings("infovae", alpha=0.0, **{"lambda": 1.0}, iterations=2, batch_size=20)
    vae = mog_settings("vae", iterations=2, batch_size=20, kl_weight=1.0,
                       learning=PARAMS["methods"]["infovae"]["learning"])
    info_state = train_through_stages(info, images, tmp_path / "info")[2]
    vae_state = train_through_stages(vae, images, tmp_path / "vae")[2]
    for key in ("encoder", "decoder"):
        assert all(torch.equal(info_state[key][k], vae_state[key][k]) for k in vae_state[key])


def test_infovae_refuses_a_negative_mmd_weight():
    with pytest.raises(ConfigError, match="lambda >= 1 - alpha"):
        InfoVAE(mog_settings("infovae", alpha=0.0, **{"lambda": 0.5}))
