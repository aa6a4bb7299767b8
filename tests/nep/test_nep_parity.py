"""Parity with GPUMD's reference C++ NEP (calorine's CPUNEP), both ways.

1. nep.txt files we did not write (random parameters, written by calorine's own ``Model.write``)
   are evaluated by us and by CPUNEP on multi-element periodic structures.
2. Our models (loaded, with E0 and an energy scale to fold in, or built from a config and with
   a fitted scaler) are exported with :func:`write_nep` and evaluated by CPUNEP.

Tolerances of the issue: energies 1e-5 eV/atom, forces 1e-4 eV/Å (we also check stress).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

calorine_model = pytest.importorskip("calorine.nep.model")
from calorine.calculators import CPUNEP  # noqa: E402

from mlip_plugins.calculator import MLIPCalculator  # noqa: E402
from mlip_plugins.nep.nep_txt import load_nep_potential, read_nep, write_nep  # noqa: E402

E_TOL, F_TOL, S_TOL = 1e-5, 1e-4, 1e-6


def random_calorine_model(types, n_max=(4, 3), basis=(5, 4), l_max=(4, 2, 1), neuron=8, cutoff=(5.0, 4.0),
                          typewise=None, zbl=None, zbl_factor=None, flexible=False, seed=0):
    """A NEP4 model with random parameters, as calorine represents it (written by calorine)."""
    rng = np.random.default_rng(seed)
    n_r, n_a = n_max
    k_r, k_a = basis
    blocks = l_max[0] + (l_max[1] > 0) + (l_max[2] > 0)
    dim = (n_r + 1) + (n_a + 1) * blocks
    ann = {s: {"w0": rng.normal(size=(neuron, dim)) * 0.6, "b0": rng.normal(size=(neuron, 1)) * 0.2,
               "w1": rng.normal(size=(1, neuron)) * 0.4} for s in types}
    ann["b1"] = float(rng.normal())
    radial = {(a, b): rng.uniform(-1, 1, size=(n_r + 1, k_r + 1)) for a in types for b in types}
    angular = {(a, b): rng.uniform(-1, 1, size=(n_a + 1, k_a + 1)) for a in types for b in types}
    rc_r, rc_a = cutoff
    if typewise is not None:
        rc_r, rc_a = [t[0] for t in typewise], [t[1] for t in typewise]
    zbl_parameters = None
    if flexible:
        zbl = (0.0, 0.0)
        zbl_parameters = {}
        for i, a in enumerate(types):
            for b in types[i:]:
                row = np.array([0.8, 1.6 + 0.2 * rng.random(), 0.2, 3.2, 0.5, 0.9, 0.28, 0.4, 0.02, 0.2])
                zbl_parameters[(a, b)] = row
    return calorine_model.Model(
        version=4, model_type="potential", types=tuple(types), radial_cutoff=rc_r, angular_cutoff=rc_a,
        n_basis_radial=k_r, n_basis_angular=k_a, n_max_radial=n_r, n_max_angular=n_a,
        l_max_3b=l_max[0], l_max_4b=l_max[1], l_max_5b=l_max[2], has_q_112=0, has_q_123=0, has_q_233=0, has_q_134=0,
        n_descriptor_radial=n_r + 1, n_descriptor_angular=(n_a + 1) * blocks, n_neuron=neuron, n_parameters=0,
        n_descriptor_parameters=0, n_ann_parameters=0, ann_parameters=ann,
        q_scaler=list(rng.uniform(0.3, 2.0, size=dim)), radial_descriptor_weights=radial,
        angular_descriptor_weights=angular, max_neighbors_radial=200, max_neighbors_angular=200,
        zbl=zbl, zbl_typewise_cutoff_factor=zbl_factor, zbl_parameters=zbl_parameters,
    )


def structures(symbols) -> list[Atoms]:
    """A rattled, strained 3-element triclinic supercell (with close pairs for ZBL) and a
    2-atom cell much smaller than the cutoff (many periodic images)."""
    rng = np.random.default_rng(7)
    big = bulk("Cu", "fcc", a=3.7).repeat((3, 3, 2))
    big.set_chemical_symbols(list(rng.choice(symbols, size=len(big))))
    big.set_cell(big.cell.array @ (np.eye(3) + [[0.03, 0.02, 0.0], [0.0, -0.02, 0.01], [0.01, 0.0, 0.02]]), scale_atoms=True)
    big.positions += rng.normal(scale=0.15, size=big.positions.shape)
    big.positions[1] = big.positions[0] + [1.1, 0.3, 0.2]  # a close pair inside the ZBL range
    small = Atoms(symbols[:2], positions=[[0, 0, 0], [1.3, 1.2, 0.9]], cell=[[2.6, 0.1, 0], [0.2, 2.7, 0], [0.1, 0.2, 2.5]], pbc=True)
    return [big, small]


def assert_parity(reference_file, ours_calc, symbols) -> None:
    for atoms in structures(symbols):
        ref = atoms.copy()
        ref.calc = CPUNEP(str(reference_file))
        mine = atoms.copy()
        mine.calc = ours_calc
        n = len(atoms)
        assert abs(ref.get_potential_energy() - mine.get_potential_energy()) / n < E_TOL
        assert np.abs(ref.get_forces() - mine.get_forces()).max() < F_TOL
        assert np.abs(ref.get_stress() - mine.get_stress()).max() < S_TOL


CASES = {
    "three_elements_q222_q1111_zbl": dict(types=("Ag", "Cu", "Au"), zbl=(1.0, 2.0)),
    "lmax8_typewise_cutoffs_typewise_zbl": dict(
        types=("Au", "Cu"), l_max=(8, 0, 0), n_max=(3, 2), typewise=[(4.6, 3.6), (5.2, 4.1)], zbl=(1.2, 2.4), zbl_factor=0.7),
    "lmax6_q222_flexible_zbl": dict(types=("Cu", "Ag"), l_max=(6, 2, 0), flexible=True),
    "lmax2_no_zbl": dict(types=("Pt", "Ni"), l_max=(2, 0, 0), basis=(8, 8), n_max=(6, 4), cutoff=(6.0, 3.5)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_foreign_nep_txt_evaluated_by_us(tmp_path, case):
    """A nep.txt written by calorine, evaluated by MLIPCalculator.from_file and by CPUNEP."""
    spec = CASES[case]
    path = tmp_path / "nep.txt"
    random_calorine_model(**spec).write(str(path))
    assert_parity(path, MLIPCalculator.from_file(path), list(spec["types"]))


@pytest.mark.parametrize("case", ["three_elements_q222_q1111_zbl", "lmax6_q222_flexible_zbl"])
def test_our_export_evaluated_by_calorine(tmp_path, case):
    """Load, change E0 / energy scale (folded into the file on export), write, compare."""
    spec = CASES[case]
    source = tmp_path / "source.txt"
    random_calorine_model(**spec).write(str(source))
    potential = load_nep_potential(source)
    with torch.no_grad():
        potential.e0.copy_(torch.tensor([-3.2, -1.1, -4.7][: potential.e0.numel()], dtype=potential.e0.dtype))
    exported = write_nep(potential, tmp_path / "nep.txt")
    assert_parity(exported, MLIPCalculator(potential), list(spec["types"]))


def test_export_of_a_model_built_from_config(tmp_path, float64):
    """A model built from an energy-tree config (scaler fitted on data, energy scale and
    unequal E0 folded in) is evaluated identically by calorine after export."""
    from torch_geometric.data import Batch  # noqa: F401  (the fit batches graphs)

    from mlip_plugins.data.structures import atoms_to_graph
    from mlip_plugins.models.builder import build_potential
    from mlip_plugins.nep.model import fit_descriptor_scaler

    symbols = ["Ni", "Cu", "Pd"]
    potential = build_potential({
        "elements": symbols, "cutoff": 4.5,
        "energy": {"model": {"name": "nep", "cutoff_angular": 3.8, "n_max": [3, 3], "basis_size": [4, 4],
                             "l_max": [4, 2, 0], "neuron": 6}},
    }).double()
    graphs = [atoms_to_graph(a, potential.cutoff) for a in structures(symbols)]
    assert fit_descriptor_scaler(potential, graphs) == 1
    with torch.no_grad():
        potential.e0.copy_(torch.tensor([-4.0, -3.0, -5.5], dtype=torch.float64))
        potential.energy_scale.fill_(0.7)
    path = write_nep(potential, tmp_path / "nep.txt")
    content = read_nep(path)
    assert content.neuron == 7  # one extra constant neuron carries the per-element E0
    assert min(content.max_neighbors) > 0
    assert_parity(path, MLIPCalculator(potential), symbols)
