"""qNEP (GPUMD's charge NEPs ``nep4[_zbl]_charge1|2``): reading, writing and evaluating.

Parity with calorine's CPUNEP in float64 on GPUMD's qNEP PbTe example and on the water and
BaTiO3 qNEP fixtures of GPUMD's test suite: energies 1e-6 eV/atom, forces 1e-5 eV/Å, charges
1e-6 e (and stress, Born effective charges); GPUMD's own charge_train.out / energy_train.out and
its BEC goldens as well. The Coulomb part is checked independently against the Madelung energy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.io import read

from mlip_plugins.calculator import MLIPCalculator
from mlip_plugins.models.builder import build_potential
from mlip_plugins.nep.nep_txt import NEPFormatError, load_nep_potential, read_nep, write_nep
from mlip_plugins.testing.finite_differences import numerical_force

DATASETS = Path(os.environ.get("MLIP_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
QNEP = DATASETS / "gpumd_qnep"
FIXTURES = DATASETS / "gpumd_pytest_fixtures_and_nep_models" / "fixtures"
E_TOL, F_TOL, Q_TOL, S_TOL, BEC_TOL = 1e-6, 1e-5, 1e-6, 1e-8, 1e-6

needs_qnep = pytest.mark.skipif(not (QNEP / "nep.txt").exists(), reason=f"GPUMD qNEP example not found at {QNEP} (set MLIP_DATASETS)")
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "models").exists(),
                                    reason=f"GPUMD test fixtures not found at {FIXTURES} (set MLIP_DATASETS)")

FIXTURE_CASES = {
    "mode1_water": ("qnep_mode1_water.txt", "water-nat63-from-md.xyz"),
    "mode2_water": ("qnep_mode2_water.txt", "water-nat63-from-md.xyz"),
    "mode1_BaTiO3_zbl": ("qnep_mode1_BaTiO3.txt", "BaTiO3-nat40-rattled.xyz"),
    "mode2_BaTiO3_zbl": ("qnep_mode2_BaTiO3.txt", "BaTiO3-nat40-rattled.xyz"),
}


def small_qnep(charge_mode: int, zbl=None, seed: int = 3):
    """A small random qNEP Potential (Pb, Te) in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        spec = {"name": "nep", "cutoff_angular": 3.5, "n_max": [3, 2], "basis_size": [4, 3], "l_max": [4, 2, 0],
                "neuron": 6, "charge_mode": charge_mode, "zbl": zbl, "seed": seed}
        potential = build_potential({"elements": ["Te", "Pb"], "cutoff": 5.0, "energy": {"model": spec}})
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        potential.energy_model.q_scaler.uniform_(0.5, 2.0)
        potential.energy_model.w1_charge.mul_(3.0)  # charges of order 1
        potential.energy_model.sqrt_epsilon_inf.fill_(1.7)
    return potential.eval()


def rocksalt(repeat=(2, 2, 2), rattle: float = 0.1) -> Atoms:
    atoms = bulk("PbTe", "rocksalt", a=6.46, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=2)
    return atoms


def calorine_results(model_file, atoms: Atoms) -> dict:
    from calorine.calculators import CPUNEP

    atoms = atoms.copy()
    atoms.calc = CPUNEP(str(model_file))
    atoms.get_potential_energy()
    results = dict(atoms.calc.results)
    results["stress"] = atoms.get_stress()
    return results


