"""Short-run MCMC inference with optimal transport correction (An, Xie, Li 2021, Alg. 1).

Iteration t: persistent K-step Langevin inference of z for every image (Eq. 7), on every L-th
iteration the OT correction z <- alpha T(z) + (1 - alpha) z (Alg. 2, Eq. 10), then L2 Adam
passes on the (z, I) pairs (Eq. 5). alpha = 0 is ABP (alternating back-propagation, Han et al.
2017) and runs no OT at all. Stages and their state files:

* ``init`` (t = 0): the Xavier-normal generator and its Adam state, the initial latents z ~ N(0, I)
  and the fixed prior sample {z_j} of Alg. 1 (the OT targets);
* ``infer``: the latents after K Langevin steps;
* ``correct`` (t % L == 0, alpha > 0): the corrected latents, the dual vector h (warm start of the
  next correction) and the assignment;
* ``learn``: the generator and its Adam state.
"""

from __future__ import annotations

import torch

from ..config import stage_rng
from ..langevin import (DivergenceError, LogPrior, Mask, chain_divergence, log_joint, short_run_inference,
                        standard_normal_log_prior)
from ..learning import learn, make_optimizer
from ..metrics import latent_frechet_distance
from ..models import build_generator, architecture_of, frozen_batchnorm_statistics
from ..ot import transport_correction
from .base import EvaluationProtocol, Method, StageRef, StateFile, TrainedModel, in_batches, load_optimizer_state


def new_generator(settings: dict) -> torch.nn.Module:
    """The Table 7 generator of the run's dataset, under the latent layers ``upper_latent_dims`` if the run has them."""
    return build_generator(architecture_of(settings["dataset"]), settings["latent_dim"],
                           settings.get("upper_latent_dims", ()))


def latent_size(settings: dict) -> int:
    """Length of the latent vector that inference infers: d, plus the upper latent layers of a hierarchy."""
    return settings["latent_dim"] + sum(settings.get("upper_latent_dims", ()))


def load_network(model: StateFile, network: torch.nn.Module, key: str, optimizer_key: str | None = None,
                 learning: dict | None = None):
    """``network`` with the weights ``model[key]``; with ``optimizer_key``, also its Adam optimiser (lr and betas
    of ``learning``) in the state ``model[optimizer_key]``, copied, since Adam steps its state in place and a
    stage must not change its inputs. A clear error naming the file when they do not fit."""
    try:
        network.load_state_dict(model[key])
        if optimizer_key is None:
            return network
        optimizer = make_optimizer(network, learning["lr"], learning["beta1"], learning["beta2"])
        load_optimizer_state(optimizer, model, optimizer_key)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"state file {model.path} holds no '{key}' (with '{optimizer_key}') that fits the "
                         f"configuration ({first}); delete it and rerun the same Snakemake command") from None
    return network, optimizer


def load_generator(model: StateFile, settings: dict, device, with_optimizer: bool = False):
    """The generator of a model state (and its Adam state for learning)."""
    generator = new_generator(settings).to(device)
    if not with_optimizer:
        return load_network(model, generator, "generator")
    return load_network(model, generator, "generator", "optimizer", settings["learning"])


def infer_latents(settings: dict, generator, images, z0, rng, device, progress=False, cuda_graph=False,
                  steps: int | None = None, log_prior: LogPrior = None, mask: Mask = None, batches_at_once: int = 1):
    """K-step short-run Langevin (Eq. 7) from ``z0`` with batch-norm batch statistics, as in learning;
    ``log_prior``: a prior other than N(0, I) (LEBM); ``mask``: the observed pixels of occluded images;
    ``batches_at_once``: batches through the generator together, batch norm per batch (the same result)."""
    langevin = settings["langevin"]
    generator.train()
    try:
        with frozen_batchnorm_statistics(generator):
            return short_run_inference(
                generator, images, z0, steps=steps or langevin["steps"], step_size=langevin["step_size"],
                sigma=settings["sigma"], batch_size=settings["batch_size"], rng=rng, device=device,
                progress=progress, backoff=langevin.get("backoff", 0), cuda_graph=cuda_graph, log_prior=log_prior,
                mask=mask, batches_at_once=batches_at_once,
            )
    except DivergenceError as exc:
        raise DivergenceError(f"{exc}; lower 'langevin.step_size' (now {langevin['step_size']}) in params.yaml "
                              "or the run's overrides, then rerun") from None


