"""VAE with normalizing flows (Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015),
the VAE-NF baseline of the Coupled VAE paper (Hao & Shafto, Sec. 5, footnote 1: "10 layers of planar flow").

The VAE of ``vae.py`` (same encoder with 2d outputs, decoder, likelihood and N(0, I) prior) with its
Gaussian posterior q0(z0 | I) = N(mu(I), diag exp(log_var(I))) pushed through K planar flows

    f(z) = z + u_hat h(w^T z + b),  h = tanh,

with the invertibility reparameterisation of their Appendix A.1,
u_hat = u + (m(w^T u) - w^T u) w / ||w||^2, m(x) = -1 + softplus(x), which gives w^T u_hat = m(w^T u) > -1,
and log |det df/dz| = log |1 + u_hat^T h'(w^T z + b) w|. The loss per image is the negative ELBO (their
free energy with the flow posterior) with one reparameterised sample z0 = mu + sigma * eps:

    -log p(I | z_K) + log q0(z0 | I) - sum_k log |det df_k/dz_{k-1}| - log p(z_K),

i.e. the reconstruction term plus a single-sample Monte Carlo estimate of KL(q_K(z | I) || p(z)) (the
analytic KL of the VAE does not apply after the flows).

Choices (the C-VAE paper gives only the number of flows):

* **Global flow parameters.** One set (u_k, w_k, b_k) shared by all images, not amortised (not computed by
  the encoder from the image); they are stored in the state file (``flows``) beside encoder, decoder and
  optimizer and trained by the same Adam. Initialisation: u, w, b ~ U(-1/sqrt(d), 1/sqrt(d)) (as Pyro's
  ``PlanarFlow.reset_parameters``).
* **Codes** (``encode``, the latent population): the flows applied to the posterior mean,
  f_K o ... o f_1(mu(I)) (the mean of q_K is not available in closed form).
* **Posterior samples**: z_K = f_K o ... o f_1(mu + sigma * eps), one draw per image.
* **No anomaly score** (``SCORES_ANOMALIES = False``).

One iteration is one epoch of Adam; samples g(z), z ~ N(0, I).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..learning import make_optimizer, train_epoch
from ..models import architecture_of, build_encoder, build_generator
from .base import AutoencoderModel, in_batches, load_optimizer_state
from .vae import VAE, run_likelihood

LOG_2PI = math.log(2 * math.pi)


def invertible_u(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """u_hat = u + (m(w^T u) - w^T u) w / ||w||^2, m(x) = -1 + softplus(x) (Rezende & Mohamed, App. A.1), so
    that w^T u_hat = m(w^T u) > -1 and the planar flow is invertible; ``u``, ``w``: (..., d)."""
    wu = (w * u).sum(-1, keepdim=True)
    m = -1 + nn.functional.softplus(wu)
    return u + (m - wu) * w / w.pow(2).sum(-1, keepdim=True)


def planar_flow(z: torch.Tensor, u_hat: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """One planar flow f(z) = z + u_hat tanh(w^T z + b) on z (n, d), and log |det df/dz| per row,
    log |1 + u_hat^T h'(w^T z + b) w| with h' = 1 - tanh^2; ``u_hat`` already reparameterised."""
    activation = torch.tanh(z @ w + b)  # (n,)
    derivative = 1 - activation.pow(2)
    log_det = torch.log(torch.abs(1 + derivative * (u_hat @ w)))
    return z + activation[:, None] * u_hat, log_det


class PlanarFlows(nn.Module):
    """K planar flows with global parameters u, w (K, d) and b (K,); ``forward(z)`` -> (z_K, sum_k log |det|)."""

    def __init__(self, latent_dim: int, flows: int):
        super().__init__()
        bound = 1 / math.sqrt(latent_dim)
        self.u = nn.Parameter(torch.empty(flows, latent_dim).uniform_(-bound, bound))
        self.w = nn.Parameter(torch.empty(flows, latent_dim).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.empty(flows).uniform_(-bound, bound))

    def forward(self, z: torch.Tensor):
        log_det = z.new_zeros(z.shape[0])
        u_hat = invertible_u(self.u, self.w)
        for k in range(len(self.b)):
            z, layer_log_det = planar_flow(z, u_hat[k], self.w[k], self.b[k])
            log_det = log_det + layer_log_det
        return z, log_det


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def flow_negative_elbo(encoder, decoder, flows, images: torch.Tensor, nll, noise: torch.Tensor):
    """Per-example -ELBO of the flow posterior and its two terms (reconstruction, KL estimate).

    ``noise`` (S, n, d) holds S standard-normal draws per image; z0 = mu + sigma * eps, z_K = flows(z0), and
    for each draw -log p(I | z_K) and log q0(z0 | I) - sum_k log |det| - log p(z_K) (the single-sample
    estimate of KL(q_K || p)); both are averaged over the S draws (S = 1 in training). ``nll(images,
    decoded)`` is -log p(I | z) per example (``vae.run_likelihood``).
    """
    mean, log_var = encoder(images).chunk(2, dim=1)
    z0 = mean + torch.exp(0.5 * log_var) * noise  # (S, n, d)
    samples, n, d = noise.shape
    z, log_det = flows(z0.reshape(samples * n, d))
    z, log_det = z.reshape(samples, n, d), log_det.reshape(samples, n)
    reconstruction = torch.stack([nll(images, decoder(sample)) for sample in z]).mean(0)
    log_q0 = -0.5 * (noise.pow(2) + log_var + LOG_2PI).sum(-1)  # log N(z0; mu, diag sigma^2), (S, n)
    kl = (log_q0 - log_det - standard_normal_log_density(z)).mean(0)
    return reconstruction + kl, reconstruction, kl


class VAENF(VAE):
    """The VAE's schedule (one ``learn`` epoch per iteration) with K planar flows on its posterior."""

    SCORES_ANOMALIES = False

    def build(self):
        """Encoder (2d outputs), decoder, the flows and one Adam over all three."""
        architecture, d = architecture_of(self.settings["dataset"]), self.settings["latent_dim"]
        encoder = build_encoder(architecture, self.ENCODER_OUTPUTS_PER_LATENT * d)
        decoder = build_generator(architecture, d)
        flows = PlanarFlows(d, self.settings["flows"])
        learning = self.settings["learning"]
        optimizer = make_optimizer(nn.ModuleList([encoder, decoder, flows]), learning["lr"], learning["beta1"],
                                   learning["beta2"])
        return encoder, decoder, flows, optimizer

    def load_all(self, model, device, with_optimizer: bool = False):
        encoder, decoder, flows, optimizer = self.build()
        for network, key in ((encoder, "encoder"), (decoder, "decoder"), (flows, "flows")):
            network.load_state_dict(model[key])
            network.to(device)
        if with_optimizer:
            load_optimizer_state(optimizer, model)
        return encoder, decoder, flows, optimizer

    @staticmethod
    def state_of(encoder, decoder, flows, optimizer) -> dict:
        return {"encoder": encoder.state_dict(), "decoder": decoder.state_dict(), "flows": flows.state_dict(),
                "optimizer": optimizer.state_dict()}

    def init(self, t, inputs, ctx):
        """Xavier-normal encoder and decoder (as every encoder method), the flows as in the module docstring,
        a fresh Adam."""
        torch.manual_seed(self.rng(0, "model").initial_seed())
        networks = self.build()
        return self.state_of(*networks), {
            "parameters": sum(p.numel() for m in networks[:3] for p in m.parameters())}

    def learn(self, t, inputs, ctx):
        """One epoch of Adam on the flow posterior's negative ELBO, one reparameterised sample per image."""
        encoder, decoder, flows, optimizer = self.load_all(inputs["model"], ctx.device, with_optimizer=True)
        noise_rng, d = self.rng(t, "noise"), self.settings["latent_dim"]
        nll = run_likelihood(self.settings)

        def batch_loss(images):
            noise = torch.randn((1, len(images), d), generator=noise_rng).to(images.device)
            loss, reconstruction, kl = flow_negative_elbo(encoder, decoder, flows, images, nll, noise)
            return loss.mean(), {"reconstruction": reconstruction.mean(), "kl": kl.mean()}

        report = train_epoch(nn.ModuleList([encoder, decoder, flows]), optimizer, ctx.images, batch_loss,
                             batch_size=self.settings["batch_size"], rng=self.rng(t, "shuffle"), device=ctx.device,
                             progress=ctx.progress, desc="VAE-NF epoch")
        return self.state_of(encoder, decoder, flows, optimizer), report

    def trained_model(self, states, device, protocol):
        encoder, decoder, flows, _ = self.load_all(states["model"], device)
        return VAENFModel(self.settings, device, protocol, encoder, decoder, flows)


class VAENFModel(AutoencoderModel):
    """Codes: the flows applied to the posterior mean; posterior samples: the flows applied to one draw of
    q0; samples: g(z), z ~ N(0, I)."""

    def __init__(self, settings, device, protocol, encoder, decoder, flows: PlanarFlows):
        super().__init__(settings, device, protocol, encoder, decoder)
        self.flows = flows.eval()

    def encode(self, images):
        d = self.latent_dim
        return in_batches(lambda x: self.flows(self.encoder(x)[:, :d])[0], images, self.protocol.batch_size,
                          self.device)

    def posterior_samples(self, images, generator):
        """z_K = flows(mean + exp(log_var / 2) * noise), one standard-normal draw per image."""
        mean, log_var = self.encoder_outputs(images).chunk(2, dim=1)
        z0 = mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape, generator=generator)
        return in_batches(lambda z: self.flows(z)[0], z0, self.protocol.batch_size, self.device)


METHOD = VAENF
