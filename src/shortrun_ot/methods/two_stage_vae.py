"""Two-stage VAE (Dai & Wipf, "Diagnosing and enhancing VAE models", ICLR 2019).

Stage 1: a VAE (encoder mirroring the Table 7 generator, decoder the Table 7 generator) whose
likelihood N(I; g(z), gamma_x^2 I) has a learned scale, loss ||I - g(z)||^2 / (2 gamma_x^2) + D log
gamma_x + KL (their Eq. 5 / the code's ``loss1``; gamma_x -> 0 is allowed, which is the point).
Stage 2: a VAE on latents z ~ q(z | I) drawn afresh from the stage-1 posteriors every epoch, with
MLP encoder and decoder (``second.depth`` hidden layers of ``second.width`` ReLU units, the input
concatenated to the last hidden layer, as in their code) and its own learned gamma_z. Sampling,
as their ``generate``: u ~ N(0, I), z = f_2(u) + gamma_z eps, image = f_1(z).

Stages: ``init`` (both VAEs), ``stage1`` (iterations 1..T1: an epoch of stage 1), ``posterior``
(iteration T1 + 1: the stage-1 posterior means and log-variances of the training images, in eval
mode), ``stage2`` (iterations T1 + 1..T: an epoch of stage 2).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ConfigError, stage_rng
from ..learning import make_optimizer, train_epoch
from ..models import architecture_of, build_encoder, build_generator
from .base import AutoencoderModel, Method, StageRef, in_batches, load_optimizer_state
from ..likelihood import gaussian_nll
from .vae import negative_elbo


class SkipMLP(nn.Module):
    """``depth`` ReLU layers of ``width``, then a linear map of [input, last hidden] (their stage-2 networks)."""

    def __init__(self, inputs: int, outputs: int, depth: int, width: int):
        super().__init__()
        layers, size = [], inputs
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(inputs + width, outputs)

    def forward(self, x):
        return self.out(torch.cat([x, self.hidden(x)], dim=1))


class ScaledVAE(nn.Module):
    """Encoder, decoder and the learned log-scale of the likelihood, log gamma (initialised to 0)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.log_gamma = nn.Parameter(torch.zeros(()))

    def loss(self, x, noise):
        """Per-example -ELBO with the learned gamma (Dai & Wipf, Eq. 5), and its two terms."""
        def nll(images, decoded):
            return gaussian_nll(images, decoded, self.log_gamma)

        return negative_elbo(self.encoder, self.decoder, x, nll, noise)


def two_stage_sample(second_decoder, first_decoder, u: torch.Tensor, gamma_z: float, noise: torch.Tensor):
    """u ~ N(0, I) -> z = f_2(u) + gamma_z * noise -> f_1(z) (their ``generate``, stage 2)."""
    return first_decoder(second_decoder(u) + gamma_z * noise)


