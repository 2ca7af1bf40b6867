"""Short-run inference (SRI; Nijkamp, Pang, Han, Zhou, Zhu, Wu 2020, "Learning multi-layer latent
variable model via variational optimization of short run MCMC for approximate inference").

The generator and likelihood of Eq. (1) and (5), learned like ABP, but every inference starts from
fresh noise: iteration t draws z_0 ~ N(0, I) for every image, runs K Langevin steps (Eq. 6) and
learns from the result, with no persistent chains and no OT correction. With ``upper_latent_dims``
the generator has further latent layers above the Table 7 network (SRI with L = 5 latent layers,
:class:`~shortrun_ot.models.HierarchicalGenerator`); Langevin infers all layers jointly. Stages:
``init`` (as the short-run method's), ``infer`` (from noise), ``learn``.
"""

from __future__ import annotations

from .shortrun import ShortRunOT


class ShortRunInference(ShortRunOT):
    """Noise-initialised K-step Langevin inference, then ``learning.passes`` Adam passes (their code: one)."""

    STAGES = ("init", "infer", "learn")

    def persistent_chains(self) -> bool:
        return False

    def corrects(self, t: int) -> bool:
        return False


METHOD = ShortRunInference
