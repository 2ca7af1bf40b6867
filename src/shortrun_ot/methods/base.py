"""What every method provides: its stages, the state files they exchange, and what evaluation asks.

Training is a sequence of iterations. Iteration 0 has one stage, ``init``; iteration t >= 1 runs
``Method.stages(t)`` in order. Each stage reads the state files of earlier stages
(``Method.inputs``: role -> :class:`StageRef`) and writes one state file of its own, a dict of
tensors, plus a JSON report; ``shortrun_ot.pipeline`` does the file work (atomic writes, SHA-256
manifests, blocks of iterations in one process), ``shortrun_ot.layout`` names the files and the
Snakemake rules turn every stage into a cached job. A method never touches files.

After training, ``Method.evaluation_points(t)`` says which state files make up the model at
iteration t (``"end"`` at least), and ``Method.trained_model`` turns them into a
:class:`TrainedModel`, the one interface the evaluation (MSE, FID, OT cost, anomaly AUPRC) uses
for every system.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import stage_rng
from ..learning import make_optimizer
from ..models import architecture_of, build_encoder, build_generator


@dataclass(frozen=True)
class StageRef:
    """The state file written by ``stage`` in iteration ``iteration``."""

    iteration: int
    stage: str


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, key: str = "optimizer") -> None:
    """Load ``state[key]`` into ``optimizer`` as a copy: Adam steps its state tensors in place (load_state_dict
    keeps them), and a stage must not change its inputs."""
    optimizer.load_state_dict(copy.deepcopy(state[key]))


class StateFile(dict):
    """A loaded state file: its dict of tensors, and ``path``, for error messages."""

    def __init__(self, state: dict, path: str = "<memory>"):
        super().__init__(state)
        self.path = str(path)

    def latents(self, key: str, n: int | None, dim: int) -> torch.Tensor:
        """The finite (n, dim) tensor under ``key``; a clear error naming the file otherwise."""
        remedy = f"delete {self.path} and rerun the same Snakemake command (it recomputes the file)"
        latents = self.get(key)
        if not isinstance(latents, torch.Tensor) or latents.dim() != 2:
            raise ValueError(f"latents file {self.path} holds no (n, d) tensor under {key!r}; {remedy}")
        if n is not None and latents.shape[0] != n:
            raise ValueError(
                f"latents file {self.path} holds {latents.shape[0]} latents but the dataset has {n} images; the "
                f"file belongs to other 'dataset'/'train_images' settings: {remedy}, or fix the configuration"
            )
        if latents.shape[1] != dim:
            raise ValueError(f"latents file {self.path} holds {latents.shape[1]}-dimensional latents but the run's "
                             f"latent vector has {dim} entries ('latent_dim' plus any 'upper_latent_dims'); {remedy}")
        if not torch.isfinite(latents).all():
            raise ValueError(f"latents file {self.path} holds non-finite values; {remedy}")
        return latents


@dataclass
class StageContext:
    """What a stage computes on: the run's training images ([-1, 1], CPU) and where to compute; ``mask``:
    for a run that learns from occluded images, 1 on each image's observed pixels, 0 on its missing ones;
    ``batches_at_once``: batches of a Langevin sweep through the generator together (``compute.batches_at_once``)."""

    images: torch.Tensor
    device: torch.device
    progress: bool = False
    cuda_graph: bool = False
    mask: torch.Tensor | None = None
    batches_at_once: int = 1


@dataclass(frozen=True)
class EvaluationProtocol:
    """Settings of the shared evaluation that a trained model needs (the same for every method)."""

    batch_size: int
    langevin_steps: int  # K of noise-initialised short-run inference (MCMC methods' encode/anomaly score)
    # the run's training images, for a model whose posterior is defined through them (the Coupled VAE's dual
    # variables, one per training image); None where no such method is evaluated
    train_images: torch.Tensor | None = None


class Method:
    """One training algorithm, as a schedule of stages over the iterations.

    Subclasses set ``STAGES`` (every stage name they use, ``init`` first), and define one method
    per stage, named after it, ``def infer(self, t, inputs, ctx) -> (state, report)``, where
    ``inputs`` maps the roles of ``self.inputs(stage, t)`` to their loaded :class:`StateFile`.
    A stage must not modify its inputs.
    """

    STAGES: ClassVar[tuple[str, ...]] = ("init",)
    SCORES_ANOMALIES: ClassVar[bool] = False  # whether its trained model defines ``anomaly_scores`` (Table 2)
    # whether its samples decode ``generative_latents`` of N(0, I) draws (so interpolations between those
    # latents are its own: AE-OT's Fig. 5); False where sampling uses another distribution (a GMM, a second
    # VAE, an energy-based prior)
    SAMPLES_PRIOR_DRAWS: ClassVar[bool] = True

    def __init__(self, settings: dict):
        self.settings = settings
        self.seed = settings["seed"]
        # T: known where the whole run is planned (the Snakefile); a stage computes one iteration
        # from a run's config.json, which leaves T out (``config.stage_settings``), and needs none.
        self.iterations = settings.get("iterations")

    # -- the schedule
    def stages(self, t: int) -> list[str]:
        """The stages of iteration t, in order (``["init"]`` for t = 0)."""
        raise NotImplementedError

    def inputs(self, stage: str, t: int) -> dict[str, StageRef]:
        """Role -> the state file ``stage`` of iteration t reads."""
        raise NotImplementedError

    def run(self, stage: str, t: int, inputs: dict[str, StateFile], ctx: StageContext) -> tuple[dict, dict]:
        """Compute one stage: (its state, a JSON-able report)."""
        if stage not in self.stages(t):
            raise ValueError(f"method {self.settings['method']!r} has no stage {stage!r} in iteration {t} "
                             f"(its stages there: {', '.join(self.stages(t))})")
        return getattr(self, stage)(t, inputs, ctx)

    # -- evaluation
    def evaluation_points(self, t: int) -> dict[str, dict[str, StageRef]]:
        """Named models at iteration t: role -> state file; ``"end"`` is the model after iteration t."""
        raise NotImplementedError

    def trained_model(self, states: dict[str, StateFile], device: torch.device,
                      protocol: EvaluationProtocol) -> "TrainedModel":
        raise NotImplementedError

    # -- cost (shortrun_ot.cost: a plan's estimate before its first job)
    def stage_work(self, stage: str, n: int, decoder_flops: float) -> tuple[float, int]:
        """(FLOPs, size of the exact OT problem it solves) of ``stage`` over n training images, where one
        image's forward pass through the decoder costs ``decoder_flops``. By default a stage costs its
        start-up only (``init``, and stages that fit or encode without training)."""
        return 0.0, 0

    def reconstruction_flops(self, n_train: int, n_test: int, decoder_flops: float, test_steps: int) -> float:
        """FLOPs of the evaluation's reconstructions (Table 1's MSE, the latents for its samples): by default an
        encoder of about the decoder's size and the decoder over the training and test images."""
        return 3 * decoder_flops * (n_train + n_test)

    # -- helpers
    def rng(self, t: int, name: str) -> torch.Generator:
        """The run's random stream ``name`` of iteration t (``config.stage_rng``)."""
        return stage_rng(self.seed, t, name)

    def previous(self, t: int) -> StageRef:
        """The state file that ends iteration t - 1 (its last stage)."""
        return StageRef(t - 1, self.stages(t - 1)[-1])


