"""Regularised autoencoder, RAE-L2 (Ghosh, Sajjadi, Vergari, Black, Schölkopf, ICLR 2020).

A deterministic autoencoder (encoder mirroring the Table 7 generator, decoder the Table 7
generator) trained on their Eq. 11 with the L2 decoder regulariser, then sampled through an
ex-post density estimate: a full-covariance Gaussian mixture (scikit-learn ``GaussianMixture``,
``mixture_components`` = 10 as in their code) fitted to the codes of the training images.

Loss and its units. Their code's loss is the per-pixel mean squared error of images on [0, 1]
plus beta times the per-dimension mean of z^2, plus Keras' ``l2(lambda)`` = lambda * sum(w^2) on the
decoder's transposed-convolution kernels (MNIST: beta = 1e-4, lambda = 1e-7). This project's
reconstruction term is ||I - g(z)||^2 / (2 sigma^2) summed over the D pixels of images on [-1, 1]:
D * 4 / (2 sigma^2) times theirs. Multiplying their whole loss by that factor keeps every ratio,
so in this project's scale the loss is

    ||I - g(z)||^2 / (2 sigma^2) + beta * 4D / (2 sigma^2 d) * ||z||^2 + lambda * 4D / (2 sigma^2) * sum(w^2),

with the settings ``embedding_weight`` = beta and ``decoder_weight_decay`` = lambda given in their
units (sigma = 0.3, the project's, fixes the scale; Adam is invariant to it up to its epsilon).
"""

from __future__ import annotations

import torch
from sklearn.mixture import GaussianMixture

from ..config import stage_rng
from ..learning import train_epoch
from .base import AutoencoderMethod, AutoencoderModel, StageRef, in_batches

PROJECT_SIGMA = 0.3  # the sigma that sets this project's loss scale (Eq. 5)


def rae_loss(encoder, decoder, images, embedding_weight: float, decoder_weight_decay: float):
    """Their Eq. 11 (RAE-L2) in this project's scale (module docstring); per-batch loss and its terms."""
    pixels, z = images[0].numel(), encoder(images)
    scale = 4 * pixels / (2 * PROJECT_SIGMA**2)  # this project's loss per unit of their per-pixel MSE
    reconstruction = (images - decoder(z)).flatten(1).pow(2).sum(1).mean() / (2 * PROJECT_SIGMA**2)
    embedding = scale * embedding_weight * z.pow(2).mean(1).mean()
    kernels = [m.weight for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    penalty = scale * decoder_weight_decay * sum(w.pow(2).sum() for w in kernels)
    return reconstruction + embedding + penalty, {"reconstruction": reconstruction, "embedding": embedding,
                                                  "decoder_penalty": penalty}


def fit_mixture(codes: torch.Tensor, components: int, seed: int) -> dict:
    """Full-covariance GMM of the codes (scikit-learn, EM with k-means initialisation) as tensors."""
    gmm = GaussianMixture(components, covariance_type="full", random_state=seed).fit(codes.double().numpy())
    return {"weights": torch.from_numpy(gmm.weights_), "means": torch.from_numpy(gmm.means_),
            "covariances": torch.from_numpy(gmm.covariances_)}


def sample_mixture(mixture: dict, n: int, rng: torch.Generator) -> torch.Tensor:
    """n draws of the mixture: a component by its weight, then mean + L eps with L L^T its covariance."""
    component = torch.multinomial(mixture["weights"], n, replacement=True, generator=rng)
    factors = torch.linalg.cholesky(mixture["covariances"])
    eps = torch.randn((n, mixture["means"].shape[1]), generator=rng, dtype=torch.float64)
    return (mixture["means"][component] + (factors[component] @ eps.unsqueeze(2)).squeeze(2)).float()


class RAE(AutoencoderMethod):
    """Per iteration an epoch of Adam (``learn``), then the ex-post density of the codes (``density``),
    so that the model after any iteration can be sampled (a few seconds of EM beside the epoch)."""

    STAGES = ("init", "learn", "density")
    SAMPLES_PRIOR_DRAWS = False  # samples decode draws of the ex-post GMM

    def stages(self, t):
        if t == 0:
            return ["init"]
        return ["learn", "density"]

    def inputs(self, stage, t):
        if stage == "init":
            return {}
        if stage == "learn":
            return {"model": StageRef(t - 1, "learn") if t > 1 else StageRef(0, "init")}
        return {"model": StageRef(t, "learn")}

    def learn(self, t, inputs, ctx):
        """One epoch of Adam on the RAE-L2 loss."""
        encoder, decoder, optimizer = self.load(inputs["model"], ctx.device, with_optimizer=True)
        s = self.settings

        def batch_loss(images):
            return rae_loss(encoder, decoder, images, s["embedding_weight"], s["decoder_weight_decay"])

        report = train_epoch(torch.nn.ModuleList([encoder, decoder]), optimizer, ctx.images, batch_loss,
                             batch_size=s["batch_size"], rng=self.rng(t, "shuffle"), device=ctx.device,
                             progress=ctx.progress, desc="RAE epoch")
        return self.state(encoder, decoder, optimizer), report

    def density(self, t, inputs, ctx):
        """The ex-post GMM of the training codes (eval-mode encoder)."""
        encoder, _, _ = self.load(inputs["model"], ctx.device)
        codes = in_batches(encoder.eval(), ctx.images, self.settings["batch_size"], ctx.device)
        mixture = fit_mixture(codes, self.settings["mixture_components"], self.seed)
        return mixture, {"components": len(mixture["weights"]),
                         "smallest_weight": float(mixture["weights"].min())}

    def evaluation_points(self, t):
        if t == 0:  # no density yet: samples from N(0, I)
            return {"end": {"model": StageRef(0, "init")}}
        return {"end": {"model": StageRef(t, "learn"), "density": StageRef(t, "density")}}

    def trained_model(self, states, device, protocol):
        encoder, decoder, _ = self.load(states["model"], device)
        return RAEModel(self.settings, device, protocol, encoder, decoder, states.get("density"))


class RAEModel(AutoencoderModel):
    """Codes: the encoder's output; samples: decoded draws of the ex-post GMM (N(0, I) before it is fitted)."""

    def __init__(self, settings, device, protocol, encoder, decoder, mixture: dict | None):
        super().__init__(settings, device, protocol, encoder, decoder)
        self.mixture = mixture

    def sample(self, n):
        if self.mixture is None:
            return super().sample(n)
        return self.decode(sample_mixture(self.mixture, n, stage_rng(self.settings["seed"], 0, "samples")))


METHOD = RAE
