"""Loading a model or checkpoint from elsewhere never runs code chosen by the file.

Two ways a file could run code: a pickled object (``__reduce__`` runs a callable while
unpickling) and a plugin named by dotted path in the saved model config (the registry would
import the module and call the object with the spec's keys: ``{name: "os:system", command:
...}``). Every loader is checked against both with a payload that creates a marker file, and
a control shows each payload is live (it does run where the protection is lifted).
"""

from __future__ import annotations

import copy
import pathlib

import pytest
import torch

from lightning_modules.checkpoint_io import AtomicCheckpointIO
from mlip_plugins import registry
from mlip_plugins.checkpoint import EXPORT_FORMAT, export_potential, load_potential
from mlip_plugins.models.builder import build_potential

MODEL = {"elements": ["Cu", "Au"], "cutoff": 4.0,
         "energy": {"descriptor": {"name": "radial", "n_max": 2, "basis_size": 3}, "readout": {"name": "linear"}}}


class Touch:
    """Unpickling this creates ``marker`` (a stand-in for any command)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def potential(float64):
    return build_potential(copy.deepcopy(MODEL))


def _exported_payload(potential) -> dict:
    return {"format": EXPORT_FORMAT, "model_config": copy.deepcopy(potential.model_config()),
            "state_dict": {k: v.detach() for k, v in potential.state_dict().items()}, "metadata": {}}


def _lightning_checkpoint(potential) -> dict:
    return {"epoch": 1, "global_step": 4, "hyper_parameters": {"model": copy.deepcopy(potential.model_config())},
            "state_dict": {f"model.{k}": v.detach() for k, v in potential.state_dict().items()}}


@pytest.mark.parametrize("kind", ["exported", "lightning"])
def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path, potential, kind):
    marker = tmp_path / "pwned"
    payload = _exported_payload(potential) if kind == "exported" else _lightning_checkpoint(potential)
    clean = tmp_path / "clean.ckpt"
    torch.save(payload, clean)
    payload["metadata" if kind == "exported" else "hyper_parameters"]["note"] = Touch(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(payload, evil)

    assert load_potential(clean).energy_model.descriptor.dim > 0  # the control loads
    with pytest.raises(ValueError, match=r"evil.ckpt: not a loadable checkpoint \(UnpicklingError.*"):
        load_potential(evil)
    from mlip_plugins.calculator import MLIPCalculator

    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        MLIPCalculator.from_file(evil)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        AtomicCheckpointIO().load_checkpoint(evil)  # what mlip-train ckpt_path=... resumes through
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live where unpickling is allowed
    assert marker.exists()


def test_a_dotted_path_plugin_in_a_model_file_is_refused(tmp_path, potential, monkeypatch):
    marker = tmp_path / "pwned"
    payload = _exported_payload(potential)
    payload["model_config"]["energy"]["descriptor"] = {"name": "os:system", "command": f"touch {marker}"}
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    monkeypatch.delenv("MLIP_PLUGINS_TRUST_MODEL_FILES", raising=False)
    with pytest.raises(registry.PluginError, match=r"evil.pt: plugin 'os:system' is a dotted path.*trusted=True"):
        load_potential(path)
    from mlip_plugins.calculator import MLIPCalculator

    with pytest.raises(registry.PluginError, match="dotted path"):
        MLIPCalculator.from_file(path)
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - trusted: the command runs, then the build fails
        load_potential(path, trusted=True)
    assert marker.exists()


def test_unregistered_classes_in_provenance_are_not_imported(tmp_path, potential):
    payload = _exported_payload(potential)
    payload["metadata"] = {"plugins": [{"group": "", "name": "antigravity:x", "target": "antigravity:x"}]}
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises(registry.PluginError, match=r"unregistered classes \['antigravity:x'\]"):
        load_potential(path)


def test_registered_plugins_load_and_dotted_paths_still_work_where_trusted(tmp_path, potential, monkeypatch):
    path = export_potential(potential, tmp_path / "model.pt")
    assert torch.equal(load_potential(path).e0, potential.e0)
    # the same class by dotted path: refused from a file unless trusted
    config = copy.deepcopy(potential.model_config())
    config["energy"]["readout"]["name"] = "mlip_plugins.models.readout:LinearReadout"
    dotted = build_potential(config)
    dotted_path = export_potential(dotted, tmp_path / "dotted.pt")
    with pytest.raises(registry.PluginError, match="dotted path"):
        load_potential(dotted_path)
    assert load_potential(dotted_path, trusted=True) is not None
    monkeypatch.setenv("MLIP_PLUGINS_TRUST_MODEL_FILES", "1")
    assert load_potential(dotted_path) is not None
    # the guard is scoped to loading: configs (trusted by whoever runs them) still resolve dotted paths
    assert registry.resolve("readouts", "mlip_plugins.models.readout:LinearReadout").__name__ == "LinearReadout"


def test_the_graph_cache_never_unpickles(tmp_path):
    from mlip_plugins.data.graph_cache import load_graphs

    marker = tmp_path / "pwned"
    path = tmp_path / "graphs.pt"
    torch.save({"graphs": [Touch(marker)]}, path)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_graphs(path)
    assert not marker.exists()
