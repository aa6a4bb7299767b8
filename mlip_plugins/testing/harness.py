"""What the conformance checks run on: a plugin class, its test config, and a model that uses it.

A plugin is checked inside a real :class:`~mlip_plugins.models.potential.Potential` built by
the production model builder, so forces and stress come from the same autograd path as in
training. Where the plugin sits in the energy tree depends on its group (see
:func:`default_energy_spec`); a plugin can choose its own place with the class attribute or
classmethod ``conformance_energy_spec``.

Class attributes a plugin may declare (all optional):

``conformance_config: dict``
    constructor keyword arguments for the checks (defaults are used otherwise);
``conformance_skip: dict[str, str]``
    check name -> why it does not apply (e.g. ``{"cutoff": "long-range: no cutoff"}``);
    the key ``"periodic"`` removes periodic structures from every check;
``conformance_elements: tuple[str, ...]``
    the two (or more) elements of the test structures (default Cu and Au);
``conformance_cutoff: float``
    the model cutoff of the test model (default 4.0 Å);
``conformance_energy_spec``
    a dict, or a classmethod ``(ref: str, config: dict) -> dict``, giving the energy-tree spec
    (see :mod:`mlip_plugins.models.builder`) that uses the plugin; ``ref`` is a dotted path
    that resolves to the class;
``supports_compile: bool``
    ``True`` adds a ``torch.compile`` check;
``conformance_rtol: float``
    relative tolerance of the symmetry and batch checks (default 1e-9); an approximate method
    (a mesh solver) sets it to its accuracy. Finite-difference checks are unaffected: forces
    must be the exact derivative of whatever energy the plugin computes;
``conformance_slow: bool``
    ``True`` marks the plugin's parametrized checks ``slow`` (excluded from a default test run);
    prefer a cheaper ``conformance_config`` where one exists.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ase import Atoms

from mlip_plugins import registry
from mlip_plugins.dtypes import default_dtype
from mlip_plugins.testing import structures as st

DEFAULT_ELEMENTS = ("Cu", "Au")
DEFAULT_CUTOFF = 4.0
#: a small radial descriptor feeding readouts and routers under test
SMALL_DESCRIPTOR = {"name": "radial", "n_max": 4, "basis_size": 5}


def dotted_path(cls: Any) -> str:
    """A dotted path the registry resolves to ``cls`` in any group.

    ``module:QualName`` where that imports back to ``cls``; otherwise (a class defined inside a
    test function) an alias attribute of this module, so local classes can be checked too.
    """
    path = f"{cls.__module__}:{cls.__qualname__}"
    try:
        if registry._import_dotted(path) is cls:
            return path
    except registry.PluginError:
        pass
    alias = f"_local_plugin_{id(cls)}"
    setattr(sys.modules[__name__], alias, cls)
    return f"{__name__}:{alias}"


def default_energy_spec(group: str, ref: str, config: Mapping[str, Any]) -> dict | None:
    """Where a plugin of ``group`` sits in a test model, or None if the kit cannot know."""
    config = dict(config)
    if group == "descriptors":
        return {"descriptor": {"name": ref, **config}, "readout": {"name": "linear"}, "name": "under_test"}
    if group == "readouts":
        return {"descriptor": dict(SMALL_DESCRIPTOR), "readout": {"name": ref, **config}, "name": "under_test"}
    if group == "routers":
        moe = {"name": "moe", "num_experts": 4, "top_k": None, "num_shared": 1, "hidden": [8], "router": {"name": ref, **config}}
        return {"descriptor": dict(SMALL_DESCRIPTOR), "readout": moe, "name": "under_test"}
    if group == "energy_models":
        return {"model": {"name": ref, **config}}
    if group in ("long_range", "charge_models"):
        # the electrostatic energy model: local term + charges + Coulomb energy from a solver
        model = {"name": "electrostatic", "descriptor": dict(SMALL_DESCRIPTOR), "readout": {"name": "linear"},
                 "charges": {"name": "latent"}, "solver": {"name": "ewald"}}
        model["solver" if group == "long_range" else "charges"] = {"name": ref, **config}
        return {"model": model}
    return None


@dataclass
class PluginCase:
    """One plugin under test. Build with :func:`plugin_case`."""

    group: str
    name: str
    cls: Any
    config: dict = field(default_factory=dict)
    skip: dict = field(default_factory=dict)
    elements: tuple = DEFAULT_ELEMENTS
    cutoff: float = DEFAULT_CUTOFF
    rtol: float = 1e-9
    seed: int = 0

    def __str__(self) -> str:
        return f"{self.group}/{self.name}"

    @property
    def ref(self) -> str:
        return dotted_path(self.cls)

    @property
    def supports_compile(self) -> bool:
        return bool(getattr(self.cls, "supports_compile", False))

    @property
    def periodic(self) -> bool:
        return "periodic" not in self.skip

    # ------------------------------------------------------------------ models
    def energy_spec(self) -> dict | None:
        custom = getattr(self.cls, "conformance_energy_spec", None)
        if callable(custom):
            return custom(self.ref, copy.deepcopy(self.config))
        if isinstance(custom, Mapping):
            return copy.deepcopy(dict(custom))
        return default_energy_spec(self.group, self.ref, self.config)

    def build_potential(self, dtype: torch.dtype = torch.float64, seed: int | None = None):
        """A fresh Potential (float64 by default) whose energy tree uses the plugin."""
        from mlip_plugins.models.builder import build_potential

        spec = self.energy_spec()
        if spec is None:
            raise AssertionError(
                f"{self}: the kit does not know where a {self.group} plugin sits in a model; declare "
                f"`conformance_energy_spec` on {self.cls.__qualname__} (see mlip_plugins.testing)"
            )
        with torch.random.fork_rng(devices=[]), default_dtype(dtype):
            torch.manual_seed(self.seed if seed is None else seed)
            try:
                potential = build_potential({"elements": list(self.elements), "cutoff": self.cutoff, "energy": spec})
            except Exception as exc:
                raise AssertionError(
                    f"{self}: building a test model failed with {type(exc).__name__}: {exc}; "
                    f"set `conformance_config` (constructor kwargs) or `conformance_energy_spec` on the class"
                ) from exc
        return potential.to(dtype)

    @functools.cached_property
    def potential(self):
        """The float64 test model (built once per case)."""
        return self.build_potential(torch.float64)

    def instantiate(self, dtype: torch.dtype = torch.float64, **injected: Any) -> Any:
        """The plugin itself, built like the model builder does (injected args where accepted)."""
        from mlip_plugins.models.builder import instantiate_plugin

        with torch.random.fork_rng(devices=[]), default_dtype(dtype):
            torch.manual_seed(self.seed)
            obj = instantiate_plugin(self.group, {"name": self.ref, **copy.deepcopy(self.config)}, str(self), **injected)
        return obj.to(dtype) if isinstance(obj, torch.nn.Module) else obj

    # ------------------------------------------------------------------ data
    def structures(self) -> list[Atoms]:
        return st.standard_structures(self.elements, periodic=self.periodic)

    def evaluate(self, structures: Sequence[Atoms], model=None, stress: bool = False, dtype: torch.dtype = torch.float64) -> dict:
        """Energies [B], forces [N, 3] (and stress) of ``structures`` in one batch, as numpy."""
        model = self.potential if model is None else model
        batch = st.to_batch(structures, model.cutoff, dtype)
        out = model(batch, compute_forces=True, compute_stress=stress)
        return {k: v.detach().cpu().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}

    def energy(self, atoms: Atoms, model=None) -> float:
        return float(self.evaluate([atoms], model)["energy"][0])

    def graph(self, atoms: Atoms, dtype: torch.dtype = torch.float64):
        """The AtomicGraph a plugin receives for ``atoms`` (elements of this case)."""
        from mlip_plugins.elements import ElementMap
        from mlip_plugins.graph import build_atomic_graph

        batch = st.to_batch([atoms], self.cutoff, dtype)
        species = ElementMap(list(self.elements))(batch.z)
        return build_atomic_graph(batch, species, pos=batch.pos)

    def cutoff_radii(self) -> list[float]:
        """Every cutoff radius found in the test model (attributes named ``*cutoff*`` or ``rc*``)."""
        radii = {float(self.potential.cutoff)}
        for module in self.potential.modules():
            for key, value in vars(module).items():
                if ("cutoff" in key.lower() or key.lower().startswith("rc")) and isinstance(value, (int, float)) and not isinstance(value, bool):
                    if 0.5 < float(value) <= self.potential.cutoff + 1e-12:
                        radii.add(float(value))
        return sorted(radii)


def plugin_case(
    group: str,
    plugin: Any,
    config: Mapping[str, Any] | None = None,
    skip: Mapping[str, str] | Sequence[str] | None = None,
    elements: Sequence[str] | None = None,
    rtol: float | None = None,
) -> PluginCase:
    """A :class:`PluginCase` for a class, or a registered name / dotted path, in ``group``.

    ``config`` and ``skip`` add to (and override) the class's ``conformance_config`` and
    ``conformance_skip``; ``elements`` and ``rtol`` replace ``conformance_elements`` and
    ``conformance_rtol``.
    """
    group = group if group in registry.GROUPS else next((k for k, v in registry.GROUPS.items() if v == group), group)
    if group not in registry.GROUPS:
        raise ValueError(f"unknown plugin group {group!r}; known: {', '.join(registry.GROUPS)}")
    name = plugin if isinstance(plugin, str) else getattr(plugin, "__qualname__", str(plugin))
    cls = registry.resolve(group, plugin) if isinstance(plugin, str) else plugin
    merged_config = copy.deepcopy(dict(getattr(cls, "conformance_config", {}) or {}))
    merged_config.update(copy.deepcopy(dict(config or {})))
    merged_skip = dict(getattr(cls, "conformance_skip", {}) or {})
    if skip:
        merged_skip.update(skip if isinstance(skip, Mapping) else {key: "skipped by the caller" for key in skip})
    cutoff = float(getattr(cls, "conformance_cutoff", DEFAULT_CUTOFF))
    declared = merged_config.get("cutoff")
    if declared is not None:
        values = declared if isinstance(declared, (list, tuple)) else [declared]
        cutoff = max([cutoff, *[float(v) for v in values]])
    return PluginCase(
        group=group,
        name=name,
        cls=cls,
        config=merged_config,
        skip=merged_skip,
        elements=tuple(elements or getattr(cls, "conformance_elements", DEFAULT_ELEMENTS)),
        cutoff=cutoff,
        rtol=float(rtol if rtol is not None else getattr(cls, "conformance_rtol", 1e-9)),
    )


def scale_of(values: np.ndarray) -> float:
    """max |values|, floored so that relative tolerances stay meaningful."""
    return max(float(np.max(np.abs(values))) if np.size(values) else 0.0, 1e-12)
