"""InfoVAE (Zhao, Song, Ermon, "InfoVAE: Balancing Learning and Inference in Variational Autoencoders",
AAAI 2019) in the form of the Coupled VAE paper's Eq. (4) (Hao & Shafto, Sec. 2.1), its InfoVAE baseline.

The VAE of ``vae.py`` (encoder, decoder, likelihood, N(0, I) prior, one reparameterised sample
z = mu + sigma * eps per image) trained on the negative of Eq. (4),

    E_q[-log p(I | z)] + (1 - alpha) KL(q(z | I) || p(z)) + (alpha + lambda - 1) D(q(z) || p(z)),

with the first two terms averaged over the minibatch (the VAE's negative ELBO with KL weight 1 - alpha,
``vae.negative_elbo``) and D the MMD of Zhao et al.'s MMD-VAE between the aggregate posterior and the
prior: the unbiased estimate of MMD^2 (``metrics.gaussian_kernel_mmd``) between the batch's reparameterised
samples z and as many fresh draws from N(0, I), with the Gaussian kernel k(x, y) = sum over h of
exp(-||x - y||^2 / (2 h^2)). alpha = 0, lambda = 1 is the VAE; alpha + lambda = 1 a beta-VAE.

Bandwidths (``mmd_bandwidths``): null is Zhao et al.'s reference code (``ShengjiaZhao/MMD-Variational-
Autoencoder``, ``compute_kernel``: exp(-mean_k (x_k - y_k)^2 / d) = exp(-||x - y||^2 / d^2)), i.e. one
bandwidth h = d / sqrt(2); a list sets the bandwidths. Their code averages the kernel over all pairs,
diagonal included (the biased V-statistic); this uses the unbiased estimate. The weights are on the scale
of Eq. (4), per image: the likelihood term is this project's summed -log p(I | z), so the MMD's weight
alpha + lambda - 1 counts relative to a sum over pixels (Zhao et al.'s code averages its squared error over
pixels). Codes: posterior means; the trained model is the VAE's (``vae.VAEModel``); no anomaly score.
"""

from __future__ import annotations

import math

import torch

from ..config import ConfigError
from ..learning import train_epoch
from ..metrics import gaussian_kernel_mmd
from .vae import VAE, negative_elbo, run_likelihood


def reference_bandwidths(latent_dim: int) -> list[float]:
    """Zhao et al.'s kernel exp(-||x - y||^2 / d^2) as exp(-||x - y||^2 / (2 h^2)): h = d / sqrt(2)."""
    return [latent_dim / math.sqrt(2)]


def infovae_loss(encoder, decoder, images: torch.Tensor, nll, noise: torch.Tensor, prior: torch.Tensor,
                 alpha: float, lam: float, bandwidths):
    """The batch's loss of Eq. (4) and its terms (batch means, and the MMD).

    mean over images of [-log p(I | z) + (1 - alpha) KL(q(z | I) || p(z))] + (alpha + lambda - 1)
    MMD^2(z, prior), with z = mu + sigma * noise, ``noise`` (n, d), ``prior`` (m, d) draws of N(0, I) and
    the Gaussian-kernel MMD of ``bandwidths``; ``nll`` as for ``vae.negative_elbo``.
    """
    outputs = encoder(images)  # once: the encoder's batch norm sees the batch once
    elbo_part, reconstruction, kl = negative_elbo(lambda _: outputs, decoder, images, nll, noise[None], 1 - alpha)
    mean, log_var = outputs.chunk(2, dim=1)
    z = mean + torch.exp(0.5 * log_var) * noise  # the samples negative_elbo decoded
    mmd = gaussian_kernel_mmd(z, prior, bandwidths)
    loss = elbo_part.mean() + (alpha + lam - 1) * mmd
    return loss, {"reconstruction": reconstruction.mean(), "kl": kl.mean(), "mmd": mmd}


class InfoVAE(VAE):
    """The VAE's schedule (one ``learn`` epoch per iteration) on the InfoVAE loss."""

    SCORES_ANOMALIES = False

    def __init__(self, settings: dict):
        super().__init__(settings)
        weight = settings["alpha"] + settings["lambda"] - 1
        if weight < 0:
            raise ConfigError(f"config key 'lambda': alpha + lambda - 1 = {weight:g} < 0 would reward a mismatch "
                              "between the aggregate posterior and the prior; choose lambda >= 1 - alpha")

    def bandwidths(self) -> list[float]:
        chosen = self.settings["mmd_bandwidths"]
        return reference_bandwidths(self.settings["latent_dim"]) if chosen is None else list(chosen)

    def learn(self, t, inputs, ctx):
        """One epoch of Adam on Eq. (4), one reparameterised sample per image and as many prior draws."""
        s = self.settings
        encoder, decoder, optimizer = self.load(inputs["model"], ctx.device, with_optimizer=True)
        noise_rng, prior_rng, d = self.rng(t, "noise"), self.rng(t, "prior"), s["latent_dim"]
        nll, bandwidths = run_likelihood(s), self.bandwidths()

        def batch_loss(images):
            noise = torch.randn((len(images), d), generator=noise_rng).to(images.device)
            prior = torch.randn((len(images), d), generator=prior_rng).to(images.device)
            return infovae_loss(encoder, decoder, images, nll, noise, prior, s["alpha"], s["lambda"], bandwidths)

        report = train_epoch(torch.nn.ModuleList([encoder, decoder]), optimizer, ctx.images, batch_loss,
                             batch_size=s["batch_size"], rng=self.rng(t, "shuffle"), device=ctx.device,
                             progress=ctx.progress, desc="InfoVAE epoch")
        return self.state(encoder, decoder, optimizer), report


METHOD = InfoVAE
