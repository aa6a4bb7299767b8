"""Routers for mixtures of experts (entry-point group ``mlip_plugins.routers``).

A router decides, for every atom, how much each of ``num_experts`` routed experts
contributes. The MoE layer (:mod:`mlip_plugins.moe.layer`) builds one by name from its
``router`` config and mixes the experts' outputs (or weights) with the gates.

Router contract
---------------
Constructor::

    Router(num_experts: int, num_species: int, in_dim: int, top_k: int | None, **cfg)

* ``num_experts``: E, the number of routed experts (shared experts never see a router).
* ``num_species``: S, the number of elements of the model (``graph.species`` is in 0..S-1).
* ``in_dim``: D, the width of the per-atom features the layer receives (a router may ignore it).
* ``top_k``: how many experts are active per atom (or per structure); ``None`` (or ``>= E``)
  means dense soft gating over all experts.

Methods::

    forward(features: Tensor[N, D], graph: AtomicGraph) -> gates: Tensor[N, E]

Gates are non-negative; each row sums to one; with top-k, exactly ``top_k`` entries of a row
are non-zero (renormalised softmax over the selected experts). A router may also provide

* ``route(features, graph) -> RouterOutput(gates, probs)``: ``probs`` [N, E] is the full
  softmax before top-k selection, used by the load-balancing loss (if absent, the layer uses
  ``gates`` as ``probs``);
* ``element_wise: bool`` and ``element_gates() -> Tensor[S, E]``: the gates depend only on
  the element, so the experts can be merged per element into dense weights for inference
  (:meth:`mlip_plugins.moe.layer.MoEMLP.merge`) and the routing is exactly constant along
  any trajectory.

Built-ins: ``element`` (:mod:`.element_router`, gates from a learned element embedding),
``global`` (:mod:`.global_router`, per-structure gates from the composition or pooled
features) and ``feature`` (:mod:`.feature_router`, per-atom gates from local features, soft
by default because hard top-k on geometry-dependent inputs makes the energy jump).
"""

from mlip_plugins.moe.routers.gating import RouterOutput, load_balancing_loss, select_top_k

__all__ = ["RouterOutput", "load_balancing_loss", "select_top_k"]
