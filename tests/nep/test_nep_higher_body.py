"""GPUMD's higher-body descriptor channels q_112, q_123, q_233, q_134 (``l_max`` lines with
more than three entries), next to q_222 and q_1111.

* the contraction of real moments with :func:`coupling_tensor` is the Wigner-3j contraction of
  the complex moments (the definition), independently of GPUMD;
* every channel, alone and together, against calorine's C++ NEP (CPUNEP) on nep.txt files that
  calorine wrote, and on the files we write back (round trip);
* TorchNEP's ``mixed`` golden (GPUMD ``nep`` output for ``l_max 4 1 1 1 1``): the descriptor
  blocks that GPUMD still defines the same way (radial, 3-body, q_222, q_1111, q_112) against
  GPUMD's own numbers, and energies, forces and virials against calorine. The golden was made
  by a GPUMD version (TorchNEP commit 90ad63d, May 2026) in which the fifth ``l_max`` entry
  switched on a quartic q_1122 channel; GPUMD has since put q_123 there (as calorine does).
  Read with ``l_max_convention="gpumd-2026-05"``, all 81 descriptor components and GPUMD's
  energies, forces and virials match.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from mlip_plugins.nep.descriptor import CUBIC_CHANNELS, NEPDescriptor, coupling_tensor, parse_l_max
from mlip_plugins.nep.nep_txt import NEPFormatError, format_nep, load_nep_potential, read_nep, write_nep
from mlip_plugins.testing.finite_differences import numerical_force

DATASETS = Path(os.environ.get("MLIP_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
MIXED = DATASETS / "torchnep_golden" / "set_v2026-05"
E_TOL, F_TOL, S_TOL = 1e-8, 1e-7, 1e-8  # float64, against calorine

pytestmark = pytest.mark.usefixtures("float64")


def needs_mixed_golden():
    if not (MIXED / "nep_mixed.txt").exists():
        pytest.skip(f"TorchNEP's mixed golden not found at {MIXED} (set MLIP_DATASETS)")


# -- the definition --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CUBIC_CHANNELS))
def test_coupling_tensor_is_the_wigner_3j_contraction_of_complex_moments(name):
    """sum_abc T A_a B_b C_c (real moments) = sum (l1 l2 l3; m1 m2 m3) A_m1 B_m2 C_m3 (complex
    moments with scipy's Condon-Shortley harmonics), for moments of random neighbour sets."""
    from scipy import special
    from sympy.physics.wigner import wigner_3j

    from mlip_plugins.descriptors.harmonics import real_spherical_harmonics

    degrees = CUBIC_CHANNELS[name]
    rng = np.random.default_rng(5)
    vectors = [rng.normal(size=(6, 3)) for _ in range(3)]  # one neighbour set per moment
    weights = [rng.normal(size=6) for _ in range(3)]
    real, complex_ = [], []
    for l, v, w in zip(degrees, vectors, weights):
        unit = v / np.linalg.norm(v, axis=1, keepdims=True)
        harmonics = real_spherical_harmonics(torch.as_tensor(unit), l)[:, l * l :].numpy()
        real.append(w @ harmonics)
        theta, phi = np.arccos(unit[:, 2]), np.arctan2(unit[:, 1], unit[:, 0])
        sph = getattr(special, "sph_harm_y", None)
        complex_.append({m: np.sum(w * (sph(l, m, theta, phi) if sph else special.sph_harm(m, l, phi, theta)))
                         for m in range(-l, l + 1)})
    ours = np.einsum("a,b,c,abc->", *real, coupling_tensor(*degrees))
    l1, l2, l3 = degrees
    expected = sum(float(wigner_3j(l1, l2, l3, m1, m2, -m1 - m2)) * complex_[0][m1] * complex_[1][m2] * complex_[2][-m1 - m2]
                   for m1 in range(-l1, l1 + 1) for m2 in range(-l2, l2 + 1) if abs(m1 + m2) <= l3)
    assert abs(expected.imag) < 1e-12
    assert abs(ours - expected.real) < 1e-12 * max(1.0, abs(expected.real))


def test_l_max_lines():
    assert parse_l_max([4, 2, 1]) == (4, ("q222", "q1111"))
    assert parse_l_max([4, 1, 1, 1, 1]) == (4, ("q222", "q1111", "q112", "q123"))
    assert parse_l_max([4, 0, 0, 0, 0, 0, 1]) == (4, ("q134",))
    assert NEPDescriptor(1, n_max=[2, 3], l_max=[4, 1, 0, 1, 0, 1]).config()["l_max"] == [4, 2, 0, 1, 0, 1]
    assert NEPDescriptor(1, n_max=[2, 3], l_max=[4, 1, 0, 1, 0, 1]).dim == 3 + 4 * (4 + 3)
    with pytest.raises(ValueError, match="q134 needs the 3-body degree L >= 4"):
        parse_l_max([3, 0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="1 to 7 values"):
        parse_l_max([4, 2, 1, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="q123 entry must be 0 or 1"):
        parse_l_max([4, 2, 1, 0, 3])


def test_bad_l_max_line_in_a_nep_txt_names_file_and_line(tmp_path):
    path = tmp_path / "nep.txt"
    write_nep(load_nep_potential_of(tmp_path, l_max=(4, 2, 1, 1, 1, 1, 1)), path)
    text = path.read_text().replace("l_max 4 2 1 1 1 1 1", "l_max 3 2 1 1 1 1 1")
    path.write_text(text)
    with pytest.raises(NEPFormatError, match=r"nep.txt: line 5: l_max: q134 needs the 3-body degree L >= 4"):
        read_nep(path)


# -- against calorine ------------------------------------------------------------------------
def calorine_file(tmp_path, l_max, types=("Cu", "Ag"), seed=0) -> Path:
    from test_nep_parity import random_calorine_model

    model = random_calorine_model(types, l_max=l_max[:3], seed=seed)
    flags = dict(zip(("has_q_112", "has_q_123", "has_q_233", "has_q_134"), (list(l_max[3:]) + [0] * 4)[:4]))
    n_per = model.n_max_angular + 1
    extra = sum(flags.values())
    for name, value in flags.items():
        setattr(model, name, value)
    if extra:  # widen the networks and the scaler by the new blocks
        rng = np.random.default_rng(seed + 1)
        for symbol in types:
            w0 = model.ann_parameters[symbol]["w0"]
            model.ann_parameters[symbol]["w0"] = np.hstack([w0, rng.normal(size=(w0.shape[0], extra * n_per)) * 0.6])
        model.q_scaler = list(model.q_scaler) + list(rng.uniform(0.3, 2.0, size=extra * n_per))
        model.n_descriptor_angular += extra * n_per
    path = tmp_path / "calorine.txt"
    model.write(str(path))
    return path


def load_nep_potential_of(tmp_path, l_max):
    return load_nep_potential(calorine_file(tmp_path, l_max))


def assert_calorine_parity(reference_file, ours, atoms_list) -> None:
    from calorine.calculators import CPUNEP

    from mlip_plugins.calculator import MLIPCalculator

    calc = MLIPCalculator(ours)
    for atoms in atoms_list:
        ref, mine = atoms.copy(), atoms.copy()
        ref.calc, mine.calc = CPUNEP(str(reference_file)), calc
        n = len(atoms)
        assert abs(ref.get_potential_energy() - mine.get_potential_energy()) / n < E_TOL
        assert np.abs(ref.get_forces() - mine.get_forces()).max() < F_TOL
        assert np.abs(ref.get_stress() - mine.get_stress()).max() < S_TOL


LINES = {
    "all_channels": (4, 2, 1, 1, 1, 1, 1),
    "q112_q123_without_q222": (4, 0, 0, 1, 1),
    "q233_only_l3": (3, 0, 0, 0, 0, 1),
    "q134_only": (4, 0, 0, 0, 0, 0, 1),
}


@pytest.mark.parametrize("case", sorted(LINES))
def test_channels_match_calorine_and_survive_the_round_trip(tmp_path, case):
    """A calorine-written file with these channels: our energies, forces and stress equal
    CPUNEP's; read -> write -> read keeps every number; CPUNEP evaluates our file the same."""
    pytest.importorskip("calorine")
    from test_nep_parity import structures

    l_max = LINES[case]
    source = calorine_file(tmp_path, l_max)
    content = read_nep(source)
    potential = load_nep_potential(source)
    assert potential.energy_model.descriptor.dim == content.dim == len(content.q_scaler)
    atoms_list = structures(["Cu", "Ag"])
    assert_calorine_parity(source, potential, atoms_list)

    written = write_nep(potential, tmp_path / "ours.txt")
    again = read_nep(written)
    assert again.l_max == content.l_max
    assert f"l_max {' '.join(map(str, content.l_max))}\n" in written.read_text()
    for field in ("w0", "b0", "w1", "c_radial", "c_angular", "q_scaler"):
        np.testing.assert_array_equal(getattr(again, field), getattr(content, field))
    assert format_nep(again) == format_nep(read_nep(write_nep(load_nep_potential(written), tmp_path / "twice.txt")))
    assert_calorine_parity(written, potential, atoms_list[:1])


def test_forces_and_stress_of_the_channels_match_finite_differences():
    """Autograd forces with every higher-body channel on (float64 central differences)."""
    from test_nep_descriptor import batch_of, energy, nep_potential, structure

    potential = nep_potential(l_max=[4, 2, 1, 1, 1, 1, 1])
    atoms = structure()
    forces = potential(batch_of(atoms), compute_forces=True)["forces"].detach().numpy()
    for i, d in [(0, 0), (1, 2), (3, 1)]:
        assert abs(forces[i, d] - numerical_force(lambda structure: energy(potential, structure), atoms, i, d, 1e-5)) < 1e-6


# -- TorchNEP's mixed golden (GPUMD output) --------------------------------------------------
def mixed_frames():
    from ase.io import read

    return read(MIXED / "mixed.xyz", ":")


LEGACY = "gpumd-2026-05"  # the golden's GPUMD: the fifth l_max entry is q_1122


def mixed_descriptors(potential) -> np.ndarray:
    """Scaled descriptors (the network input, GPUMD's ``descriptor.out``) of the golden's 640 atoms."""
    from torch_geometric.data import Batch

    from mlip_plugins.data.structures import atoms_to_graph
    from mlip_plugins.graph import build_atomic_graph

    model = potential.energy_model
    batch = Batch.from_data_list([atoms_to_graph(atoms, model.cutoff) for atoms in mixed_frames()])
    graph = build_atomic_graph(batch, potential.element_map(batch.z), pos=batch.pos.double())
    with torch.no_grad():
        return model.scaled_descriptor(graph).numpy()


@pytest.mark.parametrize("convention", ["gpumd", LEGACY])
def test_mixed_golden_descriptors_match_gpumd(convention):
    """All 81 components of all 640 atoms in GPUMD's order, TorchNEP's tolerance (rtol 1e-5,
    atol 2e-4; GPUMD computes in float32 and prints 6 digits). With today's convention the
    last block is q_123, not the golden's q_1122, so only the 72 shared components compare."""
    needs_mixed_golden()
    golden = np.load(MIXED / "mixed.gpumd.npz")["D_per_atom"]
    potential = load_nep_potential(MIXED / "nep_mixed.txt", l_max_convention=convention)
    last = "q123" if convention == "gpumd" else "q1122"
    assert potential.energy_model.descriptor.channels == ("q222", "q1111", "q112", last)
    ours = mixed_descriptors(potential)
    assert ours.shape == golden.shape == (640, 81)
    shared = 81 if convention == LEGACY else 9 + 9 * (4 + 3)  # radial, l = 1..4, q222, q1111, q112
    np.testing.assert_allclose(ours[:, :shared], golden[:, :shared], rtol=1e-5, atol=2e-4)
    if convention == "gpumd":
        assert np.abs(ours[:, shared:] - golden[:, shared:]).max() > 1e-2  # q_123 is not q_1122


def test_mixed_golden_energies_forces_virials_match_gpumd():
    """GPUMD's per-atom energies, forces and per-atom virials (xx yy zz xy yz zx) of the five
    frames, read with the golden's l_max convention, at TorchNEP's tolerance."""
    needs_mixed_golden()
    from mlip_plugins.calculator import MLIPCalculator

    golden = np.load(MIXED / "mixed.gpumd.npz")
    calc = MLIPCalculator(load_nep_potential(MIXED / "nep_mixed.txt", l_max_convention=LEGACY))
    energies, forces, virials = [], [], []
    for atoms in mixed_frames():
        atoms.calc = calc
        n = len(atoms)
        energies.append(atoms.get_potential_energy() / n)
        forces.append(atoms.get_forces())
        virial = -atoms.get_stress(voigt=True) * atoms.get_volume() / n  # xx yy zz yz xz xy
        virials.append(virial[[0, 1, 2, 5, 3, 4]])
    np.testing.assert_allclose(energies, golden["E_per_atom"], rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(np.concatenate(forces), golden["F"], rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(np.array(virials), golden["V_per_atom"], rtol=1e-5, atol=2e-4)


def test_legacy_convention_round_trip(tmp_path):
    """The 2026-05 convention survives export (same l_max line, same numbers, same energies)."""
    needs_mixed_golden()
    from mlip_plugins.calculator import MLIPCalculator

    potential = load_nep_potential(MIXED / "nep_mixed.txt", l_max_convention=LEGACY)
    written = write_nep(potential, tmp_path / "nep.txt")
    assert "l_max 4 2 1 1 1\n" in written.read_text()
    again = load_nep_potential(written, l_max_convention=LEGACY)
    assert again.energy_model.config() == potential.energy_model.config()
    atoms = mixed_frames()[0]
    e = [MLIPCalculator(p).get_potential_energy(atoms) for p in (potential, again)]
    assert abs(e[0] - e[1]) < 1e-10


def test_mixed_golden_matches_calorine():
    """Energies, forces and stress of the mixed model read with today's convention (q222,
    q1111, q112, q123) on two of its 128-atom Cr frames, against CPUNEP, float64."""
    needs_mixed_golden()
    pytest.importorskip("calorine")
    assert_calorine_parity(MIXED / "nep_mixed.txt", load_nep_potential(MIXED / "nep_mixed.txt"), mixed_frames()[:2])


def test_nep_in_l_max_with_the_higher_body_flags(tmp_path):
    from mlip_plugins.nep.nep_in import NEPInputError, nep_in_to_overrides

    path = tmp_path / "nep.in"
    path.write_text("type 1 Cr\nl_max 4 1 1 1 1\n")
    assert nep_in_to_overrides(path)["model"]["energy"]["model"]["l_max"] == [4, 2, 1, 1, 1]
    path.write_text("type 1 Cr\nl_max 4\n")  # one value: GPUMD keeps q222 on
    assert nep_in_to_overrides(path)["model"]["energy"]["model"]["l_max"] == [4, 2, 0]
    path.write_text("type 1 Cr\nl_max 2 0 0 0 1\n")
    with pytest.raises(NEPInputError, match=r"nep.in: line 2: l_max: q123 needs the 3-body degree L >= 3"):
        nep_in_to_overrides(path)
