"""nep.txt round trips and errors, nep.in -> config overrides, GPUMD train.xyz reading, mlip-export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from mlip_plugins.nep.nep_txt import NEPFormatError, format_nep, load_nep_potential, potential_to_nep, read_nep, write_nep
from mlip_plugins.nep.nep_in import NEPInputError, nep_in_to_overrides
from mlip_plugins.models.builder import build_potential

SPEC = {"name": "nep", "cutoff_angular": 3.5, "n_max": [3, 2], "basis_size": [4, 3], "l_max": [4, 2, 1], "neuron": 6}


def make_potential(version: int = 4, zbl=None, elements=("Pd", "Ni")):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        potential = build_potential({"elements": list(elements), "cutoff": 4.5,
                                     "energy": {"model": dict(SPEC, version=version, zbl=zbl, seed=3)}})
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        potential.energy_model.q_scaler.uniform_(0.5, 2.0)
        potential.energy_model.b1.fill_(0.3)
    return potential


def forward(potential, atoms):
    from torch_geometric.data import Batch

    from mlip_plugins.data.structures import atoms_to_graph

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        batch = Batch.from_data_list([atoms_to_graph(atoms, potential.cutoff)])
    finally:
        torch.set_default_dtype(previous)
    out = potential(batch)
    return float(out["energy"].detach()[0]), out["forces"].detach().numpy()


@pytest.mark.parametrize("version,zbl", [(4, None), (3, None), (4, {"outer": 2.0}), (3, {"outer": 2.2, "typewise_factor": 0.6})])
def test_nep_txt_round_trip_is_exact(tmp_path, version, zbl):
    potential = make_potential(version, zbl)
    path = write_nep(potential, tmp_path / "nep.txt")
    header = path.read_text().splitlines()[0]
    assert header.startswith(f"nep{version}" + ("_zbl" if zbl else "")) and header.endswith("Ni Pd")
    loaded = load_nep_potential(path)
    assert loaded.energy_model.version == version
    for name, value in potential.state_dict().items():
        if name in ("energy_model.scaler_fitted", "energy_model.max_neighbors"):
            continue
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)
    atoms = bulk("Ni", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.symbols[::3] = "Pd"
    atoms.rattle(0.1, seed=1)
    e1, f1 = forward(potential, atoms)
    e2, f2 = forward(loaded, atoms)
    assert e1 == pytest.approx(e2, abs=1e-12) and np.abs(f1 - f2).max() < 1e-12
    # writing the loaded model again gives the same file
    assert format_nep(potential_to_nep(loaded)).splitlines()[7:] == path.read_text().splitlines()[7:]


def test_nep3_cannot_carry_per_element_e0(tmp_path):
    potential = make_potential(3)
    with torch.no_grad():
        potential.e0.copy_(torch.tensor([-1.0, -2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="per-element E0"):
        write_nep(potential, tmp_path / "nep.txt")
    assert not (tmp_path / "nep.txt").exists()


def test_bad_nep_txt_files_name_the_problem(tmp_path):
    good = format_nep(potential_to_nep(make_potential())).splitlines()
    cases = {
        "truncated": (good[:-3], "expected .* parameter values"),
        "temperature": (["nep4_temperature 2 Ni Pd"] + good[1:], "not supported"),
        "nep5": (["nep5 2 Ni Pd"] + good[1:], "version 5"),
        "types": (["nep4 3 Ni Pd"] + good[1:], "3 types announced"),
        "missing_line": (good[:2] + good[3:], "line 3: expected the 'n_max' line"),
        "not_a_number": (good[:10] + ["abc"] + good[11:], "not a number"),
    }
    for name, (lines, message) in cases.items():
        path = tmp_path / f"{name}.txt"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(NEPFormatError, match=message):
            read_nep(path)
    with pytest.raises(ValueError, match="nep.txt holds a single NEP"):
        write_nep(build_potential({"elements": ["Cu"], "cutoff": 4.0, "energy": {"descriptor": {"name": "radial"}}}), tmp_path / "x.txt")


def test_nep_in_maps_onto_the_config(tmp_path):
    path = tmp_path / "nep.in"
    path.write_text(
        "type 2 Te Pb   # a comment\n"
        "version 4\ncutoff 7 4.5\nn_max 6 5\nbasis_size 7 6\nl_max 6 2 1\nneuron 40\n"
        "zbl 2.0\nuse_typewise_cutoff_zbl 0.65\n"
        "lambda_1 0.01\nlambda_2 0.02\nlambda_e 1.5\nlambda_f 2\nlambda_v 0.2\n"
        "batch 100\ngeneration 5000\npopulation 40\nlambda_shear 1\n"
    )
    overrides = nep_in_to_overrides(path)
    model = overrides["model"]["energy"]["model"]
    assert overrides["model"]["elements"] == ["Te", "Pb"] and overrides["model"]["cutoff"] == 7.0
    assert model == {
        "name": "nep", "version": 4, "cutoff": 7.0, "cutoff_angular": 4.5, "n_max": [6, 5], "basis_size": [7, 6],
        "l_max": [6, 2, 1], "neuron": 40, "zbl": {"inner": 0.0, "outer": 2.0, "typewise_factor": 0.65},
        "lambda_1": 0.01, "lambda_2": 0.02,
    }
    assert overrides["loss"] == {"energy": 1.5, "forces": 2.0, "stress": 0.2}
    assert overrides["data"]["batch_size"] == 100
    assert overrides["trainer"] == {"max_steps": 5000, "max_epochs": -1}
    assert "optimizer" not in overrides  # population is an SNES setting
    snes = nep_in_to_overrides(path, {"optimizer": {"name": "snes"}})
    assert snes["optimizer"] == {"population": 40}
    # a nep.in with only `type` takes GPUMD's model defaults
    (tmp_path / "min.in").write_text("type 1 Si\n")
    minimal = nep_in_to_overrides(tmp_path / "min.in")["model"]
    assert minimal["cutoff"] == 8.0 and minimal["energy"]["model"]["l_max"] == [4, 2, 0]
    assert minimal["energy"]["model"]["cutoff_angular"] == 4.0 and minimal["energy"]["model"]["neuron"] == 30
    # the overrides build a model
    cfg = nep_in_to_overrides(path)["model"]
    potential = build_potential(cfg)
    assert potential.energy_model.descriptor.dim == 7 + 6 * 8


@pytest.mark.parametrize("text,message", [
    ("cutoff 5 4\n", "'type' is missing"),
    ("type 2 Te\n", "2 types announced"),
    ("type 1 Xx\n", "unknown element"),
    ("type 1 Si\nprediction 1\n", "line 2: prediction"),
    ("type 1 Si\nfoo 3\n", "line 2: unknown nep.in keyword 'foo'"),
    ("type 1 Si\nn_max 4\n", "line 2: n_max: expected 2 values"),
    ("type 1 Si\ncutoff 4 5\n", "angular cutoff exceeds"),
    ("type 1 Si\nneuron 4\nneuron 5\n", "repeated"),
])
def test_bad_nep_in_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "nep.in"
    path.write_text(text)
    with pytest.raises(NEPInputError, match=message):
        nep_in_to_overrides(path)


GPUMD_XYZ = """2
Lattice="3 0 0 0 3.2 0 0 0 3.1" Energy=-7.5 Virial="0.1 0.2 0.3 0.2 0.5 0.6 0.3 0.6 0.9" Weight=2.0 Properties=species:S:1:pos:R:3:force:R:3
Cu 0 0 0 0.1 0.2 0.3
Ag 1.5 1.5 1.5 -0.1 -0.2 -0.3
2
lattice="3 0 0 0 3 0 0 0 3" energy=-7.0 stress="0.01 0 0 0 0.02 0 0 0 0.03" properties=species:S:1:pos:R:3:forces:R:3
Cu 0 0 0 0.5 0.2 0.3
Ag 1.5 1.5 1.5 -0.5 -0.2 -0.3
"""


def test_gpumd_train_xyz_conventions(tmp_path):
    """Case-insensitive keys, force/forces, virial (eV, + compressed) or stress, weight, periodic."""
    from mlip_plugins.data.reading import read_structures

    path = tmp_path / "train.xyz"
    path.write_text(GPUMD_XYZ)
    first, second = read_structures(path, file_format="gpumd-xyz")
    assert first.atoms.pbc.all() and second.atoms.pbc.all()
    assert first.labels["energy"] == -7.5 and first.labels["weight"] == 2.0
    np.testing.assert_allclose(first.labels["forces"][0], [0.1, 0.2, 0.3])
    virial = np.array([0.1, 0.2, 0.3, 0.2, 0.5, 0.6, 0.3, 0.6, 0.9]).reshape(3, 3)
    np.testing.assert_allclose(first.labels["stress"], -virial / (3 * 3.2 * 3.1))
    assert second.labels["energy"] == -7.0
    np.testing.assert_allclose(second.labels["stress"], np.diag([0.01, 0.02, 0.03]))
    np.testing.assert_allclose(second.labels["forces"][0], [0.5, 0.2, 0.3])


def test_gpumd_xyz_writer_and_ase_extxyz_compatibility(tmp_path):
    """Our GPUMD writer round-trips, and the gpumd-xyz reader reads ASE's extxyz (the default dataset)."""
    from ase.io import read, write

    from mlip_plugins.data.default_dataset import generate_default_dataset
    from mlip_plugins.data.reading import read_structures
    from mlip_plugins.io.gpumd_xyz import write_gpumd_xyz

    frames = generate_default_dataset(n_structures=6, seed=2)
    ase_file = tmp_path / "ase.xyz"
    write(ase_file, frames, format="extxyz")
    gpumd_file = tmp_path / "train.xyz"
    with open(gpumd_file, "w") as handle:
        write_gpumd_xyz(handle, read(ase_file, ":"))
    for path, fmt in ((ase_file, "gpumd-xyz"), (gpumd_file, "gpumd-xyz")):
        ours = read_structures(path, file_format=fmt)
        reference = read_structures(ase_file)
        for a, b in zip(ours, reference):
            assert (a.atoms.pbc == b.atoms.pbc).all()
            np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-9)
            assert a.labels["energy"] == pytest.approx(b.labels["energy"], abs=1e-9)
            np.testing.assert_allclose(a.labels["forces"], b.labels["forces"], atol=1e-9)
            if "stress" in b.labels:
                np.testing.assert_allclose(a.labels["stress"], b.labels["stress"], atol=1e-9)


