"""GPUMD's ``loss.out``: the loss and the RMSEs of a NEP run, one row per output interval.

GPUMD's ``nep`` appends to ``loss.out`` (``gpumd.org/nep/output_files/loss_out.html``; the column
names are those of the header that current GPUMD writes before the rows of each run, and that
calorine's :func:`calorine.nep.read_loss` reads; a file without header is read by its number of
columns):

* a potential, 10 columns: ``generation total L1 L2`` then the RMSEs of energy (eV/atom),
  force (eV/Å) and virial (eV/atom) on the training set, then the same three on the test set;
* a charge model (qNEP), 14 columns: the RMSEs of charge (e) and Born effective charge (e)
  follow the virial's in each set;
* ``L1``, ``L2``: the regularisation terms lambda_1 mean|z| and lambda_2 sqrt(mean z^2).

A new run writes a new header block and counts generations from zero, as GPUMD does after a
restart (calorine lays such blocks end to end); a run resumed from a checkpoint appends rows
to its block. A set without a label (no virials, no test set) has RMSE 0 in its column.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

#: the RMSE columns of each set, GPUMD's names (potential; a charge model adds the last two)
POTENTIAL_COLUMNS = ("energy", "force", "virial")
CHARGE_COLUMNS = ("charge", "bec")


def loss_columns(charges: bool = False) -> list[str]:
    """GPUMD's column names of loss.out for a potential (``charges``: a qNEP)."""
    quantities = POTENTIAL_COLUMNS + (CHARGE_COLUMNS if charges else ())
    return ["generation", "total", "L1", "L2"] + [f"rmse_{q}_{which}" for which in ("train", "test") for q in quantities]


def loss_header(charges: bool = False) -> str:
    """The two header lines GPUMD writes before a run's rows."""
    return "# format_version 1\n# columns " + " ".join(loss_columns(charges)) + "\n"


def format_loss_row(generation: int, total: float, l1: float, l2: float, train: Mapping[str, float],
                    test: Mapping[str, float], charges: bool = False) -> str:
    """One row: RMSEs missing from ``train``/``test`` (no label, no set) are written as 0."""
    quantities = POTENTIAL_COLUMNS + (CHARGE_COLUMNS if charges else ())
    values = [float(total), float(l1), float(l2)] + [float(rmse.get(q, 0.0)) for rmse in (train, test) for q in quantities]
    values = [v if math.isfinite(v) else 0.0 for v in values]
    return f"{int(generation)} " + " ".join(f"{v:.5e}" for v in values) + "\n"


def append_loss(path: str | os.PathLike, row: str, header: str | None = None) -> Path:
    """Append ``row`` to ``path`` (GPUMD writes loss.out in append mode), ``header`` first if given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if header:
            handle.write(header)
        handle.write(row)
    return path
