"""Coupled VAE (Hao & Shafto, "Coupled Variational Autoencoder"): the VAE problem as entropic OT between
the data and the prior, learned by the dual strategy (their Alg. 2), without an encoder.

Entropic OT (Eq. 13) between the empirical data distribution (1/n) sum_i delta_{x_i} and the prior
p(z) = N(0, I), with the decoder's negative log-likelihood as cost, c_theta(x, z) = -log p_theta(x | z)
(``shortrun_ot.likelihood``), and the aggregate posterior held to the prior (their varsigma = +inf).
Its semi-dual (Eq. 17 with Eq. 11) is finite-dimensional, one dual variable u_i per training image
(Eq. 18):

    min_theta max_u  L(u, theta) = E_{z ~ p} [ (1/n) sum_i u_i + v(z) ],
    v(z) = -eps log (1/n) sum_i exp((u_i - c_theta(x_i, z)) / eps)       (the c,eps-transform, Eq. 11).

Each Adam step of the decoder (minimising L) is preceded by ``dual.steps`` Adam steps of u
(maximising L), every step on its own ``batch_size`` fresh prior draws (Alg. 2).

The coupling. At the optimum in u the plan is pi(x_i, z) = p(z) (1/n) exp((u_i + v(z) - c(x_i, z)) / eps)
= p(z) softmax_i((u_i - c(x_i, z)) / eps); its z-marginal is p by the definition of v, and its
x-marginal is uniform exactly when dL/du_i = 1/n - E_p[softmax_i] vanishes. The posterior is therefore
the weighted prior

    q(z | x_i) = n pi(x_i, z) = p(z) exp((u_i + v(z) - c(x_i, z)) / eps)                     (Eq. 20)

*without* the "- 1" in the exponent that the paper's Eqs. (12), (19) and (20) carry: that form is the
optimality condition of the dual with the term -eps exp((u + v - c) / eps - 1) (the entropy
sum pi log pi - pi), not of the dual of Eqs. (9)-(11) written there, and with it q(z | x_i) would
integrate to 1/e (``tests/test_cvae.py`` checks both). This module uses the normalised form.

Encoding any image x (training or not): the weighted prior over ``posterior_draws`` fixed prior
draws z_j, weights proportional to exp((v(z_j) - c(x, z_j)) / eps) (u_i cancels on normalising; for a
training image this is Eq. 20 self-normalised over the draws). Codes are the posterior means,
sum_j w_j z_j (the paper's Fig. 1 "mean of the encoding distribution"); ``posterior_samples`` draws
one z_j per image with the weights. v on the draws is computed when the trained model is built, from
u and the training images (``EvaluationProtocol.train_images``), with the decoder in eval mode (as
evaluation decodes).

Choices the paper leaves open (docs/methods.md): eps, the two Adam rates, K = ``dual.steps``, the
draws per step, u initialised to 0, an iteration = ceil(n / batch_size) decoder steps (as many prior
draws as training images). Samples: g(z), z ~ N(0, I). No anomaly score.
"""

from __future__ import annotations

import math

import torch

from ..config import stage_rng
from ..learning import make_optimizer
from ..likelihood import pairwise_negative_log_likelihood
from ..models import ARCHITECTURES, architecture_of, build_generator, frozen_batchnorm_statistics
from .base import Method, StageRef, TrainedModel, in_batches, load_optimizer_state


# ---------------------------------------------------------------- the semi-dual (Eqs. 11, 18, 20)

#: Exponents below this (relative to a row's maximum) are raised to it before exp: e^-80 ~ 1.8e-35 changes no sum
#: of n terms by more than n e^-80 relative, and keeps float32 exp out of denormal numbers (4x faster on a CPU).
SMALLEST_EXPONENT = -80.0


