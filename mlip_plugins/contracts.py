"""The extension points' contracts, as ``typing.Protocol`` classes, in one place.

Every plugin group of the registry (:mod:`mlip_plugins.registry`) expects an object of one of
these shapes. They are structural: a plugin does not inherit from them, it only has the
attributes and methods listed. The conformance kit (:mod:`mlip_plugins.testing`) checks them
with real structures (shapes, dtypes, smoothness, finite-difference forces, invariances); the
``runtime_checkable`` protocols also allow a quick ``isinstance`` test of the attributes.

Constructor arguments that the model builder injects where the constructor accepts them
(never overriding the config): ``num_species`` (S), ``cutoff`` (Å), ``in_dim`` (D, features of
the term's descriptor), ``num_experts`` (routers). Optional hooks any module of a model may
define are listed in :class:`OptionalHooks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from mlip_plugins.graph import AtomicGraph


@runtime_checkable
class Descriptor(Protocol):
    """Group ``mlip_plugins.descriptors``: ``Descriptor(num_species=S, cutoff=rc, **config)``.

    ``forward(graph) -> [N, dim]`` features, smooth at the cutoff (features and first
    derivatives vanish as a neighbour reaches ``cutoff``); compute from ``graph.edge_vec`` /
    ``graph.edge_len`` so that forces and stress follow by autograd.
    """

    dim: int
    cutoff: float

    def __call__(self, graph: AtomicGraph) -> torch.Tensor: ...


@runtime_checkable
class Readout(Protocol):
    """Group ``mlip_plugins.readouts``: ``Readout(in_dim=D, num_species=S, **config)``.

    ``forward(features [N, D], graph) ->`` per-atom learned energies ``[N]``, or a mapping /
    :class:`~mlip_plugins.models.outputs.NodeOutput` with ``"energy"`` and extras (``aux_loss``).
    """

    def __call__(self, features: torch.Tensor, graph: AtomicGraph) -> Any: ...


@runtime_checkable
class EnergyNode(Protocol):
    """Group ``mlip_plugins.energy_models`` (any node of the energy tree).

    Built with the injected ``num_species`` and ``cutoff``; children are built with
    ``mlip_plugins.models.builder.build(ENERGY_TREE, spec, where, num_species=..., cutoff=...)``.
    ``forward(graph) ->`` ``[N]`` or a mapping / ``NodeOutput``; physical energies in eV go under
    :data:`mlip_plugins.keys.ATOMIC_ENERGY_UNSCALED`; extras merge by
    :data:`mlip_plugins.keys.MERGE_RULES`. ``cutoff`` is the largest radius the node reads.
    """

    cutoff: float

    def __call__(self, graph: AtomicGraph) -> Any: ...


@runtime_checkable
class LongRangeSolver(Protocol):
    """Group ``mlip_plugins.long_range``: ``Solver(cutoff=..., smearing=..., accuracy=..., prefactor=...)``.

    ``forward(graph, charges [N]) -> {"potentials": [N], "energy": [B]}``; ``potentials(graph,
    charges [N] | [N, C], exclusion_radius=None) -> [N] | [N, C]``. ``cutoff`` is the real-space
    cutoff (None: no neighbour list needed); ``prefactor`` the Coulomb constant in the units of
    the potentials (:data:`mlip_plugins.units.COULOMB_CONSTANT` for eV, Å, e).
    """

    cutoff: float | None
    prefactor: float

    def __call__(self, graph: AtomicGraph, charges: torch.Tensor) -> Mapping[str, torch.Tensor]: ...

    def potentials(self, graph: AtomicGraph, charges: torch.Tensor, exclusion_radius: Any = None) -> torch.Tensor: ...


@runtime_checkable
class ChargeModel(Protocol):
    """Group ``mlip_plugins.charge_models``: ``ChargeModel(in_dim=D, num_species=S, **config)``.

    ``forward(features [N, D], graph) ->`` charges ``[N]`` in e whose sum over each structure
    equals ``graph.total_charge`` exactly, or a mapping with ``"charges"`` and extras.
    """

    def __call__(self, features: torch.Tensor, graph: AtomicGraph) -> Any: ...


@runtime_checkable
class Router(Protocol):
    """Group ``mlip_plugins.routers``: ``Router(num_experts=E, num_species=S, in_dim=D, top_k=k, **config)``.

    ``forward(features [N, D], graph) -> gates [N, E]``: non-negative rows summing to one, at
    most ``top_k`` non-zero. Optional: ``route()`` (gates and pre-top-k probabilities),
    ``element_wise`` + ``element_gates() -> [S, E]`` (experts mergeable per element).
    """

    def __call__(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor: ...


class OptionalHooks(Protocol):
    """Attributes and methods any module of a model may define; the core looks for them by name.

    * ``regularization_loss() -> Tensor | None``: added to the training loss (NEP's L1/L2).
    * ``parameter_counts() -> dict[str, int]``: trainable parameters per named term (logged,
      written to ``metrics.json``).
    * ``element_parameter_owners() -> dict[Parameter, Tensor]``: the element owning each scalar
      of element-wise parameters (SNES's per-element ranking).
    * ``conformance_config: dict``, ``conformance_energy_spec(cls) -> dict``,
      ``supports_compile: bool``: how the conformance kit builds and checks the plugin.
    * ``name: str``: the node's name in parameter counts, Fisher-information reports and errors.
    * energy models with charges: ``charge_parameters() -> list[Parameter]``, what the charges
      depend on, which ``loss.initial.freeze: charges`` holds fixed after a charges-first stage.
    * charge models: ``use_solver(solver)``: the ``electrostatic`` energy model lends its
      long-range solver (charge equilibration, ``qeq``, needs the same Coulomb law);
      ``cutoff: float``: the neighbour-list reach the charge model needs (the model's cutoff
      covers it).
    """

    def regularization_loss(self) -> torch.Tensor | None: ...

    def parameter_counts(self) -> dict[str, int]: ...

    def element_parameter_owners(self) -> dict[torch.nn.Parameter, torch.Tensor]: ...
