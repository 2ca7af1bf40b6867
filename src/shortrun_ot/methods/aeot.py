"""AE-OT (Liu, Guo, Lei, Shu, Yau, Samaras, Gu, "Latent Space Optimal Transport for Generative Models").

(a) A plain autoencoder (encoder mirroring the Table 7 generator, decoder the Table 7 generator),
    trained on the reconstruction error alone, then frozen; data codes z_y = Enc(I).
(b) The Kantorovich potential of the OT map from N(0, I) to the codes (Sec. 3.1.2, Alg. 1): per
    step, m codes and m prior samples z_x; the discrete dual of Eq. (14) solved exactly; the matching
    sigma of Eq. (17); one Adam step on the network D with the regression loss of Eq. (18).
(c) Generation, Eq. (19) (Alg. 2): z_y = z_x + grad D(z_x), image = Dec(z_y).

Solver. With uniform weights 1/m the LP of Eq. (14) is the assignment problem, which
``shortrun_ot.ot.assign`` solves exactly with certified dual potentials h (each source x_i takes the
target maximising <x_i, y_j> + h_j). With c_ij = 1/2 ||x_i - y_j||^2 the LP's duals are
psi_j = h_j + 1/2 ||y_j||^2 and phi_i = max_j (psi_j - c_ij) (the c-transform), which satisfy
psi_j - phi_i <= c_ij with equality on the matching, so strong duality holds (tested against
scipy's HiGHS dual simplex). H_i = phi_i, H_j = psi_j in the paper's notation.

The constant. H is defined up to a common constant, and each step's LP picks its own. The value
term of Eq. (18) therefore regresses D onto H up to the constant that fits best,
(1/m) sum_i (D(z_x,i) - H_i - c)^2 with c = mean_i (D(z_x,i) - H_i); where D already agrees with
H on average (c = 0) this is Eq. (18) exactly. Without it the regression target would jump by an
arbitrary constant every step.

Stages: ``init`` (autoencoder, D, both Adams), ``autoencoder`` (iterations 1..T1: an epoch of the
autoencoder), ``codes`` (iteration T1 + 1: the codes of the training images, eval mode),
``potential`` (iterations T1 + 1..T: ``potential_steps`` steps of Alg. 1 each).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..config import ConfigError
from ..learning import make_optimizer, train_epoch
from ..ot import assign
from .base import AutoencoderMethod, AutoencoderModel, StageRef, in_batches, load_optimizer_state


class PotentialMLP(nn.Module):
    """D: R^d -> R, an MLP of ``layers`` linear layers (``layers`` - 1 hidden ones of ``width`` units)
    with LeakyReLU of slope ``slope`` (0: ReLU). Paper: 6 layers of 512, slope 0.2 (MNIST, CelebA);
    4 layers of 512 with ReLU (eight Gaussians)."""

    def __init__(self, dim: int, layers: int, width: int, slope: float):
        super().__init__()
        modules, size = [], dim
        for _ in range(layers - 1):
            modules += [nn.Linear(size, width), nn.LeakyReLU(slope)]
            size = width
        modules.append(nn.Linear(size, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, z):
        return self.net(z).squeeze(1)


def kantorovich_duals(source: torch.Tensor, target: torch.Tensor):
    """The optimal duals of Eq. (14) for m sources x_i and m targets y_j, c_ij = 1/2 ||x_i - y_j||^2.

    Returns (phi, psi, matching), float64: phi_i = H_i of the sources, psi_j = H_j of the targets
    (psi_j - phi_i <= c_ij for all pairs, equality on the optimal matching), and the matching sigma of
    Eq. (17). Optimal duals at a vertex of the LP make 2m - 1 constraints tight, so the argmin of
    Eq. (17) can tie between targets; sigma is the optimal assignment, an argmin for every source that
    is also one-to-one.
    """
    result = assign(source, target)
    x, y = source.double(), target.double()
    psi = result.h + 0.5 * y.square().sum(1)
    phi = (psi.unsqueeze(0) - 0.5 * torch.cdist(x, y).square()).max(1).values  # the c-transform
    return phi, psi, result.target_index


def potential_gradient(potential, z: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """grad_z D(z) for each row of z (D maps (n, d) to (n,))."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(potential(z).sum(), z, create_graph=create_graph)
    return gradient