def _shifted_exp(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(x - max) along rows, exponents clamped at SMALLEST_EXPONENT, and the rows' maxima."""
    top = x.amax(dim=1, keepdim=True).detach()
    return (x - top).clamp_min(SMALLEST_EXPONENT).exp(), top.squeeze(1)


def logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """log sum_i exp(x_ji) for each row j (``torch.logsumexp(x, 1)`` up to SMALLEST_EXPONENT)."""
    shifted, top = _shifted_exp(x)
    return top + shifted.sum(1).log()


def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """softmax over each row (``torch.softmax(x, 1)`` up to SMALLEST_EXPONENT)."""
    shifted, _ = _shifted_exp(x)
    return shifted / shifted.sum(1, keepdim=True)


def c_transform(u: torch.Tensor, costs: torch.Tensor, epsilon: float) -> torch.Tensor:
    """v(z_j) = -eps log (1/n) sum_i exp((u_i - c_ji) / eps) for each row j of the (m, n) ``costs``
    c_ji = c(x_i, z_j), a row per prior draw, a column per training image (Eq. 11 with the empirical data
    distribution)."""
    n = costs.shape[1]
    return -epsilon * (logsumexp_rows((u - costs) / epsilon) - math.log(n))


def semi_dual_objective(u: torch.Tensor, costs: torch.Tensor, epsilon: float) -> torch.Tensor:
    """L of Eq. (18), the expectation over p(z) estimated by the m prior draws of ``costs`` (m, n)."""
    return u.mean() + c_transform(u, costs, epsilon).mean()


def coupling(u: torch.Tensor, costs: torch.Tensor, epsilon: float) -> torch.Tensor:
    """pi(x_i | z_j) = softmax_i((u_i - c_ji) / eps), an (m, n) matrix whose rows sum to 1; the plan of
    Eq. (19) (normalised, see the module docstring) is p(z_j) times it."""
    return softmax_rows((u - costs) / epsilon)


def posterior_weights(potential: torch.Tensor, costs: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Weights of the prior draws z_j in q(z | x_k) (Eq. 20, self-normalised): softmax_j((v_j - c_kj) / eps)
    for the (k, m) ``costs`` c(x_k, z_j) and v on the draws; rows sum to 1."""
    return softmax_rows((potential - costs) / epsilon)


def ascend_dual(u: torch.Tensor, optimizer: torch.optim.Optimizer, costs: torch.Tensor, epsilon: float) -> float:
    """One step of ``optimizer`` (over ``u``) maximising L(u) for fixed ``costs``; returns L before the step."""
    objective = semi_dual_objective(u, costs, epsilon)
    optimizer.zero_grad(set_to_none=True)
    (-objective).backward()
    optimizer.step()
    return float(objective.detach())


# ---------------------------------------------------------------- the method


class CoupledVAE(Method):
    """Stages: ``init`` (decoder, u = 0, both Adams), then per iteration ``learn`` (Alg. 2)."""

    STAGES = ("init", "learn")

    def stages(self, t):
        return ["init"] if t == 0 else ["learn"]

    def inputs(self, stage, t):
        return {} if stage == "init" else {"model": self.previous(t)}

    def decoder(self):
        return build_generator(architecture_of(self.settings["dataset"]), self.settings["latent_dim"])

    def optimizers(self, decoder, u):
        learning, dual = self.settings["learning"], self.settings["dual"]
        return (make_optimizer(decoder, learning["lr"], learning["beta1"], learning["beta2"]),
                torch.optim.Adam([u], lr=dual["lr"], betas=(dual["beta1"], dual["beta2"])))

    def costs(self, images: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """c(x_i, g(z_j)) as an (m, n) matrix: a row per decoding (rows contiguous for the sums over i)."""
        return pairwise_negative_log_likelihood(images, decoded, self.settings, rows="decodings")

    def init(self, t, inputs, ctx):
        torch.manual_seed(self.rng(0, "model").initial_seed())
        decoder = self.decoder()
        u = torch.zeros(len(ctx.images), requires_grad=True)
        optimizer, dual_optimizer = self.optimizers(decoder, u)
        state = {"decoder": decoder.state_dict(), "optimizer": optimizer.state_dict(), "u": u.detach().clone(),
                 "dual_optimizer": dual_optimizer.state_dict()}
        return state, {"parameters": sum(p.numel() for p in decoder.parameters())}

    def learn(self, t, inputs, ctx):
        """ceil(n / batch_size) times: ``dual.steps`` ascent steps on u, then one descent step on the decoder."""
        s, model = self.settings, inputs["model"]
        decoder = self.decoder()
        decoder.load_state_dict(model["decoder"])
        decoder.to(ctx.device).train()
        if len(model["u"]) != len(ctx.images):
            raise ValueError(f"the state holds {len(model['u'])} dual variables but the run has {len(ctx.images)} "
                             "training images; delete the run's folder and rerun")
        u = model["u"].clone().to(ctx.device).requires_grad_(True)
        optimizer, dual_optimizer = self.optimizers(decoder, u)
        load_optimizer_state(optimizer, model)
        load_optimizer_state(dual_optimizer, model, key="dual_optimizer")
        images, epsilon, m, d = ctx.images.to(ctx.device), s["epsilon"], s["batch_size"], s["latent_dim"]
        prior = self.rng(t, "prior")

        def draws():
            return torch.randn((m, d), generator=prior).to(ctx.device)

        steps = math.ceil(len(images) / m)
        dual_values, objectives = [], []
        for _ in range(steps):
            for _ in range(s["dual"]["steps"]):
                with torch.no_grad(), frozen_batchnorm_statistics(decoder):
                    costs = self.costs(images, decoder(draws()))
                dual_values.append(ascend_dual(u, dual_optimizer, costs, epsilon))
            costs = self.costs(images, decoder(draws()))
            objective = semi_dual_objective(u.detach(), costs, epsilon)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            objectives.append(float(objective.detach()))
        if not all(map(math.isfinite, objectives + dual_values)):
            raise FloatingPointError("the Coupled VAE's objective became non-finite; lower the learning rates")
        with torch.no_grad():  # how far the last step's plan is from the uniform data marginal
            marginal = coupling(u, costs.detach(), epsilon).mean(0) * len(images)
        state = {"decoder": decoder.state_dict(), "optimizer": optimizer.state_dict(), "u": u.detach().cpu(),
                 "dual_optimizer": dual_optimizer.state_dict()}
        return state, {"objective": sum(objectives) / steps, "dual_objective": sum(dual_values) / len(dual_values),
                       "marginal_error": float((marginal - 1).abs().mean()), "u_spread": float(u.detach().std()),
                       "decoder_steps": steps}

    def stage_work(self, stage, n, decoder_flops):
        """An epoch of the decoder (and of an encoder's worth), plus the likelihood of every image under every
        prior draw for each of the ``dual.steps`` ascent steps and the descent step (Eq. 18)."""
        if stage != "learn":
            return 0.0, 0
        pixels = math.prod(ARCHITECTURES[architecture_of(self.settings["dataset"])]["image_shape"])
        return 6 * decoder_flops * n + 3 * (self.settings["dual"]["steps"] + 1) * n * n * pixels, 0

    def evaluation_points(self, t):
        return {"end": {"model": StageRef(t, "init" if t == 0 else "learn")}}

    def trained_model(self, states, device, protocol):
        decoder = self.decoder()
        decoder.load_state_dict(states["model"]["decoder"])
        return CoupledVAEModel(self.settings, device, protocol, decoder.to(device), states["model"]["u"])


class CoupledVAEModel(TrainedModel):
    """Samples g(z), z ~ N(0, I); codes: posterior means over fixed prior draws (Eq. 20)."""

    def __init__(self, settings, device, protocol, decoder, u: torch.Tensor):
        super().__init__(settings, device, protocol)
        if protocol.train_images is None or len(protocol.train_images) != len(u):
            raise ValueError(f"the Coupled VAE's posterior needs the run's {len(u)} training images (its dual "
                             "variables are theirs): pass them as EvaluationProtocol.train_images")
        self.decoder = decoder.eval()
        self.draws = torch.randn((settings["posterior_draws"], self.latent_dim),
                                 generator=stage_rng(settings["seed"], 0, "posterior-draws"))
        self.decoded_draws = self.decode(self.draws)
        with torch.no_grad():  # v on the draws (Eq. 11), a batch of draws at a time
            self.potential = torch.cat([
                c_transform(u.to(device), pairwise_negative_log_likelihood(
                    protocol.train_images.to(device), chunk.to(device), settings, rows="decodings"),
                    settings["epsilon"]).cpu()
                for chunk in self.decoded_draws.split(protocol.batch_size)])

    def decode(self, z):
        return in_batches(self.decoder, z, self.protocol.batch_size, self.device)

    def weights(self, images: torch.Tensor) -> torch.Tensor:
        """(k, posterior_draws) weights of q(z | x) for k images (rows sum to 1); call it per batch."""
        costs = pairwise_negative_log_likelihood(images, self.decoded_draws, self.settings)
        return posterior_weights(self.potential, costs, self.settings["epsilon"])

    def encode(self, images):
        return torch.cat([self.weights(chunk) @ self.draws for chunk in images.split(self.protocol.batch_size)])

    def posterior_samples(self, images, generator):
        """One prior draw z_j per image, drawn with the weights of q(z | x)."""
        return torch.cat([self.draws[torch.multinomial(self.weights(chunk), 1, generator=generator).squeeze(1)]
                          for chunk in images.split(self.protocol.batch_size)])


METHOD = CoupledVAE
