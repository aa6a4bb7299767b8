"""``mlip-fim`` on an exported model: table, JSON, plots, saved uncertainty model, clear errors."""

from __future__ import annotations

import json

import torch
from ase.io import write

from mlip_plugins.checkpoint import export_potential
from mlip_plugins.cli.fim import main
from mlip_plugins.data.default_dataset import generate_default_dataset
from mlip_plugins.models import build_potential
from mlip_plugins.uncertainty import FisherUncertainty


def test_mlip_fim_prints_table_and_writes_files(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        potential = build_potential({"elements": ["Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"], "cutoff": 4.0, "energy": {"sum": [
            {"descriptor": {"name": "radial", "n_max": 2, "basis_size": 3}, "readout": {"name": "linear"}, "name": "two_body"},
            {"descriptor": {"name": "radial", "n_max": 1, "basis_size": 2, "cutoff": 3.0}, "readout": {"name": "mlp", "hidden": [3]}, "name": "short"},
        ]}})
        model = export_potential(potential, tmp_path / "model.pt")
        data = tmp_path / "data.xyz"
        write(data, generate_default_dataset(n_structures=4, seed=2), format="extxyz")
        code = main([str(model), str(data), "--probe-size", "3", "-o", str(tmp_path / "fim"), "--groups",
                     "--save-uncertainty", str(tmp_path / "unc.pt")])
        out = capsys.readouterr().out
        assert code == 0
        assert "condition number" in out and "two_body" in out and "short/readout.layers.0.weight" in out
        report = json.loads((tmp_path / "fim" / "fisher.json").read_text())
        assert report["n_structures"] == 3 and {t["name"] for t in report["terms"]} == {"two_body", "short"}
        assert (tmp_path / "fim" / "fisher_spectrum.png").exists() and (tmp_path / "fim" / "fisher_attribution.png").exists()
        assert FisherUncertainty.load(tmp_path / "unc.pt").info["n_structures"] == 4
        # the saved uncertainty model in mlip-eval and in the ASE calculator
        from mlip_plugins.calculator import MLIPCalculator
        from mlip_plugins.cli.evaluate import main as evaluate

        assert evaluate([str(model), str(data), "-o", str(tmp_path / "eval"), "--uncertainty", str(tmp_path / "unc.pt")]) == 0
        evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
        assert any(k.startswith("uncertainty_") and "spearman" in k for k in evaluated)
        atoms = generate_default_dataset(n_structures=1, seed=3)[0]
        atoms.calc = MLIPCalculator.from_file(model, uncertainty=tmp_path / "unc.pt")
        atoms.get_potential_energy()
        assert atoms.calc.results["energy_std"] > 0
        assert atoms.calc.results["forces_std"].shape == (len(atoms), 3)
        assert main([str(tmp_path / "missing.pt"), str(data)]) == 2
        assert "mlip-fim: error:" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
