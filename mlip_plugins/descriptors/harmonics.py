"""Real spherical harmonics and Legendre polynomials of unit vectors, for angular descriptors.

Angular (3-body) descriptors are computed per atom from neighbour *moments*
``A_lm(i) = sum_j g(r_ij) Y_lm(r_hat_ij)`` instead of triplet loops; the addition theorem

    sum_{m=-l..l} Y_lm(a) Y_lm(b) = (2l + 1) / (4 pi) * P_l(a . b)

turns ``sum_m A_lm(i)^2`` into the triplet sum ``(2l+1)/(4pi) sum_jk g_j g_k P_l(cos theta_jik)``
at O(neighbours) cost per atom.

Conventions (all functions take unit vectors; nothing here is learnable):

* :func:`real_spherical_harmonics` returns the orthonormal real harmonics (integral of
  ``Y_lm^2`` over the sphere is 1), **without** the Condon-Shortley phase, ordered by l and then
  m = -l..l, i.e. column ``l*l + l + m``. They are evaluated as polynomials in (x, y, z) --
  ``Y_l|m| ~ Pbar_l^m(z) Re/Im (x + i y)^m`` -- so they are smooth everywhere (no pole
  singularity) and autograd-friendly.
* :func:`legendre_polynomials` returns ``P_0..P_lmax`` of a cosine, by Bonnet's recursion.
"""

from __future__ import annotations

import math

import torch

__all__ = ["num_harmonics", "harmonic_slices", "real_spherical_harmonics", "legendre_polynomials", "sum_squares_per_degree"]


def num_harmonics(l_max: int) -> int:
    """Number of real harmonics with degree 0..l_max: (l_max + 1)^2."""
    return (l_max + 1) ** 2


def harmonic_slices(l_max: int) -> list[slice]:
    """Column slice of each degree l (0..l_max) in the output of :func:`real_spherical_harmonics`."""
    return [slice(l * l, (l + 1) * (l + 1)) for l in range(l_max + 1)]


def _normalisation(l: int, m: int) -> float:
    """sqrt((2l+1)/(4pi) (l-m)!/(l+m)!), times sqrt(2) for m > 0 (real harmonics)."""
    value = math.sqrt((2 * l + 1) / (4.0 * math.pi) * math.factorial(l - m) / math.factorial(l + m))
    return value * math.sqrt(2.0) if m > 0 else value


def real_spherical_harmonics(unit: torch.Tensor, l_max: int) -> torch.Tensor:
    """Orthonormal real spherical harmonics of unit vectors.

    Args:
        unit: [..., 3] unit vectors (not checked; the caller normalises).
        l_max: highest degree (>= 0).

    Returns:
        [..., (l_max + 1)^2]; column ``l*l + l + m`` holds Y_lm, with m < 0 the sine
        (``Im (x+iy)^|m|``) and m > 0 the cosine (``Re (x+iy)^m``) harmonics.
    """
    if l_max < 0:
        raise ValueError(f"l_max must be >= 0, got {l_max}")
    x, y, z = unit[..., 0], unit[..., 1], unit[..., 2]
    # cos_m = Re (x + i y)^m = sin^m(theta) cos(m phi), sin_m likewise with sin(m phi).
    cos_m = [torch.ones_like(x)]
    sin_m = [torch.zeros_like(x)]
    for _ in range(l_max):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(x * c - y * s)
        sin_m.append(x * s + y * c)
    # pbar[l][m] = P_l^m(z) / (1 - z^2)^(m/2), a polynomial in z (no Condon-Shortley phase).
    pbar: list[list[torch.Tensor | None]] = [[None] * (l_max + 1) for _ in range(l_max + 1)]
    for m in range(l_max + 1):
        double_factorial = float(math.prod(range(2 * m - 1, 0, -2))) if m > 0 else 1.0
        pbar[m][m] = torch.full_like(z, double_factorial)
        if m + 1 <= l_max:
            pbar[m + 1][m] = (2 * m + 1) * z * pbar[m][m]
        for l in range(m + 2, l_max + 1):
            pbar[l][m] = ((2 * l - 1) * z * pbar[l - 1][m] - (l + m - 1) * pbar[l - 2][m]) / (l - m)
    columns: list[torch.Tensor] = []
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            k = abs(m)
            azimuthal = cos_m[k] if m >= 0 else sin_m[k]
            columns.append(_normalisation(l, k) * pbar[l][k] * azimuthal)
    return torch.stack(columns, dim=-1)


def legendre_polynomials(cosine: torch.Tensor, l_max: int) -> torch.Tensor:
    """P_0..P_lmax of ``cosine`` by Bonnet's recursion; returns [..., l_max + 1]."""
    polys = [torch.ones_like(cosine), cosine]
    for l in range(1, l_max):
        polys.append(((2 * l + 1) * cosine * polys[l] - l * polys[l - 1]) / (l + 1))
    return torch.stack(polys[: l_max + 1], dim=-1)


def sum_squares_per_degree(moments: torch.Tensor, l_max: int, l_min: int = 0) -> torch.Tensor:
    """sum_m A_lm^2 for each degree l_min..l_max: [..., (l_max+1)^2] -> [..., l_max - l_min + 1].

    By the addition theorem this equals (2l+1)/(4pi) sum_jk g_j g_k P_l(cos theta_jk) when
    ``moments`` are A_lm = sum_j g_j Y_lm(r_hat_j).
    """
    squares = moments * moments
    return torch.stack([squares[..., s].sum(-1) for s in harmonic_slices(l_max)[l_min:]], dim=-1)
