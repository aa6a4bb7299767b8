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

    When ``r`` needs a gradient (forces), the derivatives come from closed forms
    (:class:`_ChebyshevBasis`: f'_k and f''_k by the recurrences of T_k, T'_k, T''_k) instead of
    autograd through the recurrence: training differentiates the forces once more, and the
    recorded recurrence made that double backward most of a NEP training step.
    """
    if r.requires_grad and not (isinstance(cutoff, torch.Tensor) and cutoff.requires_grad):
        return _ChebyshevBasis.apply(r, cutoff, int(basis_size))
    return _basis_terms(r, cutoff, basis_size, order=0)[0]


def _basis_terms(r: torch.Tensor, cutoff: float | torch.Tensor, basis_size: int, order: int) -> list[torch.Tensor]:
    """[f, f', f''][: order + 1] of the basis, each [E, K + 1] (zero beyond the cutoff).

    Per-edge factors ([E, 1]) are formed first, so that each [E, K + 1] term costs one or two
    elementwise passes (these are memory-bound: 65k edges x 7 per PbTe batch)."""
    inside, r_in = _inside(r, cutoff)
    zero = torch.zeros_like(r)
    a = math.pi / cutoff
    half_fc = torch.where(inside, 0.25 * (1.0 + torch.cos(a * r_in)), zero).unsqueeze(-1)  # f_c / 2
    u = r_in / cutoff - 1.0
    x = 2.0 * u * u - 1.0
    t = [torch.ones_like(x), x]
    for _ in range(2, basis_size + 1):
        t.append(2.0 * x * t[-1] - t[-2])
    t1 = torch.stack(t[: basis_size + 1], dim=-1).add_(1.0)  # T_k + 1
    out = [t1 * half_fc]
    if order == 0:
        return out
    # T'_{k+1} = 2 T_k + 2 x T'_k - T'_{k-1};  T''_{k+1} = 4 T'_k + 2 x T''_k - T''_{k-1}
    d1 = [torch.zeros_like(x), torch.ones_like(x)]
    d2 = [torch.zeros_like(x), torch.zeros_like(x)]
    for k in range(1, basis_size):
        d1.append(2.0 * t[k] + 2.0 * x * d1[k] - d1[k - 1])
        if order > 1:
            d2.append(4.0 * d1[k] + 2.0 * x * d2[k] - d2[k - 1])
    d1 = torch.stack(d1[: basis_size + 1], dim=-1)
    dx = (4.0 * u / cutoff).unsqueeze(-1)
    half_dfc = torch.where(inside, -0.25 * a * torch.sin(a * r_in), zero).unsqueeze(-1)
    out.append(torch.addcmul(t1 * half_dfc, d1, dx * half_fc))
    if order > 1:
        d2 = torch.stack(d2[: basis_size + 1], dim=-1)
        d2x = 4.0 / (cutoff * cutoff)
        d2x = d2x.unsqueeze(-1) if isinstance(d2x, torch.Tensor) else d2x
        half_d2fc = torch.where(inside, -0.25 * a * a * torch.cos(a * r_in), zero).unsqueeze(-1)
        out.append((d2 * dx * dx + d1 * d2x) * half_fc + 2.0 * d1 * dx * half_dfc + t1 * half_d2fc)
    return out


class _ChebyshevBasis(torch.autograd.Function):
    """f_k(r) with dL/dr = sum_k dL/df_k f'_k(r) from the closed form. The backward is made of
    differentiable pieces: linear in dL/df (so the force loss differentiates it again with
    respect to the parameters), and f'(r) is :class:`_ChebyshevSlope`, whose own backward
    (f''(r), for second derivatives in r such as Hessians) autograd runs only when a gradient
    with respect to the positions is asked for."""

    @staticmethod
    def forward(ctx, r, cutoff, basis_size):
        with torch.no_grad():
            f, df = _basis_terms(r, cutoff, basis_size, order=1)
        ctx.cutoff, ctx.basis_size = cutoff, basis_size
        ctx.save_for_backward(r, df)
        return f

    @staticmethod
    def backward(ctx, grad_f):
        r, df = ctx.saved_tensors
        slope = _ChebyshevSlope.apply(r, df, ctx.cutoff, ctx.basis_size)
        return (grad_f * slope).sum(-1), None, None


class _ChebyshevSlope(torch.autograd.Function):
    """f'_k(r) (given, computed with f) as a function of r: its backward is sum_k g_k f''_k(r)."""

    @staticmethod
    def forward(ctx, r, df, cutoff, basis_size):
        ctx.cutoff, ctx.basis_size = cutoff, basis_size
        ctx.save_for_backward(r)
        return df.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        d2f = _basis_terms(r, ctx.cutoff, ctx.basis_size, order=2)[2]
        return (grad * d2f).sum(-1), None, None, None
