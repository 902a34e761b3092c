"""AdamP and SGDP (Heo et al., ICLR 2021): momentum optimizers that project out the radial
part of updates to scale-invariant weights, with per-tensor, multi-tensor and fused paths."""

from stepsize_lens.optim.adamp import AdamP
from stepsize_lens.optim.sgdp import SGDP

__all__ = ["AdamP", "SGDP"]
