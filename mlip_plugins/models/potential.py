"""The ``Potential``: per-atom energies summed per structure, forces and stress from autograd."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mlip_plugins import keys
from mlip_plugins.elements import ElementMap
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.models.outputs import NodeOutput
from mlip_plugins.nn import sum_per_structure


class Potential(nn.Module):
    """E = sum_i [scale * E_i^model + E0[s_i] + E_i^phys]; F = -dE/dpos; stress = (1/V) dE/d(strain).

    ``e0`` (reference energy per element) and ``energy_scale`` are buffers set from the
    training set before fitting (see :mod:`mlip_plugins.data.statistics`), so they are saved
    with the weights and a model is a pure function of (graph, state_dict). ``E^phys`` is the
    physical part of the energy model's output (Coulomb, ionisation; returned under
    ``UNSCALED_ENERGY_KEY``), already in eV and therefore not multiplied by ``energy_scale``.
    """

    def __init__(self, elements: Sequence[int | str], cutoff: float, energy_model: nn.Module, energy_model_spec: Mapping | None = None):
        """``energy_model`` is the built energy tree (see :func:`mlip_plugins.models.build_potential`,
        which builds both from a config); ``energy_model_spec`` is the config that rebuilds it,
        kept so that checkpoints and exports can be rebuilt."""
        super().__init__()
        self.element_map = ElementMap(elements)
        self.cutoff = float(cutoff)
        self.energy_model_spec = dict(energy_model_spec) if energy_model_spec is not None else None
        self.energy_model = energy_model
        model_cutoff = float(getattr(self.energy_model, "cutoff", self.cutoff))
        if model_cutoff > self.cutoff + 1e-12:
            raise ValueError(f"a term's cutoff {model_cutoff} exceeds the model cutoff {self.cutoff}")
        self.register_buffer("e0", torch.zeros(self.element_map.num_species))
        self.register_buffer("energy_scale", torch.ones(()))
        #: train a plain potential NEP through its written-out force chain rule (see ``forward``)
        self.analytic_forces = True
        #: the dtype in which per-atom energies meet E0 and are summed into structure energies
        #: (None: the model's). float64 under a float32 model keeps a structure's total (hundreds
        #: of eV) exact to float64 while the model computes in float32: the mixed-precision
        #: refinement (``refine.dtype: mixed``) needs a loss that is smooth in the seventh digit.
        self.energy_dtype: torch.dtype | None = None

    def model_config(self) -> dict:
        """The ``model`` config that rebuilds this potential with ``build_potential``."""
        if self.energy_model_spec is None:
            raise ValueError("this Potential was built from a module, not a config: it has no model config to save")
        return {"elements": list(self.atomic_numbers), "cutoff": self.cutoff, "energy": self.energy_model_spec}

    @property
    def atomic_numbers(self) -> list[int]:
        return self.element_map.atomic_numbers

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per named term (and the total under ``'total'``)."""
        counts = dict(self.energy_model.parameter_counts()) if hasattr(self.energy_model, "parameter_counts") else {}
        counts["total"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts

    def forward(
        self,
        data,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energies [B], atomic energies [N] and, if asked, forces [N, 3] and stress [B, 3, 3].

        With ``create_graph`` (training), a plain potential NEP gives its forces and stress by its
        written-out chain rule (:func:`mlip_plugins.nep.analytic.batch_energy_forces_virial`), a
        differentiable function of the parameters, instead of autograd's force graph; the same
        numbers. ``analytic_forces = False`` on the potential switches that off."""
        species = self.element_map(data.z)
        dtype = self.e0.dtype
        pos = data.pos.to(dtype)
        num_graphs = int(data.num_graphs) if hasattr(data, "num_graphs") else 1
        if compute_forces and create_graph and not pos.requires_grad and self._trains_analytically():
            from mlip_plugins.nep.analytic import batch_energy_forces_virial

            energy, atomic, forces, virial = batch_energy_forces_virial(self, data, species, pos, compute_virial=compute_stress)
            out = {keys.ENERGY: energy, keys.ATOMIC_ENERGIES: atomic, keys.FORCES: forces}
            if compute_stress:
                out[keys.STRESS] = _per_volume(virial, data.cell, dtype)
            return out
        if compute_forces and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        strain = torch.zeros(num_graphs, 3, 3, dtype=dtype, device=pos.device, requires_grad=compute_stress)
        graph = build_atomic_graph(data, species, strain=strain, pos=pos)
        node = NodeOutput.of(self.energy_model(graph), "model.energy")
        extras = dict(node.extras)
        atomic = self.with_reference_energies(node.energy * self.energy_scale, species)
        unscaled = extras.pop(keys.ATOMIC_ENERGY_UNSCALED, None)
        if unscaled is not None:
            atomic = atomic + unscaled
        energy = sum_per_structure(atomic, graph.batch, num_graphs)
        out = {keys.ENERGY: energy, keys.ATOMIC_ENERGIES: atomic, **extras}
        inputs = ([pos] if compute_forces else []) + ([strain] if compute_stress else [])
        if inputs:
            grads = torch.autograd.grad(
                energy.sum(), inputs, create_graph=create_graph, retain_graph=create_graph or self.training, allow_unused=True
            )
            grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
            if compute_forces:
                out[keys.FORCES] = -grads[0]
            if compute_stress:
                out[keys.STRESS] = _per_volume(grads[-1], data.cell, dtype)
        return out

    def with_reference_energies(self, energies: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Per-atom model energies [N] (in eV, already scaled) plus E0 of each atom's element, in
        ``energy_dtype`` (the model's dtype when that is None)."""
        dtype = self.energy_dtype or energies.dtype
        return energies.to(dtype) + self.e0[species].to(dtype)

    def _trains_analytically(self) -> bool:
        from mlip_plugins.nep.analytic import supports_training

        return supports_training(self)


def _per_volume(virial: torch.Tensor, cell: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """dE/d(strain) [B, 3, 3] over each cell's volume (zero for a structure without a cell)."""
    volume = torch.linalg.det(cell.view(-1, 3, 3).to(dtype)).abs()
    safe = torch.where(volume > 1e-12, volume, torch.ones_like(volume))
    return torch.where((volume > 1e-12).view(-1, 1, 1), virial / safe.view(-1, 1, 1), torch.zeros_like(virial))
