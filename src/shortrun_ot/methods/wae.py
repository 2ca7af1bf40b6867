"""Wasserstein autoencoder (Tolstikhin, Bousquet, Gelly, Schölkopf, ICLR 2018), WAE-GAN and WAE-MMD.

A deterministic encoder Q (mirroring the Table 7 generator) and the generator G as decoder minimise
their Eq. (4),

    E ||I - G(Q(I))||^2 (their quadratic cost c) + lambda * D_Z(Q_Z, P_Z),

with P_Z = N(0, I) and the divergence between the codes' distribution Q_Z and P_Z measured by
* ``penalty: gan`` (their Alg. 1): an adversary D in the latent space (an MLP, their MNIST code: 4
  hidden layers of 512 ReLU units) trained after each autoencoder step to tell prior samples
  (label 1) from codes (label 0), lambda * [BCE(D(z_prior), 1) + BCE(D(Q(I)), 0)]; the
  autoencoder's penalty is the non-saturating BCE(D(Q(I)), 1) (their code's "trick");
* ``penalty: mmd`` (their Alg. 2): the unbiased estimate of MMD^2 with the inverse multiquadratic
  kernel k(x, y) = C / (C + ||x - y||^2), C = 2 d s for s in (.1, .2, .5, 1, 2, 5, 10), summed.

Units as their code's: the cost is 0.05 * sum of squared pixel differences on the [0, 1] scale
(their ``l2sq``), i.e. 0.05 / 4 of this project's [-1, 1] scale (``cost_weight``, default 0.0125; the
Coupled VAE's 2-D experiment sets 1, the plain squared distance). The defaults (params.yaml) are their
MNIST configuration (``configs.py``, written for WAE-MMD: lambda = 10, Adam with beta1 = 0.5, learning
rates 1e-3 and 5e-4 for the adversary, batch 100), carried over to WAE-GAN; the learning rates are
divided by 2 after epoch 30, by 10 after 50 and by 100 after 100 (their "manual" schedule).
Not reproduced: their encoder pre-training (200 steps matching the codes' mean and covariance to
the prior's) and their noise-adding encoder option. One iteration is one epoch; samples G(z),
z ~ N(0, I); codes Q(I).
"""

from __future__ import annotations

import torch
from torch import nn

from ..learning import make_optimizer, train_epoch
from .base import AutoencoderMethod, AutoencoderModel, StageRef, load_optimizer_state

IMAGE_COST_WEIGHT = 0.05 / 4  # their l2sq cost, 0.05 ||x - y||^2 on the [0, 1] scale, on the [-1, 1] scale
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def quadratic_cost(images: torch.Tensor, reconstructions: torch.Tensor, weight: float = IMAGE_COST_WEIGHT) -> torch.Tensor:
    """c(x, y) = weight ||x - y||^2, batch mean; the default weight is their 0.05 on the [0, 1] scale for images
    on the [-1, 1] scale (the ``cost_weight`` setting: 1 for the Coupled VAE's 2-D points)."""
    return weight * (images - reconstructions).flatten(1).pow(2).sum(1).mean()


def imq_mmd(codes: torch.Tensor, prior: torch.Tensor, scales=IMQ_SCALES) -> torch.Tensor:
    """Unbiased MMD^2 between two samples with the sum over ``scales`` of IMQ kernels C / (C + ||x - y||^2),
    C = 2 d scale (their Alg. 2 and code): within-sample means over the n (n - 1) distinct pairs, the
    cross term over all n m pairs."""
    n, m, d = len(codes), len(prior), codes.shape[1]
    if min(n, m) < 2:
        raise ValueError(f"the MMD needs at least two codes and two prior draws, got {n} and {m}: choose a "
                         "batch_size that does not leave a last batch of one image")
    within_codes, within_prior, across = (torch.cdist(a, b).square() for a, b in
                                          ((codes, codes), (prior, prior), (codes, prior)))
    total = codes.new_zeros(())
    for scale in scales:
        c = 2 * d * scale
        kernel = [c / (c + distances) for distances in (within_codes, within_prior, across)]
        total = total + ((kernel[0].sum() - kernel[0].diagonal().sum()) / (n * (n - 1))
                         + (kernel[1].sum() - kernel[1].diagonal().sum()) / (m * (m - 1))
                         - 2 * kernel[2].mean())
    return total