def our_results(calc, atoms: Atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    results = dict(atoms.calc.results)
    results["stress"] = atoms.get_stress()
    return results


def assert_same(ref: dict, ours: dict, n: int) -> None:
    assert abs(ref["energy"] - ours["energy"]) / n < E_TOL
    assert np.abs(ref["forces"] - ours["forces"]).max() < F_TOL
    assert np.abs(ref["charges"] - ours["charges"]).max() < Q_TOL
    assert np.abs(ref["stress"] - ours["stress"]).max() < S_TOL
    assert np.abs(ref["born_effective_charges"] - ours["born_effective_charges"]).max() < BEC_TOL


# -- without datasets -------------------------------------------------------------------------------
@pytest.mark.parametrize("charge_mode,zbl", [(1, None), (2, {"outer": 2.0}), (1, {"outer": 2.2, "typewise_factor": 0.6})])
def test_qnep_file_round_trip_is_exact(tmp_path, charge_mode, zbl):
    potential = small_qnep(charge_mode, zbl)
    with torch.no_grad():  # E0 and the energy scale are folded into the file exactly
        potential.e0.copy_(torch.tensor([-2.0, -3.5], dtype=torch.float64))
        potential.energy_scale.fill_(1.3)
    path = write_nep(potential, tmp_path / "nep.txt")
    assert path.read_text().splitlines()[0].startswith("nep4" + ("_zbl" if zbl else "") + f"_charge{charge_mode} 2")
    content = read_nep(path)
    assert content.charge_mode == charge_mode and content.sqrt_epsilon_inf == pytest.approx(1.7, abs=0)
    loaded = load_nep_potential(path).eval()
    atoms = rocksalt()
    ours, back = our_results(MLIPCalculator(potential, dtype=torch.float64), atoms), our_results(MLIPCalculator(loaded), atoms)
    assert_same(ours, back, len(atoms))
    assert np.abs(ours["charges"]).max() > 0.05  # not a trivially neutral model
    # writing the loaded model again gives the same file
    assert write_nep(loaded, tmp_path / "again.txt").read_text() == path.read_text()


def test_charges_are_neutral_per_structure_and_batching_changes_nothing(float64):
    from torch_geometric.data import Batch

    from mlip_plugins.data.structures import atoms_to_graph
    from mlip_plugins import keys

    potential = small_qnep(1)
    structures = [rocksalt(), rocksalt((1, 1, 2), 0.2), rocksalt((2, 1, 1), 0.05)]
    graphs = [atoms_to_graph(a, potential.cutoff) for a in structures]
    batched = potential(Batch.from_data_list(graphs), compute_stress=True)
    start = 0
    for graph, atoms in zip(graphs, structures):
        single = potential(Batch.from_data_list([graph]), compute_stress=True)
        n = len(atoms)
        charges = batched[keys.CHARGES][start : start + n]
        assert abs(float(charges.detach().sum())) < 1e-12
        torch.testing.assert_close(charges, single[keys.CHARGES], rtol=0, atol=1e-12)
        torch.testing.assert_close(batched[keys.FORCES][start : start + n], single[keys.FORCES], rtol=0, atol=1e-10)
        start += n
    torch.testing.assert_close(batched[keys.ENERGY], torch.cat([potential(Batch.from_data_list([g]))[keys.ENERGY] for g in graphs]),
                               rtol=0, atol=1e-9)


def test_forces_are_the_gradient_of_the_energy_of_neutral_charges(float64):
    """Central differences of the energy: the forces carry the neutralisation's shift of dE/dq."""
    calc = MLIPCalculator(small_qnep(2), dtype=torch.float64)
    atoms = rocksalt((1, 1, 1), 0.2)
    atoms.calc = calc
    forces = atoms.get_forces()
    for i, d in [(0, 0), (3, 2), (6, 1)]:
        assert numerical_force(calc.get_potential_energy, atoms, i, d, 1e-5) == pytest.approx(forces[i, d], abs=1e-6)


def test_mode1_coulomb_energy_is_the_madelung_energy(float64):
    """GPUMD's Ewald sum (alpha = pi / rc_R, truncated where GPUMD truncates it) of rocksalt +-1
    charges: E = -M k_e N / (2 r0), Madelung constant M = 1.747565, to the sum's truncation error."""
    from torch_geometric.data import Batch

    from mlip_plugins.data.structures import atoms_to_graph
    from mlip_plugins.graph import build_atomic_graph
    from mlip_plugins.nep.qnep import QNEPCoulomb
    from mlip_plugins.units import GPUMD_COULOMB_CONSTANT

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    coulomb = QNEPCoulomb(1, cutoff=8.0)
    batch = Batch.from_data_list([atoms_to_graph(atoms, 8.0)])
    graph = build_atomic_graph(batch, torch.zeros(len(atoms), dtype=torch.long), pos=batch.pos.to(torch.float64))
    charges = torch.tensor([1.0 if z == 11 else -1.0 for z in atoms.numbers], dtype=torch.float64)
    energy = float(coulomb(graph, charges).sum())
    expected = -1.747565 * GPUMD_COULOMB_CONSTANT * len(atoms) / (2 * 2.82)
    assert energy == pytest.approx(expected, rel=2e-5)
    # mode 2 is the k-space part alone: smaller in magnitude, same structure
    kspace = float(QNEPCoulomb(2, cutoff=8.0)(graph, charges).sum())
    assert 0 < abs(kspace) < abs(energy)


@pytest.mark.parametrize("header,message", [
    ("nep4_charge3 2 Te Pb", "not supported"),
    ("nep3_charge1 2 Te Pb", "charge models are NEP4"),
    ("nep4_charge1_charge2 2 Te Pb", "not supported"),
])
def test_unsupported_charge_headers_are_refused_in_one_line(tmp_path, header, message):
    path = tmp_path / "nep.txt"
    path.write_text(f"{header}\ncutoff 5 4 10 10\nn_max 2 2\nbasis_size 2 2\nl_max 2 0 0\nANN 4 0\n0.1\n")
    with pytest.raises(NEPFormatError, match=message) as info:
        read_nep(path)
    assert str(path) in str(info.value) and "line 1" in str(info.value) and "\n" not in str(info.value)


def test_non_periodic_structure_is_a_clear_error(float64):
    from mlip_plugins.data.structures import DataError

    atoms = rocksalt((1, 1, 1))
    atoms.pbc = False
    atoms.calc = MLIPCalculator(small_qnep(1), dtype=torch.float64)
    with pytest.raises(DataError, match="periodic"):
        atoms.get_potential_energy()


# -- calorine parity --------------------------------------------------------------------------------
def test_our_qnep_export_evaluated_by_calorine(tmp_path):
    pytest.importorskip("calorine")
    for charge_mode, zbl in [(1, {"outer": 2.0}), (2, None)]:
        potential = small_qnep(charge_mode, zbl)
        with torch.no_grad():
            potential.e0.copy_(torch.tensor([-1.0, -4.0], dtype=torch.float64))
        path = write_nep(potential, tmp_path / f"nep{charge_mode}.txt")
        atoms = rocksalt()
        assert_same(calorine_results(path, atoms), our_results(MLIPCalculator(potential, dtype=torch.float64), atoms), len(atoms))


@needs_qnep
def test_gpumd_pbte_qnep_matches_calorine_and_gpumds_own_predictions():
    pytest.importorskip("calorine")
    frames = read(QNEP / "train.xyz", ":")
    calc = MLIPCalculator.from_file(QNEP / "nep.txt")
    assert calc.potential.energy_model.charge_mode == 2
    gpumd_charges = np.loadtxt(QNEP / "charge_train.out")
    gpumd_energy = np.loadtxt(QNEP / "energy_train.out")[:, 0]
    start = 0
    for k, atoms in enumerate(frames):
        n = len(atoms)
        ours = our_results(calc, atoms)
        if k < 3:  # calorine is the float64 reference
            assert_same(calorine_results(QNEP / "nep.txt", atoms), ours, n)
        # GPUMD's training run (float32, 6 digits) prints the charges before it removes their mean
        gpumd = gpumd_charges[start : start + n]
        assert np.abs(ours["charges"] - (gpumd - gpumd.mean())).max() < 5e-6
        assert abs(ours["energy"] / n - gpumd_energy[k]) < 2e-5
        start += n


@needs_fixtures
@pytest.mark.parametrize("case", sorted(FIXTURE_CASES))
def test_gpumd_qnep_fixtures_match_calorine(tmp_path, case):
    pytest.importorskip("calorine")
    model, structure = FIXTURE_CASES[case]
    atoms = read(FIXTURES / "structures" / structure)
    ours = our_results(MLIPCalculator.from_file(FIXTURES / "models" / model), atoms)
    assert_same(calorine_results(FIXTURES / "models" / model, atoms), ours, len(atoms))
    # and the file we write back evaluates to the same values
    written = write_nep(load_nep_potential(FIXTURES / "models" / model), tmp_path / "nep.txt")
    assert_same(calorine_results(written, atoms), ours, len(atoms))


@needs_fixtures
@pytest.mark.parametrize("kspace", ["ewald", "pppm"])
def test_born_effective_charges_match_gpumds_goldens(kspace):
    """GPUMD's BEC goldens (GPU, float32) for the mode-1 BaTiO3 qNEP, at the suite's tolerances."""
    atoms = read(FIXTURES / "structures" / "BaTiO3-nat40-rattled.xyz")
    ours = our_results(MLIPCalculator.from_file(FIXTURES / "models" / "qnep_mode1_BaTiO3.txt"), atoms)
    golden = np.load(FIXTURES / "golden" / f"bec_bulk_perovskite_qnep_mode1_{kspace}.npz")["bec"]
    np.testing.assert_allclose(ours["born_effective_charges"], golden, rtol=1e-4, atol=1e-5)


def test_mlip_export_writes_a_qnep_that_reads_back(tmp_path, capsys):
    from mlip_plugins.checkpoint import export_potential
    from mlip_plugins.cli.export import main

    model_file = export_potential(small_qnep(1, {"outer": 2.0}), tmp_path / "model.pt")
    assert main([str(model_file), "--format", "nep", "-o", str(tmp_path / "nep.txt")]) in (None, 0)
    printed = capsys.readouterr().out
    checks = {line.split()[1].rstrip(":"): float(line.split()[-1]) for line in printed.splitlines() if "check" in line}
    assert "mlip-plugins_dq_max" in checks and all(value < 1e-9 for value in checks.values())
    assert (tmp_path / "nep.txt").read_text().startswith("nep4_zbl_charge1 2 Te Pb")
