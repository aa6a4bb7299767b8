"""Fisher information: Jacobian against finite differences and a design matrix, Lanczos against
the exact spectrum, and attribution of the null direction of a duplicated term."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.fim import FisherWeights, ParameterIndex, analyse, compute_jacobian, float64_copy, lanczos_topk
from mlip_plugins.fim.fisher import FisherOperator
from mlip_plugins.fim.plots import save_report
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.models import build_potential

CUTOFF = 4.0


# float64 default dtype (conftest's fixture; conftest also pins one intra-op thread)
pytestmark = pytest.mark.usefixtures("float64")


def toy_graphs(count: int = 4, seed: int = 0) -> list:
    """Small labelled Cu/Au structures (periodic alloys and one cluster) with EMT labels."""
    rng = np.random.default_rng(seed)
    graphs = []
    for k in range(count):
        if k == count - 1:
            atoms = molecule("H2O")  # placeholder geometry for a cluster, relabelled as metals
            atoms.set_chemical_symbols(["Cu", "Au", "Cu"])
            atoms.positions *= 2.4
            atoms.pbc = False
        else:
            atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
            atoms.set_chemical_symbols(list(rng.choice(["Cu", "Au"], size=len(atoms))))
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if atoms.pbc.all():
            labels["stress"] = atoms.get_stress(voigt=False)
        graphs.append(atoms_to_graph(atoms, CUTOFF, labels))
    return graphs


def radial(n_max: int = 3, cutoff: float = CUTOFF) -> dict:
    return {"name": "radial", "n_max": n_max, "basis_size": 4, "cutoff": cutoff}


def make_potential(energy: dict, freeze_descriptors: bool = False):
    torch.manual_seed(0)
    potential = build_potential({"elements": ["Cu", "Au"], "cutoff": CUTOFF, "energy": energy})
    if freeze_descriptors:
        for name, p in potential.named_parameters():
            if ".descriptor." in name:
                p.requires_grad_(False)
    return potential


def test_jacobian_matches_finite_differences():
    """Energy, force and stress rows of J against central differences, and rows == columns mode."""
    graphs = toy_graphs(3)
    spec = {"sum": [{"descriptor": radial(2), "readout": {"name": "mlp", "hidden": [4]}, "name": "a"},
                    {"product": [{"descriptor": radial(1, 3.0), "readout": {"name": "linear"}, "name": "b"},
                                 {"descriptor": radial(1, 3.5), "readout": {"name": "linear"}, "name": "c"}]}]}
    model = float64_copy(make_potential(spec))
    weights = FisherWeights(energy=2.0, forces=0.5, stress=3.0)
    jac = compute_jacobian(model, graphs, weights, mode="rows")
    assert set(jac.kinds.tolist()) == {0, 1, 2}
    cols = compute_jacobian(model, graphs, weights, mode="columns")
    torch.testing.assert_close(jac.matrix, cols.matrix, atol=1e-12, rtol=1e-10)

    params = jac.index.parameters(model)
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def residuals(vector):
        with torch.no_grad():
            for p, v in zip(params, jac.index.unflatten(vector)):
                p.copy_(v)
        return compute_jacobian_values(model, graphs, weights)

    norms = jac.matrix.norm(dim=0)
    picks = torch.argsort(norms, descending=True)[:3].tolist() + [int(i) for i in torch.nonzero(norms > 0)[::97, 0]]
    h = 1e-5
    for a in picks:
        step = torch.zeros_like(flat)
        step[a] = h
        fd = (residuals(flat + step) - residuals(flat - step)) / (2 * h)
        torch.testing.assert_close(jac.matrix[:, a], fd, atol=1e-8 * max(1.0, float(norms[a])), rtol=1e-6)
    residuals(flat)


def compute_jacobian_values(model, graphs, weights):
    from torch_geometric.data import Batch

    from mlip_plugins.fim.fisher import weighted_observables

    # one structure per chunk, the row order of compute_jacobian
    return torch.cat([weighted_observables(model, Batch.from_data_list([g]), weights).values.detach() for g in graphs])


def test_linear_single_term_fim_equals_design_matrix_gram():
    """For E = Σ_i θ[s_i]·ψ_i (frozen descriptor, linear readout), I = Ψᵀ W Ψ exactly."""
    graphs = toy_graphs(4)
    potential = make_potential({"descriptor": radial(3), "readout": {"name": "linear"}, "name": "lin"}, freeze_descriptors=True)
    model = float64_copy(potential)
    w_e, w_f = 2.0, 0.25
    jac = compute_jacobian(model, graphs, FisherWeights(energy=w_e, forces=w_f, stress=0.0))
    term = model.energy_model
    S, D = 2, term.descriptor.dim
    rows, weights = [], []
    for g in graphs:
        pos = g.pos.clone().requires_grad_(True)
        species = model.element_map(g.z)
        features = term.descriptor(build_atomic_graph(g, species, pos=pos))  # ψ_i [N, D]
        design = torch.zeros(S, D).index_add(0, species, features).reshape(-1)  # Σ_{i of element s} ψ_i
        n = g.num_nodes
        rows.append(design.detach() / n)
        weights.append(w_e)
        dpsi = torch.stack([torch.autograd.grad(d, pos, retain_graph=True)[0].reshape(-1) for d in design])  # [S*D, 3N]
        rows.extend(-dpsi.T)
        weights.extend([w_f] * 3 * n)
    psi = torch.stack(rows)  # Ψ: [M, S*D], the column order of PerElementLinear.weight [S, D, 1]
    W = torch.diag(torch.tensor(weights))
    assert jac.matrix.shape == psi.shape
    torch.testing.assert_close(jac.fisher(), psi.T @ W @ psi, rtol=1e-10, atol=1e-10)


def test_lanczos_top_eigenvalues_match_exact():
    graphs = toy_graphs(3)
    potential = make_potential({"descriptor": radial(3), "readout": {"name": "mlp", "hidden": [6]}, "name": "m"})
    exact = analyse(potential, graphs, method="exact")
    free = analyse(potential, graphs, method="lanczos", top_k=6)
    assert free.method == "lanczos" and exact.method == "exact"
    np.testing.assert_allclose(free.eigenvalues[:6], exact.eigenvalues[:6], rtol=1e-7)
    # the matrix-free operator reproduces I v and the Hutchinson trace is unbiased-ish
    model = float64_copy(potential)
    jac = compute_jacobian(model, graphs)
    op = FisherOperator(model, graphs)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(op.matvec(v), jac.fisher() @ v, rtol=1e-9, atol=1e-9)
    # plain Lanczos on a dense matrix with a spread spectrum
    q, _ = torch.linalg.qr(torch.randn(50, 50, generator=torch.Generator().manual_seed(2)))
    lam = torch.logspace(0, -12, 50)
    result = lanczos_topk(lambda x: q @ (lam * (q.T @ x)), 50, 4)
    np.testing.assert_allclose(result.eigenvalues.numpy(), lam[:4].numpy(), rtol=1e-9)


def test_duplicated_term_has_null_direction_attributed_to_it(tmp_path):
    """base and dup are identical terms, so θ_base - θ_dup is a null direction of the FIM."""
    graphs = toy_graphs(4)
    spec = {"sum": [
        {"descriptor": radial(3), "readout": {"name": "linear"}, "name": "base"},
        {"descriptor": radial(3), "readout": {"name": "linear"}, "name": "dup"},
        {"descriptor": radial(1, 3.0), "readout": {"name": "linear"}, "name": "other"},
    ]}
    potential = make_potential(spec, freeze_descriptors=True)
    terms = potential.energy_model.terms
    terms[1].descriptor.load_state_dict(terms[0].descriptor.state_dict())
    report = analyse(potential, graphs, sloppy_threshold=1e-9)
    n_dup = 2 * 4  # species x features of the duplicated term
    assert report.n_params == 2 * n_dup + 2 * 2
    assert report.metrics["n_null"] == n_dup
    assert report.metrics["n_sloppy"] == n_dup
    base, dup, other = report.term("base"), report.term("dup"), report.term("other")
    assert base.sloppy_share == pytest.approx(0.5, abs=1e-6) and dup.sloppy_share == pytest.approx(0.5, abs=1e-6)
    assert other.sloppy_share == pytest.approx(0.0, abs=1e-6) and other.sloppy_fraction == pytest.approx(0.0, abs=1e-6)
    assert base.sloppy_fraction == pytest.approx(0.5, abs=1e-6)
    for mode in report.sloppy_modes:
        assert mode["term_shares"]["other"] < 1e-8
        assert mode["dominant_group"].split("/")[0] in ("base", "dup")
    files = save_report(report, tmp_path)
    data = json.loads(files["json"].read_text())
    assert data["metrics"]["n_null"] == n_dup and files["spectrum"].stat().st_size > 0
    assert "base" in report.format_table()


def test_parameter_index_groups_by_term():
    potential = make_potential({"sum": [{"descriptor": radial(2), "readout": {"name": "linear"}, "name": "x"},
                                        {"descriptor": radial(2), "readout": {"name": "mlp", "hidden": [3]}, "name": "y"}]})
    index = ParameterIndex.from_model(potential)
    counts = potential.parameter_counts()
    labels, codes = index.term_index()
    assert labels == ["x", "y"]
    assert torch.bincount(codes).tolist() == [counts["x"], counts["y"]]
    assert all(g.split("/")[0] in ("x", "y") for g in index.groups)
    assert index.coordinate_name(0).startswith("x/descriptor.pair_coefficients.coefficients[")


def test_diverse_probe_covers_every_element_pair():
    from mlip_plugins.fim.probe import _pairs, select_probe

    graphs = toy_graphs(5, seed=3)[:4]  # periodic Cu/Au alloys
    pure = []
    for symbol in ("Cu", "Au", "Cu"):
        atoms = bulk(symbol, "fcc", a=3.8, cubic=True)
        pure.append(atoms_to_graph(atoms, CUTOFF, {}))
    pool = pure + graphs
    chosen = select_probe(pool, 2, "diverse")
    everything = set().union(*(_pairs(g) for g in pool))
    assert set().union(*(_pairs(g) for g in chosen)) == everything
    assert select_probe(pool, 2, "first") == pool[:2]
