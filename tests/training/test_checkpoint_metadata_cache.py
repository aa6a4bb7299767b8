"""The plugin record saved with each checkpoint is computed once per model, not at every save
(scanning the entry points costs ~0.4 s, and the `last` checkpoint is saved every epoch)."""

import mlip_plugins.checkpoint as checkpoint_lib
from lightning_modules.module import PotentialModule


def test_checkpoint_metadata_is_computed_once(monkeypatch):
    calls = []
    original = checkpoint_lib.checkpoint_metadata

    def counting(potential):
        calls.append(1)
        return original(potential)

    monkeypatch.setattr(checkpoint_lib, "checkpoint_metadata", counting)
    module = PotentialModule({"elements": [29], "cutoff": 4.0, "energy": {"model": {"name": "nep", "n_max": [2, 2], "basis_size": [3, 3], "l_max": [2], "neuron": 4}}})
    first, second = {}, {}
    module.on_save_checkpoint(first)
    module.on_save_checkpoint(second)
    assert len(calls) == 1
    assert first["mlip_plugins"] == second["mlip_plugins"] == original(module.model)
    assert first["mlip_plugins"] is not second["mlip_plugins"]  # each checkpoint owns its record
