"""The learned charge-equilibration model ``qeq`` against closed forms and known constants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.data import covalent_radii

from mlip_plugins.charges.qeq import MIN_START_HARDNESS, QEqCharges, QEqSizeError, solve_equilibration
from mlip_plugins.elements import ElementMap
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.testing import structures as st
from mlip_plugins.units import COULOMB_CONSTANT as KE

ELEMENTS = ["Na", "Cl"]


def graph_of(atoms_list: list[Atoms], cutoff: float = 5.0):
    batch = st.to_batch(atoms_list, cutoff, torch.float64)
    return build_atomic_graph(batch, ElementMap(ELEMENTS)(batch.z), pos=batch.pos)


def model(**options) -> QEqCharges:
    """A qeq model; ``start: zero`` (chi = 0, one hardness) unless asked, for the closed forms."""
    return QEqCharges(in_dim=4, num_species=len(ELEMENTS), **{"start": "zero", **options}).double()


def dimer(r: float, total: float = 0.0) -> Atoms:
    return with_total(Atoms("NaCl", positions=[[0, 0, 0], [r, 0, 0]], pbc=False), total)


def with_total(atoms: Atoms, total: float) -> Atoms:
    """The test batches take each structure's total charge from its initial charges."""
    atoms.set_initial_charges(np.full(len(atoms), total / len(atoms)))
    return atoms


@pytest.mark.parametrize("r", [2.4, 12.0])
def test_dimer_charge_transfer_has_the_closed_form(r):
    """Two sites: A_12 = k_e erf(r / sqrt2 gamma) / r inside the screening range and k_e / r beyond
    it, and q_1 = -q_2 = (chi_2 - chi_1) / (A_11 + A_22 - 2 A_12): charge flows between atoms 12 Å
    apart, beyond every cutoff, as a local charge model cannot make it."""
    qeq = model(hardness=6.0)
    graph = graph_of([dimer(r)])
    matrix, row, col = qeq.equilibration_matrix(graph)
    sigma = np.array([covalent_radii[11], covalent_radii[17]])
    gamma = math.hypot(*sigma)
    screened = r < qeq.screening_cutoff - qeq.screening_switch_width
    coupling = KE * (math.erf(r / (math.sqrt(2) * gamma)) if screened else 1.0) / r
    diagonal = 6.0 + KE / (sigma * math.sqrt(math.pi))
    expected = np.array([[diagonal[0], coupling], [coupling, diagonal[1]]])
    np.testing.assert_allclose(matrix[0].detach().numpy(), expected, rtol=1e-10)
    chi = torch.tensor([-1.5, 2.0], dtype=torch.float64)  # Na electropositive, Cl electronegative
    charges = solve_equilibration(matrix, chi, graph.total_charge.double(), row, col)
    transfer = (2.0 - -1.5) / (diagonal.sum() - 2 * coupling)
    np.testing.assert_allclose(charges.detach().numpy(), [transfer, -transfer], rtol=1e-10)


