"""Exterior potential features: long-range potentials with the local environment removed.

For C charge channels q^a (latent "feature charges" from a per-element linear head on the
local features, neutral in every structure, optionally plus the model's physical charges),

    f_i^a = (1/k) phi_ext,i^a,   phi_ext,i^a = k sum_{j, images} q_j^a v_LR(r_ij) s(r_ij),

with s(r) = ((1 - cos(pi r / r_ex)) / 2)^m for r < r_ex and 1 beyond, i.e. the smooth potential
created by everything outside the exclusion radius r_ex ("purified" descriptors of the
torch-pme paper, torch-pme's ``exclusion_radius``). They are computed by the model's solver in
the same k-space pass as the physical potential and appended to the local features that the
short-range readout sees, so a local readout can respond to distant charges.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import PerElementLinear, mean_per_structure


def neutralise(raw: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
    """Subtract the per-structure mean of every channel of raw [N, C] (each structure sums to zero)."""
    return raw - mean_per_structure(raw, graph.batch, graph.num_graphs).index_select(0, graph.batch)


class ExteriorPotentialFeatures(nn.Module):
    """Feature charges and their exclusion-radius settings for exterior potentials.

    Args:
        in_dim: local feature dimension D.
        num_species: number of elements.
        channels: number of latent feature-charge channels.
        exclusion_radius: r_ex in Å (at most the neighbour-list cutoff of the graphs).
        exclusion_degree: m, the sharpness of the smooth switch.
        use_charges: also give the exterior potential of the model's physical charges.
    """

    def __init__(
        self,
        in_dim: int,
        num_species: int,
        exclusion_radius: float,
        channels: int = 4,
        exclusion_degree: int = 2,
        use_charges: bool = True,
    ):
        super().__init__()
        if exclusion_radius <= 0:
            raise ValueError(f"exterior: exclusion_radius must be positive, got {exclusion_radius}")
        self.exclusion_radius = float(exclusion_radius)
        self.exclusion_degree = int(exclusion_degree)
        self.channels = int(channels)
        self.use_charges = bool(use_charges)
        self.head = PerElementLinear(in_dim, self.channels, num_species, bias=True) if self.channels > 0 else None
        self.dim = self.channels + int(self.use_charges)
        if self.dim == 0:
            raise ValueError("exterior: needs channels > 0 or use_charges: true")

    def feature_charges(self, features: torch.Tensor, graph: AtomicGraph, charges: torch.Tensor) -> torch.Tensor:
        """[N, dim] charge channels whose exterior potentials become features."""
        parts = [charges.unsqueeze(-1)] if self.use_charges else []
        if self.head is not None:
            parts.append(neutralise(self.head(features, graph.species), graph))
        return torch.cat(parts, dim=1)