def latent_report(z: torch.Tensor) -> dict:
    """How far a latent population is from the prior N(0, I): Frechet distance of its Gaussian fit, mean norm."""
    return {"latent_fd": latent_frechet_distance(z), "latent_norm": z.norm(dim=1).mean().item()}


def learning_report(settings: dict, generator, optimizer, images, z, rng, device, progress, mask: Mask = None) -> dict:
    """L2 Adam passes on the (z, I) pairs (Alg. 1, line 13), checked for finiteness; ``mask``: the observed
    pixels of occluded images."""
    stats = learn(generator, optimizer, images, z, passes=settings["learning"]["passes"],
                  batch_size=settings["batch_size"], sigma=settings["sigma"], rng=rng, device=device,
                  progress=progress, mask=mask)
    losses = torch.tensor([stats.loss_first_pass, stats.loss_last_pass, stats.grad_norm])
    if not torch.isfinite(losses).all():  # the loss is >= 0, so one non-finite batch makes its pass non-finite
        raise FloatingPointError(
            f"the learning loss became non-finite (first pass {stats.loss_first_pass}, last pass "
            f"{stats.loss_last_pass}, mean gradient norm {stats.grad_norm}); lower 'learning.lr' (now "
            f"{settings['learning']['lr']}) or 'langevin.step_size' (now {settings['langevin']['step_size']}), "
            f"or raise 'sigma' (now {settings['sigma']})"
        )
    if not all(torch.isfinite(p).all() for p in generator.parameters()):
        raise FloatingPointError("generator parameters became non-finite")
    return vars(stats)


