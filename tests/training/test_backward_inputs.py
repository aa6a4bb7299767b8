"""PotentialModule.backward differentiates into the trainable parameters only (not the
positions' leaf behind the forces): the parameter gradients are those of loss.backward()."""

import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from torch_geometric.data import Batch

from lightning_modules.module import PotentialModule
from mlip_plugins.data.structures import LabelKeys, atoms_to_graph, extract_labels


def test_backward_gives_the_parameter_gradients_of_loss_backward():
    torch.manual_seed(0)
    graphs = []
    for seed in range(2):
        atoms = bulk("Cu", cubic=True).repeat(2)
        atoms.rattle(0.1, seed=seed)
        atoms.calc = EMT()
        atoms.get_forces()
        graphs.append(atoms_to_graph(atoms, 4.0, extract_labels(atoms, LabelKeys(), f"cu{seed}")))
    batch = Batch.from_data_list(graphs)
    cfg = {"elements": [29], "cutoff": 4.0, "energy": {"model": {"name": "nep", "cutoff_angular": 3.5, "n_max": [2, 2],
                                                                  "basis_size": [3, 3], "l_max": [2, 2], "neuron": 4}}}
    module = PotentialModule(cfg, loss={"energy": 1.0, "forces": 1.0})
    module.log = lambda *a, **k: None
    params = [p for p in module.parameters() if p.requires_grad]

    module.training_step(batch, 0).backward()
    reference = [None if p.grad is None else p.grad.clone() for p in params]
    module.zero_grad(set_to_none=True)
    module.backward(module.training_step(batch, 0))
    for p, ref in zip(params, reference):
        assert (p.grad is None) == (ref is None)
        if ref is not None:
            torch.testing.assert_close(p.grad, ref)
    assert any(ref is not None and ref.abs().sum() > 0 for ref in reference)
