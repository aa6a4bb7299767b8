"""Routing analysis: per-element statistics (JSON/CSV), PCA plot, the ``moe_analysis``
callback inside a real Lightning fit, and the ``mlip-moe`` command on an exported model."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.data import atomic_numbers

from mlip_plugins import registry
from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.models import build_potential
from mlip_plugins.moe.analysis import gate_pca, group_label, period, periodic_group, write_moe_analysis

ELEMENTS = ["Al", "Ni", "Cu", "Ag"]


def model(router, **readout):
    torch.manual_seed(0)
    spec = {"descriptor": {"name": "radial", "n_max": 4, "basis_size": 4}, "readout": {"name": "moe", "num_experts": 5, "top_k": 2, "num_shared": 1, "hidden": [6], "router": router, **readout}}
    return build_potential({"elements": ELEMENTS, "cutoff": 4.5, "energy": spec})


def graphs(n: int = 4) -> list:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.9, cubic=True)
        atoms.set_chemical_symbols(list(rng.choice(["Al", "Ni", "Cu"], size=4)))  # no Ag in the data
        atoms.positions += rng.normal(scale=0.05, size=(4, 3))
        out.append(atoms_to_graph(atoms, 4.5))
    return out


@pytest.mark.parametrize(
    "symbol, group, row",
    [("H", 1, 1), ("He", 18, 1), ("B", 13, 2), ("Al", 13, 3), ("Ni", 10, 4), ("Cu", 11, 4), ("Pd", 10, 5),
     ("Ag", 11, 5), ("Pt", 10, 6), ("Au", 11, 6), ("Hf", 4, 6), ("Rn", 18, 6), ("Fr", 1, 7), ("Og", 18, 7), ("Ce", None, 6),
     ("La", None, 6), ("Yb", None, 6), ("Lu", 3, 6), ("Lr", 3, 7), ("Y", 3, 5), ("Ta", 5, 6)],
)
def test_periodic_table_groups(symbol, group, row):
    z = atomic_numbers[symbol]
    assert periodic_group(z) == group
    assert period(z) == row
    assert group_label(z) == (f"group {group}" if group else "lanthanides" if row == 6 else "actinides")


def test_pca_recovers_two_clusters():
    vectors = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0], [0, 0.1, 0.9]])
    coords, ratio = gate_pca(vectors)
    assert ratio[0] > 0.9
    assert np.sign(coords[0, 0]) == np.sign(coords[1, 0]) != np.sign(coords[2, 0]) == np.sign(coords[3, 0])


def test_element_router_statistics_come_from_the_gate_table(tmp_path):
    potential = model("element")
    summary = write_moe_analysis(potential, tmp_path, graphs())
    (layer,) = summary["layers"]
    assert layer["source"] == "router table" and layer["router"] == "ElementRouter"
    table = potential.energy_model.readout.moe.router.element_gates().detach().numpy()
    by_symbol = {e["symbol"]: e for e in layer["elements"]}
    assert list(by_symbol) == ELEMENTS
    for k, symbol in enumerate(ELEMENTS):
        np.testing.assert_allclose(by_symbol[symbol]["mean_gate"], table[k], rtol=1e-6)
        assert sum(by_symbol[symbol]["selection_frequency"]) == 2  # top-2
        assert by_symbol[symbol]["pca"] is not None  # table routers cover every element, even Ag
    assert by_symbol["Cu"]["group"] == 11 and by_symbol["Al"]["group"] == 13
    assert by_symbol["Ag"]["n_atoms"] == 0 and by_symbol["Cu"]["n_atoms"] > 0
    saved = json.loads((tmp_path / "moe_routing.json").read_text())
    assert saved["layers"][0]["elements"][0]["symbol"] == "Al"
    rows = list(csv.DictReader(open(tmp_path / "moe_routing.csv")))
    assert len(rows) == len(ELEMENTS) * 5
    assert (tmp_path / "moe_pca_energy_model.readout.moe.png").stat().st_size > 1000


def test_feature_router_statistics_are_averaged_over_the_data(tmp_path):
    potential = model({"name": "feature"}, top_k=None)
    data = graphs()
    summary = write_moe_analysis(potential, tmp_path, data, batch_size=3, plot=False)
    (layer,) = summary["layers"]
    assert layer["source"] == "data"
    counts = {e["symbol"]: e["n_atoms"] for e in layer["elements"]}
    z = torch.cat([g.z for g in data])
    assert counts["Al"] == int((z == 13).sum()) and counts["Ag"] == 0
    for element in layer["elements"]:
        if element["n_atoms"]:
            assert sum(element["mean_gate"]) == pytest.approx(1.0)
            assert element["pca"] is not None
        else:
            assert element["pca"] is None
    assert not list(tmp_path.glob("*.png"))
    # without data a feature router cannot be analysed: nothing is written
    assert write_moe_analysis(potential, tmp_path / "none", None)["layers"] == []


def test_callback_writes_into_the_run_directory_at_fit_end(tmp_path):
    callback_cls = registry.resolve("callbacks", "moe_analysis")
    callback = callback_cls(split="val", max_structures=2)
    datamodule = SimpleNamespace(val_graphs=graphs(3), train_graphs=graphs(5))
    trainer = SimpleNamespace(is_global_zero=True, log_dir=str(tmp_path / "logs"), default_root_dir=str(tmp_path), datamodule=datamodule)
    module = SimpleNamespace(model=model({"name": "global", "source": "features"}))
    callback.on_fit_end(trainer, module)
    written = json.loads((tmp_path / "moe_analysis" / "moe_routing.json").read_text())
    assert written["layers"][0]["source"] == "data"
    assert sum(e["n_atoms"] for e in written["layers"][0]["elements"]) == 8  # 2 structures x 4 atoms
    trainer.is_global_zero = False  # other ranks write nothing
    trainer.default_root_dir = str(tmp_path / "rank1")
    callback.on_fit_end(trainer, module)
    assert not (tmp_path / "rank1").exists()


def test_callback_in_a_lightning_fit(tmp_path, tiny_xyz):
    import lightning as L

    from lightning_modules.datamodule import AtomsDataModule
    from lightning_modules.module import PotentialModule

    torch.manual_seed(0)
    model_cfg = {"elements": ["Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"], "cutoff": 4.0,
                 "energy": {"descriptor": {"name": "radial", "n_max": 3, "basis_size": 3},
                            "readout": {"name": "moe", "num_experts": 4, "top_k": 1, "num_shared": 1, "hidden": [4], "load_balance": 0.01}}}
    module = PotentialModule(model=model_cfg, optimizer={"name": "adam", "lr": 1e-3})
    datamodule = AtomsDataModule(cutoff=4.0, path=str(tiny_xyz), batch_size=8, cache=False)
    callback = registry.resolve("callbacks", "moe_analysis")(plot=False)
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(tmp_path), name="logs", version="")  # as conf/logger/csv.yaml: log_dir is <run>/logs
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[callback], inference_mode=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    assert not (tmp_path / "logs" / "moe_analysis").exists()  # the README's <run>/moe_analysis
    written = json.loads((tmp_path / "moe_analysis" / "moe_routing.json").read_text())
    assert [e["symbol"] for e in written["layers"][0]["elements"]] == model_cfg["elements"]


def test_mlip_moe_command_on_an_exported_model(tmp_path, capsys):
    from mlip_plugins.checkpoint import export_potential
    from mlip_plugins.cli.moe import main

    path = export_potential(model("element"), tmp_path / "moe.pt")
    assert main([str(path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "ElementRouter" in printed and "Cu (group 11)" in printed
    assert (tmp_path / "out" / "moe_routing.csv").exists()
    assert (tmp_path / "out" / "moe_pca_energy_model.readout.moe.png").exists()


def test_mlip_moe_writes_beside_the_checkpoint_by_default(tmp_path, monkeypatch, capsys):
    """Not into the current directory: <run>/moe_analysis for <run>/checkpoints/*.ckpt (as the callback)."""
    from mlip_plugins.checkpoint import export_potential
    from mlip_plugins.cli.moe import main

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    path = export_potential(model("element"), tmp_path / "run" / "checkpoints" / "moe.pt")
    monkeypatch.chdir(tmp_path)
    assert main([str(path), "--no-plot"]) == 0
    assert (tmp_path / "run" / "moe_analysis" / "moe_routing.json").exists()
    assert not (tmp_path / "moe_analysis").exists()


def test_periodic_correlation_of_expert_usage():
    """Gates that encode (group, period) correlate perfectly, beating every shuffle; random gates do not."""
    from mlip_plugins.moe.analysis import periodic_correlation

    symbols = ["Sc", "Ti", "V", "Cr", "Y", "Zr", "Nb", "Mo", "Lu", "Hf", "Ta", "W", "Ni", "Pd", "Pt"]
    numbers = [atomic_numbers[s] for s in symbols]
    encoded = np.array([[periodic_group(z), period(z)] for z in numbers], dtype=float)
    result = periodic_correlation(encoded, numbers, permutations=100)
    assert result["spearman"] == pytest.approx(1.0)
    assert result["p"] == 0.0 and abs(result["shuffled_mean"]) < 0.2
    noise = periodic_correlation(np.random.default_rng(0).random((len(numbers), 8)), numbers, permutations=100)
    assert abs(noise["spearman"]) < 0.3 and noise["p"] > 0.01
    with pytest.raises(ValueError, match="f block"):
        periodic_correlation(encoded[:3], [atomic_numbers[s] for s in ("Ce", "Ti", "V")])