def transport(potential, z_x: torch.Tensor) -> torch.Tensor:
    """The OT map of Eq. (19): z_y = z_x + grad D(z_x)."""
    return z_x + potential_gradient(potential, z_x)


def potential_loss(potential, z_x: torch.Tensor, phi: torch.Tensor, matched_codes: torch.Tensor,
                   gradient_weight: float):
    """Eq. (18): (1/m) sum_i (D(z_x,i) - H_i - c)^2 + (lambda/m) sum_i (||grad D(z_x,i)|| - ||z_y,sigma(i) - z_x,i||)^2,
    with c the best constant (module docstring); returns the loss and its two terms."""
    z = z_x.detach().requires_grad_(True)
    values = potential(z)
    residual = values - phi.to(values.dtype)
    value_term = (residual - residual.mean()).square().mean()
    if gradient_weight == 0:
        return value_term, {"value": value_term, "gradient": torch.zeros(())}
    (gradient,) = torch.autograd.grad(values.sum(), z, create_graph=True)
    displacement = (matched_codes - z_x).norm(dim=1)
    gradient_term = (gradient.norm(dim=1) - displacement).square().mean()
    return value_term + gradient_weight * gradient_term, {"value": value_term, "gradient": gradient_term}


def potential_step(potential, optimizer, codes: torch.Tensor, batch: int, gradient_weight: float,
                   rng: torch.Generator, device) -> dict[str, float]:
    """One iteration of Alg. 1: m codes, m prior samples, the LP of Eq. (14), an Adam step on Eq. (18)."""
    z_y = codes[torch.randperm(len(codes), generator=rng)[:batch]]
    z_x = torch.randn(z_y.shape, generator=rng)
    phi, _, matching = kantorovich_duals(z_x, z_y)
    loss, terms = potential_loss(potential, z_x.to(device), phi.to(device), z_y[matching].to(device),
                                 gradient_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach()), **{name: float(value.detach()) for name, value in terms.items()},
            "ot_cost": float(0.5 * (z_x - z_y[matching]).square().sum(1).mean())}


def eight_gaussians(points_per_mode: int, radius: float, generator: torch.Generator):
    """The toy target of Sec. 4.1: unit-variance Gaussians centred at radius * (cos k pi/4, sin k pi/4),
    ``points_per_mode`` points each; returns (points, modes)."""
    angles = torch.arange(8, dtype=torch.float64) * torch.pi / 4
    modes = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    points = modes.repeat_interleave(points_per_mode, 0) + torch.randn(8 * points_per_mode, 2, generator=generator,
                                                                       dtype=torch.float64)
    return points.float(), modes.float()