class ShortRunOT(Method):
    """Alg. 1: inference, correction every L-th iteration (alpha > 0), learning."""

    STAGES = ("init", "infer", "correct", "learn")
    SCORES_ANOMALIES = True

    def persistent_chains(self) -> bool:
        """Sec. 5.1: inference starts from the previous iteration's latents (else from fresh noise)."""
        return self.settings["langevin"]["persistent"]

    def log_prior(self, model: StateFile, device) -> LogPrior:
        """log p(z) of the model state ``model``; None: the fixed N(0, I) of Eq. (1)."""
        return None

    def corrects(self, t: int) -> bool:
        """Alg. 1, line 8: correct when t % L == 0; never when alpha == 0 (ABP)."""
        correction = self.settings["correction"]
        return t > 0 and correction["alpha"] > 0 and t % correction["every"] == 0

    def stages(self, t: int) -> list[str]:
        if t == 0:
            return ["init"]
        return ["infer", "correct", "learn"] if self.corrects(t) else ["infer", "learn"]

    def model_after(self, t: int) -> StageRef:
        return StageRef(t, "learn") if t > 0 else StageRef(0, "init")

    def latents_after(self, t: int) -> StageRef:
        """The latents iteration t hands on: corrected on correction iterations, else inferred."""
        if t == 0:
            return StageRef(0, "init")
        return StageRef(t, "correct" if self.corrects(t) else "infer")

    def inputs(self, stage: str, t: int) -> dict[str, StageRef]:
        if stage == "init":
            return {}
        if stage == "infer":
            inputs = {"model": self.model_after(t - 1)}
            if self.persistent_chains():
                inputs["latents"] = self.latents_after(t - 1)
            return inputs
        if stage == "correct":
            inputs = {"latents": StageRef(t, "infer"), "prior": StageRef(0, "init")}
            before = t - self.settings["correction"]["every"]
            if before > 0:  # the previous correction's dual vector h warm-starts Alg. 2
                inputs["previous"] = StageRef(before, "correct")
            return inputs
        if stage == "learn":
            return {"model": self.model_after(t - 1), "latents": self.latents_after(t)}
        raise ValueError(f"unknown stage {stage!r}")

    # -- the stages

    def init(self, t, inputs, ctx):
        """Xavier-normal generator (supp. Sec. C), latents z ~ N(0, I) and the prior sample {z_j} of Alg. 1."""
        torch.manual_seed(self.rng(0, "model").initial_seed())
        generator = new_generator(self.settings)
        learning = self.settings["learning"]
        optimizer = make_optimizer(generator, learning["lr"], learning["beta1"], learning["beta2"])
        shape = (len(ctx.images), latent_size(self.settings))
        state = {
            "generator": generator.state_dict(), "optimizer": optimizer.state_dict(),
            "latents": torch.randn(shape, generator=self.rng(0, "latents")),
            "prior": torch.randn(shape, generator=self.rng(0, "prior")),
        }
        return state, {"images": shape[0], "parameters": sum(p.numel() for p in generator.parameters())}

    def infer(self, t, inputs, ctx):
        """K-step short-run Langevin (Eq. 7) for every image, persistent or noise-initialised."""
        n, d = len(ctx.images), latent_size(self.settings)
        generator = load_generator(inputs["model"], self.settings, ctx.device)
        log_prior = self.log_prior(inputs["model"], ctx.device)
        if self.persistent_chains():
            z0 = inputs["latents"].latents("latents", n, d)
        else:
            z0 = torch.randn((n, d), generator=self.rng(t, "init"))
        z, stats = infer_latents(self.settings, generator, ctx.images, z0, self.rng(t, "langevin"), ctx.device,
                                 ctx.progress, ctx.cuda_graph, log_prior=log_prior, mask=ctx.mask,
                                 batches_at_once=ctx.batches_at_once)
        report = {k: v for k, v in vars(stats).items() if v is not None}  # "backoff" only when it fired
        # log p = -||I - g(z)||^2 / (2 sigma^2) + log p(z) (Eq. 5): the reconstruction error follows
        with torch.no_grad():
            log_prior_end = (log_prior or standard_normal_log_prior)(z.to(ctx.device)).mean().item()
        squared_error = -2 * self.settings["sigma"] ** 2 * (stats.log_joint_end - log_prior_end)
        # per observed pixel; an (N, 1, H, W) mask counts a pixel of every channel
        pixels = ctx.images[0].numel() if ctx.mask is None else ctx.mask.mean(0).sum().item() * ctx.images.shape[1]
        return {"latents": z}, {**report, **latent_report(z), "mse": squared_error / pixels / 4}

    def correct(self, t, inputs, ctx):
        """OT assignment of the inferred latents to the prior sample (Alg. 2), then Eq. (10)."""
        d, correction = latent_size(self.settings), self.settings["correction"]
        z = inputs["latents"].latents("latents", None, d)
        targets = inputs["prior"].latents("prior", len(z), d)
        init_h = None
        if "previous" in inputs:
            init_h = inputs["previous"].get("h")
            if not isinstance(init_h, torch.Tensor) or init_h.shape != (len(z),):
                raise ValueError(f"previous correction {inputs['previous'].path} holds no dual vector 'h' of "
                                 f"length {len(z)}; delete it and rerun the same Snakemake command")
        corrected, result = transport_correction(
            z, targets, correction["alpha"], eps=correction["eps"], max_iter=correction["max_iter"],
            repair=correction["repair"], init_h=init_h, device=ctx.device, seed=self.seed + t,
            progress=ctx.progress,
        )
        state = {"latents": corrected, "h": result.h.cpu(), "target_index": result.target_index.cpu()}
        after = {f"{key}_after": value for key, value in latent_report(corrected).items()}
        return state, {"alpha": correction["alpha"], **result.summary(), **latent_report(z), **after}

    def learn(self, t, inputs, ctx):
        """L2 passes of Adam on the (z, I) pairs (Alg. 1, line 13)."""
        generator, optimizer = load_generator(inputs["model"], self.settings, ctx.device, with_optimizer=True)
        z = inputs["latents"].latents("latents", len(ctx.images), latent_size(self.settings))
        torch.manual_seed(self.rng(t, "torch").initial_seed())
        report = learning_report(self.settings, generator, optimizer, ctx.images, z, self.rng(t, "shuffle"),
                                 ctx.device, ctx.progress, ctx.mask)
        return {"generator": generator.state_dict(), "optimizer": optimizer.state_dict()}, report

    # -- cost
    def stage_work(self, stage, n, decoder_flops):
        """A Langevin step (Eq. 7) is a forward and a backward pass to z (2 forward passes' worth); a learning
        pass also computes the weights' gradients (3); the correction solves an OT problem of size n."""
        if stage == "infer":
            return 2 * self.settings["langevin"]["steps"] * decoder_flops * n, 0
        if stage == "learn":
            return 3 * self.settings["learning"]["passes"] * decoder_flops * n, 0
        return 0.0, (n if stage == "correct" else 0)

    def reconstruction_flops(self, n_train, n_test, decoder_flops, test_steps):
        """Noise-initialised short-run inference on the test images, and the learned latents decoded."""
        return 2 * test_steps * decoder_flops * n_test + decoder_flops * n_train

    # -- evaluation

    def evaluation_points(self, t: int) -> dict[str, dict[str, StageRef]]:
        """``end``: the generator after iteration t with the latents its inference produced (not the
        alpha-mixed ones). On a correction iteration also ``before_correction`` (the previous generator,
        the latents about to be corrected) and ``after_correction`` (the generator that learned from the
        corrected latents, and those latents) - Table 4's "before" and "after"."""
        inferred = StageRef(t, "infer") if t > 0 else StageRef(0, "init")
        points = {"end": {"model": self.model_after(t), "latents": inferred}}
        if self.corrects(t):
            points["before_correction"] = {"model": self.model_after(t - 1), "latents": inferred}
            points["after_correction"] = {"model": StageRef(t, "learn"), "latents": StageRef(t, "correct")}
        return points

    def trained_model(self, states, device, protocol):
        return GeneratorModel(self.settings, device, protocol, load_generator(states["model"], self.settings, device),
                              states["latents"], self.log_prior(states["model"], device))


