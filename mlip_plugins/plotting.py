"""Saving matplotlib figures, the one way every report and parity plot does it."""

from __future__ import annotations

import os
from pathlib import Path


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder created if missing), close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
