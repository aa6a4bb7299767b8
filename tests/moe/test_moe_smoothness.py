"""Smoothness of routed models (float64).

* Element-wise (and composition-level) routing never sees positions: with hard top-k the
  forces match finite differences of the energy at every frame of a trajectory.
* Hard top-k on per-atom features: along a dimer stretch the selected expert switches where
  two router scores cross, and the energy jumps there (the jump does not shrink with the
  step). Soft gating over all experts (the feature router's default) removes the jump: the
  energy change across the same point shrinks linearly with the step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.models import build_potential

CUTOFF = 4.5


def potential(readout: dict, elements=("Ni", "Cu", "Au")):
    torch.manual_seed(0)
    spec = {"descriptor": {"name": "radial", "n_max": 5, "basis_size": 5}, "readout": {"name": "moe", **readout}}
    return build_potential({"elements": list(elements), "cutoff": CUTOFF, "energy": spec})


def energy_and_forces(model, atoms):
    out = model(Batch.from_data_list([atoms_to_graph(atoms, CUTOFF)]))
    return float(out["energy"].detach()), out["forces"].detach().numpy()


def energy(model, atoms) -> float:
    return float(model(Batch.from_data_list([atoms_to_graph(atoms, CUTOFF)]), compute_forces=False)["energy"].detach())


@pytest.mark.parametrize("router", [{"name": "element"}, {"name": "global", "source": "composition"}])
def test_position_independent_routing_passes_finite_differences_along_a_trajectory(float64, router):
    model = potential({"num_experts": 6, "top_k": 1, "num_shared": 1, "hidden": [8], "router": router})
    rng = np.random.default_rng(0)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)  # 4 atoms, periodic images within the cutoff
    atoms.set_chemical_symbols(["Cu", "Au", "Ni", "Cu"])
    velocity = rng.normal(scale=0.15, size=(len(atoms), 3))
    h = 1e-5
    for t in np.linspace(0.0, 1.0, 4):  # frames of a straight-line "trajectory" through rattled states
        frame = atoms.copy()
        frame.positions += t * velocity + rng.normal(scale=0.03, size=velocity.shape)
        _, forces = energy_and_forces(model, frame)
        for _ in range(2):
            direction = rng.normal(size=forces.shape)
            direction /= np.linalg.norm(direction)
            plus, minus = frame.copy(), frame.copy()
            plus.positions += h * direction
            minus.positions -= h * direction
            finite_difference = (energy(model, plus) - energy(model, minus)) / (2 * h)
            assert finite_difference == pytest.approx(-(forces * direction).sum(), rel=1e-6, abs=1e-8)


def _dimer(r: float) -> Atoms:
    return Atoms("Cu2", positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]])


def _features(model, r: float) -> torch.Tensor:
    from mlip_plugins.graph import build_atomic_graph

    data = Batch.from_data_list([atoms_to_graph(_dimer(r), CUTOFF)])
    graph = build_atomic_graph(data, model.element_map(data.z))
    return model.energy_model.descriptor(graph), graph


def _feature_routed_pair():
    """(hard top-1, soft) feature-routed models with identical weights whose two router scores
    cross between r = 2.4 and 3.6 Å on a Cu dimer."""
    config = {"num_experts": 2, "num_shared": 1, "hidden": [8], "router": {"name": "feature"}}
    hard = potential({**config, "top_k": 1}, elements=("Cu",))
    soft = potential({**config, "top_k": None}, elements=("Cu",))
    router = hard.energy_model.readout.moe.router
    with torch.no_grad():
        n1 = router.norm(_features(hard, 2.4)[0][0])
        n2 = router.norm(_features(hard, 3.6)[0][0])
        v = n1 - n2
        score = router.score.layers[0]  # no hidden layer: one linear map
        score.weight.copy_(torch.stack([v, -v]))
        score.bias.copy_(torch.stack([-v @ (n1 + n2) / 2, v @ (n1 + n2) / 2]))
    soft.load_state_dict(hard.state_dict())
    return hard, soft


def _top_expert(model, r: float) -> int:
    features, graph = _features(model, r)
    return int(model.energy_model.readout.moe.router.logits(features, graph)[0].argmax())


def test_hard_top_k_on_features_makes_the_energy_jump_and_soft_gating_fixes_it(float64):
    hard, soft = _feature_routed_pair()
    low, high = 2.4, 3.6
    assert _top_expert(hard, low) != _top_expert(hard, high)
    for _ in range(50):  # bisect the switching distance
        mid = 0.5 * (low + high)
        if _top_expert(hard, mid) == _top_expert(hard, 2.4):
            low = mid
        else:
            high = mid
    r_switch = 0.5 * (low + high)

    def step(model, delta):
        return abs(energy(model, _dimer(r_switch + delta)) - energy(model, _dimer(r_switch - delta)))

    jumps = [step(hard, d) for d in (1e-3, 1e-5, 1e-7)]
    smooth = [step(soft, d) for d in (1e-3, 1e-5, 1e-7)]
    # hard top-k: a finite jump that does not vanish with the step (C0 discontinuity)
    assert min(jumps) > 1e-3
    assert jumps[-1] > 0.5 * jumps[0]
    # soft gating: continuous, the change is ~ |dE/dr| * 2 delta
    assert smooth[-1] < 1e-5
    assert smooth[1] < 2e-2 * smooth[0] and smooth[2] < 2e-2 * smooth[1]