class AutoencoderMethod(Method):
    """A method that trains an encoder (mirroring the Table 7 generator) and the Table 7 generator as
    its decoder with one Adam optimiser; its state files hold ``encoder``, ``decoder``, ``optimizer``."""

    ENCODER_OUTPUTS_PER_LATENT: ClassVar[int] = 1  # a VAE's encoder gives a mean and a log-variance: 2

    def networks(self):
        architecture, d = architecture_of(self.settings["dataset"]), self.settings["latent_dim"]
        encoder = build_encoder(architecture, self.ENCODER_OUTPUTS_PER_LATENT * d)
        decoder = build_generator(architecture, d)
        learning = self.settings["learning"]
        optimizer = make_optimizer(torch.nn.ModuleList([encoder, decoder]), learning["lr"], learning["beta1"],
                                   learning["beta2"])
        return encoder, decoder, optimizer

    def load(self, model: StateFile, device, with_optimizer: bool = False):
        encoder, decoder, optimizer = self.networks()
        encoder.load_state_dict(model["encoder"]), decoder.load_state_dict(model["decoder"])
        encoder.to(device), decoder.to(device)
        if with_optimizer:
            load_optimizer_state(optimizer, model)
        return encoder, decoder, optimizer

    @staticmethod
    def state(encoder, decoder, optimizer) -> dict:
        return {"encoder": encoder.state_dict(), "decoder": decoder.state_dict(), "optimizer": optimizer.state_dict()}

    def stage_work(self, stage, n, decoder_flops):
        """An epoch of ``learn``: an encoder and a decoder, forward and backward (6 forward passes' worth)."""
        return (6 * decoder_flops * n if stage == "learn" else 0.0), 0

    def init(self, t, inputs, ctx):
        """Xavier-normal encoder and decoder (as the short-run method's generator) and a fresh Adam."""
        torch.manual_seed(self.rng(0, "model").initial_seed())
        encoder, decoder, optimizer = self.networks()
        return self.state(encoder, decoder, optimizer), {
            "parameters": sum(p.numel() for m in (encoder, decoder) for p in m.parameters())}


