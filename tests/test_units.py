"""One Coulomb constant: every module that needs it uses mlip_plugins.units."""

from __future__ import annotations

import torch
import torchpme

from mlip_plugins import units


def test_one_coulomb_constant_everywhere():
    """The solvers' public constant, the latent-charge kernel and the ionic reference data share one value."""
    import mlip_plugins.data.ionic_dataset as ionic
    import mlip_plugins.long_range as long_range
    from mlip_plugins.charges.ensemble.coulomb import shielded_coulomb

    assert units.COULOMB_CONSTANT == float(torchpme.prefactors.eV_A)
    assert long_range.COULOMB_CONSTANT is units.COULOMB_CONSTANT  # public re-export
    assert ionic.COULOMB_CONSTANT is units.COULOMB_CONSTANT
    # far apart, erf -> 1: J(r) r is the Coulomb constant itself (was ASE's Hartree * Bohr, 9e-9 off)
    r = torch.tensor([1000.0], dtype=torch.float64)
    assert float(shielded_coulomb(r, torch.tensor([0.5], dtype=torch.float64)) * r) == units.COULOMB_CONSTANT


def test_gpumd_constant_only_in_the_zbl_term():
    """NEP's ZBL uses GPUMD's rounded value (GPUMD parity), documented beside the exact one."""
    from mlip_plugins.graph import AtomicGraph
    from mlip_plugins.nep.model import ZBLRepulsion

    assert units.GPUMD_COULOMB_CONSTANT == 14.399645
    assert abs(units.GPUMD_COULOMB_CONSTANT / units.COULOMB_CONSTANT - 1) < 1e-7
    # two Z=1 atoms at r = 0.5 Å, well inside the inner radius: E = k Z^2 / r phi(x), halved per atom
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    edge_index = torch.tensor([[1, 0], [0, 1]])
    vec = pos[edge_index[0]] - pos[edge_index[1]]
    graph = AtomicGraph(
        pos=pos, z=torch.tensor([1, 1]), species=torch.tensor([0, 0]), edge_index=edge_index, edge_vec=vec,
        edge_len=vec.norm(dim=-1), cell=torch.zeros(1, 3, 3, dtype=torch.float64), pbc=torch.zeros(1, 3, dtype=torch.bool),
        batch=torch.tensor([0, 0]), num_graphs=1, shifts=torch.zeros(2, 3), total_charge=torch.zeros(1, dtype=torch.float64),
    )
    zbl = ZBLRepulsion(inner=1.0, outer=2.0).double()
    x = 0.5 * 2.0 * 2.134563
    phi = sum(a * torch.exp(torch.tensor(-b * x, dtype=torch.float64)) for a, b in
              ((0.18175, 3.1998), (0.50986, 0.94229), (0.28022, 0.4029), (0.02817, 0.20162)))
    expected = units.GPUMD_COULOMB_CONSTANT / 0.5 * phi
    assert torch.allclose(zbl(graph).sum(), expected, rtol=1e-14, atol=0)