class GeneratorModel(TrainedModel):
    """A generator learned without an encoder: latents of new images by noise-initialised short-run
    Langevin (Eq. 7, ``protocol.langevin_steps`` steps), the anomaly score -log p(I, z) (Eq. 5, Sec. 6.3),
    both under the model's prior (``log_prior``; None: N(0, I))."""

    def __init__(self, settings, device, protocol: EvaluationProtocol, generator, latents: StateFile,
                 log_prior: LogPrior = None):
        super().__init__(settings, device, protocol)
        self.latent_dim = latent_size(settings)
        self.generator = generator.eval()  # batch norm with its running statistics throughout
        self.latents = latents
        self.log_prior = log_prior

    def decode(self, z):
        return in_batches(self.generator, z, self.protocol.batch_size, self.device)

    def langevin_latents(self, images, stream: str):
        """Noise-initialised short-run Langevin with the run's step size and sigma (eval-mode generator)."""
        settings, steps = self.settings, self.protocol.langevin_steps
        z0 = torch.randn((len(images), self.latent_dim), generator=self.rng(f"{stream}-init"))
        z, _ = short_run_inference(
            self.generator, images, z0, steps=steps, step_size=settings["langevin"]["step_size"],
            sigma=settings["sigma"], batch_size=self.protocol.batch_size, rng=self.rng(stream), device=self.device,
            log_prior=self.log_prior,
        )
        return z

    def rng(self, stream: str):
        return stage_rng(self.settings["seed"], 0, stream)

    def encode(self, images):
        return self.langevin_latents(images, "test-langevin")

    def latent_population(self, train_images):
        return self.latents.latents("latents", len(train_images), self.latent_dim)

    def chain_divergence(self, images, latents, *, step_size, steps, perturbation):
        """Two chains as in training inference (batch-norm batch statistics, running ones untouched), one batch."""
        self.generator.train()
        try:
            with frozen_batchnorm_statistics(self.generator):
                return chain_divergence(self.generator, images.to(self.device), latents.to(self.device),
                                        steps=steps, step_size=step_size, sigma=self.settings["sigma"],
                                        perturbation=perturbation, rng=self.rng("chain-stability"),
                                        log_prior=self.log_prior)
        finally:
            self.generator.eval()

    def anomaly_scores(self, images):
        z = self.langevin_latents(images, "anomaly-langevin")
        batch = self.protocol.batch_size
        with torch.no_grad():
            return torch.cat([
                -log_joint(self.generator, z[i:i + batch].to(self.device), images[i:i + batch].to(self.device),
                           self.settings["sigma"], self.log_prior).cpu()
                for i in range(0, len(images), batch)
            ])


METHOD = ShortRunOT
