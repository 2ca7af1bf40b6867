"""Latent-space energy-based prior (LEBM; Pang, Han, Nijkamp, Zhu, Wu 2020, "Learning latent space
energy-based prior model").

The generator of Eq. (1) with the prior N(0, I) replaced by p_alpha(z) proportional to
exp(f_alpha(z)) N(z; 0, I), f_alpha an MLP (:class:`~shortrun_ot.models.EnergyPrior`). Iteration t:

* ``infer``: posterior Langevin from noise for every image (as SRI), on
  log p(I, z) = -||I - g(z)||^2 / (2 sigma^2) + f_alpha(z) - ||z||^2 / 2;
* ``learn``: the generator by Adam on the (z, I) pairs as SRI; then the prior by Adam on the
  same minibatches, each with a fresh batch of prior samples from prior Langevin (``prior_langevin``
  steps from N(0, I), Pang et al.'s Eq. 10), descending
  mean f_alpha(z_prior) - mean f_alpha(z_posterior) (:func:`prior_loss`), whose gradient is minus
  the learning gradient of the prior, E_posterior[grad f_alpha] - E_prior[grad f_alpha].

With f_alpha = 0 this is exactly SRI. Samples (FID): prior Langevin, then g. Anomaly score: -log p(I, z)
with the learned prior (up to log Z_alpha, the same for every image).
"""

from __future__ import annotations

import math

import torch

from ..langevin import prior_langevin
from ..learning import make_optimizer
from ..models import EnergyPrior
from .base import StateFile
from .shortrun import GeneratorModel, latent_size, load_generator, load_network
from .sri import ShortRunInference


def prior_loss(energy: EnergyPrior, z_posterior: torch.Tensor, z_prior: torch.Tensor) -> torch.Tensor:
    """mean f(z_prior) - mean f(z_posterior): its gradient in alpha is minus the maximum-likelihood
    gradient of the prior, E_{p(z | I)}[grad f] - E_{p_alpha(z)}[grad f] (Pang et al. 2020)."""
    return energy(z_prior).mean() - energy(z_posterior).mean()


class LatentEBM(ShortRunInference):
    """SRI with a learned energy-based prior: state files hold ``generator``, ``optimizer``, ``ebm``, ``ebm_optimizer``."""

    SAMPLES_PRIOR_DRAWS = False  # samples come from prior Langevin on the energy-based prior

    def energy_prior(self) -> EnergyPrior:
        return EnergyPrior(latent_size(self.settings), self.settings["ebm"]["width"])

    def load_energy_prior(self, model: StateFile, device, with_optimizer: bool = False):
        """f_alpha of a model state (and its Adam state for learning)."""
        energy = self.energy_prior().to(device)
        if not with_optimizer:
            return load_network(model, energy, "ebm")
        return load_network(model, energy, "ebm", "ebm_optimizer", self.settings["ebm"]["learning"])

    def log_prior(self, model, device):
        return self.load_energy_prior(model, device).log_prior

    def init(self, t, inputs, ctx):
        """SRI's initial state, plus f_alpha (PyTorch's default initialisation, as their code) and its Adam state."""
        state, report = super().init(t, inputs, ctx)
        torch.manual_seed(self.rng(0, "ebm").initial_seed())
        energy = self.energy_prior()
        learning = self.settings["ebm"]["learning"]
        optimizer = make_optimizer(energy, learning["lr"], learning["beta1"], learning["beta2"])
        state.update(ebm=energy.state_dict(), ebm_optimizer=optimizer.state_dict())
        return state, {**report, "ebm_parameters": sum(p.numel() for p in energy.parameters())}

    def learn(self, t, inputs, ctx):
        """The generator as SRI; then the prior, one Adam step per minibatch of posterior latents."""
        state, report = super().learn(t, inputs, ctx)
        energy, optimizer = self.load_energy_prior(inputs["model"], ctx.device, with_optimizer=True)
        z = inputs["latents"].latents("latents", len(ctx.images), latent_size(self.settings))
        steps, batch_size = self.settings["prior_langevin"], self.settings["batch_size"]
        shuffle, noise = self.rng(t, "shuffle"), self.rng(t, "prior-langevin")  # the generator's minibatches
        losses, posterior_f, prior_f = [], [], []
        for _ in range(self.settings["learning"]["passes"]):
            order = torch.randperm(len(z), generator=shuffle)
            for lo in range(0, len(z), batch_size):
                z_posterior = z[order[lo:lo + batch_size]].to(ctx.device)
                z_prior = prior_langevin(energy.log_prior, torch.randn(z_posterior.shape, generator=noise).to(ctx.device),
                                         steps=steps["steps"], step_size=steps["step_size"], rng=noise)
                loss = prior_loss(energy, z_posterior, z_prior)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    posterior_f.append(energy(z_posterior).mean().item())
                    prior_f.append(energy(z_prior).mean().item())
                losses.append(loss.item())
        if not all(map(math.isfinite, losses)):
            raise FloatingPointError(f"the prior's loss became non-finite; lower 'ebm.learning.lr' (now "
                                     f"{self.settings['ebm']['learning']['lr']}) or 'prior_langevin.step_size'")
        state.update(ebm=energy.state_dict(), ebm_optimizer=optimizer.state_dict())
        return state, {**report, "ebm_loss": sum(losses) / len(losses), "f_posterior": sum(posterior_f) / len(posterior_f),
                       "f_prior": sum(prior_f) / len(prior_f), "ebm_updates": len(losses)}

    def trained_model(self, states, device, protocol):
        return LatentEBMModel(self.settings, device, protocol, load_generator(states["model"], self.settings, device),
                              states["latents"], self.load_energy_prior(states["model"], device))


class LatentEBMModel(GeneratorModel):
    """Samples by prior Langevin from N(0, I) (the evaluation's fixed stream), then the generator."""

    def __init__(self, settings, device, protocol, generator, latents, energy: EnergyPrior):
        super().__init__(settings, device, protocol, generator, latents, energy.log_prior)

    def sample(self, n):
        steps, batch = self.settings["prior_langevin"], self.protocol.batch_size
        z0, rng = self.prior_latents(n), self.rng("samples-prior-langevin")
        z = torch.cat([prior_langevin(self.log_prior, z0[lo:lo + batch].to(self.device), steps=steps["steps"],
                                      step_size=steps["step_size"], rng=rng).cpu()
                       for lo in range(0, n, batch)])
        return self.decode(z)


METHOD = LatentEBM
