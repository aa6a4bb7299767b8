"""GPUMD's ``loss.out``: the loss and the RMSEs of a NEP run, one row per output interval.

GPUMD's ``nep`` appends to ``loss.out`` (``gpumd.org/nep/output_files/loss_out.html``; the column
names are those of the header that current GPUMD writes before the rows of each run, and that
calorine's :func:`calorine.nep.read_loss` reads; a file without header is read by its number of
columns):

* a potential, 10 columns: ``generation total L1 L2`` then the RMSEs of energy (eV/atom),
  force (eV/Å) and virial (eV/atom) on the training set, then the same three on the test set;
* a charge model (qNEP), 14 columns: the RMSEs of charge (e) and Born effective charge (e)
  follow the virial's in each set;
* a dipole or polarizability model (TNEP), 6 columns: ``generation total L1 L2`` and the RMSE
  of the dipole / polarizability per atom on the training and the test set, as GPUMD takes it
  over the columns of its dipole_*.out (3) / polarizability_*.out (6: xx yy zz xy yz zx);
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

#: the RMSE columns of each set, GPUMD's names, by model kind
POTENTIAL_COLUMNS = ("energy", "force", "virial")
QUANTITIES = {
    "potential": POTENTIAL_COLUMNS,
    "charge": POTENTIAL_COLUMNS + ("charge", "bec"),
    "dipole": ("dipole",),
    "polarizability": ("polarizability",),
}


def model_kind(model) -> str:
    """The loss.out kind of a Potential or energy tree: the first NEP model's (else ``potential``)."""
    from mlip_plugins.nep.model import nep_models
    from mlip_plugins.nep.tnep import MODEL_TYPES

    for nep in nep_models(model):
        if nep.model_type:
            return MODEL_TYPES[nep.model_type]
        if nep.charge_mode:
            return "charge"
    return "potential"


def loss_columns(kind: str = "potential") -> list[str]:
    """GPUMD's column names of loss.out for a model of ``kind`` (:data:`QUANTITIES`)."""
    return ["generation", "total", "L1", "L2"] + [f"rmse_{q}_{which}" for which in ("train", "test") for q in QUANTITIES[kind]]


def loss_header(kind: str = "potential") -> str:
    """The two header lines GPUMD writes before a run's rows."""
    return "# format_version 1\n# columns " + " ".join(loss_columns(kind)) + "\n"


def format_loss_row(generation: int, total: float, l1: float, l2: float, train: Mapping[str, float],
                    test: Mapping[str, float], kind: str = "potential") -> str:
    """One row: RMSEs missing from ``train``/``test`` (no label, no set) are written as 0."""
    quantities = QUANTITIES[kind]
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