def test_mlip_export_cli(tmp_path, capsys):
    from mlip_plugins.checkpoint import export_potential
    from mlip_plugins.cli.export import main

    potential = make_potential(zbl=1.8)
    with torch.no_grad():
        potential.e0.copy_(torch.tensor([-2.0, -3.0], dtype=torch.float64))
    model_file = export_potential(potential, tmp_path / "model.pt")
    main([str(model_file), "--format", "nep", "-o", str(tmp_path / "nep.txt")])
    printed = capsys.readouterr().out
    checks = {line.split()[1].rstrip(":"): float(line.split()[-1]) for line in printed.splitlines() if "check" in line}
    assert checks and all(value < 1e-9 for value in checks.values())
    assert main([str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "out.txt")]) == 2
    assert "not found" in capsys.readouterr().err


def test_uniform_init_draws_gpumd_and_pytorch_ranges():
    """init="uniform" (experiment=nep's): c ~ U(-1, 1) as GPUMD, weights U(+-1/sqrt(fan_in)), b0 = 0."""
    import math

    import pytest

    from mlip_plugins.nep.model import NEPModel

    model = NEPModel(2, cutoff=5.0, cutoff_angular=4.0, n_max=[4, 4], basis_size=[6, 6], l_max=[4, 2, 0], neuron=10, init="uniform")
    dim = model.descriptor.dim
    for c in (model.descriptor.c_radial, model.descriptor.c_angular):
        assert c.abs().max() <= 1.0 and c.abs().max() > 0.9  # the whole range, not GNEP's narrower one
    assert model.w0.abs().max() <= 1.0 / math.sqrt(dim) and model.w1.abs().max() <= 1.0 / math.sqrt(10)
    assert torch.all(model.b0 == 0)
    gnep = NEPModel(2, cutoff=5.0, cutoff_angular=4.0, n_max=[4, 4], basis_size=[6, 6], l_max=[4, 2, 0], neuron=10)
    assert not torch.equal(gnep.w0, model.w0)
    with pytest.raises(ValueError, match="init"):
        NEPModel(2, init="xavier")
