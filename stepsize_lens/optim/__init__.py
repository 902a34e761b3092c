"""AdamP and SGDP (Heo et al., ICLR 2021): momentum optimizers that project out the radial
part of updates to scale-invariant weights, with a per-tensor and a multi-tensor path."""

from stepsize_lens.optim.adamc import AdamC
from stepsize_lens.optim.adamp import AdamP
from stepsize_lens.optim.sgdp import SGDP

__all__ = ["AdamC", "AdamP", "SGDP"]
