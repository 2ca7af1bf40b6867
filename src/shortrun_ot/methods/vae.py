"""Variational autoencoder (Kingma & Welling 2014), on this project's decoder and likelihood.

Encoder q(z | I) = N(mu(I), diag exp(log_var(I))), the network of ``models.build_encoder`` mirroring
the Table 7 generator with 2d outputs; decoder g, the Table 7 generator; likelihood
p(I | z) = N(I; g(z), sigma^2 I) with the sigma of the short-run method (0.3), so that its
reconstruction term is the same ||I - g(z)||^2 / (2 sigma^2) as Eq. (5), or Bernoulli
(``likelihood: bernoulli``, the Coupled VAE's MNIST experiment; ``shortrun_ot.likelihood``); prior N(0, I).
The loss is the negative ELBO (Kingma & Welling, Eq. 10), with the analytic KL of their App. B
and one reparameterised sample z = mu + exp(log_var / 2) * eps per image. One iteration is one
epoch of Adam. Samples: g(z), z ~ N(0, I); codes: the posterior means; anomaly score: the
negative ELBO (``elbo_samples`` samples of z).
"""

from __future__ import annotations

import torch

from ..config import stage_rng
from ..learning import train_epoch
from ..likelihood import negative_log_likelihood
from .base import AutoencoderMethod, AutoencoderModel, StageRef


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(log_var)) || N(0, I)) per example (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)


def negative_elbo(encoder, decoder, images: torch.Tensor, nll, noise: torch.Tensor, kl_weight: float = 1.0):
    """Per-example -ELBO = E_q[-log p(I | z)] + kl_weight KL(q(z | I) || p(z)), and its two terms.

    ``nll(images, decoded)`` is -log p(I | z) per example (``shortrun_ot.likelihood``); ``noise`` (S, n, d)
    holds S standard-normal draws per image; the expectation is their mean (S = 1 in training: the
    reparameterisation estimator).
    """
    mean, log_var = encoder(images).chunk(2, dim=1)
    z = mean + torch.exp(0.5 * log_var) * noise  # (S, n, d)
    reconstruction = torch.stack([nll(images, decoder(sample)) for sample in z]).mean(0)
    kl = gaussian_kl(mean, log_var)
    return reconstruction + kl_weight * kl, reconstruction, kl


def run_likelihood(settings: dict):
    """The run's -log p(I | z) as a function of (images, decodings), per example."""
    return lambda images, decoded: negative_log_likelihood(images, decoded, settings)


class VAE(AutoencoderMethod):
    """One stage per iteration: an epoch of Adam on the negative ELBO."""

    STAGES = ("init", "learn")
    SCORES_ANOMALIES = True
    ENCODER_OUTPUTS_PER_LATENT = 2  # mean and log-variance of q(z | I)

    def stages(self, t):
        return ["init"] if t == 0 else ["learn"]

    def inputs(self, stage, t):
        return {} if stage == "init" else {"model": self.previous(t)}

    def learn(self, t, inputs, ctx):
        """One epoch of Adam on the negative ELBO, one reparameterised sample per image."""
        encoder, decoder, optimizer = self.load(inputs["model"], ctx.device, with_optimizer=True)
        noise_rng, d = self.rng(t, "noise"), self.settings["latent_dim"]

        def batch_loss(images):
            noise = torch.randn((1, len(images), d), generator=noise_rng).to(images.device)
            loss, reconstruction, kl = negative_elbo(encoder, decoder, images, run_likelihood(self.settings), noise,
                                                     self.settings["kl_weight"])
            return loss.mean(), {"reconstruction": reconstruction.mean(), "kl": kl.mean()}

        report = train_epoch(torch.nn.ModuleList([encoder, decoder]), optimizer, ctx.images, batch_loss,
                             batch_size=self.settings["batch_size"], rng=self.rng(t, "shuffle"), device=ctx.device,
                             progress=ctx.progress, desc="VAE epoch")
        return self.state(encoder, decoder, optimizer), report

    def evaluation_points(self, t):
        return {"end": {"model": StageRef(t, "learn") if t > 0 else StageRef(0, "init")}}

    def trained_model(self, states, device, protocol):
        encoder, decoder, _ = self.load(states["model"], device)
        return VAEModel(self.settings, device, protocol, encoder, decoder)


class VAEModel(AutoencoderModel):
    """Codes: posterior means; samples: g(z), z ~ N(0, I); anomaly score: the negative ELBO."""

    def posterior_samples(self, images, generator):
        """z = mean + exp(log_var / 2) * noise, one standard-normal draw per image."""
        mean, log_var = self.encoder_outputs(images).chunk(2, dim=1)
        return mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape, generator=generator)

    def anomaly_scores(self, images):
        samples, d, batch = self.settings["elbo_samples"], self.latent_dim, self.protocol.batch_size
        rng = stage_rng(self.settings["seed"], 0, "anomaly-elbo")
        scores = []
        with torch.no_grad():
            for lo in range(0, len(images), batch):
                chunk = images[lo:lo + batch].to(self.device)
                noise = torch.randn((samples, len(chunk), d), generator=rng).to(self.device)
                loss, _, _ = negative_elbo(self.encoder, self.decoder, chunk, run_likelihood(self.settings), noise,
                                           self.settings["kl_weight"])
                scores.append(loss.cpu())
        return torch.cat(scores)


METHOD = VAE
