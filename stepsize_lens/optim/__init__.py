"""Optimizers for scale-invariant weights.

- `AdamP`, `SGDP` (Heo et al., ICLR 2021): momentum optimizers that project the radial part out
  of the updates of weights that pass the paper's scale-invariance test; per-tensor,
  multi-tensor and fused paths.
- `AdamC` (Defazio 2025): AdamW whose decoupled decay on scale-invariant weights follows the
  learning-rate schedule (η_t²λ/η_max per step), so their gradient norm does not climb as the
  lr decays.
"""

from stepsize_lens.optim.adamc import AdamC
from stepsize_lens.optim.adamp import AdamP
from stepsize_lens.optim.sgdp import SGDP

__all__ = ["AdamC", "AdamP", "SGDP"]
