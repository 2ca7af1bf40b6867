"""Short-run MCMC inference with optimal transport correction (An, Xie, Li, CVPR 2021)."""

__version__ = "0.1.0"
