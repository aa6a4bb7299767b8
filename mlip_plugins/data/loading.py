"""Read a file of structures and build its graphs, through the on-disk graph cache.

The one way every command (``mlip-train``'s data module, ``mlip-eval``, ``mlip-fim``) turns a
file into graphs, so that they agree on labels, checks and the cache.
"""

from __future__ import annotations

import os

from mlip_plugins.data.default_dataset import cache_dir
from mlip_plugins.data.graph_cache import build_graphs, cached_graphs
from mlip_plugins.data.reading import read_structures
from mlip_plugins.data.structures import LabelKeys


def load_graph_file(path: str, cutoff: float, keys: LabelKeys, file_format: str | None = None,
                    on_error: str = "raise", use_cache: bool = True, require_energy: bool = True) -> list:
    """Read ``path`` and build its graphs, through the on-disk cache when enabled.

    ``require_energy``: a frame without the energy key is an error (forces and stress may
    be missing: partial labels); set False to train some frames on forces only.
    """
    settings = {"keys": vars(keys), "format": file_format, "on_error": on_error, "require_energy": require_energy}

    def build() -> list:
        structures = read_structures(path, keys, file_format=file_format, on_error=on_error, require_energy=require_energy)
        return build_graphs(structures, cutoff)

    if use_cache and os.path.isfile(path):
        return cached_graphs(cache_dir(), path, cutoff, settings, build)
    return build()