def in_batches(function, tensor: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """``function`` applied to ``tensor`` batch by batch on ``device``, without gradients; CPU result."""
    with torch.no_grad():
        return torch.cat([function(tensor[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(tensor), batch_size)])


class TrainedModel:
    """A trained system as the evaluation sees it: the same questions for every method.

    ``decode`` maps latents to images, ``sample`` draws images for the FID, ``encode`` gives the
    latents that reconstruct given images, ``latent_population`` the latents of the training
    images (reconstruction MSE on the training set, OT cost to the prior), ``anomaly_scores`` a
    per-image score that is high for anomalies (Table 2). Images are on the [-1, 1] scale, CPU.
    """

    def __init__(self, settings: dict, device: torch.device, protocol: EvaluationProtocol):
        self.settings, self.device, self.protocol = settings, device, protocol
        self.latent_dim = settings["latent_dim"]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prior_latents(self, n: int) -> torch.Tensor:
        """n latents z ~ N(0, I) of the evaluation's fixed stream (the same for every method)."""
        return torch.randn((n, self.latent_dim), generator=stage_rng(self.settings["seed"], 0, "samples"))

    def generative_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The latents that generation decodes for prior draws ``z``: ``z`` itself, unless the method maps them
        (AE-OT: z + grad D(z), Eq. 19). Interpolations (AE-OT's Fig. 5) run between such latents."""
        return z

    def sample(self, n: int) -> torch.Tensor:
        """n generated images; by default g applied to the generative latents of z ~ N(0, I)."""
        return self.decode(self.generative_latents(self.prior_latents(n)))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latent_population(self, train_images: torch.Tensor) -> torch.Tensor:
        """The latents of the training images; by default ``encode``."""
        return self.encode(train_images)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def posterior_samples(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One draw z ~ q(z | I) per image, randomness from ``generator`` (the aggregate posterior of the
        Coupled VAE's Figs. 1 and 3 draws one per training image); by default the code ``encode``: a
        deterministic encoder's posterior is a point."""
        return self.encode(images)

    def anomaly_scores(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def chain_divergence(self, images: torch.Tensor, latents: torch.Tensor, *, step_size: float, steps: int,
                         perturbation: float) -> torch.Tensor:
        """Distances (steps, n) between two inference chains from ``latents`` and a perturbed copy,
        driven by the same noise (``langevin.chain_divergence``); only for methods that infer by Langevin."""
        raise NotImplementedError(f"method {self.settings['method']!r} infers no latents by Langevin dynamics, "
                                  "so its chains have no stability to measure")


class AutoencoderModel(TrainedModel):
    """A system with an encoder: the code of an image is the encoder's output (its first d outputs;
    for a VAE the posterior mean), images are decoded by the decoder (both in eval mode)."""

    def __init__(self, settings, device, protocol, encoder: torch.nn.Module, decoder: torch.nn.Module):
        super().__init__(settings, device, protocol)
        self.encoder, self.decoder = encoder.eval(), decoder.eval()

    def encoder_outputs(self, images: torch.Tensor) -> torch.Tensor:
        return in_batches(self.encoder, images, self.protocol.batch_size, self.device)

    def encode(self, images):
        return self.encoder_outputs(images)[:, : self.latent_dim]

    def decode(self, z):
        return in_batches(self.decoder, z, self.protocol.batch_size, self.device)