def fit_point_potential(source: torch.Tensor, target: torch.Tensor, network: nn.Module, *, steps: int, lr: float,
                        betas: tuple[float, float], gradient_weight: float, snapshots=(), on_snapshot=None):
    """Alg. 1 on fixed point sets (the toy: its 256 source and 256 target points are the whole data, so
    every step's LP is the same and is solved once): ``steps`` Adam steps on Eq. (18); after each step
    in ``snapshots``, ``on_snapshot(step, network)``. Returns the final loss terms."""
    phi, _, matching = kantorovich_duals(source, target)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr, betas=betas)
    for step in range(1, steps + 1):
        loss, terms = potential_loss(network, source, phi.float(), target[matching], gradient_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in snapshots:
            on_snapshot(step, network)
    return {name: float(value.detach()) for name, value in {"loss": loss, **terms}.items()}


def eight_gaussians_experiment(settings: dict, grid_points: int = 121) -> dict:
    """Sec. 4.1, Fig. 2: D learned by Alg. 1 to map 8 x ``points_per_mode`` N(0, I) points onto the eight
    Gaussians (``figures.eight_gaussians`` of the configuration). After each snapshot's number of
    iterations: the mapped points z + grad D(z) (Eq. 19), D on a square grid, and the share of mapped
    points within 3 sigma = 3 of their nearest mode with the modes covered (a number the paper lacks).

    Returns ``source``, ``target``, ``panels`` (title -> mapped points and grid), ``coverage`` (one row
    per snapshot), ``final`` (the last loss terms) and ``seconds`` (of Alg. 1)."""
    generator = torch.Generator().manual_seed(settings["seed"])
    target, modes = eight_gaussians(settings["points_per_mode"], settings["radius"], generator)
    source = torch.randn(len(target), 2, generator=generator)
    torch.manual_seed(settings["seed"])
    net = settings["potential"]
    network = PotentialMLP(2, net["layers"], net["width"], net["slope"])
    extent = settings["radius"] + 4.0
    axis = torch.linspace(-extent, extent, grid_points)
    x, y = torch.meshgrid(axis, axis, indexing="xy")
    panels, coverage = {}, []

    def snapshot(step, network):
        mapped = transport(network, source).detach()
        with torch.no_grad():
            values = network(torch.stack([x.flatten(), y.flatten()], 1)).reshape(x.shape)
        panels[f"after {step:,} iteration{'s' if step > 1 else ''}"] = {"mapped": mapped, "grid": (x, y, values)}
        coverage.append({"iteration": step, **mode_coverage(mapped, modes, radius=3.0)})

    started = time.perf_counter()
    final = fit_point_potential(source, target, network, steps=max(settings["snapshots"]), lr=net["learning"]["lr"],
                                betas=(net["learning"]["beta1"], net["learning"]["beta2"]),
                                gradient_weight=net["gradient_weight"], snapshots=set(settings["snapshots"]),
                                on_snapshot=snapshot)
    return {"source": source, "target": target, "panels": panels, "coverage": coverage, "final": final,
            "seconds": time.perf_counter() - started}


def mode_coverage(points: torch.Tensor, modes: torch.Tensor, radius: float) -> dict:
    """Share of ``points`` within ``radius`` of their nearest mode, and the modes that hold at least one."""
    distance, nearest = torch.cdist(points, modes).min(1)
    near = distance <= radius
    counts = torch.bincount(nearest[near], minlength=len(modes))
    return {"near_fraction": float(near.double().mean()), "modes_covered": int((counts > 0).sum()),
            "points_per_mode": counts.tolist()}


class AEOT(AutoencoderMethod):
    STAGES = ("init", "autoencoder", "codes", "potential")

    def __init__(self, settings):
        super().__init__(settings)
        self.autoencoder_iterations = settings["autoencoder_iterations"]
        if self.iterations is not None and self.autoencoder_iterations >= self.iterations:
            raise ConfigError(f"config key 'autoencoder_iterations': {self.autoencoder_iterations} leaves no "
                              f"iteration to learn the potential (iterations is {self.iterations})")

    def stages(self, t):
        if t == 0:
            return ["init"]
        if t <= self.autoencoder_iterations:
            return ["autoencoder"]
        return ["codes", "potential"] if t == self.autoencoder_iterations + 1 else ["potential"]

    def inputs(self, stage, t):
        first_potential = self.autoencoder_iterations + 1
        if stage == "init":
            return {}
        if stage == "autoencoder":
            return {"model": self.previous(t)}
        if stage == "codes":
            return {"model": StageRef(self.autoencoder_iterations, "autoencoder")}
        previous = StageRef(t - 1, "potential") if t > first_potential else StageRef(0, "init")
        return {"codes": StageRef(first_potential, "codes"), "potential": previous}

    # -- the potential network D
    def potential_network(self):
        p = self.settings["potential"]
        return PotentialMLP(self.settings["latent_dim"], p["layers"], p["width"], p["slope"])

    def potential_optimizer(self, network):
        learning = self.settings["potential"]["learning"]
        return make_optimizer(network, learning["lr"], learning["beta1"], learning["beta2"])

    def load_potential(self, state, device, with_optimizer=False):
        network = self.potential_network()
        network.load_state_dict(state["potential"])
        network.to(device)
        if not with_optimizer:
            return network
        optimizer = self.potential_optimizer(network)
        load_optimizer_state(optimizer, state, "potential_optimizer")
        return network, optimizer

    # -- stages
    def init(self, t, inputs, ctx):
        """The autoencoder (``AutoencoderMethod.init``) and D, each with a fresh Adam."""
        state, report = super().init(t, inputs, ctx)
        torch.manual_seed(self.rng(0, "potential").initial_seed())
        network = self.potential_network()
        state.update(potential=network.state_dict(), potential_optimizer=self.potential_optimizer(network).state_dict())
        return state, {**report, "potential_parameters": sum(p.numel() for p in network.parameters())}

    def autoencoder(self, t, inputs, ctx):
        """One epoch of Adam on the batch mean of ||I - Dec(Enc(I))||^2 (a vanilla autoencoder)."""
        encoder, decoder, optimizer = self.load(inputs["model"], ctx.device, with_optimizer=True)

        def batch_loss(images):
            return (images - decoder(encoder(images))).flatten(1).square().sum(1).mean(), {}

        report = train_epoch(nn.ModuleList([encoder, decoder]), optimizer, ctx.images, batch_loss,
                             batch_size=self.settings["batch_size"], rng=self.rng(t, "shuffle"), device=ctx.device,
                             progress=ctx.progress, desc="autoencoder epoch")
        return self.state(encoder, decoder, optimizer), report

    def codes(self, t, inputs, ctx):
        """z_y = Enc(I) for every training image (the frozen encoder, eval mode)."""
        encoder, _, _ = self.load(inputs["model"], ctx.device)
        codes = in_batches(encoder.eval(), ctx.images, self.settings["batch_size"], ctx.device)
        return {"codes": codes}, {"code_norm": float(codes.norm(dim=1).mean())}

    def potential(self, t, inputs, ctx):
        """``potential_steps`` iterations of Alg. 1 (lines 2-7) on the codes."""
        network, optimizer = self.load_potential(inputs["potential"], ctx.device, with_optimizer=True)
        codes = inputs["codes"].latents("codes", len(ctx.images), self.settings["latent_dim"])
        s, rng = self.settings, self.rng(t, "potential")
        if s["ot_batch"] > len(codes):
            raise ValueError(f"config key 'ot_batch' ({s['ot_batch']}) exceeds the {len(codes)} training codes; "
                             "lower it to at most the number of training images")
        network.train()
        steps = [potential_step(network, optimizer, codes, s["ot_batch"], s["potential"]["gradient_weight"], rng,
                                ctx.device) for _ in range(s["potential_steps"])]
        report = {name: sum(step[name] for step in steps) / len(steps) for name in steps[0]}
        return {"potential": network.state_dict(), "potential_optimizer": optimizer.state_dict()}, report

    # -- cost
    def stage_work(self, stage, n, decoder_flops):
        """An autoencoder epoch as every encoder method's; a potential step (Alg. 1) runs the MLP on a batch and
        compares every code with it."""
        if stage == "autoencoder":
            return 6 * decoder_flops * n, 0
        if stage == "potential":
            p, batch = self.settings["potential"], self.settings["ot_batch"]
            per_step = batch * (6 * p["layers"] * p["width"] ** 2 + 2 * n * self.settings["latent_dim"])
            return self.settings["potential_steps"] * per_step, 0
        return 0.0, 0

    # -- evaluation
    def evaluation_points(self, t):
        if t <= self.autoencoder_iterations:  # no potential yet: decoded N(0, I) samples
            return {"end": {"model": self.previous(t + 1)}}
        return {"end": {"model": StageRef(self.autoencoder_iterations, "autoencoder"),
                        "potential": StageRef(t, "potential")}}

    def trained_model(self, states, device, protocol):
        encoder, decoder, _ = self.load(states["model"], device)
        potential = self.load_potential(states["potential"], device).eval() if "potential" in states else None
        return AEOTModel(self.settings, device, protocol, encoder, decoder, potential)


class AEOTModel(AutoencoderModel):
    """Codes: the encoder's; samples: Dec(z_x + grad D(z_x)), z_x ~ N(0, I) (Alg. 2)."""

    def __init__(self, settings, device, protocol, encoder, decoder, potential: nn.Module | None):
        super().__init__(settings, device, protocol, encoder, decoder)
        self.potential = potential

    def generative_latents(self, z_x):
        """z_y = z_x + grad D(z_x) (Eq. 19); z_x itself before the potential is trained."""
        if self.potential is None:
            return z_x
        batch = self.protocol.batch_size
        return torch.cat([transport(self.potential, z_x[i:i + batch].to(self.device)).detach().cpu()
                          for i in range(0, len(z_x), batch)])


METHOD = AEOT
