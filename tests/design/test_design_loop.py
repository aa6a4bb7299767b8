"""Adaptive design: tree edits, Fisher-guided move ranking, and ``mlip-design`` end to end."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.design.space import (
    DEFAULT_BLOCKS,
    DesignLimits,
    canonical_key,
    combine,
    describe,
    propose_moves,
    remove_term,
    term_names,
)
from mlip_plugins.fim import analyse
from mlip_plugins.models import build_potential


def term(name, n_max=2, nonlinear=False, cutoff=None):
    spec = DEFAULT_BLOCKS["radial"].term(size=n_max, nonlinear=nonlinear, name=name)
    if cutoff is not None:
        spec["descriptor"]["cutoff"] = cutoff
    return spec


def test_tree_edits_and_canonical_keys():
    a, b, c = term("a"), term("b", 3), term("c", nonlinear=True)
    ab = combine(a, b, "sum")
    assert canonical_key(ab) == canonical_key(combine(b, a, "sum"))  # + commutes, names do not matter
    assert canonical_key(ab) != canonical_key(combine(a, b, "product"))
    abc = combine(ab, c, "sum")
    assert term_names(abc) == ["a", "b", "c"] and len(abc["sum"]) == 3  # flattened into the sum
    prod = combine(ab, c, "product")
    assert describe(prod) == "(2b[2]·L + 2b[3]·L) × 2b[2]·NL"
    assert remove_term(ab, "b") == a  # a one-child sum collapses to the child
    built = build_potential({"elements": ["Cu"], "cutoff": 4.0, "energy": prod})
    assert set(built.parameter_counts()) == {"a", "b", "c", "total"}


def _graphs(count=3):
    rng = np.random.default_rng(0)
    graphs = []
    for _ in range(count):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
        atoms.set_chemical_symbols(list(rng.choice(["Cu", "Au"], size=4)))
        atoms.positions += rng.normal(scale=0.08, size=(4, 3))
        atoms.calc = EMT()
        graphs.append(atoms_to_graph(atoms, 4.0, {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}))
    return graphs


def test_fisher_report_drives_removal_of_an_all_sloppy_term():
    """A term whose cutoff (1.5 Å) sees no neighbour has only null directions: removal is ranked first."""
    torch.manual_seed(0)
    spec = combine(term("main"), term("blind", cutoff=1.5), "sum")
    potential = build_potential({"elements": ["Cu", "Au"], "cutoff": 4.0, "energy": spec})
    report = analyse(potential, _graphs())
    assert report.term("blind").sloppy_fraction == pytest.approx(1.0)
    assert report.term("main").sloppy_fraction < 1.0
    counter = iter(range(100))
    moves = propose_moves(spec, report.to_dict(), DEFAULT_BLOCKS, lambda key: f"{key}_{next(counter)}")
    assert moves[0].label == "remove blind" and "all sloppy" in moves[0].reason
    assert moves[0].spec == term("main")


def test_well_conditioned_models_grow_and_sloppy_terms_shrink():
    spec = term("only", n_max=3)
    names = iter(range(100))
    new_name = lambda key: f"{key}_{next(names)}"  # noqa: E731
    stiff = {"n_params": 100, "metrics": {"n_sloppy": 10}, "terms": [{"name": "only", "sloppy_fraction": 0.1}]}
    moves = propose_moves(spec, stiff, DEFAULT_BLOCKS, new_name, DesignLimits(sloppy_ratio_ok=0.5))
    assert moves[0].label.startswith("add")
    sloppy = {"n_params": 100, "metrics": {"n_sloppy": 90}, "terms": [{"name": "only", "sloppy_fraction": 0.9}]}
    moves = propose_moves(spec, sloppy, DEFAULT_BLOCKS, new_name, DesignLimits(sloppy_ratio_ok=0.5))
    assert moves[0].label == "resize only n_max 3->2"
    full = combine(combine(term("x"), term("y"), "sum"), term("z"), "sum")
    assert not any(m.label.startswith(("add", "multiply")) for m in propose_moves(full, None, DEFAULT_BLOCKS, new_name))


def test_mlip_design_cli_budget_two(tmp_path, tiny_xyz, capsys):
    from mlip_plugins.cli.design import main

    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    try:
        code = main(["--data", str(tiny_xyz), "--cutoff", "4.0", "--budget", "2", "--epochs", "2", "--probe-size", "2",
                     "--blocks", "radial,eam", "--eos", "emt", "--max-structures", "12", "-o", str(tmp_path / "out")])
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "best: trial" in out and "wall time" in out
    with open(tmp_path / "out" / "candidates.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and rows[0]["move"] == "start" and rows[1]["parent"] == "0"
    assert all(r["status"] == "ok" and float(r["condition_number"]) > 1 and r["eos_rmse_meV_atom"] for r in rows)
    for name in ("candidates.md", "pareto.png", "design.json", "fisher/trial00.json", "conf/model/designed.yaml"):
        assert (tmp_path / "out" / name).exists(), name
    config = yaml.safe_load((tmp_path / "out" / "best_model.yaml").read_text())
    assert set(config) == {"elements", "cutoff", "energy"}
    assert build_potential(config).parameter_counts()["total"] in {int(r["params"]) for r in rows}


def test_variance_normalisation_divides_each_term_by_its_scale():
    """normalize=variance: the loss is Σ w_k MSE_k / var_k (as mlip-train's loss.normalize)."""
    from torch_geometric.data import Batch

    from mlip_plugins.design.training import TrainSettings, batch_loss

    torch.manual_seed(0)
    potential = build_potential({"elements": ["Cu", "Au"], "cutoff": 4.0, "energy": term("t")})
    batch = Batch.from_data_list(_graphs())
    energy = batch_loss(potential, batch, TrainSettings(energy=1.0, forces=0.0))
    forces = batch_loss(potential, batch, TrainSettings(energy=0.0, forces=1.0))
    both = batch_loss(potential, batch, TrainSettings(energy=1.0, forces=1.0), scales={"energy": 4.0, "forces": 0.5})
    assert float(both) == pytest.approx(float(energy) / 4.0 + float(forces) / 0.5, rel=1e-6)


class _Clock:
    """A stand-in for the ``time`` module whose ``perf_counter`` advances ``tick`` seconds per call:
    a wall budget that does not depend on how fast the machine is."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def test_wall_budget_anneals_the_learning_rate_and_stops(monkeypatch):
    """With max_seconds the cosine runs over the budget: a 1000-epoch run stops early at a low learning rate."""
    from mlip_plugins.design import training
    from mlip_plugins.design.training import TrainSettings, train_potential

    # a step of 10-20 ms on a fixed clock: a stalled step on a loaded machine cannot end the budget
    # before the cosine has annealed (it did in a CI run: final lr 0.57 of the initial)
    monkeypatch.setattr(training, "time", _Clock(0.01))
    torch.manual_seed(0)
    potential = build_potential({"elements": ["Cu", "Au"], "cutoff": 4.0, "energy": term("t")})
    history = train_potential(potential, _graphs(), TrainSettings(epochs=1000, lr=0.01, batch_size=1, max_seconds=0.5,
                                                                  normalize="variance"))
    assert history["epochs_run"] < 1000
    assert history["final_lr"] < 0.2 * 0.01  # annealed (min ratio 0.02), not cut at the initial rate
    with pytest.raises(Exception, match="normalize"):
        train_potential(potential, _graphs(), TrainSettings(epochs=1, normalize="std"))


def test_mlip_design_max_params_and_held_out_test_errors(tmp_path, tiny_xyz, capsys):
    """--max-params: no candidate above the limit is trained; --test: test errors per candidate, not in the score."""
    from mlip_plugins.cli.design import main

    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    try:
        code = main(["--data", str(tiny_xyz), "--test", str(tiny_xyz), "--cutoff", "4.0", "--budget", "4", "--epochs", "1",
                     "--probe-size", "2", "--blocks", "radial,eam", "--max-params", "850", "--normalize", "variance",
                     "--max-structures", "12", "--eos", "none", "--final-epochs", "2", "-o", str(tmp_path / "out")])
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    out = capsys.readouterr().out
    assert code == 0, out
    with open(tmp_path / "out" / "candidates.csv") as handle:
        rows = list(csv.DictReader(handle))
    # seven elements: the start (2b[3]·L) has 812 parameters; growing it (add, nonlinear readout) would pass 850
    assert len(rows) >= 2 and all(int(r["params"]) <= 850 for r in rows)
    assert all(float(r["test_forces_mae_meV_A"]) > 0 and float(r["test_energy_rmse_meV_atom"]) >= 0 for r in rows)
    assert "test F MAE" in (tmp_path / "out" / "candidates.md").read_text()
    # --final-epochs: the pick of the search is trained once more, as one more candidate of the same model
    refit = rows[-1]
    assert refit["move"].startswith(f"refit {refit['parent']} (2 epochs)")
    assert refit["model"] == rows[int(refit["parent"])]["model"] and len(rows) == 5
