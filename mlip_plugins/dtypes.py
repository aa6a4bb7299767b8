"""torch's default dtype, set for a block of code.

Models build their buffers and graphs their positions in torch's default dtype, so code that
builds or runs a model in a dtype other than the caller's (a float64 checkpoint, a float64
refinement of a float32 run, a float64 electrostatics reference) sets it for that block only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Set torch's default dtype to ``dtype`` inside the block; the caller's is restored after,
    also when the block raises."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


#: the dtypes a run's config may name (``dtype``, ``refine.dtype``)
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
