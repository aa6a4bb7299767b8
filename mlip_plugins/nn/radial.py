"""Radial building blocks: the smooth cosine cutoff and switch, NEP's Chebyshev basis (GPUMD's form).

    f_c(r) = (1 + cos(pi r / r_c)) / 2                        r < r_c, else 0
    f_k(r) = (T_k(2 (r/r_c - 1)^2 - 1) + 1) / 2 * f_c(r)       k = 0..basis_size
    s(r)   = (1 + cos(pi clamp((r - r_on) / w, 0, 1))) / 2    1 below r_on, 0 beyond r_on + w

(Fan et al., PRB 104, 104309 (2021)). The cutoff may be one radius or a tensor of per-edge
radii (NEP's per element pair cutoffs); the expressions are the same, so the radial, angular,
EAM and message-passing descriptors and the NEP descriptor share one implementation.
"""

from __future__ import annotations

import math

import torch


def _inside(r: torch.Tensor, cutoff: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r < r_c, r with the points beyond r_c set to 0 so that nothing overflows or breaks a gradient there)."""
    inside = r < cutoff
    return inside, torch.where(inside, r, torch.zeros_like(r))


def cosine_cutoff(r: torch.Tensor, cutoff: float | torch.Tensor) -> torch.Tensor:
    """f_c(r) = (1 + cos(pi r / r_c)) / 2 for r < r_c, else 0: value and slope vanish at r_c.

    ``cutoff``: one radius, or a tensor broadcastable to ``r`` (e.g. per-edge radii).
    """
    inside, r_in = _inside(r, cutoff)
    return torch.where(inside, 0.5 * (1.0 + torch.cos(math.pi * r_in / cutoff)), torch.zeros_like(r))


def cosine_switch(r: torch.Tensor, start: float | torch.Tensor, width: float | torch.Tensor) -> torch.Tensor:
    """s(r) = 1 below ``start``, 0 beyond ``start + width``, (1 + cos(pi (r - start) / width)) / 2
    in between: a C1 step (the ZBL switch of NEP, the switch-off of the latent-charge prior).

    ``start`` and ``width`` may be floats or tensors broadcastable to ``r``; ``width`` must be > 0.
    """
    t = torch.clamp((r - start) / width, 0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def chebyshev_basis(r: torch.Tensor, cutoff: float | torch.Tensor, basis_size: int) -> torch.Tensor:
    """NEP's radial basis f_k(r) = (T_k(2 (r/r_c - 1)^2 - 1) + 1) / 2 * f_c(r), k = 0..basis_size.

    Args:
        r: [E] distances.
        cutoff: r_c, one radius or a tensor of the shape of ``r`` (NEP's per-pair cutoffs).
        basis_size: highest Chebyshev order K (T_k of the first kind).

    Returns [E, K + 1]; zero (with a zero gradient) at and beyond the cutoff.
    """
    inside, r_in = _inside(r, cutoff)
    fc = torch.where(inside, 0.5 * (1.0 + torch.cos(math.pi * r_in / cutoff)), torch.zeros_like(r))
    x = 2.0 * (r_in / cutoff - 1.0) ** 2 - 1.0
    polys = [torch.ones_like(x), x]
    for _ in range(2, basis_size + 1):
        polys.append(2.0 * x * polys[-1] - polys[-2])
    t = torch.stack(polys[: basis_size + 1], dim=-1)
    return 0.5 * (t + 1.0) * fc.unsqueeze(-1)