class TwoStageVAE(Method):
    STAGES = ("init", "stage1", "posterior", "stage2")
    SAMPLES_PRIOR_DRAWS = False  # samples pass through the second-stage VAE

    def __init__(self, settings):
        super().__init__(settings)
        self.first_iterations = settings["stage1_iterations"]
        if self.iterations is not None and self.first_iterations >= self.iterations:
            raise ConfigError(f"config key 'stage1_iterations': {self.first_iterations} leaves no iteration of "
                              f"stage 2 (iterations is {self.iterations})")

    def stages(self, t):
        if t == 0:
            return ["init"]
        if t <= self.first_iterations:
            return ["stage1"]
        return ["posterior", "stage2"] if t == self.first_iterations + 1 else ["stage2"]

    def inputs(self, stage, t):
        first_done = StageRef(self.first_iterations, "stage1")
        if stage == "init":
            return {}
        if stage == "stage1":
            return {"model": self.previous(t)}
        if stage == "posterior":
            return {"stage1": first_done}
        second = StageRef(t - 1, "stage2") if t > self.first_iterations + 1 else StageRef(0, "init")
        return {"posterior": StageRef(self.first_iterations + 1, "posterior"), "stage2": second}

    # -- networks
    def first_vae(self):
        architecture, d = architecture_of(self.settings["dataset"]), self.settings["latent_dim"]
        return ScaledVAE(build_encoder(architecture, 2 * d), build_generator(architecture, d))

    def second_vae(self):
        d, second = self.settings["latent_dim"], self.settings["second"]
        return ScaledVAE(SkipMLP(d, 2 * d, second["depth"], second["width"]),
                         SkipMLP(d, d, second["depth"], second["width"]))

    def optimizer(self, vae):
        learning = self.settings["learning"]
        return make_optimizer(vae, learning["lr"], learning["beta1"], learning["beta2"])

    def load(self, build, state, device, with_optimizer=False):
        vae = build()
        vae.load_state_dict(state["vae"])
        vae.to(device)
        if not with_optimizer:
            return vae
        optimizer = self.optimizer(vae)
        load_optimizer_state(optimizer, state)
        return vae, optimizer

    # -- stages
    def init(self, t, inputs, ctx):
        torch.manual_seed(self.rng(0, "model").initial_seed())
        first, second = self.first_vae(), self.second_vae()
        state = {name: {"vae": vae.state_dict(), "optimizer": self.optimizer(vae).state_dict()}
                 for name, vae in (("stage1", first), ("stage2", second))}
        return state, {"parameters_stage1": sum(p.numel() for p in first.parameters()),
                       "parameters_stage2": sum(p.numel() for p in second.parameters())}

    def _epoch(self, vae, optimizer, data, t, ctx, desc):
        noise_rng, d = self.rng(t, "noise"), self.settings["latent_dim"]

        def batch_loss(batch):
            noise = torch.randn((1, len(batch), d), generator=noise_rng).to(batch.device)
            loss, reconstruction, kl = vae.loss(batch, noise)
            return loss.mean(), {"reconstruction": reconstruction.mean(), "kl": kl.mean()}

        report = train_epoch(vae, optimizer, data, batch_loss, batch_size=self.settings["batch_size"],
                             rng=self.rng(t, "shuffle"), device=ctx.device, progress=ctx.progress, desc=desc)
        return {**report, "gamma": math.exp(vae.log_gamma.item())}

    def stage1(self, t, inputs, ctx):
        """One epoch of stage 1: the VAE with learned gamma_x on the images."""
        vae, optimizer = self.load(self.first_vae, inputs["model"]["stage1"], ctx.device, with_optimizer=True)
        report = self._epoch(vae, optimizer, ctx.images, t, ctx, "stage-1 epoch")
        return {"stage1": {"vae": vae.state_dict(), "optimizer": optimizer.state_dict()}}, report

    def posterior(self, t, inputs, ctx):
        """The stage-1 posteriors q(z | I) of the training images (means, log-variances; eval mode)."""
        vae = self.load(self.first_vae, inputs["stage1"]["stage1"], ctx.device).eval()
        outputs = in_batches(vae.encoder, ctx.images, self.settings["batch_size"], ctx.device)
        mean, log_var = outputs.chunk(2, dim=1)
        return {"mean": mean.contiguous(), "log_var": log_var.contiguous()}, {
            "posterior_sd": torch.exp(0.5 * log_var).mean().item()}

    def stage2(self, t, inputs, ctx):
        """One epoch of stage 2 on z = mean + sd * eps, drawn afresh from the stage-1 posteriors."""
        vae, optimizer = self.load(self.second_vae, inputs["stage2"]["stage2"], ctx.device, with_optimizer=True)
        posterior = inputs["posterior"]
        mean, log_var = posterior["mean"], posterior["log_var"]
        z = mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape, generator=self.rng(t, "posterior-sample"))
        report = self._epoch(vae, optimizer, z, t, ctx, "stage-2 epoch")
        return {"stage2": {"vae": vae.state_dict(), "optimizer": optimizer.state_dict()}}, report

    # -- cost
    def stage_work(self, stage, n, decoder_flops):
        """An epoch of either stage at an encoder method's cost (an upper bound for the small second stage)."""
        return (6 * decoder_flops * n if stage in ("stage1", "stage2") else 0.0), 0

    # -- evaluation
    def evaluation_points(self, t):
        if t <= self.first_iterations:  # before stage 2: a plain VAE with learned gamma (stage-1 samples)
            return {"end": {"stage1": StageRef(t, "stage1") if t > 0 else StageRef(0, "init")}}
        return {"end": {"stage1": StageRef(self.first_iterations, "stage1"), "stage2": StageRef(t, "stage2")}}

    def trained_model(self, states, device, protocol):
        first = self.load(self.first_vae, states["stage1"]["stage1"], device)
        second = self.load(self.second_vae, states["stage2"]["stage2"], device) if "stage2" in states else None
        return TwoStageVAEModel(self.settings, device, protocol, first, second)


class TwoStageVAEModel(AutoencoderModel):
    """Codes and reconstructions from stage 1 (posterior means), samples through both stages."""

    def __init__(self, settings, device, protocol, first: ScaledVAE, second: ScaledVAE | None):
        super().__init__(settings, device, protocol, first.encoder, first.decoder)
        self.first, self.second = first.eval(), second.eval() if second is not None else None

    def sample(self, n):
        if self.second is None:
            return super().sample(n)
        u = self.prior_latents(n)
        noise = torch.randn(u.shape, generator=stage_rng(self.settings["seed"], 0, "samples-stage2"))
        gamma_z = math.exp(self.second.log_gamma.item())
        batch = self.protocol.batch_size
        with torch.no_grad():
            return torch.cat([
                two_stage_sample(self.second.decoder, self.first.decoder, u[i:i + batch].to(self.device), gamma_z,
                                 noise[i:i + batch].to(self.device)).cpu()
                for i in range(0, n, batch)
            ])

METHOD = TwoStageVAE