def test_excess_charge_gathers_at_the_ends_of_a_chain():
    """With equal electronegativities the charge of a charged chain goes where a conductor's does,
    to its ends, symmetrically (a uniform share is what the ``latent`` model's correction gives)."""
    n = 10
    atoms = with_total(Atoms("Na" * n, positions=[[2.8 * i, 0, 0] for i in range(n)], pbc=False), 1.0)
    qeq = model(initial_scale=0.0)
    graph = graph_of([atoms])
    charges = qeq(torch.zeros(n, 4, dtype=torch.float64), graph).detach().numpy()
    assert charges.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(charges, charges[::-1], atol=1e-12)
    assert np.all(np.diff(charges[: n // 2]) < 0), charges  # falls from the end to the middle
    assert charges[0] > 1.2 / n and charges[n // 2 - 1] < 1.0 / n


def test_periodic_point_part_gives_the_madelung_energy_of_rock_salt():
    """The unit-charge potentials of the Ewald solver make A: with the screening range below the
    nearest-neighbour distance, 1/2 q^T (A - its self terms) q of +-1 charges in rock salt is the
    Madelung energy -1.747565 k_e / d per ion pair."""
    d = 2.8
    crystal = bulk("NaCl", "rocksalt", a=2 * d, cubic=True)
    qeq = model(solver={"name": "ewald", "cutoff": 5.0, "accuracy": 1e-8}, screening_cutoff=1.0,
                screening_switch_width=0.5, hardness=5.0)
    graph = graph_of([crystal])
    matrix = qeq.equilibration_matrix(graph)[0][0]
    q = torch.tensor([1.0 if s == "Na" else -1.0 for s in crystal.get_chemical_symbols()], dtype=torch.float64)
    sigma = torch.tensor([covalent_radii[z] for z in crystal.numbers], dtype=torch.float64)
    self_terms = 5.0 + KE / (sigma * math.sqrt(math.pi))
    point = matrix - torch.diag(self_terms)
    energy = 0.5 * float(q @ point.detach() @ q)
    assert torch.allclose(matrix, matrix.T, atol=1e-12)
    assert energy == pytest.approx(-1.747565 * KE / d * len(crystal) / 2, rel=1e-6)


def test_charges_are_smooth_where_the_screening_switches_off():
    """The screening ends with a smooth switch: the charges of a dimer change continuously, with a
    continuous slope, through the screening cutoff."""
    qeq = model(screening_cutoff=4.0, screening_switch_width=1.0, initial_scale=1.0)
    torch.manual_seed(0)
    features = torch.randn(2, 4, dtype=torch.float64)

    def q_at(r: float) -> float:
        return float(qeq(features, graph_of([dimer(r)]))[0])

    h = 1e-4
    below, at, above = q_at(4.0 - h), q_at(4.0), q_at(4.0 + h)
    assert abs(above - below) < 1e-6
    slope_below, slope_above = (at - below) / h, (above - at) / h
    assert slope_below == pytest.approx(slope_above, abs=1e-4)


def test_a_remote_change_moves_charge_non_uniformly():
    """Changing the electronegativity of one end atom of a chain moves the charges of the far end
    by amounts that differ from atom to atom (the Coulomb law), not by one uniform shift."""
    n = 8
    atoms = with_total(Atoms("Na" * n, positions=[[2.8 * i, 0, 0] for i in range(n)], pbc=False), 0.0)
    qeq = model(hardness=4.0)
    graph = graph_of([atoms])
    matrix, row, col = qeq.equilibration_matrix(graph)
    chi = torch.zeros(n, dtype=torch.float64)
    base = solve_equilibration(matrix, chi, graph.total_charge.double(), row, col)
    chi[0] = -1.0
    moved = solve_equilibration(matrix, chi, graph.total_charge.double(), row, col) - base
    far = moved[n // 2:].detach().numpy()
    assert moved[0] > 0.05  # the less electronegative end gives up charge
    assert np.all(far < 0) and np.ptp(far) > 0.1 * np.abs(far).max()


def test_the_physical_start_is_rappe_goddard_qeq():
    """``start: physical``: the untrained model's diagonal is each element's measured hardness
    IP - EA (at least the Gaussian self-energy + a floor) and its electronegativity (IP + EA) / 2, so a NaCl dimer starts as Na+ Cl-, with
    the closed-form transfer of those values."""
    from mlip_plugins.charges.ensemble.atomic_data import chemical_hardness, mulliken_electronegativity

    qeq = model(start="physical", initial_scale=0.0)
    graph = graph_of([dimer(2.4)])
    matrix, row, col = qeq.equilibration_matrix(graph)
    self_energy = KE / (np.array([covalent_radii[11], covalent_radii[17]]) * math.sqrt(math.pi))
    measured = np.array([chemical_hardness(11), chemical_hardness(17)])  # Na's IP - EA is below its self-energy:
    expected = np.maximum(measured, self_energy + MIN_START_HARDNESS)    # its residual J starts at the floor
    np.testing.assert_allclose(torch.diagonal(matrix[0]).detach().numpy(), expected, rtol=1e-12)
    assert expected[1] == measured[1]
    charges = qeq(torch.zeros(2, 4, dtype=torch.float64), graph).detach().numpy()
    chi = np.array([mulliken_electronegativity(11), mulliken_electronegativity(17)])
    a = matrix[0].detach().numpy()
    transfer = (chi[1] - chi[0]) / (a[0, 0] + a[1, 1] - 2 * a[0, 1])
    np.testing.assert_allclose(charges, [transfer, -transfer], rtol=1e-10)
    assert transfer > 0.1  # Na+ Cl- (QEq overshoots to about one e at 2.4 Å, as its parabola allows)


def test_long_range_preset_with_qeq_charges_composes_and_builds():
    """``model=long_range model/charges=qeq`` composes; the charge model uses the energy model's solver."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from mlip_plugins.models.builder import build_potential

    with initialize_config_module(config_module="mlip_plugins.conf", version_base=None):
        cfg = OmegaConf.to_container(compose(config_name="train", overrides=["model=long_range", "model/charges=qeq"]).model,
                                     resolve=True)
    cfg["elements"] = ELEMENTS
    potential = build_potential(cfg).double()
    energy_model = potential.energy_model
    assert isinstance(energy_model.charge_model, QEqCharges)
    assert energy_model.charge_model._solver() is energy_model.solver
    assert not any(name.startswith("charge_model._lent") for name, _ in energy_model.named_modules())


def test_a_structure_beyond_max_atoms_is_one_clear_error():
    """The dense solve refuses structures above ``max_atoms`` with a message naming the option."""
    chain = with_total(Atoms("Na" * 6, positions=[[2.8 * i, 0, 0] for i in range(6)], pbc=False), 0.0)
    with pytest.raises(QEqSizeError, match="6 atoms exceeds max_atoms=5"):
        model(max_atoms=5)(torch.zeros(6, 4, dtype=torch.float64), graph_of([chain]))
