"""Descriptors: per-atom features [N, D] from an ``AtomicGraph`` (entry-point group ``mlip_plugins.descriptors``).

Contract (checked by :mod:`mlip_plugins.testing`): a descriptor is an ``nn.Module`` built as
``Descriptor(num_species=S, cutoff=rc, **config)``, exposes ``dim`` and ``cutoff``, and maps
``forward(graph: AtomicGraph) -> Tensor[N, dim]`` smoothly (features and their first
derivatives go to zero as a neighbour reaches the cutoff).
"""
