"""``MLIPCalculator``: an ASE calculator for any mlip-plugins potential (or a GPUMD nep.txt)."""

from __future__ import annotations

import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.dtypes import default_dtype


class MLIPCalculator(Calculator):
    """Energy, free energy, per-atom energies, forces and stress from a ``Potential``.

    The neighbour list is rebuilt with vesin at every call. Results use ASE units (eV, Å,
    eV/Å³ for stress). A GPUMD potential NEP is evaluated with its chain rule written out
    (:mod:`mlip_plugins.nep.analytic`, the same numbers as autograd, faster); ``analytic=False``
    keeps the autograd path for it too. If an ``uncertainty`` model is attached (see
    :mod:`mlip_plugins.uncertainty`), ``energy_std`` and ``forces_std`` are added.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "charges", "born_effective_charges",
                              "dipole", "polarizability"]

    def __init__(self, potential, device: str = "cpu", dtype: torch.dtype | str | None = torch.float64,
                 uncertainty=None, analytic: bool = True, **kwargs):
        """``uncertainty``: a ``FisherUncertainty`` or the path of one saved by ``mlip-fim --save-uncertainty``.
        ``analytic``: evaluate a potential NEP by its written-out chain rule (:mod:`mlip_plugins.nep.analytic`);
        False, or any other model, uses autograd."""
        super().__init__(**kwargs)
        if isinstance(uncertainty, (str, os.PathLike)):
            from mlip_plugins.uncertainty import FisherUncertainty

            uncertainty = FisherUncertainty.load(uncertainty)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        self.potential = potential.to(device=self.device, dtype=dtype) if dtype is not None else potential.to(self.device)
        self.potential.eval()
        self.dtype = self.potential.e0.dtype
        self.uncertainty = uncertainty
        from mlip_plugins.nep import analytic as nep_analytic

        self._analytic = nep_analytic.AnalyticNEP(self.potential) if analytic and nep_analytic.supports(self.potential) else None

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | str | None = torch.float64,
                  **kwargs) -> "MLIPCalculator":
        """Load a training checkpoint, an exported model or a GPUMD nep.txt (told apart by content:
        :func:`mlip_plugins.model_files.load_model_file`)."""
        from mlip_plugins.model_files import load_model_file

        return cls(load_model_file(path, map_location=device), device=device, dtype=dtype, **kwargs)

    def _graph(self, atoms) -> Batch:
        labels = {}
        charges = atoms.arrays.get("charges")
        if charges is None and atoms.has("initial_charges"):
            charges = atoms.get_initial_charges()
        if charges is not None:  # for charge models that take charges from the structure ('fixed')
            labels["charges"] = np.asarray(charges, dtype=np.float64)
            labels["total_charge"] = float(labels["charges"].sum())
        with default_dtype(self.dtype):
            graph = atoms_to_graph(atoms, self.potential.cutoff, labels)
        charge = atoms.info.get("total_charge", atoms.info.get("charge"))
        if charge is not None:
            graph.total_charge = torch.tensor([float(charge)], dtype=self.dtype)
        return Batch.from_data_list([graph]).to(self.device)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties and bool(self.atoms.pbc.all())
        if self._analytic is not None and self.uncertainty is None:
            batch, out = None, self._analytic(self.atoms, compute_stress=want_stress)
        else:
            batch = self._graph(self.atoms)
            out = self.potential(batch, compute_forces=True, compute_stress=want_stress)
        energy = float(out["energy"].detach().cpu()[0])
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["energies"] = out["atomic_energies"].detach().cpu().numpy().astype(np.float64)
        self.results["forces"] = out["forces"].detach().cpu().numpy().astype(np.float64)
        if want_stress:
            s = out["stress"].detach().cpu().numpy()[0].astype(np.float64)
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if "charges" in out:
            self.results["charges"] = out["charges"].detach().cpu().numpy().astype(np.float64)
        if "born_effective_charges" in out:  # [N, 9], row-major 3 x 3 per atom (calorine's layout)
            self.results["born_effective_charges"] = out["born_effective_charges"].detach().cpu().numpy().reshape(-1, 9).astype(np.float64)
        for key in ("dipole", "polarizability"):  # a TNEP's (mlip_plugins.nep.tnep) or charges' dipole: [3] and [3, 3]
            if key in out and (key != "dipole" or bool(out.get("dipole_defined", torch.ones(1, dtype=torch.bool))[0])):
                self.results[key] = out[key].detach().cpu().numpy()[0].astype(np.float64)
        if self.uncertainty is not None:
            std = self.uncertainty.predict_std(self.potential, batch)
            self.results["energy_std"] = float(std["energy_std"].reshape(-1)[0])
            self.results["forces_std"] = std["forces_std"].detach().cpu().numpy()