class LatentAdversary(nn.Module):
    """D of WAE-GAN: an MLP from the latent space to one logit, ``layers`` hidden layers of ``width`` ReLU units."""

    def __init__(self, latent_dim: int, layers: int, width: int):
        super().__init__()
        sizes = [latent_dim] + [width] * layers
        hidden = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        self.net = nn.Sequential(*hidden, nn.Linear(sizes[-1], 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


def adversary_loss(adversary, codes: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """BCE(D(z_prior), 1) + BCE(D(codes), 0), each a batch mean (their Alg. 1, line 5, as a loss)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    prior_logits, code_logits = adversary(prior), adversary(codes)
    return bce(prior_logits, torch.ones_like(prior_logits)) + bce(code_logits, torch.zeros_like(code_logits))


def gan_penalty(adversary, codes: torch.Tensor) -> torch.Tensor:
    """The autoencoder's non-saturating GAN penalty BCE(D(codes), 1) (their code)."""
    logits = adversary(codes)
    return nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def learning_rate_factor(epoch: int) -> float:
    """Their "manual" schedule: 1 up to epoch 30, then 1/2, from epoch 50 1/10, from epoch 100 1/100."""
    return 1.0 if epoch <= 30 else 0.5 if epoch <= 50 else 0.1 if epoch <= 100 else 0.01


class WAE(AutoencoderMethod):
    """One stage per iteration: an epoch of Adam on Eq. (4), with the adversary's step after each batch (GAN)."""

    STAGES = ("init", "learn")

    def stages(self, t):
        return ["init"] if t == 0 else ["learn"]

    def inputs(self, stage, t):
        return {} if stage == "init" else {"model": StageRef(t - 1, "init" if t == 1 else "learn")}

    def adversary(self):
        spec = self.settings["adversary"]
        network = LatentAdversary(self.settings["latent_dim"], spec["layers"], spec["width"])
        learning = spec["learning"]
        return network, make_optimizer(network, learning["lr"], learning["beta1"], learning["beta2"])

    def init(self, t, inputs, ctx):
        state, report = super().init(t, inputs, ctx)
        if self.settings["penalty"] == "gan":
            adversary, optimizer = self.adversary()
            state.update(adversary=adversary.state_dict(), adversary_optimizer=optimizer.state_dict())
        return state, report

    def learn(self, t, inputs, ctx):
        """One epoch: per batch, an Adam step of the autoencoder, then (GAN) one of the adversary."""
        s = self.settings
        encoder, decoder, optimizer = self.load(inputs["model"], ctx.device, with_optimizer=True)
        prior_rng = self.rng(t, "prior")
        gan = s["penalty"] == "gan"
        if gan:
            adversary, adversary_optimizer = self.adversary()
            adversary.load_state_dict(inputs["model"]["adversary"])
            adversary.to(ctx.device)
            load_optimizer_state(adversary_optimizer, inputs["model"], key="adversary_optimizer")
        factor = learning_rate_factor(t)
        for opt, learning in ((optimizer, s["learning"]), *([(adversary_optimizer, s["adversary"]["learning"])]
                                                             if gan else [])):
            for group in opt.param_groups:
                group["lr"] = learning["lr"] * factor

        def prior_like(codes):
            return torch.randn(codes.shape, generator=prior_rng).to(codes.device)

        last_codes = {}

        def batch_loss(images):
            codes = encoder(images)
            last_codes["batch"] = codes.detach()  # the adversary's step sees the codes of this batch
            cost = quadratic_cost(images, decoder(codes), s.get("cost_weight", IMAGE_COST_WEIGHT))
            penalty = gan_penalty(adversary, codes) if gan else imq_mmd(codes, prior_like(codes))
            return cost + s["penalty_weight"] * penalty, {"cost": cost, "penalty": penalty}

        def adversary_step(images):
            codes = last_codes["batch"]
            loss = s["penalty_weight"] * adversary_loss(adversary, codes, prior_like(codes))
            adversary_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            adversary_optimizer.step()
            return {"adversary_loss": loss}

        report = train_epoch(nn.ModuleList([encoder, decoder]), optimizer, ctx.images, batch_loss,
                             batch_size=s["batch_size"], rng=self.rng(t, "shuffle"), device=ctx.device,
                             progress=ctx.progress, desc=f"WAE-{s['penalty'].upper()} epoch",
                             after_step=adversary_step if gan else None)
        state = self.state(encoder, decoder, optimizer)
        if gan:
            state.update(adversary=adversary.state_dict(), adversary_optimizer=adversary_optimizer.state_dict())
        return state, {**report, "lr_factor": factor}

    def evaluation_points(self, t):
        return {"end": {"model": StageRef(t, "init" if t == 0 else "learn")}}

    def trained_model(self, states, device, protocol):
        encoder, decoder, _ = self.load(states["model"], device)
        return AutoencoderModel(self.settings, device, protocol, encoder, decoder)


METHOD = WAE
